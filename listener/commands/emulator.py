"""`listener emulator`: serve the built-in Fusion Brain API emulator.

Prints one line on stdout once it accepts connections, `Emulator listening on URL`, so
that scripts and tests can wait for it and learn the port (`--port 0` picks a free one),
then `Emulator control token: TOKEN` (unless --no-control): the control endpoint answers
only requests that carry it. Logs each request only with -verbose. Ends with exit code 0
on SIGINT or SIGTERM.

It is a test tool and stays one: it binds only a loopback address unless --public is
given (and then warns), and the key and secret it demands can come from the environment
(EMULATOR_API_KEY, EMULATOR_SECRET_KEY) rather than the command line, where `ps` shows
them. EMULATOR_CONTROL_TOKEN chooses the control token (default: a random one).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import secrets
import signal
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio

from listener.errors import UsageError
from listener.logs import setup_logging
from listener.providers.fusionbrain.emulator.config import (
    AFTER_RUN_ERRORS,
    BUSY_KEYS,
    EmulatorConfig,
)

log = logging.getLogger("listener")

KEY_ENV, SECRET_ENV, TOKEN_ENV = "EMULATOR_API_KEY", "EMULATOR_SECRET_KEY", "EMULATOR_CONTROL_TOKEN"
TOKEN_LINE = "Emulator control token: "  # noqa: S105 - a label, not a secret


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0 to 65535, not {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"seconds must be 0 or more, not {text}")
    return value


def _whole_seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"seconds must be 0 or more, not {value}")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a rate: {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"a rate is between 0 and 1, not {text}")
    return value


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "emulator",
        parents=[common],
        help="serve a local emulator of an image API (Fusion Brain's; --provider gigachat "
        "for GigaChat's): real images, injectable faults",
        description="Serve a local emulator of the Fusion Brain API: the same endpoints, "
        "real PNG images of the requested size, configurable timings and faults, and a "
        "control endpoint under /_emulator/ (see docs/emulator.md).",
        allow_abbrev=False,
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; a non-loopback one needs --public)",
    )
    p.add_argument(
        "--public",
        action="store_true",
        help="allow binding a non-loopback address (the emulator is a test tool: beware)",
    )
    p.add_argument("--port", type=_port, default=8089, help="port (default 8089; 0 = any free)")
    p.add_argument(
        "--api-key",
        help=f"accepted API key (default: ${KEY_ENV}, else accept any); "
        "prefer the variable: arguments are visible in ps",
    )
    p.add_argument(
        "--secret-key",
        help=f"accepted secret key (default: ${SECRET_ENV}, else accept any)",
    )
    p.add_argument(
        "--no-control",
        action="store_true",
        help="switch the control endpoint (/_emulator/) off",
    )
    p.add_argument(
        "--generation-time",
        type=_seconds,
        default=3.0,
        help="seconds from run to the final answer (default 3; 0 = DONE at the first poll)",
    )
    p.add_argument(
        "--status-time",
        type=_whole_seconds,
        default=2,
        help="status_time advertised by run (default 2)",
    )
    p.add_argument(
        "--result-ttl",
        type=_seconds,
        default=360.0,
        help="seconds an unfetched result is kept (default 360)",
    )
    p.add_argument(
        "--busy",
        choices=BUSY_KEYS,
        help="answer every run 'busy' (DISABLED_BY_QUEUE) with this body key",
    )
    p.add_argument("--fail-rate", type=_rate, default=0.0, help="share of generations that FAIL")
    p.add_argument(
        "--cancel-rate", type=_rate, default=0.0, help="share of generations that end CANCEL"
    )
    p.add_argument("--error-rate", type=_rate, default=0.0, help="share of requests answered 500")
    p.add_argument(
        "--error-after-run",
        type=int,
        choices=AFTER_RUN_ERRORS,
        help="take (and count) every run, then answer it with this status",
    )
    p.add_argument(
        "--malformed-rate",
        type=_rate,
        default=0.0,
        help="share of requests answered 200 with a body that is not JSON",
    )
    p.add_argument(
        "--delay", type=_seconds, default=0.0, help="seconds added before every API answer"
    )
    p.add_argument(
        "--censor",
        action="append",
        default=[],
        metavar="WORD",
        help="prompts containing WORD end censored (repeatable)",
    )
    p.add_argument(
        "--wrong-credentials", action="store_true", help="answer 401 to every API request"
    )
    p.add_argument("--seed", type=int, help="seed of the random faults (default: random)")
    p.add_argument(
        "--provider",
        choices=("fusionbrain", "gigachat"),
        default="fusionbrain",
        help="which API to emulate (default fusionbrain); gigachat serves its token service "
        "and API under one port (--error-rate, --censor and --seed apply to both)",
    )
    from listener.providers.gigachat.emulator.cli import add_arguments

    add_arguments(p, _seconds)
    p.set_defaults(handler=handle)


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    return EmulatorConfig(
        api_key=args.api_key or os.environ.get(KEY_ENV) or None,
        secret_key=args.secret_key or os.environ.get(SECRET_ENV) or None,
        generation_time=args.generation_time,
        status_time=args.status_time,
        result_ttl=args.result_ttl,
        busy=args.busy,
        fail_rate=args.fail_rate,
        cancel_rate=args.cancel_rate,
        error_rate=args.error_rate,
        error_after_run=args.error_after_run,
        malformed_rate=args.malformed_rate,
        delay=args.delay,
        censor_words=list(args.censor),
        wrong_credentials=args.wrong_credentials,
        seed=args.seed,
    )


async def _main(config: Any, host: str, port: int, token: str | None) -> None:
    serve: Callable[..., Awaitable[None]]
    if isinstance(config, EmulatorConfig):
        from listener.providers.fusionbrain.emulator.server import (
            serve_emulator,  # hypercorn: only when serving
        )

        serve = serve_emulator
    else:
        from listener.providers.gigachat.emulator.server import serve as serve_gigachat

        serve = serve_gigachat

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(
                partial(serve, config, host=host, port=port, control_token=token)
            )
            print(f"Emulator listening on {url}", flush=True)
            if token is not None:
                print(f"{TOKEN_LINE}{token}", flush=True)
            if not isinstance(config, EmulatorConfig):
                log.info(
                    "GigaChat API emulator at %s (control: %s; %s): set "
                    "GIGACHAT_AUTH_URL=%sapi/v2/oauth GIGACHAT_BASE_URL=%sapi/v1",
                    url,
                    f"{url}_emulator/ with its token" if token else "off",
                    "key checked" if config.credentials else "any key accepted",
                    url,
                    url,
                )
            else:
                log.info(
                    "Fusion Brain API emulator at %s (control: %s; %s)",
                    url,
                    f"{url}_emulator/ with its token" if token else "off",
                    "credentials checked"
                    if config.api_key or config.secret_key
                    else "any credentials accepted",
                )
            async for signum in signals:
                log.info("Emulator stopping (%s)", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def handle(args: argparse.Namespace) -> int:
    config: Any
    if args.provider == "gigachat":
        from listener.providers.gigachat.emulator.cli import config_from_args as gigachat_config

        config = gigachat_config(args)
    else:
        config = config_from_args(args)
    token = None if args.no_control else (os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(18))
    setup_logging(
        verbose=bool(getattr(args, "verbose", False)),
        secrets=[
            s
            for s in (
                getattr(config, "api_key", None),
                getattr(config, "secret_key", None),
                getattr(config, "credentials", None),
                token,
            )
            if s
        ],
    )
    if args.verbose:
        logging.getLogger("listener.emulator").setLevel(logging.DEBUG)
    if not is_loopback(args.host):
        if not args.public:
            raise UsageError(
                f"the emulator binds only a loopback address (127.0.0.1, ::1, localhost); "
                f"{args.host} would expose a test tool to the network: add --public to do so"
            )
        log.warning(
            "Emulator bound to %s, reachable from the network: it is a test tool, not a "
            "service; anyone who reaches it can use it",
            args.host,
        )
    try:
        trio.run(_main, config, args.host, args.port, token)
    except KeyboardInterrupt:
        return 0
    except BaseExceptionGroup as group:
        _, rest = group.split(KeyboardInterrupt)
        if rest is None:
            return 0
        cannot_listen, rest = rest.split(OSError)
        if rest is not None or cannot_listen is None:
            raise
        first = cannot_listen.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        print(
            f"listener: the emulator cannot listen on {args.host}:{args.port}: {first}",
            file=sys.stderr,
        )
        return 1
    return 0
