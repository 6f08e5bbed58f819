-- Taking over a live seed database: no legacy row may block anyone.
--
-- * Statuses are listed in `image_statuses` (like styles in `image_styles`): the
--   listener's four, plus every status found in the table now (a downstream `Published`,
--   `Archived`...). The listener never claims, moves or counts a row in a status it does
--   not own. Add one with `INSERT INTO image_statuses VALUES ('Published');`.
-- * The rules about what a row asks for (prompt, negative prompt, size) apply where they
--   matter, to waiting (ReadyToGenerate) rows, with one definition of "blank" that
--   covers every Unicode white space and invisible character. A finished or downstream
--   row is never refused an UPDATE because of what it once asked for, and a waiting row
--   that breaks a rule can still be cancelled (-> Failed).
-- * Each legacy row that breaks a rule is made valid and explicit (Failed with the
--   reason, or fixed when the fix changes nothing it asked for), and reported: one
--   NOTICE or WARNING per kind (shown by `listener migrate`), kept in the table
--   images_upgrade_report for later.
-- * Rows that break a rule later (an operator who disabled a constraint) are left out
--   of the claims (sql/queries.sql) and listed by the view images_blocked.
--
-- The class of blank characters below is listener/api/prompt.py's BLANK_CLASS, verbatim
-- (tests/test_blank_prompt.py checks every copy). It is written out in the constraints
-- instead of calling images_prompt_is_blank(): a function with a fixed search_path is
-- never inlined, and would cost 3 us per row on every INSERT.

SET LOCAL client_min_messages = notice;

-- -- blank ------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION images_prompt_is_blank(prompt text) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT prompt !~ '[^\u0001-\u0020\u007F-\u00A0\u00AD\u034F\u061C\u115F-\u1160\u1680\u17B4-\u17B5\u180B-\u180F\u2000-\u200F\u2028-\u202F\u205F-\u206F\u2800\u3000\u3164\uFE00-\uFE0F\uFEFF\uFFA0\uFFF0-\uFFF8\U0001BCA0-\U0001BCA3\U0001D173-\U0001D17A\U000E0000-\U000E0FFF]'
$$;
COMMENT ON FUNCTION images_prompt_is_blank(text) IS
    'true when the text shows nothing: only Unicode white space and invisible characters';
-- EXECUTE: the owner, and the roles sql/roles.sql grants it to (images_blocked reads it).

-- -- statuses ---------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS image_statuses (
    name        text PRIMARY KEY,
    description text
);
INSERT INTO image_statuses (name, description) VALUES
    ('ReadyToGenerate', 'the listener''s: waiting to be submitted to the API'),
    ('Generate', 'the listener''s: the API is generating (uuid is set)'),
    ('ReadyToPublish', 'the listener''s: base64 holds the image'),
    ('Failed', 'the listener''s: last_error says why')
ON CONFLICT (name) DO NOTHING;

-- The listener's four are not for removing or renaming: its queries name them.
CREATE OR REPLACE FUNCTION image_statuses_keep_the_listeners() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' OR OLD.name IN ('ReadyToGenerate', 'Generate', 'ReadyToPublish', 'Failed')
    THEN
        RAISE EXCEPTION 'status % belongs to the listener: it cannot be removed or renamed',
            CASE WHEN TG_OP = 'TRUNCATE' THEN 'ReadyToGenerate' ELSE OLD.name END
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END
$$;
SET LOCAL client_min_messages = warning;  -- quiet: no "does not exist, skipping"
DROP TRIGGER IF EXISTS image_statuses_keep_the_listeners ON image_statuses;
SET LOCAL client_min_messages = notice;
CREATE TRIGGER image_statuses_keep_the_listeners
    BEFORE UPDATE OR DELETE ON image_statuses
    FOR EACH ROW EXECUTE FUNCTION image_statuses_keep_the_listeners();
SET LOCAL client_min_messages = warning;  -- quiet: no "does not exist, skipping"
DROP TRIGGER IF EXISTS image_statuses_keep_the_listeners_truncate ON image_statuses;
SET LOCAL client_min_messages = notice;
CREATE TRIGGER image_statuses_keep_the_listeners_truncate
    BEFORE TRUNCATE ON image_statuses
    FOR EACH STATEMENT EXECUTE FUNCTION image_statuses_keep_the_listeners();

