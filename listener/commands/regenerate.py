"""`listener regenerate ID`: a Generate, Failed or ReadyToPublish image back to the queue
(through images_regenerate), at any moment: its attempts reset, its reason kept. A
listener following its generation lets go of it; the listeners are woken at once.
Exit 3 when the id is unknown, 4 when the image is in another status.
"""

from __future__ import annotations

import argparse

from listener.commands.common import prepare
from listener.operator import EXIT_OK, confirmed, connect, fetch_one


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "regenerate",
        parents=[common],
        help="generate an image again",
        description="Put a Generate, Failed or ReadyToPublish image back to "
        "ReadyToGenerate, even while a listener follows its generation: attempts reset, "
        "uuid and image cleared, last_error kept. Exit codes: 0 ok, 3 no such image, "
        "4 the image is waiting already or in a status of another application.",
    )
    p.add_argument("id", type=int, help="the image id")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    ctx = prepare(args, announce_db=False)
    with connect(ctx.conninfo, "regenerate") as conn:
        row = fetch_one(conn, "regenerate", {"id": args.id})
        confirmed(row, "id", args.id, "images_regenerate")
    print(f"image {args.id}: back to ReadyToGenerate")
    return EXIT_OK
