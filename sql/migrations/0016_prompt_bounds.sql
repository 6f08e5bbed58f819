-- Prompts bounded where they enter, and a wider "blank" (issue: prompts that stall or
-- swell the listener).
--
-- * Length: a waiting (ReadyToGenerate) row's prompt holds at most 100,000 characters
--   and its negative prompt at most 10,000 (the API takes 1,000; the rest is kept in the
--   row, never sent). Longer ones are refused at INSERT, naming the rule. The check looks
--   at octet_length first, which PostgreSQL knows without reading a stored value, so a
--   row's other updates never read its prompt for it.
-- * Blank: the class of blank characters gains the interlinear annotation marks
--   (U+FFF9-FFFB), the Egyptian hieroglyph format controls (U+13430-1343F) and blank
--   signs (U+13441-13442), the musical null notehead (U+1D159) and the 66
--   noncharacters (U+FDD0-FDEF and the last two code points of every plane). It is
--   listener/prompt.py's BLANK_CLASS, verbatim (tests/test_blank_prompt.py checks every
--   copy). "Shows something" is decided on the first 100,000 characters, the most a
--   waiting row may hold: no check ever reads more of a value, whatever a row holds.
-- * images_prompt_head(text, n): the first n characters after the leading blanks, read
--   as a slice (a stored value is never read whole when its start shows something).
--   The claims return this instead of the whole column, so a listener holds at most n
--   characters of each prompt however long the row's is, and "999 spaces and a letter"
--   still reaches the API as the letter.
-- * Legacy waiting rows that break the new rules are made explicit as 0013 did (Failed
--   with the reason, or a blank negative prompt set to NULL, which changes nothing it
--   asked for), reported in images_upgrade_report and as a WARNING. Rows that break a
--   rule later (a constraint disabled by an operator) are listed by images_blocked and
--   left out of the checked claim (sql/queries.sql), as before.

SET LOCAL client_min_messages = notice;

-- -- blank, and the head of a prompt ----------------------------------------------------

CREATE OR REPLACE FUNCTION images_prompt_is_blank(prompt text) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT NOT (left(prompt, 1000) ~ '[^\u0001-\u0020\u007F-\u00A0\u00AD\u034F\u061C\u115F-\u1160\u1680\u17B4-\u17B5\u180B-\u180F\u2000-\u200F\u2028-\u202F\u205F-\u206F\u2800\u3000\u3164\uFDD0-\uFDEF\uFE00-\uFE0F\uFEFF\uFFA0\uFFF0-\uFFFB\uFFFE-\uFFFF\U0001BCA0-\U0001BCA3\U00013430-\U0001343F\U00013441-\U00013442\U0001D159\U0001D173-\U0001D17A\U000E0000-\U000E0FFF\U0001FFFE-\U0001FFFF\U0002FFFE-\U0002FFFF\U0003FFFE-\U0003FFFF\U0004FFFE-\U0004FFFF\U0005FFFE-\U0005FFFF\U0006FFFE-\U0006FFFF\U0007FFFE-\U0007FFFF\U0008FFFE-\U0008FFFF\U0009FFFE-\U0009FFFF\U000AFFFE-\U000AFFFF\U000BFFFE-\U000BFFFF\U000CFFFE-\U000CFFFF\U000DFFFE-\U000DFFFF\U000EFFFE-\U000EFFFF\U000FFFFE-\U000FFFFF\U0010FFFE-\U0010FFFF]'
                OR left(prompt, 100000) ~ '[^\u0001-\u0020\u007F-\u00A0\u00AD\u034F\u061C\u115F-\u1160\u1680\u17B4-\u17B5\u180B-\u180F\u2000-\u200F\u2028-\u202F\u205F-\u206F\u2800\u3000\u3164\uFDD0-\uFDEF\uFE00-\uFE0F\uFEFF\uFFA0\uFFF0-\uFFFB\uFFFE-\uFFFF\U0001BCA0-\U0001BCA3\U00013430-\U0001343F\U00013441-\U00013442\U0001D159\U0001D173-\U0001D17A\U000E0000-\U000E0FFF\U0001FFFE-\U0001FFFF\U0002FFFE-\U0002FFFF\U0003FFFE-\U0003FFFF\U0004FFFE-\U0004FFFF\U0005FFFE-\U0005FFFF\U0006FFFE-\U0006FFFF\U0007FFFE-\U0007FFFF\U0008FFFE-\U0008FFFF\U0009FFFE-\U0009FFFF\U000AFFFE-\U000AFFFF\U000BFFFE-\U000BFFFF\U000CFFFE-\U000CFFFF\U000DFFFE-\U000DFFFF\U000EFFFE-\U000EFFFF\U000FFFFE-\U000FFFFF\U0010FFFE-\U0010FFFF]')