-- -- the report -------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS images_upgrade_report (
    found_at  timestamptz NOT NULL DEFAULT now(),
    migration text NOT NULL,
    kind      text NOT NULL,
    action    text NOT NULL,
    rows      bigint NOT NULL,
    ids       bigint[] NOT NULL,
    PRIMARY KEY (found_at, kind)
);
COMMENT ON TABLE images_upgrade_report IS
    'legacy rows found by `listener migrate` and what was done with them (all ids)';

-- One kind of finding: kept in the report, and said as a NOTICE (nothing was changed)
-- or a WARNING (rows were changed), with the first 20 ids.
CREATE OR REPLACE FUNCTION images_upgrade_note(
    finding text, done text, row_ids bigint[], changed boolean
) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    n bigint := coalesce(cardinality(row_ids), 0);
    shown text;
BEGIN
    IF n = 0 THEN
        RETURN;
    END IF;
    INSERT INTO images_upgrade_report AS r (migration, kind, action, rows, ids)
    VALUES ('0013_seed_upgrade', finding, done, n, row_ids)
    ON CONFLICT ON CONSTRAINT images_upgrade_report_pkey DO NOTHING;
    shown := array_to_string(row_ids[1:20], ', ') || CASE WHEN n > 20 THEN ', ...' ELSE '' END;
    IF changed THEN
        RAISE WARNING 'legacy rows: % row(s) %: % (ids %)', n, finding, done, shown;
    ELSE
        RAISE NOTICE 'legacy rows: % row(s) %: % (ids %)', n, finding, done, shown;
    END IF;
END
$$;

-- -- legacy rows, one kind at a time ----------------------------------------------------

-- Rows change status below; the old constraints must not refuse that (they are replaced
-- further down, scoped to the rows where they matter).
SET LOCAL client_min_messages = warning;  -- quiet: no "does not exist, skipping"
ALTER TABLE images
    DROP CONSTRAINT IF EXISTS "status_is_ReadyToGenerate_Generate_ReadyToPublish_or_Failed",
    DROP CONSTRAINT IF EXISTS status_must_be_listed_in_image_statuses,
    DROP CONSTRAINT IF EXISTS prompt_must_not_be_blank,
    DROP CONSTRAINT IF EXISTS negative_prompt_must_not_be_blank,
    DROP CONSTRAINT IF EXISTS width_must_be_between_64_and_1024,
    DROP CONSTRAINT IF EXISTS height_must_be_between_64_and_1024;
SET LOCAL client_min_messages = notice;

DO $$
DECLARE
    ids bigint[];
    s record;
