"""Apply the SQL migrations, in order, exactly once, safely from many processes.

Each file runs in its own transaction and is recorded in `listener_migrations`. A
transaction-scoped advisory lock, taken at the start of each of those transactions,
serialises concurrent runs (many listeners starting at once): the second waits, then finds
the file recorded and skips it. Transaction-scoped, so it is safe through a
transaction-mode pooler (PgBouncer), where a session lock could stay behind on a server
connection that another client gets next; and no statement is prepared server-side.
Forward-only: a file that was applied is never run again, even if edited (its checksum is
kept to notice that; a file edited on purpose lists the checksums of the versions it
replaces in REVISED, sql/migrations/README.md says when that is allowed).

Only what is ours: after each file, in its transaction, the functions of the listener's
own list (listener/objects.py) that exist get a fixed search_path and no EXECUTE for
PUBLIC, and in a database where `listener roles` ran (recorded in `listener_roles`) its
roles get what the list gives them on the objects that exist, so a least-privilege
listener keeps working after an upgrade that adds objects. Nothing else of the schema
is touched.

Migrations talk: every NOTICE and WARNING a file raises is logged as it arrives (a
WARNING as a warning), and each applied file is followed by one line saying what it
changed: the schema objects it added, changed or removed (read from the catalog before
and after) and the rows it inserted, updated or deleted per table (the transaction's own
statistics), so a change to existing rows is never silent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import psycopg
from psycopg.errors import Diagnostic

from listener import objects
from listener.errors import ConfigError, DatabaseError, SchemaNotMigrated
from listener.sanitize import clean
from listener.sqlfiles import Migration, migrations, named

log = logging.getLogger(__name__)

# pg_advisory_xact_lock key: any constant unique to this application.
MIGRATION_LOCK_KEY = 0x46424C4D  # "FBLM"

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS listener_migrations (
    name       text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


# Applied migrations edited afterwards on purpose, with the checksums of every version
# they replace: a database migrated by one of those is not warned about the change (it is
# never re-run; what it did is repaired by a later migration where needed).
REVISED: dict[str, frozenset[str]] = {
    # DROP ... IF EXISTS made quiet (no "does not exist, skipping" on a fresh database)
    "0002_row_state": frozenset(
        {"a2c9d34b0cefb37d89887cdb46e7fce321d11509420c825dc296854b47f617cf"}
    ),
    "0003_notify": frozenset({"3aa7821e3edf18bac4ae2e98abcc71b904d63d249711918644124766b4279077"}),
    # ... and no longer a loop over every images_* function, or over every function of
    # the schema (0017_ours_only repairs what they did to other applications' functions)
    "0012_privileges": frozenset(
        {
            "e81b525845a615d9cf2e88f6ff66155c69121a3b7a9df8f3977ba2b44acefc04",
            "c6a517565553222436878d813d26bf284989082c8880365386cde94bb6a3c2e3",
            "591f6aaa47f3b7177d7422ce5c8200e62ab6d8b53b8d07a6dbcafbd020a9f81a",
        }
    ),
    "0013_seed_upgrade": frozenset(
        {
            "1e463fdb81bdfcad524afeaf50e3116b98e0344c643fca68141c39175f15a895",
            "d8342adc88c3edc44d49f75510667dc715fb1ce600462d544f4993fbcbc4ac94",
            "8ba3beabb67a2c31b6bf709036219a85d1aa56d385d6cc3b49dd6d7afc27fc0a",
        }
    ),
    # a comment that named an issue number no reader has
    "0014_listener_mode": frozenset(
        {"b8e80711ffa9e6560cf4bcee9eb68945c2ad8b8bb9035b2507460605fe641099"}
    ),
    "0018_providers": frozenset(
        {"581ec9a053b8dce4ffe9a6558a52af622530f130a370d5bb17e8fd4116721802"}
    ),
}


def _applied(conn: psycopg.Connection) -> dict[str, str]:
    exists = conn.execute("SELECT to_regclass('listener_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return {}
    rows = conn.execute("SELECT name, checksum FROM listener_migrations").fetchall()
    return {name: checksum for name, checksum in rows}


def pending(conn: psycopg.Connection) -> list[Migration]:
    done = _applied(conn)
    return [m for m in migrations() if m.name not in done]


# What a migration can change, one row per object: (kind, name, fingerprint). Objects of
# the schema the migrations create into, and roles (a migration may create some).
_CATALOG = """
WITH ns AS (SELECT oid FROM pg_namespace WHERE nspname = current_schema())
SELECT CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'view' WHEN 'i' THEN 'index'
                      WHEN 'S' THEN 'sequence' ELSE 'table' END,
       CASE WHEN c.relkind = 'i'
            THEN (SELECT t.relname FROM pg_index AS x JOIN pg_class AS t ON t.oid = x.indrelid
                  WHERE x.indexrelid = c.oid) || '.' ELSE '' END || c.relname,
       md5(coalesce(CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid)
                         WHEN c.relkind = 'i' THEN pg_get_indexdef(c.oid) END, '')
           || coalesce(c.relacl::text, ''))