$$;
COMMENT ON FUNCTION images_prompt_is_blank(text) IS
    'true when the text shows nothing in its first 100000 characters: only Unicode white '
    'space and invisible characters';

CREATE OR REPLACE FUNCTION images_prompt_head(prompt text, n integer) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT coalesce(substr(prompt, coalesce(
        position(substring(left(prompt, n) FROM '[^\u0001-\u0020\u007F-\u00A0\u00AD\u034F\u061C\u115F-\u1160\u1680\u17B4-\u17B5\u180B-\u180F\u2000-\u200F\u2028-\u202F\u205F-\u206F\u2800\u3000\u3164\uFDD0-\uFDEF\uFE00-\uFE0F\uFEFF\uFFA0\uFFF0-\uFFFB\uFFFE-\uFFFF\U0001BCA0-\U0001BCA3\U00013430-\U0001343F\U00013441-\U00013442\U0001D159\U0001D173-\U0001D17A\U000E0000-\U000E0FFF\U0001FFFE-\U0001FFFF\U0002FFFE-\U0002FFFF\U0003FFFE-\U0003FFFF\U0004FFFE-\U0004FFFF\U0005FFFE-\U0005FFFF\U0006FFFE-\U0006FFFF\U0007FFFE-\U0007FFFF\U0008FFFE-\U0008FFFF\U0009FFFE-\U0009FFFF\U000AFFFE-\U000AFFFF\U000BFFFE-\U000BFFFF\U000CFFFE-\U000CFFFF\U000DFFFE-\U000DFFFF\U000EFFFE-\U000EFFFF\U000FFFFE-\U000FFFFF\U0010FFFE-\U0010FFFF]') IN left(prompt, n)),
        -- the first n characters are all blank: look further, as far as a rule allows
        position(substring(left(prompt, 100000) FROM '[^\u0001-\u0020\u007F-\u00A0\u00AD\u034F\u061C\u115F-\u1160\u1680\u17B4-\u17B5\u180B-\u180F\u2000-\u200F\u2028-\u202F\u205F-\u206F\u2800\u3000\u3164\uFDD0-\uFDEF\uFE00-\uFE0F\uFEFF\uFFA0\uFFF0-\uFFFB\uFFFE-\uFFFF\U0001BCA0-\U0001BCA3\U00013430-\U0001343F\U00013441-\U00013442\U0001D159\U0001D173-\U0001D17A\U000E0000-\U000E0FFF\U0001FFFE-\U0001FFFF\U0002FFFE-\U0002FFFF\U0003FFFE-\U0003FFFF\U0004FFFE-\U0004FFFF\U0005FFFE-\U0005FFFF\U0006FFFE-\U0006FFFF\U0007FFFE-\U0007FFFF\U0008FFFE-\U0008FFFF\U0009FFFE-\U0009FFFF\U000AFFFE-\U000AFFFF\U000BFFFE-\U000BFFFF\U000CFFFE-\U000CFFFF\U000DFFFE-\U000DFFFF\U000EFFFE-\U000EFFFF\U000FFFFE-\U000FFFFF\U0010FFFE-\U0010FFFF]')
                 IN left(prompt, 100000))
    ), n), '')
$$;
COMMENT ON FUNCTION images_prompt_head(text, integer) IS
    'the first n characters after the leading blanks (empty when the first 100000 '
    'characters are blank): what a claim reads of a prompt';

-- Both are on the listener's list (listener/objects.py): `listener migrate` gives them a
-- fixed search_path and takes EXECUTE from PUBLIC, and grants images_prompt_head to
-- images_listener where `listener roles` ran (the claims call it).

-- -- legacy rows ------------------------------------------------------------------------

