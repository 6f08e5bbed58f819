-- Three NOLOGIN roles that a DBA grants to login roles, one per job:
--
--   images_writer    an application: enqueue prompts (INSERT of the user columns, or
--                    images_enqueue) and read the rows back (status, image)
--   images_operator  a person on call: the views, retry/cancel (SECURITY DEFINER
--                    functions, so no UPDATE on the table), and enqueue like a writer
--   images_listener  the service: read the queue, write the columns it owns; no DDL
--
-- Run by `listener roles` (needs CREATEROLE, and to own the objects or hold them WITH
-- GRANT OPTION), in one transaction, after `listener migrate`, in the schema the
-- migrations ran in (unqualified names here resolve the same way). Re-runnable: the roles
-- are created when missing and their attributes corrected; every privilege below is
-- revoked first and granted again, so the result is exactly this file whatever it was
-- before. Roles are cluster-wide; grants are per database: run it once per database.
-- From psql, in one transaction: `listener roles --sql | psql -1 -f -`.
--
-- A new object is one line in the REVOKE list and one GRANT line per role that needs it.

-- Two `listener roles` on one database would otherwise race on the same catalog rows.
SELECT pg_advisory_xact_lock(1179734610);  -- "FRLR"

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['images_writer', 'images_operator', 'images_listener'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format(
                    'CREATE ROLE %I NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE '
                    'NOREPLICATION NOBYPASSRLS INHERIT', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- another session (another database of this cluster) made it first
            END;
        END IF;
        -- An existing role is corrected only when it differs, so concurrent runs on
        -- other databases do not rewrite the same pg_authid row.
        IF EXISTS (
            SELECT 1 FROM pg_roles
            WHERE rolname = r
              AND (rolcanlogin OR rolsuper OR rolcreatedb OR rolcreaterole
                   OR rolreplication OR rolbypassrls)
        ) THEN
            EXECUTE format(
                'ALTER ROLE %I NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE '
                'NOREPLICATION NOBYPASSRLS', r);
        END IF;
    END LOOP;
END
$$;

DO $$
BEGIN
    EXECUTE format(
        'GRANT USAGE ON SCHEMA %I TO images_writer, images_operator, images_listener',
        current_schema());
END
$$;

REVOKE ALL ON TABLE
    images,
    image_styles,
    image_statuses,
    images_upgrade_report,
    images_blocked,
    listener_migrations,
    images_queue,
    images_in_flight,
    images_recent_failures,
    images_listeners,
    listener_limits,
    listener_slots
FROM images_writer, images_operator, images_listener;
REVOKE ALL ON SEQUENCE images_id_seq FROM images_writer, images_operator, images_listener;
REVOKE ALL ON FUNCTION
    images_enqueue(text, text, integer, integer, text),
    images_retry(bigint),
    images_retry_failed(timestamptz),
    images_cancel(bigint),
    images_fail_blocked(),
    images_prompt_is_blank(text),
    images_set_concurrency(integer, text)
FROM images_writer, images_operator, images_listener;

-- images_writer: the user columns only (status is allowed so that the seed's
-- `INSERT ... (prompt, status) VALUES (..., 'ReadyToGenerate')` works; any other status
-- is refused by the images_insert_only_queued trigger), and every row to read.
GRANT INSERT (prompt, status, style, width, height, negative_prompt, priority) ON images TO images_writer;
GRANT SELECT ON images TO images_writer;
GRANT USAGE ON SEQUENCE images_id_seq TO images_writer;
GRANT SELECT ON image_styles TO images_writer;
GRANT SELECT ON image_statuses TO images_writer;
GRANT EXECUTE ON FUNCTION images_enqueue(text, text, integer, integer, text) TO images_writer;

-- images_operator: read everything, change rows only through the functions.
GRANT SELECT ON images TO images_operator;
GRANT SELECT ON image_styles TO images_operator;
GRANT SELECT ON listener_migrations TO images_operator;
GRANT SELECT ON images_queue TO images_operator;
GRANT SELECT ON images_in_flight TO images_operator;
GRANT SELECT ON images_recent_failures TO images_operator;
GRANT SELECT ON images_listeners TO images_operator;
GRANT SELECT ON image_statuses TO images_operator;
GRANT SELECT ON images_upgrade_report TO images_operator;
GRANT SELECT ON images_blocked TO images_operator;
GRANT EXECUTE ON FUNCTION images_fail_blocked() TO images_operator;
GRANT EXECUTE ON FUNCTION images_prompt_is_blank(text) TO images_operator;
GRANT EXECUTE ON FUNCTION images_retry(bigint) TO images_operator;
GRANT EXECUTE ON FUNCTION images_retry_failed(timestamptz) TO images_operator;
GRANT EXECUTE ON FUNCTION images_cancel(bigint) TO images_operator;
-- the shared concurrency budget: read it, and change the limit at run time
GRANT SELECT ON listener_limits TO images_operator;
GRANT SELECT ON listener_slots TO images_operator;
GRANT EXECUTE ON FUNCTION images_set_concurrency(integer, text) TO images_operator;
-- ... and enqueue like an application (`listener enqueue`)
GRANT INSERT (prompt, status, style, width, height, negative_prompt, priority) ON images TO images_operator;
GRANT USAGE ON SEQUENCE images_id_seq TO images_operator;
GRANT EXECUTE ON FUNCTION images_enqueue(text, text, integer, integer, text) TO images_operator;

-- images_listener: the queries of sql/queries.sql and the start-up checks, nothing more.
-- (SELECT ... FOR UPDATE in the claims needs the UPDATE below; updated_at is the trigger's.)
GRANT SELECT ON images TO images_listener;
GRANT UPDATE (
    status, uuid, base64, last_error, attempts, not_before, locked_by, locked_until,
    censored, generated_by, generation_started_at, generation_finished_at, unknown_outcomes
) ON images TO images_listener;
GRANT SELECT ON image_styles TO images_listener;
GRANT SELECT ON image_statuses TO images_listener;
GRANT SELECT ON listener_migrations TO images_listener;
-- the shared concurrency budget (0021_flow_control.sql): its account row is created at
-- start, its slots taken and given back, its effective value adapted
GRANT SELECT, INSERT, UPDATE ON listener_limits TO images_listener;
GRANT SELECT, INSERT, UPDATE ON listener_slots TO images_listener;