FROM pg_class AS c JOIN ns ON c.relnamespace = ns.oid
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'i', 'S') AND c.relname <> 'listener_migrations'
UNION ALL
SELECT 'column', c.relname || '.' || a.attname,
       md5(format_type(a.atttypid, a.atttypmod) || a.attnotnull::text
           || coalesce(pg_get_expr(d.adbin, d.adrelid), ''))
FROM pg_attribute AS a
JOIN pg_class AS c ON c.oid = a.attrelid JOIN ns ON c.relnamespace = ns.oid
LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
  AND c.relname <> 'listener_migrations'
UNION ALL
SELECT 'constraint', c.relname || '.' || con.conname,
       md5(pg_get_constraintdef(con.oid) || con.convalidated::text)
FROM pg_constraint AS con
JOIN pg_class AS c ON c.oid = con.conrelid JOIN ns ON c.relnamespace = ns.oid
WHERE c.relname <> 'listener_migrations'
UNION ALL
SELECT 'function', p.oid::regprocedure::text,
       md5(p.prosrc || coalesce(array_to_string(p.proconfig, ','), '') || p.prosecdef::text
           || coalesce(p.proacl::text, '') || p.provolatile::text)
FROM pg_proc AS p JOIN ns ON p.pronamespace = ns.oid
UNION ALL
SELECT 'trigger', c.relname || '.' || t.tgname, md5(pg_get_triggerdef(t.oid))
FROM pg_trigger AS t
JOIN pg_class AS c ON c.oid = t.tgrelid JOIN ns ON c.relnamespace = ns.oid
WHERE NOT t.tgisinternal
UNION ALL
SELECT 'role', r.rolname::text,
       md5(concat_ws(',', r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb,
                     r.rolcanlogin, r.rolbypassrls,
                     (SELECT string_agg(m.roleid::regrole::text, ',' ORDER BY 1)
                      FROM pg_auth_members AS m WHERE m.member = r.oid)))