-- One kind of finding, as 0013 reports them; a temporary function, so nothing is left.
CREATE FUNCTION pg_temp.images_upgrade_note(
    finding text, done text, row_ids bigint[]
) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    n bigint := coalesce(cardinality(row_ids), 0);
BEGIN
    IF n = 0 THEN
        RETURN;
    END IF;
    INSERT INTO images_upgrade_report AS r (migration, kind, action, rows, ids)
    VALUES ('0016_prompt_bounds', finding, done, n, row_ids)
    ON CONFLICT ON CONSTRAINT images_upgrade_report_pkey DO NOTHING;
    RAISE WARNING 'legacy rows: % row(s) %: % (ids %)', n, finding, done,
        array_to_string(row_ids[1:20], ', ') || CASE WHEN n > 20 THEN ', ...' ELSE '' END;
END
$$;

DO $$
DECLARE
    ids bigint[];
BEGIN
    WITH fixed AS (
        UPDATE images
        SET status = 'Failed', last_error = 'prompt over 100000 characters (found when upgrading)',
            attempts = greatest(attempts, 0), locked_by = NULL, locked_until = NULL
        WHERE status = 'ReadyToGenerate'
          AND NOT (octet_length(prompt) <= 100000
                   OR (octet_length(prompt) <= 400000 AND char_length(prompt) <= 100000))
        RETURNING id::bigint
    )
    SELECT array_agg(id ORDER BY id) INTO ids FROM fixed;
    PERFORM pg_temp.images_upgrade_note('in ReadyToGenerate with a prompt over 100000 characters',
        'Failed, last_error ''prompt over 100000 characters (found when upgrading)''', ids);

    WITH fixed AS (
        UPDATE images
        SET status = 'Failed',
            last_error = 'negative prompt over 10000 characters (found when upgrading)',
            attempts = greatest(attempts, 0), locked_by = NULL, locked_until = NULL
        WHERE status = 'ReadyToGenerate'
          AND NOT (octet_length(negative_prompt) <= 10000
                   OR (octet_length(negative_prompt) <= 40000
                       AND char_length(negative_prompt) <= 10000))
        RETURNING id::bigint
    )
    SELECT array_agg(id ORDER BY id) INTO ids FROM fixed;
    PERFORM pg_temp.images_upgrade_note(
        'in ReadyToGenerate with a negative prompt over 10000 characters',
        'Failed, last_error ''negative prompt over 10000 characters (found when upgrading)''',
        ids);

    -- A blank negative prompt already meant "the configured default", which NULL says
    -- explicitly: nothing changes for the row.
    WITH fixed AS (
        UPDATE images SET negative_prompt = NULL, attempts = greatest(attempts, 0)
        WHERE status = 'ReadyToGenerate' AND images_prompt_is_blank(negative_prompt)
        RETURNING id::bigint
    )
    SELECT array_agg(id ORDER BY id) INTO ids FROM fixed;
    PERFORM pg_temp.images_upgrade_note('in ReadyToGenerate with a blank negative prompt',
        'negative_prompt set to NULL (the configured default, as before)', ids);

    WITH fixed AS (
        UPDATE images
        SET status = 'Failed', last_error = 'blank prompt (found when upgrading)',
            attempts = greatest(attempts, 0), locked_by = NULL, locked_until = NULL
        WHERE status = 'ReadyToGenerate' AND images_prompt_is_blank(prompt)
        RETURNING id::bigint
    )
    SELECT array_agg(id ORDER BY id) INTO ids FROM fixed;
    PERFORM pg_temp.images_upgrade_note('in ReadyToGenerate with a blank prompt',
        'Failed, last_error ''blank prompt (found when upgrading)''', ids);
END
$$;

DROP FUNCTION pg_temp.images_upgrade_note(text, text, bigint[]);

-- -- the rules --------------------------------------------------------------------------

-- The blank rules are replaced; one an operator dropped is added again.
DO $$
DECLARE
    c text;
BEGIN
    FOREACH c IN ARRAY ARRAY['prompt_must_not_be_blank', 'negative_prompt_must_not_be_blank',
                             'prompt_must_be_at_most_100000_characters',
                             'negative_prompt_must_be_at_most_10000_characters'] LOOP
        IF EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conrelid = 'images'::regclass AND conname = c) THEN
            EXECUTE format('ALTER TABLE images DROP CONSTRAINT %I', c);
        END IF;
    END LOOP;
END
$$;

