"""`listener watch [--count N]`: one line per finished image, as they finish.

LISTENs on the public channel images_done (payload {"id": 42, "status": "..."}) and
prints `2024/03/21 15:04:05 image 42: ReadyToPublish` (Failed lines carry the reason)
on stdout, in the log's format. Runs until Ctrl-C (exit 0), or until N events with
--count. Nothing is printed for images finished while nobody listened: NOTIFY is not a
mailbox (`listener status` shows the table's truth).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from listener.commands.common import prepare
from listener.operator import DONE_CHANNEL, EXIT_OK, connect, fetch_one

log = logging.getLogger("listener")
events = logging.getLogger("listener.watch")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "watch",
        parents=[common],
        help="print a line whenever an image is ReadyToPublish or Failed",
        description="LISTEN on images_done and print one line per finished image, until "
        "Ctrl-C (exit 0) or --count events.",
    )
    p.add_argument("--count", type=_count, metavar="N", help="exit after N events")
    p.set_defaults(handler=handle)


def _event_logger() -> None:
    """Events on stdout with the log's format and secret filter (the log is stderr)."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stdout)
    if root.handlers:
        handler.setFormatter(root.handlers[0].formatter)
        for f in root.handlers[0].filters:
            handler.addFilter(f)
    events.handlers[:] = [handler]
    events.propagate = False
    events.setLevel(logging.INFO)


def handle(args: argparse.Namespace) -> int:
    ctx = prepare(args, announce_db=False)
    _event_logger()
    seen = 0
    try:
        with connect(ctx.conninfo, "watch") as conn:
            conn.execute(f"LISTEN {DONE_CHANNEL}")
            log.info("Watching %s (Ctrl-C to stop)", DONE_CHANNEL)
            while args.count is None or seen < args.count:
                left = None if args.count is None else args.count - seen
                # Taken out of the generator before anything else runs on the connection:
                # psycopg holds the connection's lock while notifies() is iterated.
                notes = list(conn.notifies(timeout=30, stop_after=1))
                if not notes:
                    # keep-alive: a dead connection surfaces as an error, not a silent hang
                    conn.execute("SELECT 1")
                for note in notes[:left]:
                    events.info("%s", describe(conn, note.payload))
                    seen += 1
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def describe(conn, payload: str) -> str:
    try:
        event = json.loads(payload)
        image_id, status = int(event["id"]), str(event["status"])
    except (ValueError, KeyError, TypeError):
        return f"unexpected notification: {payload[:200]}"
    line = f"image {image_id}: {status}"
    if status == "Failed":
        row = fetch_one(conn, "row_state", {"id": image_id})
        if row is not None and row["last_error"]:
            line += f" ({row['last_error']})"
    return line
