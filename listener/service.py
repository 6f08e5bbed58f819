"""The service: one trio nursery holding the LISTEN stream, the generator, the processor,
the sweeps and the heartbeat, each started with `nursery.start` so start-up is ordered
and a start-up failure reaches the caller.

Start: check the database (reachable, migrated, DEFAULT_STYLE known), LISTEN, a catch-up
sweep, then wait for wake-ups. With -cron: no LISTEN, the sweeps are the schedule. With
--once: one pass of the chosen roles, then exit.

Stop (SIGINT / SIGTERM), in two phases:
1. soft: stop claiming; API calls in flight and the writes of their outcome get
   SHUTDOWN_GRACE seconds (they are shielded until then);
2. hard: everything else is cancelled; every row this worker holds is released at once
   (a Generate row keeps its uuid), so the next start or another listener resumes it.
A second signal skips the grace period.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import socket
import sys
from dataclasses import dataclass
from functools import partial

import psycopg
import stamina
import trio
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from listener import __version__
from listener.api.client import FusionBrainClient
from listener.commands.common import Context, prepare
from listener.config import Settings
from listener.db import Database, connect_kwargs, open_database, translate
from listener.durable import Guard
from listener.embedded import psql_command
from listener.errors import ConfigError, DatabaseUnavailable, ListenerError
from listener.generator import Generator
from listener.health import ApiHealth
from listener.heartbeat import serve_heartbeat
from listener.migrate import check_migrated
from listener.notify import Backoff, Connected, ListenStream, Notification
from listener.primitives import Capacity
from listener.processor import Processor
from listener.store import Store
from listener.sweeps import Sweeps

log = logging.getLogger("listener")

WAKEUP_CHANNEL = "images_wakeup"
DONE_CHANNEL = "images_done"
RELEASE_TIMEOUT = 5.0

# Connection failures that retrying cannot fix: say so and stop.
_FATAL_CONNECT = (
    "password authentication failed",
    "does not exist",
    "no password supplied",
    "no pg_hba.conf entry",
)


@dataclass(frozen=True)
class Roles:
    generator: bool
    processor: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Roles:
        if not args.generator and not args.processor:
            return cls(True, True)
        return cls(bool(args.generator), bool(args.processor))

    def __str__(self) -> str:
        return ", ".join(
            n for n, on in (("generator", self.generator), ("processor", self.processor)) if on
        )


def make_worker_id() -> str:
    """Unique per process start: a lease never outlives the process that took it."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def _check_database(conninfo: str, style: str) -> None:
    with psycopg.connect(conninfo, **connect_kwargs("fusionbrain-listener start-up")) as conn:
        check_migrated(conn)
        known = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM image_styles WHERE name = %s), "
            "(SELECT string_agg(name, ', ' ORDER BY name) FROM image_styles)",
            (style,),
        ).fetchone()
        assert known is not None
        if not known[0]:
            raise ConfigError(
                f"configuration error: DEFAULT_STYLE: {style!r} is not a known "
                f"style (image_styles lists: {known[1]})"
            )


