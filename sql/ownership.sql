-- What `listener migrate` and `listener roles` ask of the catalog about the listener's own
-- objects, the list of listener/objects.py (passed in as arrays): nothing here looks at
-- any other object of the schema. Names are qualified with current_schema(), the schema
-- the migrations create into, so an object of the same name elsewhere on the search_path
-- is never the one found.

-- name: existing_objects
-- The listed objects that exist now (a migration runs before the ones adding the rest).
SELECT o.kind, o.name
FROM unnest(%(kinds)s::text[], %(names)s::text[]) AS o (kind, name)
WHERE CASE o.kind
    WHEN 'function' THEN pg_catalog.to_regprocedure(
        pg_catalog.quote_ident(pg_catalog.current_schema()) || '.' || o.name) IS NOT NULL
    ELSE pg_catalog.to_regclass(
        pg_catalog.quote_ident(pg_catalog.current_schema()) || '.'
        || pg_catalog.quote_ident(o.name)) IS NOT NULL
END

-- name: table_columns
-- The columns of the listed tables, for column rights.
SELECT c.relname::text, a.attname::text
FROM pg_catalog.pg_attribute AS a
JOIN pg_catalog.pg_class AS c ON c.oid = a.attrelid
WHERE c.relnamespace = pg_catalog.current_schema()::regnamespace
  AND c.relname = ANY (%(names)s::text[])
  AND a.attnum > 0 AND NOT a.attisdropped

-- name: function_fixes
-- The statements that give each listed function that lacks them the fixed search_path
-- (pg_catalog, the migrations' schema, then pg_temp) and no EXECUTE for PUBLIC; none
-- for a function already so, so that a migration reports no change it did not make.
WITH f AS (
    SELECT p.oid::regprocedure AS sig, p.proconfig, p.proacl, p.proowner,
           'search_path=pg_catalog, ' || pg_catalog.quote_ident(pg_catalog.current_schema())
               || ', pg_temp' AS fixed
    FROM pg_catalog.unnest(%(names)s::text[]) AS o (name)
    JOIN pg_catalog.pg_proc AS p
      ON p.oid = pg_catalog.to_regprocedure(
             pg_catalog.quote_ident(pg_catalog.current_schema()) || '.' || o.name)
)
SELECT pg_catalog.format('ALTER FUNCTION %%s SET search_path = pg_catalog, %%I, pg_temp',
                         f.sig, pg_catalog.current_schema())
FROM f
WHERE NOT coalesce(f.proconfig @> ARRAY[f.fixed], false)
UNION ALL
SELECT pg_catalog.format('REVOKE ALL ON FUNCTION %%s FROM PUBLIC', f.sig)
FROM f
WHERE EXISTS (
    SELECT 1
    FROM pg_catalog.aclexplode(coalesce(f.proacl, pg_catalog.acldefault('f', f.proowner))) AS a
    WHERE a.grantee = 0
)

-- name: recorded_roles
-- The roles `listener roles` granted rights to in this database, that still exist;
-- none before the migration that made the record (0017).
SELECT r.role
FROM listener_roles AS r
WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_roles AS g WHERE g.rolname = r.role)
ORDER BY r.role

-- name: roles_without_usage
-- Of the recorded roles, those that may not use the schema yet (a GRANT on a schema one
-- does not own, when they may, would only say "no privileges were granted").
SELECT r.role
FROM pg_catalog.unnest(%(roles)s::text[]) AS r (role)
WHERE NOT pg_catalog.has_schema_privilege(r.role, pg_catalog.current_schema(), 'USAGE')

-- name: record_roles
-- `listener roles` ran here: `listener migrate` keeps the roles' rights up to date.
INSERT INTO listener_roles AS r (role)
SELECT pg_catalog.unnest(%(roles)s::text[])
ON CONFLICT (role) DO UPDATE
SET granted_at = pg_catalog.now(), granted_by = CURRENT_USER
