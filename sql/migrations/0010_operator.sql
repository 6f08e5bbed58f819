-- Operating from psql: views that show the queue, and functions that enqueue, retry and
-- cancel. `listener status|enqueue|retry|cancel` are thin wrappers over these, so what
-- an operator does in psql and on the command line is the same thing.
-- docs/operations.md is the cookbook.
--
-- The functions raise with SQLSTATE
--   P0002 (no_data_found)                    when the id is unknown, and
--   55000 (object_not_in_prerequisite_state) when the row is not in the right state,
-- and let the table's CHECK constraints speak for bad input: clients can tell the cases
-- apart without parsing messages.

-- One row per status, all four always present (zero counts included).
--   rows        rows in this status
--   held        rows a listener holds right now (live lease)
--   due         ReadyToGenerate rows a listener may claim now (due, not held)
--   delayed     ReadyToGenerate rows waiting for a retry back-off (not_before later)
--   oldest_age  age of the oldest row in this status (created_at); for ReadyToGenerate
--               this is how long the oldest waiting row has waited
--   last_change latest updated_at in this status
CREATE OR REPLACE VIEW images_queue AS
WITH statuses (status, ord) AS (
    VALUES ('ReadyToGenerate', 1), ('Generate', 2), ('ReadyToPublish', 3), ('Failed', 4)
)
SELECT
    s.status,
    count(i.id) AS rows,
    count(i.id) FILTER (WHERE i.locked_by IS NOT NULL AND i.locked_until >= now()) AS held,
    count(i.id) FILTER (
        WHERE s.status = 'ReadyToGenerate' AND i.not_before <= now()
          AND (i.locked_by IS NULL OR i.locked_until IS NULL OR i.locked_until < now())
    ) AS due,
    count(i.id) FILTER (WHERE s.status = 'ReadyToGenerate' AND i.not_before > now()) AS delayed,
    date_trunc('second', now() - min(i.created_at)) AS oldest_age,
    max(i.updated_at) AS last_change
FROM statuses AS s
LEFT JOIN images AS i ON i.status = s.status
GROUP BY s.status, s.ord
ORDER BY s.ord;