class Service:
    def __init__(self, ctx: Context, args: argparse.Namespace) -> None:
        self.ctx = ctx
        self.settings: Settings = ctx.settings
        self.roles = Roles.from_args(args)
        self.cron = bool(args.cron)
        self.once = bool(args.once)
        self.with_emulator = bool(args.with_emulator)
        self.worker = make_worker_id()
        self.guard = Guard()
        self.top: trio.CancelScope | None = None
        self.control: trio.CancelScope | None = None
        self.work: trio.CancelScope | None = None
        self.stop_reason: str | None = None
        self.generator: Generator | None = None
        self.processor: Processor | None = None
        self.sweeps: Sweeps | None = None

    @property
    def mode(self) -> str:
        if self.once:
            return "one pass"
        return "schedule only (-cron)" if self.cron else "event-driven, sweeps as fallback"

    # -- entry ---------------------------------------------------------------------------------

    async def run(self) -> int:
        s = self.settings
        log.info(
            "Starting fusionbrain-listener %s (worker %s; roles: %s; %s)",
            __version__,
            self.worker,
            self.roles,
            self.mode,
        )
        stamina.instrumentation.set_on_retry_hooks([])  # we log retries ourselves
        async with trio.open_nursery() as top:
            self.top = top.cancel_scope
            top.start_soon(self._watch_signals)
            base_url, key, secret = await self._api_endpoint(top)
            await self._wait_for_database()
            log.info("Database connection established")
            async with (
                open_database(
                    self.ctx.conninfo, s, application_name=f"fusionbrain-listener {self.worker}"
                ) as db,
                FusionBrainClient(
                    base_url,
                    key,
                    secret,
                    timeout=s.api_timeout,
                    max_connections=2 * s.api_concurrency,
                ) as api,
            ):
                try:
                    await self._serve(db, api)
                finally:
                    with trio.CancelScope(shield=True), trio.move_on_after(RELEASE_TIMEOUT):
                        await self._release(Store(db, self.worker, s.lease_timeout))
            top.cancel_scope.cancel()
        log.info("Service stopped%s", f" ({self.stop_reason})" if self.stop_reason else "")
        return 0

    async def _api_endpoint(self, nursery: trio.Nursery) -> tuple[str, str, str]:
        s = self.settings
        if s.fusion_brain_api_key is not None:
            if s.fusion_brain_secret_key is None:
                raise ConfigError(
                    "configuration error: FUSION_BRAIN_SECRET_KEY is not set "
                    "(the API needs both the key and the secret)"
                )
            log.info("Fusion Brain API: %s", s.fusion_brain_url)
            return (
                str(s.fusion_brain_url),
                s.fusion_brain_api_key.get_secret_value(),
                s.fusion_brain_secret_key.get_secret_value(),
            )
        if not self.with_emulator:
            raise ConfigError(
                "configuration error: FUSION_BRAIN_API_KEY is not set: set it "
                "and FUSION_BRAIN_SECRET_KEY, or start with --with-emulator "
                "(make run) to try the service with the built-in API emulator"
            )
        from listener.emulator import EmulatorConfig, serve_emulator

        url = await nursery.start(serve_emulator, EmulatorConfig())
        log.info(
            "No FUSION_BRAIN_API_KEY: using the built-in Fusion Brain emulator at %s; "
            "images are placeholders until an API key is set",
            url,
        )
        return url, "emulator", "emulator"

    async def _wait_for_database(self) -> None:
        """Reachable, migrated, and knows DEFAULT_STYLE. A database that is down is waited
        for (one line per attempt); one that refuses us for good ends start-up."""
        backoff = Backoff(initial=0.5, maximum=30.0)
        while True:
            try:
                await trio.to_thread.run_sync(
                    _check_database,
                    self.ctx.conninfo,
                    self.settings.default_style,
                    abandon_on_cancel=True,
                )
                return
            except psycopg.Error as exc:
                err = translate(exc)
                if not isinstance(err, DatabaseUnavailable):
                    raise err from None
                reason = err.message.removeprefix("database unavailable: ")
                if any(marker in reason for marker in _FATAL_CONNECT):
                    raise ConfigError(f"the database refused the connection: {reason}") from None
                delay = backoff.next()
                log.warning("Database unavailable: %s; retrying in %.1fs", reason, delay)
                await trio.sleep(delay)

    # -- the nursery ---------------------------------------------------------------------------

    async def _serve(self, db: Database, api: FusionBrainClient) -> None:
        s = self.settings
        store = Store(db, self.worker, s.lease_timeout)
        health = ApiHealth(backoff_base=s.retry_backoff_base, backoff_max=s.retry_backoff_max)
        capacity = Capacity(s.max_in_flight)
        common = dict(
            settings=s, store=store, api=api, health=health, capacity=capacity, guard=self.guard
        )
        if self.roles.processor:
            self.processor = Processor(**common)
        if self.roles.generator:
            self.generator = Generator(
                **common, handoff=self.processor.follow if self.processor else None
            )
        self.sweeps = Sweeps(
            self.generator,
            self.processor,
            generator_interval=s.generator_sweep_interval,
            processor_interval=s.processor_sweep_interval,
            cron=self.cron,
        )
        event_driven = not (self.cron or self.once)

        async with trio.open_nursery() as work:  # API calls, followers, heartbeat
            self.work = work.cancel_scope
            await work.start(serve_heartbeat, store)
            async with trio.open_nursery() as control:  # what decides to start new work
                self.control = control.cancel_scope
                await control.start(health.serve_credentials_probe, api.availability)
                if self.processor:
                    await control.start(
                        partial(self.processor.serve, work, event_driven=event_driven)
                    )
                if self.generator:
                    await control.start(
                        partial(self.generator.serve, work, event_driven=event_driven)
                    )
                if self.once:
                    control.start_soon(self._one_pass)
                else:
                    await control.start(self.sweeps.serve)
                    if not event_driven:
                        self.sweeps.request_catch_up()  # -cron: a first pass at start-up
                    else:
                        stream = ListenStream(
                            self.ctx.conninfo,
                            [WAKEUP_CHANNEL],
                            self._on_event,
                            keepalive=s.listen_keepalive,
                            application_name=f"fusionbrain-listener {self.worker} listen",
                        )
                        await control.start(stream.serve)
                log.info("Listener ready")
                if self.ctx.embedded or self.with_emulator:
                    log.info("%s", self._try_it())
            await self._soft_stop()
            work.cancel_scope.cancel()

    def _try_it(self) -> str:
        """The one line a first-time user needs: insert a row, then export its image."""
        params = conninfo_to_dict(self.ctx.conninfo)
        params.pop("password", None)  # psql asks for it; a log line never shows it
        target = make_conninfo(**{k: v for k, v in params.items() if v})
        insert = "INSERT INTO images (prompt) VALUES ('a red fox in the snow') RETURNING id"
        prog = sys.argv[0] if os.path.basename(sys.argv[0]) == "listener" else "python -m listener"
        return (
            f'Try it: {psql_command(target)} -c "{insert}"'
            f" ; then: {prog} export ID -o fox.png (or: {prog} enqueue 'a red fox' --wait)"
        )

    def _on_event(self, event: Notification | Connected) -> None:
        if isinstance(event, Connected):
            assert self.sweeps is not None
            self.sweeps.request_catch_up()
        elif event.payload == "ReadyToGenerate" and self.generator:
            self.generator.doorbell.ring()
        elif event.payload == "Generate" and self.processor:
            self.processor.doorbell.ring()

    async def _one_pass(self) -> None:
        assert self.sweeps is not None
        await self.sweeps.catch_up()
        if self.processor:
            await self.processor.wait_idle()
        self.stop("one pass done")

    # -- stopping --------------------------------------------------------------------------------

    def stop(self, reason: str) -> None:
        """Phase 1: stop claiming; in-flight calls get SHUTDOWN_GRACE to finish."""
        if self.stop_reason is None:
            self.stop_reason = reason
        for part in (self.generator, self.processor):
            if part is not None:
                part.stopping = True
        self.guard.stop_by(trio.current_time() + self.settings.shutdown_grace)
        if self.control is not None:
            self.control.cancel()
        elif self.top is not None:
            self.top.cancel()  # still starting (waiting for the database): nothing to finish

    async def _soft_stop(self) -> None:
        if self.generator is not None:
            with trio.move_on_at(self.guard.deadline):
                await self.generator.wait_idle()

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if self.stop_reason is None:
                    log.info(
                        "Received %s: stopping; API calls in flight get up to %gs",
                        name,
                        self.settings.shutdown_grace,
                    )
                    self.stop(name)
                else:
                    log.info("Received %s again: stopping now", name)
                    self.guard.stop_by(trio.current_time())
                    if self.work is not None:
                        self.work.cancel()

    async def _release(self, store: Store) -> None:
        try:
            n = await store.release_all()
        except ListenerError as exc:
            log.warning(
                "Could not release this worker's rows (%s); their leases run out in %gs",
                exc.message,
                self.settings.lease_timeout,
            )
            return
        if n:
            log.info("Released %d row(s) for the next start or another listener", n)


def _unwrap(group: BaseExceptionGroup) -> BaseException:
    """The one expected error inside nested nurseries, so the CLI prints one line."""
    leaves: list[BaseException] = []

    def walk(g: BaseExceptionGroup) -> None:
        for e in g.exceptions:
            walk(e) if isinstance(e, BaseExceptionGroup) else leaves.append(e)

    walk(group)
    expected = [e for e in leaves if isinstance(e, ListenerError)]
    return expected[0] if expected and len(expected) == len(leaves) else group


def main(args: argparse.Namespace) -> int:
    ctx = prepare(args)
    service = Service(ctx, args)
    try:
        return trio.run(service.run)
    except BaseExceptionGroup as group:
        raise _unwrap(group) from None
