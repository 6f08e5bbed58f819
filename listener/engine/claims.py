"""Wake-ups become claims: the one place that decides how many rows to take.

Two loops, one per kind of work, each woken by its doorbell: a notification, a row
falling due (a retry's not_before, another listener's lease running out), room freeing
in the budget, or a row task letting go of a row. Each pass takes as many rows as the
budget has room for, in batches, until fewer come back than were asked for.

A lease that lapses rings nobody (a row enters Generate leased, and a dead listener
sends nothing), so each loop asks when the next one runs out after every pass and again
at least every LEASE_TIMEOUT / 3 while it waits (`refresh`): a dead listener's rows are
taken over within a moment of their lease running out, not at the sweep.

The claims leave out the rows a live task of this process holds (`Leases.held`), and
only those: a lapsed lease of ours that no task holds any more is claimable.

* `claim_ready`: ReadyToGenerate rows, as many as there are run calls free; each one
  starts a row task that submits it (and follows it, when this process has the
  processor role).
* `adopt`: generations nobody follows (left by a stopped or crashed listener, released
  by a generator-only listener, or by the seed service); each starts a row task that
  follows it.

The sweeps call the same passes; in the event-driven mode they never wait for the work
the passes start (with -cron, a sweep waits for it, as the seed's did: `sweeps`).
"""

from __future__ import annotations

import logging
import math
import random

import trio

from listener.engine.budget import Budget, Ticket
from listener.engine.doorbell import Doorbell
from listener.engine.flow import SLOT_POLL, Slots
from listener.engine.health import ApiHealth
from listener.engine.ports import SlotAsk, Store
from listener.engine.rows import Rows
from listener.errors import DatabaseError
from listener.sanitize import clean

log = logging.getLogger("listener.engine")

ADOPT_BATCH = 100
# A listener whose last wake-up found nothing (another listener was faster) waits up to
# this long before the next claim, so ten listeners do not stampede one row.
CONTENDED_JITTER = 0.003
RETRY_AFTER_DB_ERROR = 1.0
# A generation due now that a claim skipped (its row locked by someone for the moment)
# is asked for again after this long.
SKIPPED_RETRY = 1.0
# After a short claim, the next due time is asked this much later (seconds): the runs it
# started send their requests first.
RUNS_FIRST = 0.001
# A lease seen running out is looked at this long after it did, plus a random spread of
# up to ADOPT_SPREAD, so that many listeners do not all claim at the same instant.
ADOPT_AFTER = 0.05
ADOPT_SPREAD = 0.25


