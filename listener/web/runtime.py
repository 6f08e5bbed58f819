"""The HTTP server as a component of the service: built from plain values, started with
`nursery.start(web.serve)`, fed by the service with the engine, its database and the
LISTEN stream once they exist. `observe` puts the metrics around the engine's seams."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, cast

import trio

from listener.config import Settings
from listener.db import Database
from listener.errors import DatabaseError
from listener.web.db import WebDb
from listener.web.health import Health
from listener.web.live import Live
from listener.web.metrics import QUEUE_CACHE, Cached, Metrics, counter, gauge
from listener.web.observed import ObservedProvider, ObservedStore, Tracker
from listener.web.server import serve_http, url_for
from listener.web.settings import HttpSettings
from listener.web.thumbs import ThumbCache

log = logging.getLogger("listener.web")


class Web:
    def __init__(
        self,
        http: HttpSettings,
        *,
        settings: Settings,
        conninfo: str,
        db: Database,
        mode: str,
        worker: str,
        provider_name: str,
        prepared: bool = True,
    ) -> None:
        self.http = http
        self.settings = settings
        self.db = db
        self.mode = mode
        self.provider_name = provider_name
        self.metrics = Metrics()
        self.metrics.read_gauges(self._gauges)
        self.metrics.start_at_zero(provider_name)
        self.tracker = Tracker()
        page_conninfo = (
            http.http_database_url.get_secret_value() if http.http_database_url else conninfo
        )
        self.pages = WebDb(
            page_conninfo, application_name=f"fusionbrain-listener {worker} web", prepared=prepared
        )
        self.live = Live(self.pages, polling=mode != "event", poll_interval=settings.poll_interval)
        self.health = Health(db, mode=mode)
        self.thumbs = ThumbCache(http.http_thumbnail_cache_mb * 1024 * 1024)
        self.queue = Cached(QUEUE_CACHE)
        self.engine: Any = None
        self.url = ""

    # -- wiring ------------------------------------------------------------------------

    def observe(self, store: Any, provider: Any) -> tuple[Any, Any]:
        """The engine's seams with the metrics around them."""
        return (
            ObservedStore(store, self.metrics, self.provider_name, self.tracker),
            ObservedProvider(provider, self.metrics, self.tracker),
        )

    def attach(self, engine: Any, stream: Any = None) -> None:
        self.engine = engine
        self.health.engine = engine
        self.health.stream = stream

    def on_stream_event(self, event: object) -> None:
        self.live.on_stream_event(event)

    # -- serving -----------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        from listener.web.app import build_app

        app = build_app(self)
        host, port = self.http.address
        await self.pages.open()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.live.serve)
                bound = cast(tuple[str, int], await nursery.start(serve_http, app, host, port))
                self.url = url_for(*bound)
                log.info(
                    "HTTP server at %s (gallery; /metrics, /healthz, /readyz)%s",
                    self.url,
                    "" if self.http.loopback else " - reachable from other machines",
                )
                task_status.started(self.url)
        finally:
            await self.pages.close()

    # -- metrics -----------------------------------------------------------------------

    async def refresh_queue(self) -> None:
        if not self.queue.stale():
            return
        try:
            self.queue.set(await self.pages.one("queue"))
        except DatabaseError:
            self.queue.set(None)

    @staticmethod
    def _flow_gauges(e: Any, p: str) -> Iterable[Any]:
        """The account's shared budget (docs/flow-control.md), when the engine has one."""
        slots = e.slots
        limiter = slots.limiter if slots is not None else None
        if slots is None or limiter is None:
            return
        values = [([p, "configured"], limiter.configured), ([p, "effective"], limiter.effective)]
        if limiter.ceiling is not None:
            values.append(([p, "ceiling"], limiter.ceiling))
        yield gauge(
            "provider_concurrency",
            "The account's limit on calls at once, shared by every listener using it: "
            "configured (PROVIDER_CONCURRENCY or the provider's default), effective (after "
            "refusals for load), ceiling (the value at the last refusal, while it is kept).",
            ["provider", "value"],
            values,
        )
        yield gauge(
            "provider_slots_held",
            "Slots of the account's budget this process holds.",
            ["provider"],
            [([p], len(slots.held))],
        )
        yield counter(
            "provider_refusals",
            "Submissions the provider refused for load (429, its queue full), this process.",
            ["provider"],
            [([p], limiter.refusals)],
        )
        yield counter(
            "provider_concurrency_changes",
            "Changes of the effective limit made by this process, by direction.",
            ["provider", "direction"],
            [([p, "decrease"], limiter.decreases), ([p, "increase"], limiter.increases)],
        )
        yield counter(
            "provider_slot_waits",
            "Claims that found no free slot of the account's budget, this process.",
            ["provider"],
            [([p], slots.starved)],
        )

    def _gauges(self) -> Iterable[Any]:
        e = self.engine
        p = self.provider_name
        if e is not None:
            counts = e.budget.counts
            yield gauge(
                "rows_in_flight",
                "Rows this process holds, by state: claimed (run not sent yet), "
                "submitting (run call in flight), following (generation followed).",
                ["provider", "state"],
                [
                    ([p, state], counts.get(state, 0))
                    for state in ("claimed", "submitting", "following")
                ],
            )
            yield gauge(
                "leases_held",
                "Rows whose lease this process holds and renews.",
                [],
                [([], len(e.leases.owned))],
            )
            h = e.health
            now = trio.current_time()
            yield gauge(
                "generation_paused",
                "1 while generation is paused: busy (the provider said wait), "
                "credentials (the provider refuses the key) or quota (paid quota used up).",
                ["provider", "reason"],
                [
                    ([p, "busy"], float(now < h.busy_until)),
                    ([p, "credentials"], float(not h.credentials_ok.is_set())),
                    # paid quota used up (a provider seam that reports it)
                    ([p, "quota"], float(getattr(h, "quota", None) is not None)),
                ],
            )
            yield from self._flow_gauges(e, p)
            mode = "cron" if self.mode != "event" else ("poll" if e.polling else "listen")
            yield gauge(
                "wakeup_mode",
                "How this process learns of work: listen (LISTEN/NOTIFY), poll "
                "(POLL_INTERVAL) or cron (the sweeps' schedule).",
                ["mode"],
                [([m], float(m == mode)) for m in ("listen", "poll", "cron")],
            )
        pools = []
        for name, pool in (
            ("main", self.db.pool),
            ("pickup", self.db.pickup),
            ("writes", self.db.writes),
            ("web", self.pages.pool),
        ):
            stats = pool.get_stats()
            size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
            pools += [([name, "in_use"], size - idle), ([name, "idle"], idle)]
        yield gauge(
            "db_pool_connections",
            "Database connections of this process by pool (main, pickup, writes, web) and state.",
            ["pool", "state"],
            pools,
        )
        q = self.queue.value
        if q is not None:
            yield gauge(
                "queue_rows",
                f"Rows in the queue, by state (all listeners; cached {QUEUE_CACHE:g}s): "
                "waiting (ReadyToGenerate), due (waiting and claimable now), generating.",
                ["state"],
                [([k], q[k]) for k in ("waiting", "due", "generating")],
            )
