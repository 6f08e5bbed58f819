"""`listener migrate`: apply pending SQL migrations (idempotent, concurrency-safe).

Every NOTICE and WARNING of a migration is logged, then one line per migration saying
what it changed (listener.migrate). A database that refuses the connection for good (it
does not exist, a wrong password) is a configuration error, exit 2, in the service's
words; one that cannot be reached is exit 1."""

from __future__ import annotations

import argparse
import logging

import psycopg

from listener.commands.common import prepare
from listener.db import translate
from listener.migrate import migrate, refused_for_good

log = logging.getLogger("listener")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("migrate", parents=[common], help="create or upgrade the schema")
    p.set_defaults(handler=handle)


def _legacy_findings(conninfo: str) -> int:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM images_upgrade_report WHERE migration = '0013_seed_upgrade'"
        ).fetchone()
    return row[0] if row else 0


def handle(args: argparse.Namespace) -> int:
    ctx = prepare(args)
    try:
        applied = migrate(ctx.conninfo)
    except psycopg.Error as exc:
        err = translate(exc)
        raise (refused_for_good(err) or err) from exc
    if applied:
        log.info("Database migrated: %d migration(s) applied", len(applied))
        if "0013_seed_upgrade" in applied and _legacy_findings(ctx.conninfo):
            log.warning(
                "Legacy rows were found and handled (the lines above); the report stays in "
                "the database: SELECT * FROM images_upgrade_report"
            )
    else:
        log.info("Database schema is up to date")
    return 0
