"""The service itself: `listener [-generator] [-processor] [-cron] [--once]`."""

from __future__ import annotations

import argparse
from typing import Literal


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
        help="when the provider's credentials are not set, start its built-in emulator "
        "and use it (placeholder images); `make run` does this",
    )
    g.add_argument(
        "--http",
        "-http",
        metavar="HOST:PORT",
        default=None,
        help="serve the gallery, /metrics, /healthz and /readyz on this address "
        "(default: HTTP_ADDRESS; off when neither is set). Loopback unless "
        "HTTP_ALLOW_REMOTE=true and HTTP_TOKEN are set",
    )


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("run", parents=[common], help="run the service (the default command)")
    add_service_arguments(p)
    p.set_defaults(handler=handle)


def options_from(args: argparse.Namespace):
    """The command line as plain values: no role flag means both roles."""
    from listener.service import Options

    generate, follow = bool(args.generator), bool(args.processor)
    if not generate and not follow:
        generate = follow = True
    mode: Literal["event", "cron", "once"] = (
        "once" if args.once else "cron" if args.cron else "event"
    )
    return Options(
        generate=generate, follow=follow, mode=mode, with_emulator=bool(args.with_emulator)
    )


def handle(args: argparse.Namespace) -> int:
    import logging

    from listener.commands.common import prepare
    from listener.logs import RedactSecrets
    from listener.sanitize import register_secrets
    from listener.service import run
    from listener.web.settings import load_http_settings

    http = load_http_settings(address=getattr(args, "http", None))
    ctx = prepare(args)
    if http.enabled and http.secrets():
        register_secrets(ctx.settings.secrets() + http.secrets())
        for handler in logging.getLogger().handlers:
            handler.addFilter(RedactSecrets(http.secrets()))
    assert ctx.provider is not None
    return run(
        ctx.settings,
        ctx.conninfo,
        options_from(args),
        ctx.provider,
        embedded=ctx.embedded,
        http=http if http.enabled else None,
    )
