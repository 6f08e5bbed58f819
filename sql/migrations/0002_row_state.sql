-- Everything that explains a status lives in new columns with defaults, so the seed's
-- `INSERT INTO images (prompt, status) VALUES (...)` and `INSERT INTO images (prompt)`
-- keep working unchanged.

-- Styles the API knows. A row's style must be listed here: an unknown style is refused
-- at INSERT time instead of failing later at the API. Add a style with one INSERT.
CREATE TABLE IF NOT EXISTS image_styles (
    name  text PRIMARY KEY
          CONSTRAINT style_name_is_upper_case_letters_digits_or_underscores
          CHECK (name ~ '^[A-Z0-9_]+$'),
    title text
);
INSERT INTO image_styles (name, title) VALUES
    ('KANDINSKY', 'Kandinsky'),
    ('UHD', 'Detailed photo'),
    ('ANIME', 'Anime'),
    ('DEFAULT', 'No style')
ON CONFLICT (name) DO NOTHING;

ALTER TABLE images
    -- per-row overrides; NULL means "use the configured default"
    ADD COLUMN IF NOT EXISTS style text,
    ADD COLUMN IF NOT EXISTS width integer,
    ADD COLUMN IF NOT EXISTS height integer,
    ADD COLUMN IF NOT EXISTS negative_prompt text,
    -- retries: submission attempts so far, why the last one failed, and when to try again
    ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS last_error text,
    ADD COLUMN IF NOT EXISTS not_before timestamptz NOT NULL DEFAULT now(),
    -- lease: which listener process holds the row, and until when (renewed by heartbeat)
    ADD COLUMN IF NOT EXISTS locked_by text,
    ADD COLUMN IF NOT EXISTS locked_until timestamptz,
    -- outcome details
    ADD COLUMN IF NOT EXISTS censored boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS generated_by text,
    ADD COLUMN IF NOT EXISTS generation_started_at timestamptz,
    ADD COLUMN IF NOT EXISTS generation_finished_at timestamptz;

-- A row the old service left in Generate without a uuid can never be followed: it was
-- never accepted by the API, so it goes back to the queue.
UPDATE images SET status = 'ReadyToGenerate' WHERE status = 'Generate' AND uuid IS NULL;

-- The constraints are named for what they require: PostgreSQL's message quotes the name.
-- They are added NOT VALID and then validated, so a seed database holding odd old rows
-- still upgrades (new rows are always checked; old ones are reported by a NOTICE).
ALTER TABLE images
    ADD CONSTRAINT "status_is_ReadyToGenerate_Generate_ReadyToPublish_or_Failed"
        CHECK (status IN ('ReadyToGenerate', 'Generate', 'ReadyToPublish', 'Failed')) NOT VALID,
    ADD CONSTRAINT prompt_must_not_be_blank
        CHECK (prompt ~ '[^[:space:]]') NOT VALID,
    ADD CONSTRAINT width_must_be_between_64_and_1024
        CHECK (width BETWEEN 64 AND 1024) NOT VALID,
    ADD CONSTRAINT height_must_be_between_64_and_1024
        CHECK (height BETWEEN 64 AND 1024) NOT VALID,
    ADD CONSTRAINT negative_prompt_must_not_be_blank
        CHECK (negative_prompt ~ '[^[:space:]]') NOT VALID,
    ADD CONSTRAINT attempts_must_not_be_negative
        CHECK (attempts >= 0) NOT VALID,
    ADD CONSTRAINT "Generate_needs_a_uuid"
        CHECK (status <> 'Generate' OR uuid IS NOT NULL) NOT VALID,
    ADD CONSTRAINT "ReadyToPublish_needs_base64"
        CHECK (status <> 'ReadyToPublish' OR base64 IS NOT NULL) NOT VALID,
    ADD CONSTRAINT style_must_be_listed_in_image_styles
        FOREIGN KEY (style) REFERENCES image_styles (name) ON UPDATE CASCADE NOT VALID;

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
            RAISE NOTICE 'existing rows break constraint %; new rows are checked', c.conname;
        END;
    END LOOP;
END
$$;

-- The seed's updated_at only had a default; keep it current on every change.
CREATE OR REPLACE FUNCTION images_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;
SET LOCAL client_min_messages = warning;  -- quiet: no "does not exist, skipping"
DROP TRIGGER IF EXISTS images_touch_updated_at ON images;
SET LOCAL client_min_messages = notice;
CREATE TRIGGER images_touch_updated_at
    BEFORE UPDATE ON images
    FOR EACH ROW EXECUTE FUNCTION images_touch_updated_at();

-- Claim indexes are partial: they hold only waiting or in-flight rows, so their size and
-- the claim's cost do not grow with the number of finished rows.
CREATE INDEX IF NOT EXISTS images_ready_to_generate_idx
    ON images (not_before, id) WHERE status = 'ReadyToGenerate';
CREATE INDEX IF NOT EXISTS images_generate_idx
    ON images (locked_until) WHERE status = 'Generate';
CREATE INDEX IF NOT EXISTS images_locked_by_idx
    ON images (locked_by) WHERE locked_by IS NOT NULL;
