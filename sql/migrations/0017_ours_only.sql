-- Migrations touch only what is ours.
--
-- Until this release, the last block of 0013_seed_upgrade set search_path on, and took
-- EXECUTE from PUBLIC on, every function of the schema (0012_privileges: every images_*
-- function), other applications' included: their logins got "permission denied". Both
-- files now leave every function alone; `listener migrate` fixes the listener's own,
-- named in listener/objects.py, and nothing else. This file repairs databases migrated
-- by the old files, and records where `listener roles` ran.
--
-- 1. The record: listener_roles holds the roles `listener roles` granted rights to in
--    this database. `listener migrate` grants those roles their rights on the objects a
--    migration adds here, and only here, never in every database where the roles exist.
--    A database where `listener roles` ran before this table existed is recognised by
--    its grants on `images`, which no migration ever made.
-- 2. Rights the old 0013 gave the roles in a database where `listener roles` never ran
--    are taken back.
-- 3. Other applications' functions get PostgreSQL's defaults back. The rule (README,
--    "Upgrading from an earlier release"): a function of the schema that is not the
--    listener's (the list below: every function 0001-0014 made), not part of an
--    extension, a plain function (prokind 'f', the only kind the old loops touched), whose
--    catalog row was last written by the very transaction that applied the old 0012 or
--    0013 (pg_proc.xmin equal to the xmin of that migration's row in
--    listener_migrations: nobody changed the function since), and that carries what the
--    old loop left:
--      * a search_path of exactly `pg_catalog, <schema>, pg_temp`: RESET (the default:
--        no setting; a search_path the application had set itself before was
--        overwritten by the old loop and cannot be known, so it is not restored);
--      * no EXECUTE for PUBLIC: granted back (EXECUTE for PUBLIC is the default).
--    A SECURITY DEFINER function is never opened: it runs with its owner's rights, so
--    giving it to PUBLIC or lifting its fixed path is for its owner to decide; a WARNING
--    names it with the statements that would restore the defaults. Each repair is a
--    NOTICE naming the function. Limits: a function changed after the old migration
--    (CREATE OR REPLACE, ALTER, GRANT: its row has a newer xmin) is left as it is, its
--    owner has had a say since; a database restored from a dump has lost the trace and
--    nothing is repaired; a function that already had exactly that search_path or no
--    EXECUTE for PUBLIC before the old migration ran, untouched since, is given the
--    defaults (the old migration kept no record of what was there before).

CREATE TABLE IF NOT EXISTS listener_roles (
    role       text PRIMARY KEY
               CONSTRAINT listener_roles_are_the_three
               CHECK (role IN ('images_writer', 'images_operator', 'images_listener')),
    granted_at timestamptz NOT NULL DEFAULT now(),
    granted_by text NOT NULL DEFAULT CURRENT_USER
);
COMMENT ON TABLE listener_roles IS
    'roles `listener roles` granted rights to in this database; `listener migrate` grants '
    'them their rights on objects later migrations add';

INSERT INTO listener_roles (role, granted_by)
SELECT r.rolname::text, 'listener roles (before 0017: found by its grants on images)'
FROM pg_catalog.pg_roles AS r
WHERE r.rolname IN ('images_writer', 'images_operator', 'images_listener')
  AND EXISTS (
      SELECT 1
      FROM pg_catalog.pg_class AS c, pg_catalog.aclexplode(c.relacl) AS a
      WHERE c.oid = 'images'::regclass AND a.grantee = r.oid
  )
ON CONFLICT (role) DO NOTHING;

DO $$
DECLARE
    r text;
    what text;
BEGIN
    FOREACH r IN ARRAY ARRAY['images_writer', 'images_operator', 'images_listener'] LOOP
        CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r)
            OR EXISTS (SELECT 1 FROM listener_roles WHERE role = r);
        -- what the old 0013 granted, and only where it is held directly
        SELECT pg_catalog.string_agg(x.grant_text, ', ' ORDER BY x.grant_text) INTO what
        FROM (
            SELECT 'SELECT on ' || c.relname AS grant_text
            FROM pg_catalog.pg_class AS c, pg_catalog.aclexplode(c.relacl) AS a
            WHERE c.oid IN ('image_statuses'::regclass, 'images_upgrade_report'::regclass,
                            'images_blocked'::regclass)
              AND a.grantee = r::regrole AND a.privilege_type = 'SELECT'
            UNION ALL
            SELECT 'EXECUTE on ' || p.oid::regprocedure::text
            FROM pg_catalog.pg_proc AS p, pg_catalog.aclexplode(p.proacl) AS a
            WHERE p.oid IN ('images_fail_blocked()'::regprocedure,
                            'images_prompt_is_blank(text)'::regprocedure)
              AND a.grantee = r::regrole
        ) AS x;
        CONTINUE WHEN what IS NULL;
        EXECUTE pg_catalog.format(
            'REVOKE ALL ON image_statuses, images_upgrade_report, images_blocked FROM %I', r);
        EXECUTE pg_catalog.format(
            'REVOKE ALL ON FUNCTION images_fail_blocked(), images_prompt_is_blank(text) '
            'FROM %I', r);
        RAISE NOTICE 'took back from % what an earlier `listener migrate` granted it in a '
            'database where `listener roles` never ran: %', r, what;
    END LOOP;
