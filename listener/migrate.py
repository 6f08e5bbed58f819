"""Apply the SQL migrations, in order, exactly once, safely from many processes.

Each file runs in its own transaction and is recorded in `listener_migrations`. A
transaction-scoped advisory lock, taken at the start of each of those transactions,
serialises concurrent runs (many listeners starting at once): the second waits, then finds
the file recorded and skips it. Transaction-scoped, so it is safe through a
transaction-mode pooler (PgBouncer), where a session lock could stay behind on a server
connection that another client gets next; and no statement is prepared server-side.
Forward-only: a file that was applied is never run again, even if edited (its checksum is
kept to notice that).
"""

from __future__ import annotations

import logging

import psycopg

from listener.errors import SchemaNotMigrated
from listener.sqlfiles import Migration, migrations

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


def _applied(conn: psycopg.Connection) -> dict[str, str]:
    exists = conn.execute("SELECT to_regclass('listener_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return {}
    rows = conn.execute("SELECT name, checksum FROM listener_migrations").fetchall()
    return {name: checksum for name, checksum in rows}


def pending(conn: psycopg.Connection) -> list[Migration]:
    done = _applied(conn)
    return [m for m in migrations() if m.name not in done]


def migrate(conninfo: str) -> list[str]:
    """Apply what is pending; return the names applied (empty when up to date)."""
    applied: list[str] = []
    with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None) as conn:
        with conn.transaction():
            _lock(conn)
            conn.execute(_CREATE_TABLE)
        done = _applied(conn)
        for m in migrations():
            if m.name in done:
                if done[m.name] != m.checksum:
                    log.warning("Migration %s changed after it was applied; not re-run", m.name)
                continue
            with conn.transaction():
                _lock(conn)
                if _recorded(conn, m.name):  # another run applied it while we waited
                    continue
                conn.execute(m.sql.encode())  # several statements: simple query protocol
                conn.execute(
                    "INSERT INTO listener_migrations (name, checksum) VALUES (%s, %s)",
                    (m.name, m.checksum),
                )
            log.info("Applied migration %s", m.name)
            applied.append(m.name)
    return applied


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