class Claims:
    def __init__(
        self,
        *,
        store: Store,
        budget: Budget,
        health: ApiHealth,
        rows: Rows,
        generate: bool,
        adopt: bool,
        slots: Slots | None = None,
        refresh: float = math.inf,
    ) -> None:
        self.slots = slots
        self._slots_starved = False  # the last pass found no free slot of the account
        if slots is not None:
            slots.subscribe(self._slot_freed)
            if adopt:
                slots.on_orphans(lambda: self.generating.ring())
        self.store = store
        self.budget = budget
        self.health = health
        self.rows = rows
        self.generate = generate
        self.adopting = adopt
        self.refresh = refresh  # the due times are asked again at least this often
        self.ready = Doorbell()
        self.generating = Doorbell()
        self.stopping = False
        self.ready_due_in: float | None = None
        self.generating_due_in: float | None = None
        # Set when a pass stopped for lack of room: freed room rings the doorbell.
        self._ready_starved = False
        self._generating_starved = False
        # The loops' waits: a pass (a sweep's too) that learns of an earlier due time
        # brings the wait's end forward.
        self._sleeping: dict[str, trio.CancelScope] = {}
        budget.subscribe(self._room_changed)

    def _room_changed(self) -> None:
        if self._ready_starved and self.budget.room_for_runs() > 0:
            self.ready.ring()
        if self._generating_starved and self.budget.free > 0:
            self.generating.ring()

    def _slot_freed(self) -> None:
        if self._slots_starved:
            self.ready.ring()

    def look(self) -> None:
        """Look at the table now (a poll, a reconnection)."""
        self.ready.ring()
        self.generating.ring()

    # -- the loops ---------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            if self.generate:
                nursery.start_soon(self._ready_loop)
            if self.adopting:
                nursery.start_soon(self._generating_loop)
            task_status.started()

    async def _wait(self, kind: str, bell: Doorbell, deadline: float) -> bool:
        """Until the doorbell rings (True) or the deadline (trio clock) passes (False)."""
        with trio.CancelScope(deadline=deadline) as scope:
            self._sleeping[kind] = scope
            try:
                await bell.wait()
                return True
            finally:
                del self._sleeping[kind]
        return False

    def _due(self, kind: str, seconds: float | None) -> None:
        setattr(self, f"{kind}_due_in", seconds)
        scope = self._sleeping.get(kind)
        if scope is not None and seconds is not None:
            if kind == "generating":
                # as `_until_due(spread=True)` waits: a moment after the lease runs out,
                # spread, so that the listeners that learn of it do not all claim at once
                seconds += ADOPT_AFTER + random.uniform(0, ADOPT_SPREAD)
            scope.deadline = min(scope.deadline, trio.current_time() + seconds)

    def _due_after_short_claim(self, kind: str, seconds: float | None) -> None:
        """A claim took fewer rows than it asked for; `seconds`: when the next is due. Due
        now, yet not taken, is a row the claim skipped (locked elsewhere for the moment):
        looked at again shortly, not in a tight loop."""
        self._due(kind, SKIPPED_RETRY if seconds is not None and seconds <= 0 else seconds)

    async def _until_due(self, kind: str, bell: Doorbell, ask, spread: bool = False) -> bool:
        """Until the doorbell rings (True) or work falls due (False). The due time is
        asked again (`ask`) every `refresh` seconds meanwhile: a lease that runs out
        rings nobody, and a live one moves on at each renewal."""
        while True:
            due = getattr(self, f"{kind}_due_in")
            if due is not None and spread:
                due += ADOPT_AFTER + random.uniform(0, ADOPT_SPREAD)
            now = trio.current_time()
            due_at = math.inf if due is None else now + due
            if await self._wait(kind, bell, min(due_at, now + self.refresh)):
                return True
            if trio.current_time() >= due_at:
                return False
            if self.stopping:
                continue
            try:
                seconds = await ask(held=self.rows.leases.held())
            except DatabaseError:
                seconds = RETRY_AFTER_DB_ERROR
            if seconds is not None and seconds <= 0:
                return False
            self._due(kind, seconds)

    async def _ready_loop(self) -> None:
        # The first look at the table is the start-up sweep's, so its count is true.
        rung = await self._until_due("ready", self.ready, self.store.next_ready_in)
        while True:
            await self.health.ready_to_generate()
            found = await self.claim_ready()
            contended = rung and found == 0
            rung = await self._until_due("ready", self.ready, self.store.next_ready_in)
            if rung and contended:
                await trio.sleep(random.uniform(0, CONTENDED_JITTER))

    async def _generating_loop(self) -> None:
        # the start-up sweep first (it may have run already: then its due time counts)
        await self._until_due(
            "generating", self.generating, self.store.next_generating_in, spread=True
        )
        while True:
            await self.adopt()
            await self._until_due(
                "generating", self.generating, self.store.next_generating_in, spread=True
            )

    # -- the passes --------------------------------------------------------------------

    async def claim_ready(self, tickets: list[Ticket] | None = None) -> int:
        """Claim and start every due ReadyToGenerate row there is room for."""
        total = 0
        while not self.stopping and self.health.may_generate():
            want = self.budget.reserve(min(self.budget.room_for_runs(), self.health.claim_limit()))
            self._ready_starved = want == 0
            if not want:
                self._due("ready", None)  # freed room rings the doorbell
                break
            # One slot of the account's shared budget per row, taken in the claim's own
            # statement: a row never waits claimed (and counted) for a slot.
            ask = self.slots.ask(want) if self.slots is not None else None
            try:
                claimed = await self.store.claim_ready(
                    want, held=self.rows.leases.held(), slots=ask
                )
            except DatabaseError as exc:
                self._unclaimed(want, ask)
                log.warning("Generator: cannot claim rows: %s", exc.message)
                self._due("ready", RETRY_AFTER_DB_ERROR)
                return total
            except BaseException:
                # Cancelled (a stop) during the statement: it claimed nothing (the claim
                # lane repairs a statement whose outcome it lost), so the places reserved
                # go back, or the stop would wait for them to the end of its grace.
                self._unclaimed(want, ask)
                raise
            started = self.budget.take(want, len(claimed), "claimed")
            # Bounded by the budget's free slots rather than by the rows due: more may be
            # due, and a slot that frees rings the doorbell (or another listener's does,
            # which is seen within SLOT_POLL).
            starved = False
            if self.slots is not None and ask is not None:
                for ticket, slot in zip(started, ask.got, strict=True):
                    ticket.slot = slot
                starved = ask.free < want and len(claimed) == ask.free
                self._slots_starved = starved
                with trio.CancelScope(shield=True):  # the claimed rows must reach their tasks
                    try:
                        await self.slots.claimed(ask, want)
                    except DatabaseError as exc:
                        log.warning("Generator: provider slots: %s", exc.message)
            for row, ticket in zip(claimed, started, strict=True):
                self.rows.start_run(row, ticket)
            if tickets is not None:
                tickets.extend(started)
            total += len(claimed)
            if starved:
                self._due("ready", SLOT_POLL)  # another listener's slot may free
                break
            if len(claimed) < want:
                # Asked a moment later: the runs just started share this thread, and
                # their requests go out first (asked at once, the question's own work
                # would come between a row's claim and its request).
                await trio.sleep(RUNS_FIRST)
                try:
                    due = await self.store.next_ready_in(held=self.rows.leases.held())
                except DatabaseError:
                    due = RETRY_AFTER_DB_ERROR
                self._due_after_short_claim("ready", due)
                break
            self._due("ready", 0.0)
        else:
            if not self.stopping:
                # Paused (a refused key, the provider busy): the loop waits in
                # health.ready_to_generate() and looks as soon as the pause ends.
                self._due("ready", 0.0)
        return total

    def _unclaimed(self, want: int, ask: SlotAsk | None) -> None:
        """A claim that took nothing: its reserved places and slots are free again."""
        self.budget.take(want, 0, "claimed")
        if self.slots is not None and ask is not None:
            self.slots.unclaimed(ask)

    async def adopt(self, tickets: list[Ticket] | None = None) -> int:
        """Claim and follow every generation nobody follows, as far as there is room."""
        total = 0
        while not self.stopping:
            want = self.budget.reserve(self.budget.room_for_follows(ADOPT_BATCH))
            self._generating_starved = want == 0
            if not want:
                self._due("generating", None)  # freed room rings the doorbell
                break
            try:
                claimed = await self.store.claim_generating(want, held=self.rows.leases.held())
            except DatabaseError as exc:
                self.budget.take(want, 0, "following")
                log.warning("Processor: cannot claim generations: %s", exc.message)
                self._due("generating", RETRY_AFTER_DB_ERROR)
                return total
            except BaseException:
                self.budget.take(want, 0, "following")  # cancelled: as claim_ready
                raise
            if len(claimed.rows) < want:
                self._due_after_short_claim("generating", claimed.next_due_in)
            else:
                self._due("generating", claimed.next_due_in)
            started = self.budget.take(want, len(claimed.rows), "following")
            for gen, ticket in zip(claimed.rows, started, strict=True):
                # the uuid comes from the row, which other roles may have written
                log.info("Resuming generation of image ID %d (uuid %s)", gen.id, clean(gen.handle))
                self.rows.start_follow(gen, ticket)
            if tickets is not None:
                tickets.extend(started)
            total += len(claimed.rows)
            if len(claimed.rows) < want:
                break
        return total
