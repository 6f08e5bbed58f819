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
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import psycopg
import stamina
import trio

from listener import __version__
from listener.config import Settings
from listener.db import connect_kwargs, open_database, translate, use_prepared_statements
from listener.embedded import psql_target
from listener.engine import Connected, Engine, Polling, Wakeup
from listener.engine.flow import Slots, account_id
from listener.engine.ports import Provider
from listener.errors import ConfigError, DatabaseUnavailable, ListenerError
from listener.images import ImageInfo, validate_image
from listener.migrate import check_migrated, refused_for_good
from listener.notify import Connected as ListenConnected
from listener.notify import ListenMode, ListenStream, Notification
from listener.providers.registry import LEGACY, Choice, Connection
from listener.sdnotify import Notifier
from listener.slotstore import PgSlots
from listener.store import PgStore

if TYPE_CHECKING:
    from listener.web.settings import HttpSettings

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


async def _validate_off_the_loop(image: str, expected: tuple[int, int] | None) -> ImageInfo:
    """Decoding megabytes of base64 and reading an image header takes milliseconds: in a
    worker thread, so the event loop never waits for it (small images: at once). Returns
    what the image is (PNG or JPEG, its size), recorded with it."""
    if len(image) < INLINE_VALIDATION:
        return validate_image(image, expected_size=expected)
    return await trio.to_thread.run_sync(partial(validate_image, image, expected_size=expected))


class _StreamEvents:
    """Adapts the LISTEN stream's events to the engine's; `tap` (the HTTP server's live
    updates) sees every event first."""

    def __init__(self, stream: ListenStream, tap: Callable[[object], None] | None = None) -> None:
        self.stream = stream
        self.tap = tap
        self.on_event = lambda event: None
        stream.on_event = self._translate

    def _translate(self, event: object) -> None:
        if self.tap is not None:
            self.tap(event)
        if isinstance(event, ListenMode):
            self.on_event(Polling(on=event.mode == "poll"))
        elif isinstance(event, ListenConnected):
            self.on_event(Connected())
        elif isinstance(event, Notification) and event.channel == WAKEUP_CHANNEL:
            self.on_event(Wakeup(event.payload))

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.stream.serve(task_status=task_status)


