-- Functions that cannot be hijacked, and operator functions that need no UPDATE on images.
--
-- 1. Every function of the listener's gets a fixed search_path: pg_catalog, then the schema this
--    migration runs in (where `images` lives, current_schema() at migration time), then
--    pg_temp last, so neither an overload planted in another schema on the caller's
--    search_path nor a temporary table named `images` can stand in for ours. `listener
--    migrate` sets it on every function of the listener's list (listener/objects.py),
--    trigger functions and those of earlier migrations included, and on nothing else
--    (tests/test_ours_only.py checks the list against what the migrations create).
-- 2. Every call has typed arguments or names pg_catalog: a fixed search_path still
--    holds the schema of `images`, and where a call is not an exact match (an untyped
--    literal, as images_retry passed '-infinity' to its helper; a VARIADIC "any" such as
--    json_build_object) an overload planted there by a role with CREATE would be the
--    better match and run with the privileges of whoever fired the function.
-- 3. The operator functions (images_retry, images_retry_failed, images_cancel) run as
--    SECURITY DEFINER and check their inputs, so an operator role needs EXECUTE on them,
--    never UPDATE on the table. EXECUTE on every listed function is revoked from
--    PUBLIC; `listener roles` grants it to the roles that need it.
-- 4. A retry reports what happened: a Failed row with no updated_at (the seed's column
--    allows NULL) was silently skipped by `updated_at >= '-infinity'` while images_retry
--    returned its id as if it had been reset.
-- 5. A new row starts as ReadyToGenerate unless its writer may also write the internal
--    columns: the seed's `INSERT INTO images (prompt, status) VALUES (..., 'ReadyToGenerate')`
--    keeps working for images_writer, which cannot insert any other status.

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

CREATE OR REPLACE FUNCTION images_retry(id bigint) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER AS $$
DECLARE
    current_status text;
    reset integer;
BEGIN
    IF images_retry.id IS NULL THEN
        RAISE EXCEPTION 'images_retry: id must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
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
    SELECT pg_catalog.count(*)::integer INTO reset
    FROM images_reset_failed('-infinity'::timestamptz, images_retry.id::bigint);
    IF reset <> 1 THEN
        RAISE EXCEPTION 'image % was not reset (% rows changed)', images_retry.id, reset
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    RETURN images_retry.id;
END
$$;

CREATE OR REPLACE FUNCTION images_retry_failed(since timestamptz DEFAULT '-infinity')
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER AS $$
BEGIN
    IF images_retry_failed.since IS NULL THEN
        RAISE EXCEPTION 'images_retry_failed: since must not be NULL (''-infinity'' means all)'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    RETURN (
        SELECT pg_catalog.count(*)::integer
        FROM images_reset_failed(images_retry_failed.since, NULL::bigint)
    );
END
$$;

CREATE OR REPLACE FUNCTION images_cancel(id bigint) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER AS $$
DECLARE
    r record;
BEGIN
    IF images_cancel.id IS NULL THEN
        RAISE EXCEPTION 'images_cancel: id must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
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
    IF r.locked_by IS NOT NULL AND r.locked_until >= pg_catalog.now() THEN
        RAISE EXCEPTION 'image % is claimed by listener % (lease until %): it may already be '
            'at the API; wait for its outcome', images_cancel.id, r.locked_by, r.locked_until
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    UPDATE images AS i
    SET status = 'Failed', last_error = 'cancelled by operator',
        locked_by = NULL, locked_until = NULL
    WHERE i.id = images_cancel.id AND i.status = 'ReadyToGenerate';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'image % was not cancelled', images_cancel.id
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    RETURN images_cancel.id;
END
$$;

-- Once per INSERT statement, and cheap for the roles it does not concern: a role that
-- may insert `uuid` (the owner, a superuser, the listener's old all-privileges role)
-- may insert any status, as before; any other role only the queue's entry status.
CREATE OR REPLACE FUNCTION images_insert_only_queued() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF pg_catalog.has_column_privilege(TG_RELID, 'uuid'::text, 'INSERT'::text) THEN
        RETURN NULL;
    END IF;
    IF EXISTS (SELECT 1 FROM inserted_rows WHERE status <> 'ReadyToGenerate') THEN
        RAISE EXCEPTION 'a new image must be ReadyToGenerate (leave status out): only the '
            'listener sets other statuses'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NULL;
END
$$;

SET LOCAL client_min_messages = warning;  -- quiet: no "does not exist, skipping"
DROP TRIGGER IF EXISTS images_insert_only_queued ON images;
SET LOCAL client_min_messages = notice;
CREATE TRIGGER images_insert_only_queued
    AFTER INSERT ON images
    REFERENCING NEW TABLE AS inserted_rows
    FOR EACH STATEMENT EXECUTE FUNCTION images_insert_only_queued();

-- The notification triggers of 0003, their calls qualified (json_build_object takes
-- VARIADIC "any": any overload in the schema of `images` would be a better match).
CREATE OR REPLACE FUNCTION images_wakeup_after_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    s text;
BEGIN
    FOR s IN
        SELECT DISTINCT status FROM inserted_rows
        WHERE status IN ('ReadyToGenerate', 'Generate')
    LOOP
        PERFORM pg_catalog.pg_notify('images_wakeup'::text, s);
    END LOOP;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION images_wakeup_after_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.pg_notify('images_wakeup'::text, NEW.status);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION images_announce_done() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.pg_notify(
        'images_done'::text,
        pg_catalog.json_build_object('id'::text, NEW.id, 'status'::text, NEW.status)::text
    );
    RETURN NULL;
END
$$;

-- The fixed search_path and EXECUTE for nobody but the owner: `listener migrate` gives
-- them to every function of the listener's own list (listener/objects.py) after each
-- migration file, in its transaction, and to nothing else of the schema (before 0017,
-- this file ended with a loop over every images_* function, a naming pattern that other
-- applications' functions may match; 0017_ours_only repairs what it did to those).