BEGIN
    -- Statuses nobody here owns: kept as they are, and listed so they stay valid.
    FOR s IN
        SELECT i.status, array_agg(i.id::bigint ORDER BY i.id) AS ids
        FROM images AS i
        WHERE NOT EXISTS (SELECT 1 FROM image_statuses AS st WHERE st.name = i.status)
        GROUP BY i.status ORDER BY i.status
    LOOP
        INSERT INTO image_statuses (name, description)
        VALUES (s.status, 'found in images when upgrading');
        PERFORM images_upgrade_note(
            format('in status %L, which the listener does not own', s.status),
            'kept as they are; the status is now listed in image_statuses and the '
            'listener leaves these rows alone',
            s.ids, false);
    END LOOP;

    -- A negative attempt count (only by hand): the count starts again.
    WITH fixed AS (
        UPDATE images SET attempts = 0 WHERE attempts < 0 RETURNING id::bigint
    )
    SELECT array_agg(id ORDER BY id) INTO ids FROM fixed;
    PERFORM images_upgrade_note('with a negative attempts count', 'attempts set to 0', ids, true);

    -- Generate without a uuid: never accepted by the API (0002 did the same).
    WITH fixed AS (
        UPDATE images SET status = 'ReadyToGenerate', locked_by = NULL, locked_until = NULL
        WHERE status = 'Generate' AND uuid IS NULL RETURNING id::bigint
    )
    SELECT array_agg(id ORDER BY id) INTO ids FROM fixed;
    PERFORM images_upgrade_note('in Generate without a uuid',
        'back to ReadyToGenerate (the API never accepted them)', ids, true);

    -- ReadyToPublish without an image: nothing to publish.
    WITH fixed AS (
        UPDATE images
        SET status = 'Failed', last_error = 'ReadyToPublish without an image (found when upgrading)',
            locked_by = NULL, locked_until = NULL
        WHERE status = 'ReadyToPublish' AND (base64 IS NULL OR base64 = '')
        RETURNING id::bigint
    )
    SELECT array_agg(id ORDER BY id) INTO ids FROM fixed;
    PERFORM images_upgrade_note('in ReadyToPublish without an image',
        'Failed, last_error ''ReadyToPublish without an image (found when upgrading)''; '
        'images_retry(id) generates them again', ids, true);

    -- Waiting rows that ask for the impossible. A blank negative prompt already meant
    -- "the configured default", which NULL says explicitly: nothing changes for the row.
    WITH fixed AS (
        UPDATE images SET negative_prompt = NULL
        WHERE status = 'ReadyToGenerate' AND images_prompt_is_blank(negative_prompt)
        RETURNING id::bigint
    )
    SELECT array_agg(id ORDER BY id) INTO ids FROM fixed;
    PERFORM images_upgrade_note('in ReadyToGenerate with a blank negative prompt',
        'negative_prompt set to NULL (the configured default, as before)', ids, true);

    WITH fixed AS (
        UPDATE images
        SET status = 'Failed', last_error = 'blank prompt (found when upgrading)',
            locked_by = NULL, locked_until = NULL
        WHERE status = 'ReadyToGenerate' AND images_prompt_is_blank(prompt)
        RETURNING id::bigint
    )
    SELECT array_agg(id ORDER BY id) INTO ids FROM fixed;
    PERFORM images_upgrade_note('in ReadyToGenerate with a blank prompt',
        'Failed, last_error ''blank prompt (found when upgrading)''', ids, true);

    WITH fixed AS (
        UPDATE images
        SET status = 'Failed',
            last_error = format('size %sx%s outside 64..1024 (found when upgrading)',
                                coalesce(width::text, 'default'), coalesce(height::text, 'default')),
            locked_by = NULL, locked_until = NULL
        WHERE status = 'ReadyToGenerate'
          AND (width NOT BETWEEN 64 AND 1024 OR height NOT BETWEEN 64 AND 1024)
        RETURNING id::bigint
    )
    SELECT array_agg(id ORDER BY id) INTO ids FROM fixed;
    PERFORM images_upgrade_note('in ReadyToGenerate with a width or height outside 64..1024',
        'Failed, last_error ''size WxH outside 64..1024 (found when upgrading)''', ids, true);

    WITH fixed AS (
        UPDATE images AS i
        SET status = 'Failed',
            last_error = format('style %s is not listed in image_styles (found when upgrading)',
                                i.style),
            locked_by = NULL, locked_until = NULL
        WHERE i.status = 'ReadyToGenerate' AND i.style IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM image_styles AS st WHERE st.name = i.style)
        RETURNING i.id::bigint
    )
    SELECT array_agg(id ORDER BY id) INTO ids FROM fixed;
    PERFORM images_upgrade_note('in ReadyToGenerate with a style not in image_styles',
        'Failed, last_error ''style X is not listed in image_styles (found when upgrading)''',
        ids, true);

    -- A generation the API accepted with a blank prompt is paid for: its result is
    -- still fetched. Said, not changed.
    SELECT array_agg(id::bigint ORDER BY id) INTO ids
    FROM images WHERE status = 'Generate' AND images_prompt_is_blank(prompt);
    PERFORM images_upgrade_note('in Generate with a blank prompt',
        'kept: the API accepted them, so their result is still fetched', ids, false);
END
$$;

DROP FUNCTION images_upgrade_note(text, text, bigint[], boolean);

-- -- the rules, where they matter -------------------------------------------------------