class Service:
    def __init__(
        self,
        settings: Settings,
        conninfo: str,
        options: Options,
        provider: Choice,
        *,
        embedded: bool = False,
        http: HttpSettings | None = None,
    ) -> None:
        self.settings = settings
        self.provider = provider
        self.conninfo = conninfo
        self.options = options
        self.embedded = embedded
        self.http = http
        self.systemd = Notifier()
        self.prepared = True
        self.worker = make_worker_id()
        self.engine: Engine | None = None
        self.stop_reason: str | None = None
        self._starting: trio.CancelScope | None = None

    async def run(self) -> int:
        s, o = self.settings, self.options
        log.info(
            "Starting fusionbrain-listener %s (worker %s; roles: %s; %s; provider: %s, %s)",
            __version__,
            self.worker,
            o.roles,
            o.described,
            self.provider.spec.name,
            self.provider.why,
        )
        stamina.instrumentation.set_on_retry_hooks([])  # retries are logged where they happen
        async with trio.open_nursery() as top:
            top.start_soon(self._watch_signals)
            with trio.CancelScope() as self._starting:
                emulator_url = await self._api_endpoint(top)
                await self._wait_for_database()
            if self._starting.cancelled_caught:
                top.cancel_scope.cancel()
                return self._stopped()
            log.info("Database connection established")
            prepared = self.prepared = await self._prepared_statements()
            async with (
                open_database(
                    self.conninfo,
                    s,
                    application_name=self._pool_name(),
                    prepared=prepared,
                ) as db,
                self.provider.spec.open(
                    self.provider.settings,
                    Connection(
                        concurrency=s.api_concurrency
                        or self.provider.spec.traits.default_concurrency,
                        max_response_bytes=s.max_response_bytes,
                        retry_after_max=s.retry_backoff_max,
                        emulator_url=emulator_url,
                    ),
                ) as api,
            ):
                store = PgStore(
                    db,
                    self.worker,
                    s.lease_timeout,
                    provider=self.provider.spec.name,
                    legacy=LEGACY,
                    default_style=s.default_style,
                )
                slots = Slots(
                    PgSlots(
                        db,
                        account=self._account(emulator_url),
                        provider=api.name,
                        worker=self.worker,
                        lease=s.lease_timeout,
                    ),
                    kind=api.traits.slot,
                    limit=s.provider_concurrency or api.traits.default_concurrency,
                    explicit=s.provider_concurrency is not None,
                )
                await self._serve(store, api, slots)
            top.cancel_scope.cancel()
        return self._stopped()

    def _account(self, emulator_url: str | None) -> str:
        """The provider account this process spends (listener_accounts): a fingerprint of
        the provider, its API's URL and its credentials, so listeners sharing a key
        share its budget and none holds the key. The built-in emulator is an account of
        its own per URL."""
        spec, settings = self.provider.spec, self.provider.settings
        parts = [emulator_url, "emulator"] if emulator_url is not None else spec.account(settings)
        return account_id(spec.name, *parts)

    def _pool_name(self) -> str:
        """'fusionbrain-listener <worker> <provider>': the view images_listeners reads the
        provider from it. PostgreSQL keeps 63 bytes: a name that would be cut leaves the
        provider out rather than show part of it."""
        name = f"fusionbrain-listener {self.worker}"
        full = f"{name} {self.provider.spec.name}"
        return full if len(full.encode()) <= 63 else name

    def _stopped(self) -> int:
        reason = self.stop_reason
        log.info("Service stopped%s", f" ({reason})" if reason else "")
        if self.embedded:
            log.info(
                "The embedded PostgreSQL keeps running for the next start; "
                "stop it with: listener embedded stop (or make stop)"
            )
        return 0

    async def _serve(self, store: PgStore, api: Provider, slots: Slots) -> None:
        s, o = self.settings, self.options
        provider: Any = api
        engine_store: Any = store
        web = None
        if self.http is not None:  # the web libraries are imported only then
            from listener.web.runtime import Web

            web = Web(
                self.http,
                settings=s,
                conninfo=self.conninfo,
                db=store.db,
                mode=o.mode,
                worker=self.worker,
                provider_name=provider.name,
                prepared=self.prepared,
            )
            engine_store, provider = web.observe(store, provider)
        wakeups = stream = None
        if o.mode == "event":
            stream = ListenStream(
                s.listen_conninfo() or self.conninfo,
                [WAKEUP_CHANNEL] + ([DONE_CHANNEL] if web is not None else []),
                lambda event: None,
                keepalive=s.listen_keepalive,
                application_name=f"fusionbrain-listener {self.worker} listen",
                notify_conninfo=self.conninfo,
            )
            wakeups = _StreamEvents(stream, tap=web.on_stream_event if web else None)
        self.engine = engine = Engine(
            settings=s,
            store=engine_store,
            provider=provider,
            validate=_validate_off_the_loop,
            generate=o.generate,
            follow=o.follow,
            mode=o.mode,
            wakeups=wakeups,
            slots=slots,
        )

        async def run_engine(*, task_status: trio.TaskStatus[None]) -> None:
            await engine.serve(task_status=task_status)
            nursery.cancel_scope.cancel()  # the HTTP server and the watchdog end with it

        async with trio.open_nursery() as nursery:
            if web is not None:
                web.attach(engine, stream)
                await nursery.start(web.serve)
            await nursery.start(run_engine)
            log.info("Listener ready")
            self.systemd.send("READY=1", "STATUS=Listener ready")
            await nursery.start(self.systemd.serve_watchdog, lambda: engine.stop_reason is None)
            if self.embedded or o.with_emulator:
                log.info("%s", self._try_it())
            if web is not None and (self.embedded or o.with_emulator):
                log.info("Gallery: %s", web.url)
        if engine.stop_reason and not self.stop_reason:
            self.stop_reason = engine.stop_reason

    async def _api_endpoint(self, nursery: trio.Nursery) -> str | None:
        """None: the provider's own API (its credentials are set). Otherwise, with
        --with-emulator, the URL of its built-in emulator, started here."""
        spec, settings = self.provider.spec, self.provider.settings
        key = spec.variables[0] if spec.variables else f"{spec.name}'s credentials"
        if self.provider.configured:
            hosts = spec.shown_hosts(settings)
            log.info("%s: %s", spec.title, ", ".join(hosts) or "configured")
            return None
        if not self.options.with_emulator:
            needed = " and ".join(spec.variables[:2]) or "its credentials"
            raise ConfigError(
                f"configuration error: {key} is not set: set {needed}, or start with "
                "--with-emulator (make run) to try the service with the built-in API "
                "emulator"
            )
        serve = spec.load_emulator()
        url = await nursery.start(serve)
        log.info(
            "No %s: using the built-in %s emulator at %s; images are placeholders until "
            "an API key is set",
            key,
            spec.title.removesuffix(" API"),
            url,
        )
        return str(url)

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
            self.systemd.send("STOPPING=1", f"STATUS=Stopping ({reason})")
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
                        "Received %s: stopping; claiming stopped. A paid call in flight "
                        "is given until its own deadline (at most %gs); send %s again "
                        "to cut it now (it may have been paid for)",
                        name,
                        self.engine.longest_stop()
                        if self.engine is not None
                        else self.settings.shutdown_grace,
                        name,
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


def run(
    settings: Settings,
    conninfo: str,
    options: Options,
    provider: Choice,
    *,
    embedded: bool = False,
    http: HttpSettings | None = None,
) -> int:
    service = Service(settings, conninfo, options, provider, embedded=embedded, http=http)
    try:
        return trio.run(service.run)
    except BaseExceptionGroup as group:
        raise _unwrap(group) from None
