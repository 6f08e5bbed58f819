"""Wake-ups become claims: the one place that decides how many rows to take.

Two loops, one per kind of work, each woken by its doorbell: a notification, a row
falling due (a retry's not_before, another listener's lease running out), or room
freeing in the budget. Each pass takes as many rows as the budget has room for, in
batches, until fewer come back than were asked for.

* `claim_ready`: ReadyToGenerate rows, as many as there are run calls free; each one
  starts a row task that submits it (and follows it, when this process has the
  processor role).
* `adopt`: generations nobody follows (left by a stopped or crashed listener, released
  by a generator-only listener, or by the seed service); each starts a row task that
  follows it.

The sweeps call the same passes; they never wait for the work the passes start.
"""

from __future__ import annotations

import logging
import math
import random

import trio

from listener.engine.budget import Budget, Ticket
from listener.engine.doorbell import Doorbell, jittered
from listener.engine.flow import SLOT_POLL, Slots
from listener.engine.health import ApiHealth
from listener.engine.ports import Store
from listener.engine.rows import Rows
from listener.errors import DatabaseError
from listener.sanitize import clean

log = logging.getLogger("listener.engine")

ADOPT_BATCH = 100
# A listener whose last wake-up found nothing (another listener was faster) waits up to
# this long before the next claim, so ten listeners do not stampede one row.
CONTENDED_JITTER = 0.003
RETRY_AFTER_DB_ERROR = 1.0


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

    async def _wait(self, kind: str, bell: Doorbell, due: float | None) -> bool:
        """Until the doorbell rings (True) or the due time passes (False)."""
        deadline = math.inf if due is None else trio.current_time() + due
        with trio.CancelScope(deadline=deadline) as scope:
            self._sleeping[kind] = scope
            try:
                return await bell.wait()
            finally:
                del self._sleeping[kind]
        return False

    def _due(self, kind: str, seconds: float | None) -> None:
        setattr(self, f"{kind}_due_in", seconds)
        scope = self._sleeping.get(kind)
        if scope is not None and seconds is not None:
            scope.deadline = min(scope.deadline, trio.current_time() + seconds)

    async def _ready_loop(self) -> None:
        # The first look at the table is the start-up sweep's, so its count is true.
        rung = await self._wait("ready", self.ready, None)
        while True:
            await self.health.ready_to_generate()
            found = await self.claim_ready()
            contended = rung and found == 0
            rung = await self._wait("ready", self.ready, self.ready_due_in)
            if rung and contended:
                await trio.sleep(random.uniform(0, CONTENDED_JITTER))

    async def _generating_loop(self) -> None:
        await self._wait("generating", self.generating, None)  # the start-up sweep first
        while True:
            await self.adopt()
            due = self.generating_due_in
            await self._wait(
                "generating", self.generating, None if due is None else jittered(due + 0.05)
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
            slots: list[int] = []
            n = want
            if self.slots is not None:
                # One slot of the account's shared budget per row, before the row is
                # claimed: a row never waits claimed (and counted) for a slot.
                try:
                    slots = await self.slots.take(want)
                except DatabaseError as exc:
                    self.budget.take(want, 0, "claimed")
                    log.warning("Generator: cannot take provider slots: %s", exc.message)
                    self._due("ready", RETRY_AFTER_DB_ERROR)
                    return total
                self._slots_starved = not slots
                if not slots:
                    self.budget.take(want, 0, "claimed")
                    self._due("ready", SLOT_POLL)  # another listener's slot may free
                    break
                n = len(slots)
            try:
                claimed = await self.store.claim_ready(n)
            except DatabaseError as exc:
                self.budget.take(want, 0, "claimed")
                if self.slots is not None:
                    self.slots.give_back(slots)
                log.warning("Generator: cannot claim rows: %s", exc.message)
                self._due("ready", RETRY_AFTER_DB_ERROR)
                return total
            started = self.budget.take(want, len(claimed), "claimed")
            if self.slots is not None:
                used, unused = slots[: len(claimed)], slots[len(claimed) :]
                for ticket, slot in zip(started, used, strict=True):
                    ticket.slot = slot
                self.slots.give_back(unused)
                if len(claimed) < n:
                    self.slots.spare_to_table()  # nothing more to do: others may use them
                # shielded: the claimed rows must reach their tasks (which own them)
                with trio.CancelScope(shield=True), trio.move_on_after(RETRY_AFTER_DB_ERROR * 5):
                    try:
                        await self.slots.bind(used, [row.id for row in claimed])
                    except DatabaseError as exc:  # the slots' leases still hold them
                        log.warning("Generator: cannot bind provider slots: %s", exc.message)
            for row, ticket in zip(claimed, started, strict=True):
                self.rows.start_run(row, ticket)
            if tickets is not None:
                tickets.extend(started)
            total += len(claimed)
            if len(claimed) < n:
                # Asked only now, while the runs just started are already on their way.
                try:
                    self._due("ready", await self.store.next_ready_in())
                except DatabaseError:
                    self._due("ready", RETRY_AFTER_DB_ERROR)
                break
            self._due("ready", 0.0)
        return total

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
                claimed = await self.store.claim_generating(want)
            except DatabaseError as exc:
                self.budget.take(want, 0, "following")
                log.warning("Processor: cannot claim generations: %s", exc.message)
                self._due("generating", RETRY_AFTER_DB_ERROR)
                return total
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
