"""`listener watch [--count N]`: one line per finished image, as they finish.

LISTENs on the public channel images_done (payload {"id": 42, "status": "..."}) and
prints `2024/03/21 15:04:05 image 42: ReadyToPublish` (Failed lines carry the reason)
on stdout, in the log's format. Runs until Ctrl-C (exit 0), or until N events with
--count. Nothing is printed for images finished while nobody listened: NOTIFY is not a
mailbox (`listener status` shows the table's truth).

Anyone who can connect can NOTIFY images_done with any payload: a line is printed only
for a payload of the documented shape whose id and status the table confirms, and what
is printed comes from the table, not from the payload. Anything else is a warning on
stderr, made safe by `listener.sanitize.clean`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from listener.commands.common import prepare
from listener.operator import DONE_CHANNEL, EXIT_OK, connect, fetch_one
from listener.sanitize import clean

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
                # Taken out of the generator before anything else runs on the connection:
                # psycopg holds the connection's lock while notifies() is iterated.
                notes = list(conn.notifies(timeout=30, stop_after=1))
                if not notes:
                    # keep-alive: a dead connection surfaces as an error, not a silent hang
                    conn.execute("SELECT 1")
                for note in notes:
                    line = describe(conn, note.payload)
                    if line is None:
                        log.warning(
                            "Ignored a notification on %s that the table does not confirm: %s",
                            DONE_CHANNEL,
                            clean(note.payload, limit=200),
                        )
                    elif args.count is None or seen < args.count:
                        events.info("%s", line)
                        seen += 1
    except KeyboardInterrupt:
        pass
    return EXIT_OK


FINISHED = ("ReadyToPublish", "Failed")
MAX_PAYLOAD = 200


def parse_payload(payload: str) -> tuple[int, str] | None:
    """{"id": <positive integer>, "status": "ReadyToPublish" | "Failed"}, or None."""
    if len(payload) > MAX_PAYLOAD:
        return None
    try:
        event = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(event, dict) or set(event) != {"id", "status"}:
        return None
    image_id, status = event["id"], event["status"]
    if type(image_id) is not int or not 0 < image_id < 2**63 or status not in FINISHED:
        return None
    return image_id, status


def describe(conn, payload: str) -> str | None:
    """The line for a notification the table confirms (the row exists and has the
    announced status), or None."""
    event = parse_payload(payload)
    if event is None:
        return None
    row = fetch_one(conn, "row_state", {"id": event[0]})
    if row is None or row["status"] != event[1]:
        return None
    line = f"image {row['id']}: {row['status']}"
    if row["status"] == "Failed" and row["last_error"]:
        line += f" ({clean(row['last_error'], limit=500)})"
    return line
