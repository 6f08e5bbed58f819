"""`listener provider check`: test the provider's key, scope and TLS without drawing.

Fetches what the provider needs to work (GigaChat: a token, the models list, the balance
where the account shows one) and prints one line per step; a failure is one clear line
naming the step and the likely cause (key refused, scope wrong, CA not trusted, host
unreachable) and exit code 1. Nothing is drawn and no row is touched: it costs nothing,
so a key and a CA bundle can be tested before the first row is inserted.
"""

from __future__ import annotations

import argparse
import logging

import trio

from listener.config import load_settings
from listener.errors import ConfigError, ListenerError
from listener.logs import setup_logging
from listener.providers import registry
from listener.sanitize import clean, register_secrets

log = logging.getLogger("listener")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "provider",
        parents=[common],
        help="the image provider: `provider check` tests its credentials (costs nothing)",
        description="The image provider this listener runs (IMAGE_PROVIDER, else the one "
        "whose credentials are set).",
        allow_abbrev=False,
    )
    actions = p.add_subparsers(dest="provider_action", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check",
        parents=[common],
        help="fetch a token and the models list (and the balance where shown); never draws",
        description="Test the provider's credentials, scope and TLS trust without drawing "
        "anything: one line per step, one clear line for what went wrong (exit code 1).",
        allow_abbrev=False,
    )
    check.add_argument(
        "--provider",
        choices=registry.names(),
        help="the provider to check (default: the one the listener would run)",
    )
    check.set_defaults(handler=handle_check)


def handle_check(args: argparse.Namespace) -> int:
    settings = load_settings()
    requested = args.provider or getattr(settings, "image_provider", None)
    choice = registry.choose(requested)
    spec = choice.spec
    secrets = [*settings.secrets(), *spec.secrets(choice.settings)]
    register_secrets(secrets)
    setup_logging(verbose=bool(getattr(args, "verbose", False)), secrets=secrets)
    print(f"{spec.title} (chosen because {choice.why}):", flush=True)
    if not choice.configured:
        wanted = spec.variables[0] if spec.variables else "its credentials"
        raise ConfigError(f"{spec.title}: no credentials set ({wanted}): nothing to check")
    if spec.check is None:
        raise ConfigError(f"{spec.title}: this provider has no check")
    connection = registry.Connection(
        concurrency=1,
        max_response_bytes=settings.max_response_bytes,
        retry_after_max=settings.retry_backoff_max,
    )
    try:
        lines = trio.run(spec.check, choice.settings, connection)
    except ListenerError as exc:
        print(f"  FAILED: {clean(exc.message)}", flush=True)
        return 1
    for line in lines:
        print(f"  ok: {clean(line)}", flush=True)
    print("  The credentials work; nothing was drawn.", flush=True)
    return 0
