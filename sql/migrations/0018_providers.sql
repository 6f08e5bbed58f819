-- The table knows image providers and image formats (Fusion Brain, GigaChat; PNG, JPEG).
--
-- images.provider: which provider a row is for.
--   NULL (the default): any listener's provider may draw it;
--   set at INSERT: the row is pinned to that provider, only its listeners take it
--     (provider_pinned is then set by the trigger below, so a retry keeps the pin);
--   set by the listener when a provider accepts the generation: a Generate row is
--     followed only by listeners running that provider (a Fusion Brain uuid is never
--     asked of GigaChat, which would answer 404 and fail the row).
--   The rule is a text rule, not a list, so a new provider needs no migration: a
--   provider's name is lower-case ASCII letters and digits, starting with a letter, at
--   most 32 characters (listener.providers.registry.NAME_RULE). A row pinned to a name
--   no listener runs waits: `listener status` and the view images_providers show it.
-- images.image_type / image_width / image_height: what the image in base64 really is,
--   found by the listener's validation when it writes the image ('png' or 'jpeg'; the
--   size in pixels). Images written before this migration are PNGs (Fusion Brain's):
--   image_type 'png', size unknown (NULL).
-- image_styles.system_prompt: for a provider that expresses a style in words (GigaChat:
--   a system message per style); NULL = no such words for this style.
-- images_requeue(provider): a user leaving a provider moves its Generate rows (those no
--   live listener holds) back to ReadyToGenerate, unpinned; each costs a new paid draw.

ALTER TABLE images
    ADD COLUMN provider text,
    ADD COLUMN provider_pinned boolean NOT NULL DEFAULT false,
    -- 'png' for every existing row at once, with no rewrite of the table (a constant
    -- default is stored in the catalog); new rows get NULL (the default is dropped
    -- below) until an image is written.
    ADD COLUMN image_type text DEFAULT 'png',
    ADD COLUMN image_width integer,
    ADD COLUMN image_height integer;
ALTER TABLE images ALTER COLUMN image_type DROP DEFAULT;

-- Rows with no image have no media type (a scan; it writes only rows without an image).
UPDATE images SET image_type = NULL WHERE base64 IS NULL AND image_type IS NOT NULL;

-- Generations in flight were accepted by Fusion Brain, the only provider so far.
UPDATE images SET provider = 'fusionbrain' WHERE status = 'Generate' AND provider IS NULL;

ALTER TABLE images
    ADD CONSTRAINT provider_is_a_provider_name
        CHECK (provider ~ '^[a-z][a-z0-9]{0,31}$') NOT VALID,
    ADD CONSTRAINT pinned_rows_name_their_provider
        CHECK (NOT provider_pinned OR provider IS NOT NULL) NOT VALID,
    ADD CONSTRAINT image_type_is_png_or_jpeg
        CHECK (image_type IN ('png', 'jpeg')) NOT VALID,
    ADD CONSTRAINT image_size_is_positive
        CHECK (image_width > 0 AND image_height > 0) NOT VALID;
-- The new columns hold nothing that could break these: validated (a scan that does not
-- block writers).
ALTER TABLE images VALIDATE CONSTRAINT provider_is_a_provider_name;
ALTER TABLE images VALIDATE CONSTRAINT pinned_rows_name_their_provider;
ALTER TABLE images VALIDATE CONSTRAINT image_type_is_png_or_jpeg;
ALTER TABLE images VALIDATE CONSTRAINT image_size_is_positive;

ALTER TABLE image_styles
    ADD COLUMN system_prompt text;
ALTER TABLE image_styles
    ADD CONSTRAINT system_prompt_is_at_most_2000_characters
        CHECK (pg_catalog.char_length(system_prompt) <= 2000);

-- A row inserted with a provider is pinned to it. Called only for such rows (WHEN), so
-- the seed's plain INSERT and a bulk INSERT without a provider pay nothing.
CREATE OR REPLACE FUNCTION images_pin_provider() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.provider_pinned := true;
    RETURN NEW;
END
$$;
CREATE TRIGGER images_pin_provider
    BEFORE INSERT ON images
    FOR EACH ROW WHEN (NEW.provider IS NOT NULL)
    EXECUTE FUNCTION images_pin_provider();

-- A retry starts the row over: its image and the provider that drew it are forgotten,
-- a pin is kept.
CREATE OR REPLACE FUNCTION images_reset_failed(since timestamptz, only_id bigint)
RETURNS SETOF bigint
LANGUAGE sql VOLATILE AS $$
    UPDATE images
    SET status = 'ReadyToGenerate',
        attempts = 0,
        unknown_outcomes = 0,  -- a retry by hand is the operator's go-ahead to pay again
        last_error = NULL,
        uuid = NULL,
        base64 = NULL,
        image_type = NULL,
        image_width = NULL,
        image_height = NULL,
        provider = CASE WHEN provider_pinned THEN provider END,
        locked_by = NULL,
        locked_until = NULL,
        censored = false,
        not_before = pg_catalog.now(),
        generated_by = NULL,
        generation_started_at = NULL,
        generation_finished_at = NULL
    WHERE status = 'Failed'
      -- a row without updated_at (seed rows) counts as changed when it was created
      AND coalesce(updated_at, created_at, '-infinity'::timestamptz) >= images_reset_failed.since
      AND (images_reset_failed.only_id IS NULL OR id = images_reset_failed.only_id)
    RETURNING id::bigint
$$;

-- One provider's generations back to the queue: every Generate row it accepted that no
-- live listener holds (one that does is following it: left alone). The rows are
-- unpinned (the user is leaving that provider) and start over; each will cost a new
-- paid draw with whichever provider takes it, and whatever the old provider drew for
-- it is lost. Returns how many rows moved.
CREATE OR REPLACE FUNCTION images_requeue(provider text) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER AS $$
DECLARE
    moved integer;
BEGIN
    IF images_requeue.provider IS NULL THEN
        RAISE EXCEPTION 'images_requeue: provider must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    UPDATE images AS i
    SET status = 'ReadyToGenerate',
        attempts = 0,
        unknown_outcomes = 0,
        last_error = pg_catalog.format(
            'requeued by operator from %s (its generation %s is abandoned; a new paid draw)',
            i.provider, pg_catalog.left(i.uuid, 64)),
        uuid = NULL,
        provider = NULL,
        provider_pinned = false,
        locked_by = NULL,
        locked_until = NULL,
        censored = false,
        not_before = pg_catalog.now(),
        generated_by = NULL,
        generation_started_at = NULL,
        generation_finished_at = NULL
    WHERE i.status = 'Generate'
      AND i.provider OPERATOR(pg_catalog.=) images_requeue.provider
      AND (i.locked_by IS NULL OR i.locked_until IS NULL
           OR i.locked_until OPERATOR(pg_catalog.<) pg_catalog.now());
    GET DIAGNOSTICS moved = ROW_COUNT;
    RETURN moved;
END
$$;

-- Listener processes (0014), with the provider each runs: the pool connections of a
-- listener carry application_name 'fusionbrain-listener <worker> <provider>' (NULL:
-- an older listener, or a name cut short by PostgreSQL's 63-byte limit).
CREATE OR REPLACE VIEW images_listeners AS
WITH sessions AS (
    SELECT
        pg_catalog.substring(
            a.application_name, '^fusionbrain-listener (\S+:[0-9]+:[0-9a-f]+)'
        ) AS worker,
        a.application_name,
        a.client_addr,
        a.backend_start
    FROM pg_catalog.pg_stat_activity AS a
    WHERE a.datname OPERATOR(pg_catalog.=) pg_catalog.current_database()
      AND a.application_name OPERATOR(pg_catalog.~)
          '^fusionbrain-listener \S+:[0-9]+:[0-9a-f]+( |$)'
),
live AS (
    SELECT
        worker,
        pg_catalog.count(*) AS connections,
        pg_catalog.bool_or(application_name OPERATOR(pg_catalog.~~) '% listen') AS listening,
        pg_catalog.bool_or(application_name OPERATOR(pg_catalog.~~) '% poll') AS polling,
        pg_catalog.min(pg_catalog.host(client_addr)) AS client_addr,
        pg_catalog.min(backend_start) AS connected_since,
        pg_catalog.min(NULLIF(NULLIF(NULLIF(pg_catalog.substring(
            application_name,
            '^fusionbrain-listener \S+:[0-9]+:[0-9a-f]+ ([a-z][a-z0-9]{0,31})$'
        ), 'listen'), 'poll'), 'self')) AS provider
    FROM sessions
    GROUP BY worker
),
leases AS (
    SELECT
        i.locked_by AS worker,
        pg_catalog.count(*) AS rows_held,
        pg_catalog.count(*) FILTER (WHERE i.status OPERATOR(pg_catalog.=) 'Generate')
            AS generating,
        pg_catalog.min(i.locked_until) AS earliest_lease_until,
        pg_catalog.max(i.locked_until) AS latest_lease_until
    FROM images AS i
    WHERE i.locked_by IS NOT NULL
      AND i.status OPERATOR(pg_catalog.=) ANY (ARRAY['ReadyToGenerate', 'Generate'])
    GROUP BY i.locked_by
)
SELECT
    coalesce(live.worker, leases.worker) AS worker,
    live.worker IS NOT NULL AS connected,
    coalesce(live.connections, 0) AS connections,
    coalesce(live.listening, false) AS listening,
    live.client_addr,
    live.connected_since,
    coalesce(leases.rows_held, 0) AS rows_held,
    coalesce(leases.generating, 0) AS generating,
    leases.earliest_lease_until,
    leases.latest_lease_until,
    CASE
        WHEN live.listening THEN 'listen'
        WHEN live.polling THEN 'poll'
    END AS mode,
    live.provider
FROM live
FULL JOIN leases ON leases.worker OPERATOR(pg_catalog.=) live.worker
ORDER BY connected DESC, worker;

-- Rows that wait for one provider, and how many connected listeners run it:
--   provider    a provider named by rows in ReadyToGenerate (pinned) or Generate
--   pinned      ReadyToGenerate rows pinned to it
--   generating  Generate rows it accepted (only its listeners follow them)
--   listeners   connected listeners that run it (0: nobody will take these rows;
--               unknown_listeners counts connected listeners whose provider is not known)
CREATE OR REPLACE VIEW images_providers AS
WITH waiting AS (
    SELECT
        i.provider,
        pg_catalog.count(*) FILTER (WHERE i.status OPERATOR(pg_catalog.=) 'ReadyToGenerate')
            AS pinned,
        pg_catalog.count(*) FILTER (WHERE i.status OPERATOR(pg_catalog.=) 'Generate')
            AS generating
    FROM images AS i
    WHERE i.provider IS NOT NULL
      AND i.status OPERATOR(pg_catalog.=) ANY (ARRAY['ReadyToGenerate', 'Generate'])
    GROUP BY i.provider
),
running AS (
    SELECT l.provider, pg_catalog.count(*) AS listeners
    FROM images_listeners AS l
    WHERE l.connected
    GROUP BY l.provider
)
SELECT
    coalesce(w.provider, r.provider) AS provider,
    coalesce(w.pinned, 0) AS pinned,
    coalesce(w.generating, 0) AS generating,
    coalesce(r.listeners, 0) AS listeners,
    (SELECT pg_catalog.count(*) FROM images_listeners AS u
      WHERE u.connected AND u.provider IS NULL) AS unknown_listeners
FROM waiting AS w
FULL JOIN running AS r ON r.provider OPERATOR(pg_catalog.=) w.provider
WHERE coalesce(w.provider, r.provider) IS NOT NULL
ORDER BY 1;

-- In flight (0010), with the provider that accepted each generation.
CREATE OR REPLACE VIEW images_in_flight AS
SELECT
    id,
    status,
    uuid,
    attempts,
    generation_started_at AS started_at,
    date_trunc('second', now() - coalesce(generation_started_at, updated_at)) AS age,
    locked_by AS owner,
    locked_until AS lease_until,
    (locked_by IS NULL OR locked_until IS NULL OR locked_until < now()) AS lease_expired,
    provider
FROM images
WHERE status = 'Generate'
   OR (status = 'ReadyToGenerate' AND locked_by IS NOT NULL)
ORDER BY coalesce(generation_started_at, updated_at), id;
