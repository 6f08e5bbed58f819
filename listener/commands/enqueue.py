"""`listener enqueue PROMPT [...] [--wait]`: add a prompt to the queue, print its id.

With --wait, follow the image until it is done: LISTEN on images_done (set up before
the INSERT, so the completion cannot be missed), and read the row every second as well
in case the notification is lost (a pooler that drops LISTEN). Progress goes to stderr,
the id to stdout. Exit 0 when ReadyToPublish, 1 when Failed (with the reason), 5 when
--timeout runs out (the row stays queued).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from listener.commands.common import prepare
from listener.errors import NotFound, UsageError, WaitTimeout
from listener.operator import (
    DONE_CHANNEL,
    EXIT_IMAGE_FAILED,
    EXIT_OK,
    connect,
    fetch_one,
)
from listener.sanitize import clean

log = logging.getLogger("listener")

POLL_INTERVAL = 1.0


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a positive number of seconds")
    return value


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "enqueue",
        parents=[common],
        help="add a prompt to the queue and print its id",
        description="Insert a row into images (through the SQL function images_enqueue) "
        "and print its id. Options left out use the listener's configured defaults. "
        "Exit codes: 0 done, 1 the image failed (--wait), 2 bad input, 5 --timeout ran out.",
    )
    p.add_argument("prompt", help="what to draw (at most 999 characters are sent)")
    p.add_argument("--style", help="a style listed in image_styles (ANIME, UHD, ...)")
    p.add_argument("--width", type=int, help="64 to 1024 pixels")
    p.add_argument("--height", type=int, help="64 to 1024 pixels")
    p.add_argument("--negative-prompt", help="what the image should not show")
    p.add_argument(
        "--wait",
        action="store_true",
        help="wait until the image is ReadyToPublish (exit 0) or Failed (exit 1)",
    )
    p.add_argument(
        "--timeout",
        type=_positive,
        metavar="SECONDS",
        help="with --wait: give up after this many seconds (exit 5); default: no limit",
    )
    p.set_defaults(handler=handle)


def _describe(row: dict) -> str:
    text = f"image {row['id']}: {row['status']}"
    if row["status"] == "ReadyToGenerate" and row["attempts"]:
        text += f" (attempt {row['attempts']}"
        text += f", last error: {clean(row['last_error'])})" if row["last_error"] else ")"
    return text


def handle(args: argparse.Namespace) -> int:
    if args.timeout is not None and not args.wait:
        raise UsageError("--timeout only makes sense with --wait")
    ctx = prepare(args, announce_db=False)
    with connect(ctx.conninfo, "enqueue") as conn:
        if args.wait:
            conn.execute(f"LISTEN {DONE_CHANNEL}")
        row = fetch_one(
            conn,
            "enqueue",
            {
                "prompt": args.prompt,
                "style": args.style,
                "width": args.width,
                "height": args.height,
                "negative_prompt": args.negative_prompt,
            },
        )
        assert row is not None
        image_id = row["id"]
        print(image_id, flush=True)
        if not args.wait:
            return EXIT_OK
        return _wait(conn, image_id, args.timeout)


def _wait(conn, image_id: int, timeout: float | None) -> int:
    deadline = None if timeout is None else time.monotonic() + timeout
    seen: tuple | None = None
    while True:
        row = fetch_one(conn, "row_state", {"id": image_id})
        if row is None:
            raise NotFound(f"image {image_id} was deleted while waiting for it")
        state = (row["status"], row["attempts"], row["last_error"])
        if state != seen:
            seen = state
            log.info("%s", _describe(row))
        if row["status"] == "ReadyToPublish":
            return EXIT_OK
        if row["status"] == "Failed":
            reason = clean(row["last_error"] or "no reason recorded")
            print(f"listener: image {image_id} failed: {reason}", file=sys.stderr)
            return EXIT_IMAGE_FAILED
        wait = POLL_INTERVAL
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(
                    f"image {image_id} is still {row['status']} after {timeout:g} s "
                    "(it stays queued; `listener status "
                    f"{image_id}` shows it)"
                )
            wait = min(wait, left)
        # Any notification (ours or another image's) ends the nap early; the row is the
        # truth, so it is read again either way.
        for _ in conn.notifies(timeout=wait, stop_after=1):
            pass
