"""One concurrency budget for the whole engine, in one place.

A row held by this process is in exactly one state: `claimed` (held, its run call not yet
made), `submitting` (run call in flight) or `following` (its generation is being
followed). `rows` bounds them all (MAX_IN_FLIGHT). `calls` (API_CONCURRENCY) is ONE
limit on every call to the provider, whatever it is (a submission, a status check or a
download, the credentials probe): `call()` holds one of its slots for the call's
duration, so API_CONCURRENCY=1 means one call at a time. A free slot goes to a waiting
submission first (a paid call does not queue behind a crowd of status checks), then to
the other calls in the order they came. It also sizes how many
ReadyToGenerate rows are claimed at once (no row waits long, claimed, for a slot). A
claim first reserves its room synchronously (`reserve`), so two claim passes can never
take more than there is.

At a stop, a run is over when its first outcome check is (`await_first_check`): the
download of a draw is part of what `wait_runs_done` waits for, so its image lands before
exit (within the paid call's own deadline).

Every time room frees, the budget calls its subscribers: the claims loops look at
waiting work again (claims and adoptions alike), so nothing waits for the next sweep.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Literal

import trio
import trio.lowlevel

State = Literal["claimed", "submitting", "following", "done"]


class Ticket:
    """One row's place in the budget, from claim to release."""

    def __init__(self, budget: Budget, state: State) -> None:
        self._budget = budget
        self.state: State = state
        self.finished = trio.Event()
        self.submitted = trio.Event()  # the run call is over (or there was none)
        self.slot: int | None = None  # its slot of the account's shared budget, if any
        self.generating = False  # its generation is (or may be) in progress at the provider
        self.row_id = 0
        if state == "following":
            self.submitted.set()

    def move(self, state: State) -> None:
        self._budget._move(self, state)

    def await_first_check(self, by: float) -> None:
        """Its generation was just paid for: `wait_runs_done` waits for its first
        outcome check too (until `by`)."""
        self._budget._first_check(self, by)

    def first_checked(self) -> None:
        self._budget._first_check(self, None)

    def close(self) -> None:
        self.move("done")


class Budget:
    def __init__(self, *, rows: int, calls: int) -> None:
        self.rows = rows
        self.calls = calls
        self.counts: dict[str, int] = {"claimed": 0, "submitting": 0, "following": 0}
        self.reserved = 0
        self.calling = 0  # calls to the provider in flight now
        self.most_calling = 0  # the most ever in flight at once (tests, `make bench`)
        self._calls = Slots(calls)
        self._subscribers: list[Callable[[], None]] = []
        self._change = trio.Event()
        # A run of ours whose first outcome check is still to come (a draw's download)
        # -> when it must be over at a stop (trio clock): part of the run.
        self._first_checks: dict[Ticket, float] = {}

    # -- reading -----------------------------------------------------------------------

    @property
    def held(self) -> int:
        return sum(self.counts.values())

    @property
    def free(self) -> int:
        return max(0, self.rows - self.held - self.reserved)

    def snapshot(self) -> dict[str, int]:
        return {**self.counts, "calling": self.calling, "free": self.free}

    def __str__(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.snapshot().items())

    def room_for_runs(self) -> int:
        """How many ReadyToGenerate rows a claim may take now: room, and run calls."""
        waiting_runs = self.counts["claimed"] + self.counts["submitting"] + self.reserved
        return max(0, min(self.free, self.calls - waiting_runs))

    def room_for_follows(self, batch: int) -> int:
        return min(self.free, batch)

    # -- claiming ----------------------------------------------------------------------

    def reserve(self, n: int) -> int:
        n = max(0, min(n, self.free))
        self.reserved += n
        return n

    def take(self, reserved: int, got: int, state: State) -> list[Ticket]:
        """Turn `got` of `reserved` places into tickets; give the rest back."""
        self.reserved -= reserved
        tickets = [self._new(state) for _ in range(got)]
        if got < reserved:
            self._changed()
        return tickets

    def _new(self, state: State) -> Ticket:
        ticket = Ticket(self, state)
        self.counts[state] += 1
        return ticket

    def _move(self, ticket: Ticket, state: State) -> None:
        if ticket.state == state or ticket.state == "done":
            return
        self.counts[ticket.state] -= 1
        if ticket.state in ("claimed", "submitting") and state not in ("claimed", "submitting"):
            ticket.submitted.set()
        ticket.state = state
        if state == "done":
            self._first_checks.pop(ticket, None)
            ticket.finished.set()
        else:
            self.counts[state] += 1
        self._changed()

    def _first_check(self, ticket: Ticket, by: float | None) -> None:
        if by is not None and ticket.state != "done":
            self._first_checks[ticket] = by
        elif self._first_checks.pop(ticket, None) is not None:
            self._wake()

    def first_checks_by(self) -> float:
        """When the last first outcome check still to come must be over (-inf: none)."""
        return max(self._first_checks.values(), default=-math.inf)

    # -- calls to the provider -----------------------------------------------------------

    @asynccontextmanager
    async def call(self, *, submission: bool = False) -> AsyncIterator[None]:
        """One slot of API_CONCURRENCY for the duration of one call to the provider; a
        `submission` is served before the other calls waiting."""
        await self._calls.acquire(first=submission)
        self.calling += 1
        self.most_calling = max(self.most_calling, self.calling)
        try:
            yield
        finally:
            self.calling -= 1
            self._calls.release()

    # -- waking ------------------------------------------------------------------------

    def subscribe(self, on_change: Callable[[], None]) -> None:
        """`on_change()` is called whenever a place frees or changes state."""
        self._subscribers.append(on_change)

    def _wake(self) -> None:
        change, self._change = self._change, trio.Event()
        change.set()

    def _changed(self) -> None:
        self._wake()
        for call in self._subscribers:
            call()

    async def wait_idle(self) -> None:
        """Until no row is held (used by --once and shutdown)."""
        while self.held or self.reserved:
            await self._change.wait()

    async def wait_runs_done(self) -> None:
        """Until no run call is in flight or about to be made, and every run of ours has
        had its first outcome check (soft shutdown: a draw's image lands before exit)."""
        while (
            self.counts["claimed"]
            or self.counts["submitting"]
            or self.reserved
            or self._first_checks
        ):
            await self._change.wait()


class Slots:
    """A counting limiter with two queues: `first` waiters are served before the rest,
    each queue in arrival order. Cancellation-safe: a waiter cancelled after a slot was
    handed to it passes the slot on."""

    def __init__(self, total: int) -> None:
        self.free = total
        self._first: deque[trio.Event] = deque()
        self._rest: deque[trio.Event] = deque()

    async def acquire(self, *, first: bool = False) -> None:
        if self.free and not self._first and (first or not self._rest):
            # Free: taken without a trip through the scheduler (the call it guards is
            # the task's next checkpoint), but not by a task already cancelled.
            await trio.lowlevel.checkpoint_if_cancelled()
            self.free -= 1
            return
        handed = trio.Event()
        queue = self._first if first else self._rest
        queue.append(handed)
        try:
            await handed.wait()
        except BaseException:
            if handed.is_set():
                self.release()  # it was ours already: pass it on
            else:
                queue.remove(handed)
            raise

    def release(self) -> None:
        for queue in (self._first, self._rest):
            if queue:
                queue.popleft().set()  # the slot goes straight to the next waiter
                return
        self.free += 1