FROM pg_roles AS r WHERE r.rolname !~ '^pg_'
"""

# Rows inserted, updated and deleted per table by this session's transactions whose
# statistics were not flushed yet (a flush never happens inside a transaction).
_ROW_COUNTS = """
SELECT relname::text, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_xact_user_tables
WHERE schemaname = current_schema() AND relname <> 'listener_migrations'
"""

Counts = dict[str, tuple[int, int, int]]

_PLURAL = {"index": "indexes"}

# Connection failures that retrying cannot fix (the service refuses to start on these
# too): a missing database or role, a wrong password, a pg_hba rule.
FATAL_CONNECT = (
    "password authentication failed",
    "does not exist",
    "no password supplied",
    "no pg_hba.conf entry",
    "root certificate file",
    "does not support SSL",
    "invalid sslmode",
    "invalid port",
)


def refused_for_good(err: DatabaseError) -> ConfigError | None:
    """A connection failure that is a configuration error (exit 2), worded as the
    service words it; None when it may pass (the server is down or restarting)."""
    reason = err.message.removeprefix("database unavailable: ")
    if any(marker in reason for marker in FATAL_CONNECT):
        return ConfigError(f"the database refused the connection: {reason}")
    return None


def _catalog(conn: psycopg.Connection) -> dict[tuple[str, str], str]:
    return {(kind, name): print_ for kind, name, print_ in conn.execute(_CATALOG)}


def _row_counts(conn: psycopg.Connection) -> Counts:
    return {table: (i, u, d) for table, i, u, d in conn.execute(_ROW_COUNTS)}


def _rows_since(before: Counts, after: Counts) -> list[tuple[str, int, int, int]]:
    rows: list[tuple[str, int, int, int]] = []
    for table in sorted(after):
        (i0, u0, d0), (i1, u1, d1) = before.get(table, (0, 0, 0)), after[table]
        if (i1 - i0, u1 - u0, d1 - d0) != (0, 0, 0):
            rows.append((table, i1 - i0, u1 - u0, d1 - d0))
    return rows


def describe_changes(
    before: dict[tuple[str, str], str],
    after: dict[tuple[str, str], str],
    rows: list[tuple[str, int, int, int]],
) -> str:
    """One line: the objects added, changed and removed, and the rows touched. The
    columns, constraints, indexes and triggers of a table added or removed go without
    saying."""
    tables = {name for kind, name in {*before, *after} if kind == "table"}
    new = {name for kind, name in after if kind == "table" and (kind, name) not in before}
    gone = {name for kind, name in before if kind == "table" and (kind, name) not in after}

    def owner(key: tuple[str, str]) -> str:
        table = key[1].split(".", 1)[0]
        return table if key[0] != "table" and "." in key[1] and table in tables else ""

    verbs = {
        "added": sorted(k for k in after if k not in before and owner(k) not in new),
        "changed": sorted(k for k in after if k in before and after[k] != before[k]),
        "removed": sorted(k for k in before if k not in after and owner(k) not in gone),
    }
    parts = []
    for verb, keys in verbs.items():
        if not keys:
            continue
        by_kind: dict[str, list[str]] = {}
        for kind, name in keys:
            by_kind.setdefault(kind, []).append(name)
        parts.append(
            f"{verb} "
            + "; ".join(
                f"{_PLURAL.get(kind, kind + 's') if len(names) > 1 else kind} {', '.join(names)}"
                for kind, names in by_kind.items()
            )
        )
    for table, ins, upd, dele in rows:
        counts = [f"{n} {what}" for n, what in ((ins, "inserted"), (upd, "updated"),
                                                (dele, "deleted")) if n]  # fmt: skip
        parts.append(f"rows of {table}: " + ", ".join(counts))
    return "; ".join(parts) if parts else "no change"


def _notice_logger(current: list[str]) -> Callable[[Diagnostic], None]:
    def on_notice(diag: Diagnostic) -> None:
        severity = diag.severity_nonlocalized or diag.severity or "NOTICE"
        text = clean(diag.message_primary or "")
        where = f"Migration {current[0]}" if current else "Migrations"
        if severity in ("WARNING", "ERROR", "FATAL", "PANIC"):
            log.warning("%s: %s: %s", where, severity, text)
        else:
            log.info("%s: %s: %s", where, severity, text)

    return on_notice


def migrate(conninfo: str) -> list[str]:
    """Apply what is pending; return the names applied (empty when up to date)."""
    applied: list[str] = []
    with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None) as conn:
        current: list[str] = []
        conn.add_notice_handler(_notice_logger(current))
        conn.execute("SET client_min_messages = notice")
        with conn.transaction():
            _lock(conn)
            # ours, made once: no "already exists, skipping" on every run
            conn.execute("SET LOCAL client_min_messages = warning")
            conn.execute(_CREATE_TABLE)
        done = _applied(conn)
        for m in migrations():
            if m.name in done:
                if done[m.name] != m.checksum and done[m.name] not in REVISED.get(m.name, ()):
                    log.warning("Migration %s changed after it was applied; not re-run", m.name)
                continue
            current[:] = [m.name]
            try:
                with conn.transaction():
                    _lock(conn)
                    if _recorded(conn, m.name):  # another run applied it while we waited
                        continue
                    # The transaction's row counts include earlier ones not yet flushed
                    # to the statistics: what this file did is the difference.
                    before, rows_before = _catalog(conn), _row_counts(conn)
                    conn.execute(m.sql.encode())  # several statements: simple query protocol
                    own_objects(conn)
                    changes = describe_changes(
                        before, _catalog(conn), _rows_since(rows_before, _row_counts(conn))
                    )
                    conn.execute(
                        "INSERT INTO listener_migrations (name, checksum) VALUES (%s, %s)",
                        (m.name, m.checksum),
                    )
            finally:
                current.clear()
            log.info("Applied migration %s: %s", m.name, changes)
            applied.append(m.name)
    return applied


def own_objects(conn: psycopg.Connection) -> None:
    """The fixed search_path and no PUBLIC EXECUTE on the listed functions that exist,
    and, where `listener roles` ran, the roles' rights on the listed objects that exist
    (added, never taken: `listener roles` resets them exactly)."""
    q = named("ownership.sql")
    listed = objects.OBJECTS
    existing = {
        (kind, name)
        for kind, name in conn.execute(
            q["existing_objects"],
            {"kinds": [o.kind for o in listed], "names": [o.name for o in listed]},
        )
    }
    names = [o.name for o in objects.functions() if ("function", o.name) in existing]
    for (statement,) in conn.execute(q["function_fixes"], {"names": names}).fetchall():
        conn.execute(statement.encode())
    if ("table", "listener_roles") not in existing:
        return
    roles = tuple(r for (r,) in conn.execute(q["recorded_roles"]) if r in objects.ROLES)
    if not roles:
        return
    tables = [o.name for o in listed if o.kind == "table" and ("table", o.name) in existing]
    columns: dict[str, set[str]] = {}
    for table, column in conn.execute(q["table_columns"], {"names": tables}):
        columns.setdefault(table, set()).add(column)
    schema = current_schema(conn)
    lacking = [r for (r,) in conn.execute(q["roles_without_usage"], {"roles": list(roles)})]
    if lacking:  # only then: a GRANT on a schema one does not own says "no privileges"
        conn.execute(
            f"GRANT USAGE ON SCHEMA {objects.quote_ident(schema)} TO {', '.join(lacking)}".encode()
        )
    for statement in objects.grant_statements(
        schema, roles=roles, present=existing, columns=columns
    ):
        conn.execute(statement.encode())


def current_schema(conn: psycopg.Connection) -> str:
    """The schema the migrations create into (the first of the search_path that exists)."""
    row = conn.execute("SELECT pg_catalog.current_schema()").fetchone()
    if not row or row[0] is None:
        raise DatabaseError("database error: no schema to migrate into (search_path is empty)")
    return str(row[0])


def _lock(conn: psycopg.Connection) -> None:
    """Held until this transaction ends, on whichever server connection runs it."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))


def _recorded(conn: psycopg.Connection, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM listener_migrations WHERE name = %s", (name,)).fetchone()
    return row is not None


def check_migrated(conn: psycopg.Connection) -> None:
    """Refuse to serve a database this release has not migrated."""
    missing = [m.name for m in pending(conn)]
    if missing:
        raise SchemaNotMigrated(
            "the database is not migrated (pending: "
            + ", ".join(missing)
            + "): run `listener migrate` (or `make migrate`) first"
        )
