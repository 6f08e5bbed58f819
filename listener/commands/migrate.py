"""`listener migrate`: apply pending SQL migrations (idempotent, concurrency-safe)."""

from __future__ import annotations

import argparse
import logging

import psycopg

from listener.commands.common import prepare
from listener.db import translate
from listener.migrate import migrate

log = logging.getLogger("listener")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("migrate", parents=[common], help="create or upgrade the schema")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    ctx = prepare(args)
    try:
        applied = migrate(ctx.conninfo)
    except psycopg.Error as exc:
        raise translate(exc) from exc
    if applied:
        log.info("Database migrated: %d migration(s) applied", len(applied))
    else:
        log.info("Database schema is up to date")
    return 0
