"""The service itself: `listener [-generator] [-processor] [-cron] [--once]`."""

from __future__ import annotations

import argparse


def add_service_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("service (the seed's flags; no role flag means both roles)")
    g.add_argument(
        "-generator",
        "--generator",
        action="store_true",
        help="submit ReadyToGenerate rows to the API",
    )
    g.add_argument(
        "-processor",
        "--processor",
        action="store_true",
        help="follow generations and write the images back",
    )
    g.add_argument(
        "-cron",
        "--cron",
        action="store_true",
        help="schedule only, no LISTEN: generator every GENERATOR_SWEEP_INTERVAL "
        "(300 s), processor every PROCESSOR_SWEEP_INTERVAL (600 s), never both at once",
    )
    g.add_argument(
        "--once",
        "-once",
        action="store_true",
        help="one pass of the chosen roles, then exit 0 (for the system's cron); "
        "the processor pass waits for its generations to finish or time out",
    )
    g.add_argument(
        "--with-emulator",
        action="store_true",
        help="when FUSION_BRAIN_API_KEY is not set, start the built-in API emulator "
        "and use it (placeholder images); `make run` does this",
    )


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("run", parents=[common], help="run the service (the default command)")
    add_service_arguments(p)
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from listener.service import main as service_main

    return service_main(args)
