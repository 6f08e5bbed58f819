"""`listener roles [--sql]`: create or update the three NOLOGIN roles and their grants.

A DBA runs it once per database after `listener migrate`, as a role with CREATEROLE that
owns the listener's objects. In one transaction it applies sql/roles.sql (the roles), then
takes back and grants again the roles' rights on the objects of the listener's own list
(listener/objects.py), nothing else, and records the database in `listener_roles`: from
then on `listener migrate` grants the roles their rights on what a new migration adds,
in this database only. `--sql` prints all of it instead, for a DBA who prefers to read it
and run it in psql. Logins are the DBA's: the command never creates one and never grants
a role to anyone (README, "Running in production").
"""

from __future__ import annotations

import argparse
import logging

import psycopg

from listener import objects
from listener.commands.common import prepare
from listener.db import connect_kwargs
from listener.errors import DatabaseError
from listener.migrate import check_migrated, current_schema
from listener.operator import EXIT_OK, translate_error
from listener.sqlfiles import named, sql_dir

log = logging.getLogger("listener")

ROLES = objects.ROLES

_RECORD = (
    "INSERT INTO listener_roles AS r (role) VALUES {} ON CONFLICT (role) DO UPDATE "
    "SET granted_at = now(), granted_by = CURRENT_USER;"
)


def roles_sql() -> str:
    """Everything `listener roles` runs, as a DBA would run it in psql (unqualified names
    resolve in the schema the migrations ran in, as sql/roles.sql says)."""
    base = (sql_dir() / "roles.sql").read_text(encoding="utf-8")
    revokes = [s + ";" for s in objects.revoke_statements()]
    grants: list[str] = []
    for role in ROLES:
        grants.append(f"\n-- {role}")
        grants += [s + ";" for s in objects.grant_statements(roles=(role,))]
    record = _RECORD.format(", ".join(f"('{r}')" for r in ROLES))
    return "\n".join(
        [
            base.rstrip(),
            "",
            "-- The listener's own objects (listener/objects.py), and nothing else: every",
            "-- right of the roles taken back, then granted again.",
            *revokes,
            *grants,
            "",
            "-- Recorded: `listener migrate` grants these roles the rights on objects a later",
            "-- migration adds, in this database.",
            record,
            "",
        ]
    )


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "roles",
        parents=[common],
        help="create or update the roles images_writer, images_operator, images_listener",
        description="Create (or correct) the NOLOGIN roles images_writer, images_operator "
        "and images_listener, and grant each exactly what its job needs in this database. "
        "Run after `listener migrate`, as a role with CREATEROLE that owns the schema's "
        "objects; then GRANT the roles to login roles. Re-runnable.",
    )
    p.add_argument(
        "--sql", action="store_true", help="print the SQL instead of running it (for psql)"
    )
    p.set_defaults(handler=handle)


def apply_roles(conninfo: str) -> str | None:
    """Run sql/roles.sql in one transaction on a migrated database. Returns the schema's
    name when every role may CREATE in it (PostgreSQL 14 and older made `public` so):
    the DBA should know, since a planted function there is where hijacks start."""
    try:
        with psycopg.connect(conninfo, **connect_kwargs("listener roles")) as conn:
            check_migrated(conn)
            base = (sql_dir() / "roles.sql").read_text(encoding="utf-8")
            conn.execute(base.encode())  # several statements: simple query protocol
            schema = current_schema(conn)
            for statement in objects.revoke_statements(schema) + objects.grant_statements(schema):
                conn.execute(statement.encode())
            conn.execute(named("ownership.sql")["record_roles"], {"roles": list(ROLES)})
            row = conn.execute(
                "SELECT pg_catalog.current_schema(), pg_catalog.has_schema_privilege("
                "'public', pg_catalog.current_schema(), 'CREATE')"
            ).fetchone()
            conn.commit()
    except psycopg.errors.InsufficientPrivilege as exc:
        raise DatabaseError(
            f"database error: {(exc.diag.message_primary or str(exc)).strip()}: run "
            "`listener roles` as the owner of the listener's objects, with CREATEROLE"
        ) from exc
    except psycopg.Error as exc:
        raise translate_error(exc) from exc
    return row[0] if row and row[1] else None


def handle(args: argparse.Namespace) -> int:
    if args.sql:
        print(roles_sql(), end="")
        return EXIT_OK
    ctx = prepare(args)
    open_schema = apply_roles(ctx.conninfo)
    if open_schema:
        log.warning(
            "Every role may CREATE in schema %s, where the listener's objects live: run "
            "REVOKE CREATE ON SCHEMA %s FROM PUBLIC; unless an application needs it",
            open_schema,
            open_schema,
        )
    log.info(
        "Roles ready: %s. Grant them to login roles, e.g. GRANT images_listener TO "
        "listener_login; (README, Running in production)",
        ", ".join(ROLES),
    )
    return EXIT_OK
