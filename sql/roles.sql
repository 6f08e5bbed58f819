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
-- revoked first and granted again, so the result is exactly the list whatever it was
-- before. Roles are cluster-wide; grants are per database: run it once per database.
-- From psql, in one transaction: `listener roles --sql | psql -1 -f -`.
--
-- The REVOKE and GRANT statements that follow this file are made from the listener's
-- list of its own objects (listener/objects.py; `listener roles --sql` prints them all):
-- every right of the three roles on every object of the list is taken back and granted
-- again, and nothing else of the schema is named. The database is then recorded in
-- listener_roles, so that `listener migrate` grants the roles their rights on the
-- objects a later migration adds, here and only here (not in every database where the
-- roles exist).

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