-- The names sort the length rules before the blank ones, and PostgreSQL checks a row's
-- rules in name order: a row too long is refused before any pattern reads it.
ALTER TABLE images
    ADD CONSTRAINT prompt_must_be_at_most_100000_characters
        CHECK (status <> 'ReadyToGenerate'
               OR octet_length(prompt) <= 100000
               OR (octet_length(prompt) <= 400000 AND char_length(prompt) <= 100000))
        NOT VALID,
    ADD CONSTRAINT negative_prompt_must_be_at_most_10000_characters
        CHECK (status <> 'ReadyToGenerate'
               OR octet_length(negative_prompt) <= 10000
               OR (octet_length(negative_prompt) <= 40000
                   AND char_length(negative_prompt) <= 10000))
        NOT VALID,
    ADD CONSTRAINT prompt_must_not_be_blank
        CHECK (status <> 'ReadyToGenerate'
               OR left(prompt, 1000) ~ '[^\u0001-\u0020\u007F-\u00A0\u00AD\u034F\u061C\u115F-\u1160\u1680\u17B4-\u17B5\u180B-\u180F\u2000-\u200F\u2028-\u202F\u205F-\u206F\u2800\u3000\u3164\uFDD0-\uFDEF\uFE00-\uFE0F\uFEFF\uFFA0\uFFF0-\uFFFB\uFFFE-\uFFFF\U0001BCA0-\U0001BCA3\U00013430-\U0001343F\U00013441-\U00013442\U0001D159\U0001D173-\U0001D17A\U000E0000-\U000E0FFF\U0001FFFE-\U0001FFFF\U0002FFFE-\U0002FFFF\U0003FFFE-\U0003FFFF\U0004FFFE-\U0004FFFF\U0005FFFE-\U0005FFFF\U0006FFFE-\U0006FFFF\U0007FFFE-\U0007FFFF\U0008FFFE-\U0008FFFF\U0009FFFE-\U0009FFFF\U000AFFFE-\U000AFFFF\U000BFFFE-\U000BFFFF\U000CFFFE-\U000CFFFF\U000DFFFE-\U000DFFFF\U000EFFFE-\U000EFFFF\U000FFFFE-\U000FFFFF\U0010FFFE-\U0010FFFF]'
               OR left(prompt, 100000) ~ '[^\u0001-\u0020\u007F-\u00A0\u00AD\u034F\u061C\u115F-\u1160\u1680\u17B4-\u17B5\u180B-\u180F\u2000-\u200F\u2028-\u202F\u205F-\u206F\u2800\u3000\u3164\uFDD0-\uFDEF\uFE00-\uFE0F\uFEFF\uFFA0\uFFF0-\uFFFB\uFFFE-\uFFFF\U0001BCA0-\U0001BCA3\U00013430-\U0001343F\U00013441-\U00013442\U0001D159\U0001D173-\U0001D17A\U000E0000-\U000E0FFF\U0001FFFE-\U0001FFFF\U0002FFFE-\U0002FFFF\U0003FFFE-\U0003FFFF\U0004FFFE-\U0004FFFF\U0005FFFE-\U0005FFFF\U0006FFFE-\U0006FFFF\U0007FFFE-\U0007FFFF\U0008FFFE-\U0008FFFF\U0009FFFE-\U0009FFFF\U000AFFFE-\U000AFFFF\U000BFFFE-\U000BFFFF\U000CFFFE-\U000CFFFF\U000DFFFE-\U000DFFFF\U000EFFFE-\U000EFFFF\U000FFFFE-\U000FFFFF\U0010FFFE-\U0010FFFF]')
        NOT VALID,
    ADD CONSTRAINT negative_prompt_must_not_be_blank
        CHECK (status <> 'ReadyToGenerate'
               OR left(negative_prompt, 1000) ~ '[^\u0001-\u0020\u007F-\u00A0\u00AD\u034F\u061C\u115F-\u1160\u1680\u17B4-\u17B5\u180B-\u180F\u2000-\u200F\u2028-\u202F\u205F-\u206F\u2800\u3000\u3164\uFDD0-\uFDEF\uFE00-\uFE0F\uFEFF\uFFA0\uFFF0-\uFFFB\uFFFE-\uFFFF\U0001BCA0-\U0001BCA3\U00013430-\U0001343F\U00013441-\U00013442\U0001D159\U0001D173-\U0001D17A\U000E0000-\U000E0FFF\U0001FFFE-\U0001FFFF\U0002FFFE-\U0002FFFF\U0003FFFE-\U0003FFFF\U0004FFFE-\U0004FFFF\U0005FFFE-\U0005FFFF\U0006FFFE-\U0006FFFF\U0007FFFE-\U0007FFFF\U0008FFFE-\U0008FFFF\U0009FFFE-\U0009FFFF\U000AFFFE-\U000AFFFF\U000BFFFE-\U000BFFFF\U000CFFFE-\U000CFFFF\U000DFFFE-\U000DFFFF\U000EFFFE-\U000EFFFF\U000FFFFE-\U000FFFFF\U0010FFFE-\U0010FFFF]'
               OR left(negative_prompt, 100000) ~ '[^\u0001-\u0020\u007F-\u00A0\u00AD\u034F\u061C\u115F-\u1160\u1680\u17B4-\u17B5\u180B-\u180F\u2000-\u200F\u2028-\u202F\u205F-\u206F\u2800\u3000\u3164\uFDD0-\uFDEF\uFE00-\uFE0F\uFEFF\uFFA0\uFFF0-\uFFFB\uFFFE-\uFFFF\U0001BCA0-\U0001BCA3\U00013430-\U0001343F\U00013441-\U00013442\U0001D159\U0001D173-\U0001D17A\U000E0000-\U000E0FFF\U0001FFFE-\U0001FFFF\U0002FFFE-\U0002FFFF\U0003FFFE-\U0003FFFF\U0004FFFE-\U0004FFFF\U0005FFFE-\U0005FFFF\U0006FFFE-\U0006FFFF\U0007FFFE-\U0007FFFF\U0008FFFE-\U0008FFFF\U0009FFFE-\U0009FFFF\U000AFFFE-\U000AFFFF\U000BFFFE-\U000BFFFF\U000CFFFE-\U000CFFFF\U000DFFFE-\U000DFFFF\U000EFFFE-\U000EFFFF\U000FFFFE-\U000FFFFF\U0010FFFE-\U0010FFFF]')
        NOT VALID;

