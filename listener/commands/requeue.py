"""`listener requeue --provider NAME`: one provider's generations back to the queue.

For a user leaving a provider (its key stopped working, the service closed): every
Generate row that provider accepted and no live listener holds goes back to
ReadyToGenerate, unpinned, through images_requeue. Whatever the old provider drew for
those rows is abandoned, and each row costs a new paid draw with whichever provider
takes it: the command says so and asks for --yes before it changes anything.
"""

from __future__ import annotations

import argparse
import re

from listener.commands.common import prepare
from listener.errors import UsageError
from listener.operator import EXIT_OK, confirmed, connect, fetch_one

NAME = re.compile(r"[a-z][a-z0-9]{0,31}")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "requeue",
        parents=[common],
        help="move one provider's generations back to the queue (each costs a new draw)",
        description="Move every Generate row that PROVIDER accepted (and no live listener "
        "holds) back to ReadyToGenerate, unpinned, so that the listeners' provider draws "
        "it again. Each such row costs a new paid draw; what the old provider drew for it "
        "is abandoned. Without --yes, only says how many rows that would be. Exit codes: "
        "0 ok, 2 bad usage.",
    )
    p.add_argument("--provider", required=True, metavar="NAME", help="e.g. fusionbrain")
    p.add_argument("--yes", action="store_true", help="do it (each row is drawn again)")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    provider = args.provider.strip().lower()
    if not NAME.fullmatch(provider):
        raise UsageError(f"--provider: {args.provider[:40]!r} is not a provider's name")
    ctx = prepare(args, announce_db=False)
    with connect(ctx.conninfo, "requeue") as conn:
        if not args.yes:
            row = fetch_one(
                conn,
                "providers_one",
                {"provider": provider},
            )
            generating = row["generating"] if row else 0
            print(
                f"{generating} generation(s) of provider {provider} would go back to "
                "ReadyToGenerate; each costs a new paid draw. Run again with --yes to do it."
            )
            return EXIT_OK
        held = fetch_one(conn, "requeue_held", {"provider": provider})
        count = confirmed(
            fetch_one(conn, "requeue", {"provider": provider}), "count", None, "images_requeue"
        )
    print(
        f"{count} generation(s) of provider {provider} back to ReadyToGenerate: each costs "
        "a new paid draw"
    )
    if held and held["held"]:
        print(
            f"{held['held']} more are held by a live listener running {provider} and were "
            "left to it"
        )
    return EXIT_OK
