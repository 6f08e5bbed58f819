"""`listener embedded status|stop`: the private PostgreSQL that `make run` starts when no
database is configured keeps running after the listener stops (so `make psql` works and
the next start is instant); these say whether it runs and stop it."""

from __future__ import annotations

import argparse

from listener.config import load_settings
from listener.embedded import embedded_state, psql_target, stop_embedded
from listener.logs import setup_logging

# `status` answers like pg_ctl status and LSB init scripts: 3 when not running.
NOT_RUNNING = 3


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "embedded",
        parents=[common],
        help="status or stop of the embedded PostgreSQL (under DATA_DIR)",
        description="The embedded PostgreSQL (started when neither DB_HOST nor "
        "DATABASE_URL is set) keeps running after the listener stops. `status` says "
        "whether it runs (exit 0) or not (exit 3); `stop` stops it (exit 0, also when it "
        "was not running). The next `make run` starts it again, with its data.",
    )
    p.add_argument("action", choices=("status", "stop"))
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    settings = load_settings()
    setup_logging(verbose=bool(getattr(args, "verbose", False)), secrets=settings.secrets())
    if args.action == "stop":
        state = stop_embedded(settings.data_dir)
        if state.running:
            print(f"Stopped the embedded PostgreSQL in {state.pgdata} (pid {state.pid})")
        elif state.exists:
            print(f"The embedded PostgreSQL in {state.pgdata} is not running")
        else:
            print(f"No embedded PostgreSQL in {state.pgdata}")
        return 0
    state = embedded_state(settings.data_dir)
    note = (
        " (not used: a database is configured with DB_HOST / DATABASE_URL)"
        if settings.database_configured
        else ""
    )
    if state.running:
        print(f"The embedded PostgreSQL in {state.pgdata} is running (pid {state.pid}){note}")
        if state.uri:
            print(f"Connect with: {psql_target(state.uri)}")
        print("Stop it with: listener embedded stop (make stop)")
        return 0
    if state.exists:
        print(f"The embedded PostgreSQL in {state.pgdata} is not running{note}")
    else:
        print(f"No embedded PostgreSQL in {state.pgdata}{note}")
    return NOT_RUNNING