-- Every waiting row is valid now; a rule that still is not (a row changed under a
-- disabled trigger meanwhile) stays NOT VALID: new and changed rows are checked, and
-- the WARNING names it.
DO $$
DECLARE
    c text;
BEGIN
    FOREACH c IN ARRAY ARRAY['prompt_must_be_at_most_100000_characters',
                             'negative_prompt_must_be_at_most_10000_characters',
                             'prompt_must_not_be_blank', 'negative_prompt_must_not_be_blank'] LOOP
        BEGIN
            EXECUTE format('ALTER TABLE images VALIDATE CONSTRAINT %I', c);
        EXCEPTION WHEN check_violation THEN
            RAISE WARNING 'existing rows still break constraint %: new and changed rows are '
                'checked, these are left as they are', c;
        END;
    END LOOP;
END
$$;

-- -- rows that break a rule later ---------------------------------------------------------

-- As 0013's, with the length rules first: a row too long is never read further.
CREATE OR REPLACE VIEW images_blocked AS
SELECT id, status, reason
FROM (
    SELECT
        i.id,
        i.status,
        CASE
            WHEN i.status = 'Generate' AND i.uuid IS NULL THEN 'Generate without a uuid'
            WHEN i.attempts < 0 THEN 'negative attempts count'
            WHEN i.status = 'Generate' THEN NULL
            WHEN NOT (octet_length(i.prompt) <= 100000
                      OR (octet_length(i.prompt) <= 400000 AND char_length(i.prompt) <= 100000))
                THEN 'prompt over 100000 characters'
            WHEN NOT (octet_length(i.negative_prompt) <= 10000
                      OR (octet_length(i.negative_prompt) <= 40000
                          AND char_length(i.negative_prompt) <= 10000))
                THEN 'negative prompt over 10000 characters'
            WHEN images_prompt_is_blank(i.prompt) THEN 'blank prompt'
            WHEN images_prompt_is_blank(i.negative_prompt) THEN 'blank negative prompt'
            WHEN i.width NOT BETWEEN 64 AND 1024 OR i.height NOT BETWEEN 64 AND 1024
                THEN format('size %sx%s outside 64..1024',
                            coalesce(i.width::text, 'default'), coalesce(i.height::text, 'default'))
            WHEN i.attempts >= 2147483647 THEN 'attempts count at its maximum'
        END AS reason
    FROM images AS i
    WHERE i.status IN ('ReadyToGenerate', 'Generate')
) AS b
WHERE reason IS NOT NULL;