-- Generations in flight: every Generate row, and ReadyToGenerate rows a listener has
-- claimed (it is calling the API's run endpoint for them right now).
--   age            since the generation started (or, before that, since the claim)
--   owner          the listener's worker id (host:pid:hex), NULL if nobody follows it
--   lease_until    when the owner's lease runs out unless its heartbeat renews it
--   lease_expired  true when nobody holds the row: another listener will resume it
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
    (locked_by IS NULL OR locked_until IS NULL OR locked_until < now()) AS lease_expired
FROM images
WHERE status = 'Generate'
   OR (status = 'ReadyToGenerate' AND locked_by IS NOT NULL)
ORDER BY coalesce(generation_started_at, updated_at), id;

-- Failures of the last hour, grouped by reason, most frequent first.
CREATE OR REPLACE VIEW images_recent_failures AS
SELECT
    coalesce(last_error, '(no reason recorded)') AS reason,
    count(*) AS failures,
    max(updated_at) AS latest,
    (array_agg(id ORDER BY updated_at DESC, id DESC))[1:5] AS latest_ids
FROM images
WHERE status = 'Failed' AND updated_at >= now() - interval '1 hour'
GROUP BY 1
ORDER BY failures DESC, latest DESC;

-- Listener processes: the live ones (their connections to this database carry
-- application_name 'fusionbrain-listener <worker id>', the worker id being what they
-- write into images.locked_by), and any worker that still holds leases without a live
-- connection (connected = false: it stopped or lost the database; its leases expire on
-- their own and other listeners resume its rows).
CREATE OR REPLACE VIEW images_listeners AS
WITH sessions AS (
    SELECT
        substring(application_name FROM '^fusionbrain-listener (\S+:[0-9]+:[0-9a-f]+)') AS worker,
        application_name,
        client_addr,
        backend_start
    FROM pg_stat_activity
    WHERE datname = current_database()
      AND application_name ~ '^fusionbrain-listener \S+:[0-9]+:[0-9a-f]+( |$)'
),
live AS (
    SELECT
        worker,
        count(*) AS connections,
        bool_or(application_name LIKE '% listen') AS listening,
        min(host(client_addr)) AS client_addr,
        min(backend_start) AS connected_since
    FROM sessions
    GROUP BY worker
),
leases AS (
    SELECT
        locked_by AS worker,
        count(*) AS rows_held,
        count(*) FILTER (WHERE status = 'Generate') AS generating,
        min(locked_until) AS earliest_lease_until,
        max(locked_until) AS latest_lease_until
    FROM images
    WHERE locked_by IS NOT NULL AND status IN ('ReadyToGenerate', 'Generate')
    GROUP BY locked_by
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
    leases.latest_lease_until
FROM live
FULL JOIN leases ON leases.worker = live.worker
ORDER BY connected DESC, worker;

-- Enqueue a prompt; NULL overrides mean "the listener's configured default". Returns
-- the new row's id. The table's constraints validate (blank prompt, size out of range,
-- unknown style) with messages that name what is wrong. The INSERT trigger wakes the
-- listeners at once.
CREATE OR REPLACE FUNCTION images_enqueue(
    prompt text,
    style text DEFAULT NULL,
    width integer DEFAULT NULL,
    height integer DEFAULT NULL,
    negative_prompt text DEFAULT NULL
) RETURNS bigint
LANGUAGE sql VOLATILE AS $$
    INSERT INTO images (prompt, style, width, height, negative_prompt)
    VALUES (
        images_enqueue.prompt,
        images_enqueue.style,
        images_enqueue.width,
        images_enqueue.height,
        images_enqueue.negative_prompt
    )
    RETURNING id::bigint
$$;

-- What a retry clears: the row starts over as if it had just been inserted (its
-- prompt and overrides kept). Shared by images_retry and images_retry_failed. The
-- status change fires images_wakeup_after_update (0003): not_before = now() is due at
-- once and locked_by is NULL, so every listener is woken when the transaction commits.
CREATE OR REPLACE FUNCTION images_reset_failed(since timestamptz, only_id bigint)
RETURNS SETOF bigint
LANGUAGE sql VOLATILE AS $$
    UPDATE images
    SET status = 'ReadyToGenerate',
        attempts = 0,
        last_error = NULL,
        uuid = NULL,
        base64 = NULL,
        locked_by = NULL,
        locked_until = NULL,
        censored = false,
        not_before = now(),
        generated_by = NULL,
        generation_started_at = NULL,
        generation_finished_at = NULL
    WHERE status = 'Failed'
      AND updated_at >= images_reset_failed.since
      AND (images_reset_failed.only_id IS NULL OR id = images_reset_failed.only_id)
    RETURNING id::bigint
$$;

-- A Failed row back to the queue. Returns the id.
CREATE OR REPLACE FUNCTION images_retry(id bigint) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    current_status text;
BEGIN
    SELECT i.status INTO current_status FROM images AS i WHERE i.id = images_retry.id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'image % does not exist', images_retry.id
            USING ERRCODE = 'no_data_found';
    END IF;
    IF current_status <> 'Failed' THEN
        RAISE EXCEPTION 'image % is %, not Failed: only a Failed image can be retried',
            images_retry.id, current_status
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    PERFORM images_reset_failed('-infinity', images_retry.id);
    RETURN images_retry.id;
END
$$;

-- Every Failed row whose last change is at or after `since` back to the queue.
-- Returns how many.
CREATE OR REPLACE FUNCTION images_retry_failed(since timestamptz DEFAULT '-infinity')
RETURNS integer
LANGUAGE sql VOLATILE AS $$
    SELECT count(*)::integer FROM images_reset_failed(images_retry_failed.since, NULL)
$$;

-- A waiting row that no listener holds -> Failed, last_error 'cancelled by operator'.
-- The status change is announced on images_done like any other failure. A row a
-- listener has claimed (live lease) may already be at the API: it is refused, wait for
-- the outcome instead. Returns the id.
CREATE OR REPLACE FUNCTION images_cancel(id bigint) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    r record;
BEGIN
    SELECT i.status, i.locked_by, i.locked_until INTO r
    FROM images AS i WHERE i.id = images_cancel.id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'image % does not exist', images_cancel.id
            USING ERRCODE = 'no_data_found';
    END IF;
    IF r.status <> 'ReadyToGenerate' THEN
        RAISE EXCEPTION 'image % is %: only a waiting (ReadyToGenerate) image can be cancelled',
            images_cancel.id, r.status
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF r.locked_by IS NOT NULL AND r.locked_until >= now() THEN
        RAISE EXCEPTION 'image % is claimed by listener % (lease until %): it may already be '
            'at the API; wait for its outcome', images_cancel.id, r.locked_by, r.locked_until
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    UPDATE images AS i
    SET status = 'Failed', last_error = 'cancelled by operator',
        locked_by = NULL, locked_until = NULL
    WHERE i.id = images_cancel.id;
    RETURN images_cancel.id;
END
$$;
