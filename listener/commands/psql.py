"""`listener psql`: open psql on the configured database, or on the embedded one.

The system's psql when installed, else the one the embedded PostgreSQL ships (pgserver),
so nothing but Python is needed. The password, if any, travels in PGPASSWORD, not on the
command line where `ps` would show it."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import psycopg.conninfo

from listener.commands.common import prepare
from listener.embedded import psql_executable
from listener.errors import UsageError


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "psql", parents=[common], help="open psql on the configured (or embedded) database"
    )
    p.add_argument(
        "psql_args",
        nargs=argparse.REMAINDER,
        help="passed on to psql; put them after -- when the first starts with a dash "
        "(listener psql -- -c 'SELECT 1')",
    )
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    ctx = prepare(args, announce_db=False)
    psql = psql_executable()
    if not os.access(psql, os.X_OK) or not Path(psql).is_file():
        raise UsageError("psql is not installed (Debian/Ubuntu: apt install postgresql-client)")
    params = psycopg.conninfo.conninfo_to_dict(ctx.conninfo)
    env = dict(os.environ)
    if password := params.pop("password", None):
        env["PGPASSWORD"] = str(password)
    conninfo = psycopg.conninfo.make_conninfo("", **{k: v for k, v in params.items() if v})
    extra = list(args.psql_args)
    if extra[:1] == ["--"]:
        extra = extra[1:]  # argparse keeps the separator; psql would stop reading options
    os.execve(psql, [psql, conninfo, *extra], env)  # noqa: S606 - replaces this process
    return 0  # not reached
