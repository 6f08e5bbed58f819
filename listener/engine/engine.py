"""The engine: the components wired, with their lifetimes and the shutdown phases.

    Leases ─ renews the rows owned by live row tasks; releases what they leave behind
    Rows   ─ the row tasks' nursery: submit (Runs) then follow (Follow), one task a row
    Claims ─ wake-ups -> claims, sized by the Budget; starts row tasks
    Sweeps ─ the seed's 5/10-minute cadence: claim passes, the fallback (or, -cron, the
             schedule)
    ApiHealth ─ busy back-off and the credentials probe, shared by every call
    a wake-up source (the LISTEN stream) rings the claims' doorbells through `on_event`

Built from plain values: settings, a store, a provider, a validator; no CLI object.

Stop (`stop()`), in two phases:
1. soft: claiming stops at once (claims, sweeps and the wake-up source are cancelled);
   a row claimed but not yet sent is released; a paid call in flight (a submission, a
   draw) keeps its own deadline, the provider's `Traits.call_timeout`, and the writes of
   its outcome SHUTDOWN_GRACE after it; so does the first outcome check of what it
   returns (a draw's download and the image's write: it lands before exit); other calls
   get SHUTDOWN_GRACE;
2. hard: the row tasks are cancelled (shielded API calls keep what is left of their
   time); every row still held is released in one statement (a Generate row keeps its
   uuid), so the next start or another listener resumes it at once.
A second signal (`stop_now()`) cuts everything at once, paid calls included: a call cut
that way may have been paid for, and counts as an unknown outcome.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import trio

from listener.config import Settings
from listener.engine.budget import Budget
from listener.engine.claims import Claims
from listener.engine.flow import Slots
from listener.engine.follow import Follow, Validate
from listener.engine.guard import Guard
from listener.engine.health import ApiHealth
from listener.engine.lease import Leases
from listener.engine.pacing import Pacing
from listener.engine.ports import Provider, Store
from listener.engine.rows import Rows
from listener.engine.runs import Runs
from listener.engine.sweeps import Sweeps

log = logging.getLogger("listener.engine")

Mode = Literal["event", "cron", "once"]


class Wakeups(Protocol):
    """A source of wake-ups (the LISTEN stream): calls `on_event` for each."""

    on_event: Callable[[Connected | Polling | Wakeup], None]

    async def serve(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...


@dataclass(frozen=True)
class Connected:
    """The wake-up source is (again) in place: what happened meanwhile was not heard."""


@dataclass(frozen=True)
class Polling:
    """The wake-up source cannot hear notifications (a transaction-mode pooler): look
    for due rows every POLL_INTERVAL seconds while `on`."""

    on: bool


@dataclass(frozen=True)
class Wakeup:
    """Work may be waiting: 'ReadyToGenerate' or 'Generate'."""

    status: str


class Engine:
    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        provider: Provider,
        validate: Validate,
        generate: bool = True,
        follow: bool = True,
        mode: Mode = "event",
        wakeups: Wakeups | None = None,
        slots: Slots | None = None,
    ) -> None:
        s = settings
        self.settings = settings
        self.mode = mode
        self.guard = Guard()
        traits = provider.traits
        # The settings override the provider's defaults.
        self.concurrency = s.api_concurrency or traits.default_concurrency
        self.resends = (
            traits.unknown_outcome_resends
            if s.unknown_outcome_resends is None
            else s.unknown_outcome_resends
        )
        self.budget = Budget(rows=s.max_in_flight, calls=self.concurrency)
        self.health = ApiHealth(
            backoff_base=s.retry_backoff_base,
            backoff_max=s.retry_backoff_max,
            title=provider.title,
            credentials_help=provider.credentials_help,
        )
        self.leases = Leases(store, lease=s.lease_timeout)
        self.provider = provider
        # The account's budget shared with every listener (None: this process alone).
        self.slots = slots
        # Status checks spaced from observed generation times; counts for /metrics.
        self.pacing = Pacing(interval=s.default_check_interval)
        follower = (
            Follow(s, store, provider, self.health, self.guard, self.budget, validate, self.pacing)
            if follow
            else None
        )
        runs = (
            Runs(
                s,
                store,
                provider,
                self.health,
                self.guard,
                follow_here=follow,
                resends=self.resends,
                budget=self.budget,
                slots=slots,
            )
            if generate
            else None
        )
        self.rows = Rows(
            settings=s,
            store=store,
            leases=self.leases,
            guard=self.guard,
            runs=runs,
            follow=follower,
            slots=slots,
        )
        self.claims = Claims(
            store=store,
            budget=self.budget,
            health=self.health,
            rows=self.rows,
            generate=generate,
            adopt=follow,
            slots=slots,
            refresh=s.lease_timeout / 3,
        )
        # A task that let go of a row it lost: the row may be work again, and the claims
        # see it only now that no task of ours holds it.
        self.leases.on_let_go = self.claims.look
        if runs is not None:
            runs.on_retry_scheduled = self.claims.ready.ring
        self.sweeps = Sweeps(
            self.claims,
            generator_interval=s.generator_sweep_interval,
            processor_interval=s.processor_sweep_interval,
            wait_for_work=mode != "event",
        )
        self.wakeups = wakeups
        if wakeups is not None:
            wakeups.on_event = self.on_event
        self.polling = False
        self.stop_reason: str | None = None
        self._control: trio.CancelScope | None = None
        self._hard: trio.CancelScope | None = None

    # -- events ------------------------------------------------------------------------

    def on_event(self, event: Connected | Polling | Wakeup) -> None:
        """A wake-up source's report: look at the table."""
        if isinstance(event, Connected):
            self.sweeps.request_catch_up()
            return
        if isinstance(event, Polling):
            if event.on and not self.polling:
                log.info(
                    "Looking for due rows every %gs (POLL_INTERVAL)", self.settings.poll_interval
                )
            self.polling = event.on
            return
        if isinstance(event, Wakeup):
            if event.status == "ReadyToGenerate":
                self.claims.ready.ring()
            elif event.status == "Generate":
                self.claims.generating.ring()

    # -- lifetime ----------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as outer:
            self._hard = outer.cancel_scope
            if self.slots is not None:
                await outer.start(self.slots.serve)  # outlives the rows: gives back at exit
            await outer.start(self.leases.serve)
            async with trio.open_nursery() as work:
                await work.start(self.rows.serve)
                async with trio.open_nursery() as control:
                    self._control = control.cancel_scope
                    if self.stop_reason is not None:
                        control.cancel_scope.cancel()
                    await control.start(self.health.serve_credentials_probe, self._probe)
                    if self.mode == "event":
                        await control.start(self.claims.serve)
                        control.start_soon(self._poll)
                    if self.mode == "once":
                        control.start_soon(self._one_pass)
                    else:
                        await control.start(self.sweeps.serve)
                        if self.wakeups is None:
                            self.sweeps.request_catch_up()
                        else:
                            await control.start(self.wakeups.serve)
                    task_status.started()
                # Phase 1: nothing new is claimed; paid calls in flight, and the first
                # outcome check of each (a draw's download), keep their own deadline;
                # the rest get the grace period.
                with trio.move_on_at(self._runs_end()):
                    await self.budget.wait_runs_done()
                # Phase 2: the row tasks are cancelled (shielded calls keep the grace) ...
                self.rows.cancel()
            # ... and once they have all ended, Leases releases what they left behind.
            outer.cancel_scope.cancel()
        self._report()

    def _runs_end(self) -> float:
        """When phase 1 ends at the latest: the grace, or the last paid call's own
        deadline (which its first outcome check shares), unless a second signal came."""
        paid = -math.inf if self.guard.hard else self.budget.first_checks_by()
        return max(self.guard.deadline, self.guard.paid_until(), paid)

    def _report(self) -> None:
        """One line on the way out: what the flow control did (also in /metrics)."""
        p = self.pacing
        if p.finished:
            log.info(
                "Status checks: %d for %d finished generations (%.2f per image)",
                p.checks,
                p.finished,
                p.checks / p.finished,
            )
        limiter = self.slots.limiter if self.slots is not None else None
        if limiter is not None and (limiter.refusals or limiter.effective < limiter.configured):
            log.info(
                "Provider concurrency: effective %d of %d (%s); %d refusal(s) for load",
                limiter.effective,
                limiter.configured,
                limiter.reason,
                limiter.refusals,
            )

    async def _probe(self) -> None:
        """The credentials probe is a call to the provider like any other: it takes one
        slot of API_CONCURRENCY."""
        async with self.budget.call():
            await self.provider.probe()

    async def _poll(self) -> None:
        """While the wake-up source is deaf: look at the table every POLL_INTERVAL."""
        while True:
            await trio.sleep(self.settings.poll_interval)
            if self.polling:
                self.claims.look()

    async def _one_pass(self) -> None:
        await self.sweeps.catch_up()
        await self.budget.wait_idle()
        self.stop("one pass done")

    def stop(self, reason: str, *, grace: float | None = None, hard: bool = False) -> None:
        """Phase 1 now; phase 2 when the runs in flight are done or their time is up."""
        if self.stop_reason is None:
            self.stop_reason = reason
        grace = self.settings.shutdown_grace if grace is None else grace
        self.claims.stopping = True
        self.guard.stop_by(trio.current_time() + grace, hard=hard)
        if self._control is not None:
            self._control.cancel()

    def longest_stop(self) -> float:
        """The longest a stop may take from now: a paid call started now keeps the
        provider's call timeout, and the writes of its outcome the grace after it."""
        return self.provider.traits.call_timeout + 2 * self.settings.shutdown_grace

    def stop_now(self) -> None:
        """A second signal: cut everything now, paid calls included."""
        self.stop(self.stop_reason or "stopped", grace=0, hard=True)
        if self._hard is not None:
            self.rows.cancel()
