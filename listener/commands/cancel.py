"""`listener cancel ID`: a waiting image that no listener holds -> Failed, with last_error
'cancelled by operator' (through images_cancel). Exit 3 when the id is unknown, 4 when
the image is not waiting (ReadyToGenerate) or a listener has claimed it.
"""

from __future__ import annotations

import argparse

from listener.commands.common import prepare
from listener.operator import EXIT_OK, confirmed, connect, fetch_one


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "cancel",
        parents=[common],
        help="cancel a waiting image",
        description="Mark a waiting (ReadyToGenerate, unclaimed) image Failed with "
        "'cancelled by operator'. Exit codes: 0 ok, 3 no such image, 4 the image is not "
        "waiting or a listener holds it.",
    )
    p.add_argument("id", type=int, help="the image id")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    ctx = prepare(args, announce_db=False)
    with connect(ctx.conninfo, "cancel") as conn:
        confirmed(fetch_one(conn, "cancel", {"id": args.id}), "id", args.id, "images_cancel")
    print(f"image {args.id}: cancelled")
    return EXIT_OK
