"""`listener retry ID` | `listener retry --failed [--since TIME]`: Failed rows back to
the queue (through images_retry / images_retry_failed). The listeners are woken at once.
Exit 3 when the id is unknown, 4 when that row is not Failed.
"""

from __future__ import annotations

import argparse

from listener.commands.common import prepare
from listener.errors import UsageError
from listener.operator import EXIT_OK, confirmed, connect, fetch_one, parse_since


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "retry",
        parents=[common],
        help="put Failed images back in the queue",
        description="Put a Failed image (or, with --failed, every Failed image) back to "
        "ReadyToGenerate: attempts reset, error and leftovers cleared. Exit codes: 0 ok, "
        "2 bad usage, 3 no such image, 4 the image is not Failed.",
    )
    p.add_argument("id", nargs="?", type=int, help="the image id")
    p.add_argument("--failed", action="store_true", help="every Failed image")
    p.add_argument(
        "--since",
        metavar="TIME",
        help="with --failed: only those that failed at or after TIME, an ISO timestamp "
        "(2024-03-21T15:04:05, local time unless a zone is given) or a duration ago "
        "(30m, 1h, 2d)",
    )
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    if (args.id is None) == (not args.failed):
        raise UsageError("retry needs either an image ID or --failed (not both)")
    if args.since is not None and not args.failed:
        raise UsageError("--since goes with --failed")
    since = parse_since(args.since) if args.since is not None else None
    ctx = prepare(args, announce_db=False)
    with connect(ctx.conninfo, "retry") as conn:
        if args.id is not None:
            # images_retry raises unless it reset exactly this row; its answer is checked
            # all the same, so success is never printed for a call that did nothing.
            confirmed(fetch_one(conn, "retry", {"id": args.id}), "id", args.id, "images_retry")
            print(f"image {args.id}: back to ReadyToGenerate")
            return EXIT_OK
        row = fetch_one(conn, "retry_failed", {"since": since})
    count = confirmed(row, "count", None, "images_retry_failed")
    print(f"{count} failed image(s) back to ReadyToGenerate")
    return EXIT_OK
