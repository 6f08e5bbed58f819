"""The service: settings in, a running engine out.

Start: the API endpoint (or the built-in emulator), the database (reachable, migrated,
DEFAULT_STYLE known; a database that is down is waited for), then the engine with the
LISTEN stream as its wake-up source. With -cron: no LISTEN, the sweeps are the schedule.
With --once: one pass of the chosen roles, then exit. SIGINT / SIGTERM stop the engine
in its two phases (listener.engine.engine); a second signal skips the grace period.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import sys
from dataclasses import dataclass
from functools import partial
from typing import Literal

import psycopg
import stamina
import trio

from listener import __version__
from listener.api.client import FusionBrainClient
from listener.config import Settings
from listener.db import connect_kwargs, open_database, translate, use_prepared_statements
from listener.embedded import psql_target
from listener.engine import Connected, Engine, Polling, Wakeup
from listener.engine.flow import Slots, account_id
from listener.errors import ConfigError, DatabaseUnavailable, ListenerError
from listener.images import validate_image
from listener.migrate import check_migrated, refused_for_good
from listener.notify import Connected as ListenConnected
from listener.notify import ListenMode, ListenStream, Notification
from listener.providers.fusionbrain import FusionBrainProvider
from listener.slotstore import PgSlots
from listener.store import PgStore

log = logging.getLogger("listener")

WAKEUP_CHANNEL = "images_wakeup"
DONE_CHANNEL = "images_done"


@dataclass(frozen=True)
class Options:
    """What the command line asks of the service, as plain values."""

    generate: bool = True
    follow: bool = True
    mode: Literal["event", "cron", "once"] = "event"
    with_emulator: bool = False

    @property
    def roles(self) -> str:
        return ", ".join(
            n for n, on in (("generator", self.generate), ("processor", self.follow)) if on
        )

    @property
    def described(self) -> str:
        return {
            "once": "one pass",
            "cron": "schedule only (-cron)",
            "event": "event-driven, sweeps as fallback",
        }[self.mode]


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


# Below this many base64 characters, validating takes tens of microseconds: less than a
# hop to a worker thread and back.
INLINE_VALIDATION = 64 * 1024


async def _validate_off_the_loop(image: str, expected: tuple[int, int] | None) -> None:
    """Decoding megabytes of base64 and reading an image header takes milliseconds: in a
    worker thread, so the event loop never waits for it (small images: at once)."""
    if len(image) < INLINE_VALIDATION:
        validate_image(image, expected_size=expected)
        return
    await trio.to_thread.run_sync(partial(validate_image, image, expected_size=expected))


class _StreamEvents:
    """Adapts the LISTEN stream's events to the engine's."""

    def __init__(self, stream: ListenStream) -> None:
        self.stream = stream
        self.on_event = lambda event: None
        stream.on_event = self._translate

    def _translate(self, event: object) -> None:
        if isinstance(event, ListenMode):
            self.on_event(Polling(on=event.mode == "poll"))
        elif isinstance(event, ListenConnected):
            self.on_event(Connected(first=event.first))
        elif isinstance(event, Notification):
            self.on_event(Wakeup(event.payload))

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.stream.serve(task_status=task_status)


class Service:
    def __init__(
        self, settings: Settings, conninfo: str, options: Options, *, embedded: bool = False
    ) -> None:
        self.settings = settings
        self.conninfo = conninfo
        self.options = options
        self.embedded = embedded
        self.worker = make_worker_id()
        self.engine: Engine | None = None
        self.stop_reason: str | None = None
        self._starting: trio.CancelScope | None = None

    async def run(self) -> int:
        s, o = self.settings, self.options
        log.info(
            "Starting fusionbrain-listener %s (worker %s; roles: %s; %s)",
            __version__,
            self.worker,
            o.roles,
            o.described,
        )
        stamina.instrumentation.set_on_retry_hooks([])  # retries are logged where they happen
        async with trio.open_nursery() as top:
            top.start_soon(self._watch_signals)
            with trio.CancelScope() as self._starting:
                base_url, key, secret = await self._api_endpoint(top)
                await self._wait_for_database()
            if self._starting.cancelled_caught:
                top.cancel_scope.cancel()
                return self._stopped()
            log.info("Database connection established")
            prepared = await self._prepared_statements()
            async with (
                open_database(
                    self.conninfo,
                    s,
                    application_name=f"fusionbrain-listener {self.worker}",
                    prepared=prepared,
                ) as db,
                FusionBrainClient(
                    base_url,
                    key,
                    secret,
                    timeout=s.api_timeout,
                    result_timeout=s.api_result_timeout,
                    max_response_bytes=s.max_response_bytes,
                    retry_after_max=s.retry_backoff_max,
                    max_connections=2 * s.api_concurrency,
                ) as api,
            ):
                provider = FusionBrainProvider(api)
                slots = Slots(
                    PgSlots(
                        db,
                        account=account_id(provider.name, base_url, key, secret),
                        provider=provider.name,
                        worker=self.worker,
                        lease=s.lease_timeout,
                    ),
                    kind=provider.traits.slot,
                    limit=s.provider_concurrency or provider.traits.default_concurrency,
                    explicit=s.provider_concurrency is not None,
                )
                await self._serve(PgStore(db, self.worker, s.lease_timeout), provider, slots)
            top.cancel_scope.cancel()
        return self._stopped()

    def _stopped(self) -> int:
        reason = self.stop_reason
        log.info("Service stopped%s", f" ({reason})" if reason else "")
        if self.embedded:
            log.info(
                "The embedded PostgreSQL keeps running for the next start; "
                "stop it with: listener embedded stop (or make stop)"
            )
        return 0

    async def _serve(self, store: PgStore, provider: FusionBrainProvider, slots: Slots) -> None:
        s, o = self.settings, self.options
        wakeups = None
        if o.mode == "event":
            stream = ListenStream(
                s.listen_conninfo() or self.conninfo,
                [WAKEUP_CHANNEL],
                lambda event: None,
                keepalive=s.listen_keepalive,
                application_name=f"fusionbrain-listener {self.worker} listen",
                notify_conninfo=self.conninfo,
            )
            wakeups = _StreamEvents(stream)
        self.engine = Engine(
            settings=s,
            store=store,
            provider=provider,
            validate=_validate_off_the_loop,
            generate=o.generate,
            follow=o.follow,
            mode=o.mode,
            wakeups=wakeups,
            slots=slots,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(self.engine.serve)
            log.info("Listener ready")
            if self.embedded or o.with_emulator:
                log.info("%s", self._try_it())
        if self.engine.stop_reason and not self.stop_reason:
            self.stop_reason = self.engine.stop_reason

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
        if not self.options.with_emulator:
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

    async def _prepared_statements(self) -> bool:
        """DB_PREPARED_STATEMENTS; auto looks for a transaction pooler (off if unsure)."""
        try:
            return await trio.to_thread.run_sync(
                use_prepared_statements,
                self.settings.db_prepared_statements,
                self.conninfo,
                abandon_on_cancel=True,
            )
        except psycopg.Error as exc:
            log.warning(
                "Could not tell whether a connection pooler is in between (%s): "
                "server-side prepared statements are off",
                translate(exc).message,
            )
            return False

    async def _wait_for_database(self) -> None:
        """Reachable, migrated, and knows DEFAULT_STYLE. A database that is down is waited
        for (one line per attempt); one that refuses us for good ends start-up."""
        async for attempt in stamina.retry_context(
            on=DatabaseUnavailable,
            attempts=None,
            timeout=None,
            wait_initial=0.5,
            wait_max=30.0,
            wait_jitter=1.0,
        ):
            with attempt:
                try:
                    await trio.to_thread.run_sync(
                        _check_database,
                        self.conninfo,
                        self.settings.default_style,
                        abandon_on_cancel=True,
                    )
                except psycopg.Error as exc:
                    err = translate(exc)
                    if not isinstance(err, DatabaseUnavailable):
                        raise err from None
                    fatal = refused_for_good(err)
                    if fatal is not None:
                        raise fatal from None
                    reason = err.message.removeprefix("database unavailable: ")
                    log.warning("Database unavailable: %s; retrying", reason)
                    raise err from None

    def _try_it(self) -> str:
        """The one line a first-time user needs: insert a row, then export its image."""
        insert = "INSERT INTO images (prompt) VALUES ('a red fox in the snow') RETURNING id"
        prog = sys.argv[0] if os.path.basename(sys.argv[0]) == "listener" else "python -m listener"
        return (
            f'Try it: {psql_target(self.conninfo)} -c "{insert}"'
            f" ; then: {prog} export ID -o fox.png (or: {prog} enqueue 'a red fox' --wait)"
        )

    # -- stopping ----------------------------------------------------------------------

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        if self.engine is not None:
            self.engine.stop(reason)
        elif self._starting is not None:
            self._starting.cancel()  # still starting: nothing to finish

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
                    if self.engine is not None:
                        self.engine.stop_now()


def _unwrap(group: BaseExceptionGroup) -> BaseException:
    """The one expected error inside nested nurseries, so the CLI prints one line."""
    leaves: list[BaseException] = []

    def walk(g: BaseExceptionGroup) -> None:
        for e in g.exceptions:
            walk(e) if isinstance(e, BaseExceptionGroup) else leaves.append(e)

    walk(group)
    expected = [e for e in leaves if isinstance(e, ListenerError)]
    return expected[0] if expected and len(expected) == len(leaves) else group


def run(settings: Settings, conninfo: str, options: Options, *, embedded: bool = False) -> int:
    service = Service(settings, conninfo, options, embedded=embedded)
    try:
        return trio.run(service.run)
    except BaseExceptionGroup as group:
        raise _unwrap(group) from None