SET LOCAL client_min_messages = warning;  -- quiet: no "does not exist, skipping"
ALTER TABLE images
    ADD CONSTRAINT status_must_be_listed_in_image_statuses
        FOREIGN KEY (status) REFERENCES image_statuses (name) ON UPDATE CASCADE NOT VALID,
    ADD CONSTRAINT prompt_must_not_be_blank
        CHECK (status <> 'ReadyToGenerate'
               OR prompt ~ '[^\u0001-\u0020\u007F-\u00A0\u00AD\u034F\u061C\u115F-\u1160\u1680\u17B4-\u17B5\u180B-\u180F\u2000-\u200F\u2028-\u202F\u205F-\u206F\u2800\u3000\u3164\uFE00-\uFE0F\uFEFF\uFFA0\uFFF0-\uFFF8\U0001BCA0-\U0001BCA3\U0001D173-\U0001D17A\U000E0000-\U000E0FFF]')
        NOT VALID,
    ADD CONSTRAINT negative_prompt_must_not_be_blank
        CHECK (status <> 'ReadyToGenerate'
               OR negative_prompt ~ '[^\u0001-\u0020\u007F-\u00A0\u00AD\u034F\u061C\u115F-\u1160\u1680\u17B4-\u17B5\u180B-\u180F\u2000-\u200F\u2028-\u202F\u205F-\u206F\u2800\u3000\u3164\uFE00-\uFE0F\uFEFF\uFFA0\uFFF0-\uFFF8\U0001BCA0-\U0001BCA3\U0001D173-\U0001D17A\U000E0000-\U000E0FFF]')
        NOT VALID,
    ADD CONSTRAINT width_must_be_between_64_and_1024
        CHECK (status <> 'ReadyToGenerate' OR width BETWEEN 64 AND 1024) NOT VALID,
    ADD CONSTRAINT height_must_be_between_64_and_1024
        CHECK (status <> 'ReadyToGenerate' OR height BETWEEN 64 AND 1024) NOT VALID,
    DROP CONSTRAINT IF EXISTS "ReadyToPublish_needs_base64",
    ADD CONSTRAINT "ReadyToPublish_needs_base64"
        CHECK (status <> 'ReadyToPublish' OR coalesce(base64, '') <> '') NOT VALID;
SET LOCAL client_min_messages = notice;

-- Everything is valid now; a constraint that still is not (a row only a superuser could
-- have made, such as a finished row with an unknown style) stays NOT VALID: new and
-- changed rows are checked, old ones are left alone, and the WARNING names it.
DO $$
DECLARE
    c record;
BEGIN
    FOR c IN
        SELECT conname FROM pg_constraint
        WHERE conrelid = 'images'::regclass AND NOT convalidated
    LOOP
        BEGIN
            EXECUTE format('ALTER TABLE images VALIDATE CONSTRAINT %I', c.conname);
        EXCEPTION WHEN check_violation OR foreign_key_violation THEN
            RAISE WARNING 'existing rows still break constraint %: new and changed rows are '
                'checked, these are left as they are', c.conname;
        END;
    END LOOP;
END
$$;

-- -- rows that break a rule later ----------------------------------------------------------

-- Waiting or generating rows the listener cannot move on (only possible with a
-- constraint disabled): the claims leave them out; cancel them (`listener cancel ID`)
-- or fix them. images_fail_blocked() fails them all, with the reason.
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

-- An operator's function: no input, so it runs as the table's owner (an operator needs
-- no UPDATE on images), for the roles granted below.
CREATE OR REPLACE FUNCTION images_fail_blocked()
RETURNS TABLE (id bigint, reason text)
LANGUAGE sql VOLATILE SECURITY DEFINER
AS $$
    UPDATE images AS i
    SET status = 'Failed', last_error = b.reason || ' (found at claim time)',
        attempts = greatest(i.attempts, 0), locked_by = NULL, locked_until = NULL
    FROM images_blocked AS b
    WHERE i.id = b.id AND i.status = b.status
    RETURNING i.id::bigint, b.reason
$$;

REVOKE ALL ON FUNCTION images_fail_blocked() FROM PUBLIC;

-- EXECUTE on images_fail_blocked and images_prompt_is_blank, and SELECT on the new
-- tables and view, are the roles' only where `listener roles` ran (listener/objects.py
-- lists them; `listener migrate` grants them there). The fixed search_path of this
-- file's functions is set by `listener migrate` after the file, from the same list: the
-- functions above are called by this file itself first, under the migration's path.
-- (Before 0017, this file ended with a loop over every function of the schema, other
-- applications' included; 0017_ours_only repairs what it did.)
