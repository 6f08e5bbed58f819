"""`listener emulator --provider gigachat`: the GigaChat emulator's own options.

The key it demands comes from EMULATOR_GIGACHAT_CREDENTIALS (not an argument, which `ps`
shows); without it any well-formed key is accepted, the way a trial should.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from listener.providers.gigachat.emulator.state import SCOPES, GigaChatEmulatorConfig

CREDENTIALS_ENV = "EMULATOR_GIGACHAT_CREDENTIALS"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser, seconds: Any) -> None:
    group = parser.add_argument_group("with --provider gigachat")
    group.add_argument(
        "--draw-time",
        type=seconds,
        default=3.0,
        help="seconds one draw takes (default 3; the real API takes 10-40)",
    )
    group.add_argument(
        "--streams",
        type=_positive_int,
        help="API calls served at once before 429 (individual accounts: 1; default: no limit)",
    )
    group.add_argument(
        "--token-ttl",
        type=seconds,
        default=1800.0,
        help="seconds a token stays valid (default 1800, as the real service)",
    )
    group.add_argument(
        "--image-size", type=int, default=1024, help="side of the square JPEGs (default 1024)"
    )
    group.add_argument(
        "--scope", choices=SCOPES, help="the only scope the key belongs to (default: any)"
    )
    group.add_argument(
        "--no-image",
        action="append",
        default=[],
        metavar="WORD",
        help="prompts containing WORD get a text answer without an image (repeatable)",
    )
    group.add_argument(
        "--quota-exhausted", action="store_true", help="answer every draw 402 Payment Required"
    )


def config_from_args(args: argparse.Namespace) -> GigaChatEmulatorConfig:
    return GigaChatEmulatorConfig(
        credentials=os.environ.get(CREDENTIALS_ENV) or None,
        scope=args.scope,
        token_ttl=args.token_ttl,
        draw_time=args.draw_time,
        streams=args.streams,
        quota_exhausted=args.quota_exhausted,
        blacklist_words=list(args.censor),
        no_image_words=list(args.no_image),
        image_size=args.image_size,
        error_rate=args.error_rate,
        seed=args.seed,
    )
