-- images_listeners gains a last column, `mode`: how each listener learns of new rows,
-- from the application_name of its LISTEN connection.
--   'listen'  'fusionbrain-listener <worker> listen': its LISTEN self-test passed, so
--             notifications wake it at once
--   'poll'    'fusionbrain-listener <worker> poll': the self-test failed (a transaction-
--             mode pooler between it and PostgreSQL drops notifications), so it looks
--             for due rows every POLL_INTERVAL seconds; set LISTEN_DATABASE_URL to fix it
--   NULL      no LISTEN connection seen: -cron or --once, or a LISTEN connection that
--             goes through a transaction pooler (below)
-- Behind a transaction-mode pooler, pg_stat_activity lists the pooler's server
-- connections, each labelled with the application_name of the client that used it last:
-- connections and client_addr are then the pooler's, and a polling listener shows up
-- only when one of them last ran its LISTEN connection's statement. A LISTEN connection
-- made with LISTEN_DATABASE_URL goes straight to PostgreSQL and is always seen.
-- Catalog objects are schema-qualified, so the view means the same under any
-- search_path; the replaced view keeps its columns in order, and its grants.
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
        pg_catalog.min(backend_start) AS connected_since
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
    END AS mode
FROM live
FULL JOIN leases ON leases.worker OPERATOR(pg_catalog.=) live.worker
ORDER BY connected DESC, worker;