END
$$;

DO $$
DECLARE
    -- every function of the listener's that 0001-0014 made, when the old loops ran
    ours oid[] := ARRAY(
        SELECT o.oid FROM (
        SELECT pg_catalog.to_regprocedure(pg_catalog.quote_ident(pg_catalog.current_schema())
                                          || '.' || f)::oid AS oid
        FROM pg_catalog.unnest(ARRAY[
            'images_enqueue(text, text, integer, integer, text)',
            'images_retry(bigint)',
            'images_retry_failed(timestamp with time zone)',
            'images_cancel(bigint)',
            'images_fail_blocked()',
            'images_prompt_is_blank(text)',
            'images_reset_failed(timestamp with time zone, bigint)',
            'images_touch_updated_at()',
            'images_wakeup_after_insert()',
            'images_wakeup_after_update()',
            'images_announce_done()',
            'images_insert_only_queued()',
            'image_statuses_keep_the_listeners()'
        ]) AS f
        ) AS o WHERE o.oid IS NOT NULL
    );
    old_path text := 'search_path=pg_catalog, '
        || pg_catalog.quote_ident(pg_catalog.current_schema()) || ', pg_temp';
    -- the transactions that applied the old loops (one row each, written with them)
    stamps xid[] := ARRAY(
        SELECT m.xmin FROM listener_migrations AS m
        WHERE m.name IN ('0012_privileges', '0013_seed_upgrade')
    );
    f record;
    done text[];
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure AS sig, p.prosecdef,
               coalesce(p.proconfig @> ARRAY[old_path], false) AS pinned,
               NOT EXISTS (
                   SELECT 1
                   FROM pg_catalog.aclexplode(
                       coalesce(p.proacl, pg_catalog.acldefault('f', p.proowner))) AS a
                   WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'
               ) AS closed
        FROM pg_catalog.pg_proc AS p
        WHERE p.pronamespace = pg_catalog.current_schema()::regnamespace
          AND p.prokind = 'f'
          AND p.oid <> ALL (ours)
          AND p.xmin = ANY (stamps)
          AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend AS d
                          WHERE d.classid = 'pg_catalog.pg_proc'::regclass
                            AND d.objid = p.oid AND d.deptype = 'e')
        ORDER BY p.oid::regprocedure::text
    LOOP
        CONTINUE WHEN NOT (f.pinned OR f.closed);
        IF f.prosecdef THEN
            RAISE WARNING 'function % is not the listener''s and runs as its owner (SECURITY '
                'DEFINER): an earlier `listener migrate` may have set its search_path or '
                'taken EXECUTE from PUBLIC, and it is left as it is; its owner restores '
                'the defaults with: %', f.sig,
                concat_ws('; ',
                    CASE WHEN f.pinned
                         THEN pg_catalog.format('ALTER FUNCTION %s RESET search_path', f.sig) END,
                    CASE WHEN f.closed
                         THEN pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO PUBLIC', f.sig)
                    END);
            CONTINUE;
        END IF;
        done := ARRAY[]::text[];
        BEGIN
            IF f.pinned THEN
                EXECUTE pg_catalog.format('ALTER FUNCTION %s RESET search_path', f.sig);
                done := done || 'search_path reset'::text;
            END IF;
            IF f.closed THEN
                EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO PUBLIC', f.sig);
                done := done || 'EXECUTE for PUBLIC given back'::text;
            END IF;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE WARNING 'function % is not the listener''s and an earlier `listener migrate` '
                'changed it, but this role may not repair it (%): its owner restores the '
                'defaults with ALTER FUNCTION % RESET search_path; GRANT EXECUTE ON '
                'FUNCTION % TO PUBLIC', f.sig, SQLERRM, f.sig, f.sig;
            CONTINUE;
        END;
        RAISE NOTICE 'repaired function % (not the listener''s; an earlier `listener migrate` '
            'changed it): %', f.sig, pg_catalog.array_to_string(done, ', ');
    END LOOP;
END
$$;
