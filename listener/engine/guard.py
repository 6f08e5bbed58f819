"""Work that must not be cut half-way, and writes that must not be lost.

An API call in flight may already have cost the user quota (a run) or be carrying a
result the API hands out only once (a status answer): cancelling it would throw that
away. So such calls, and the writes that record their outcome, run *shielded* from
cancellation. Only shutdown bounds them: `stop_by(deadline)` gives every shielded scope,
present and future, until the deadline (SHUTDOWN_GRACE after the stop signal), except
that a *paid* call keeps its own (`shielded(until=...)`: its start plus the provider's
call timeout, and the grace again for the writes of its outcome), so a stop never
abandons a draw that was going to finish; the first outcome check of that call (a draw's
download) is given the same deadline. A second signal (`stop_by(now, hard=True)`) cuts
everything, paid calls included. A wait that a stop makes pointless (`until_stopped`)
ends at the stop.

A durable write (a uuid the API accepted, an image it handed out, a row's release) is
retried with backoff (stamina, entered once a try failed: listener.backoff) while the
database cannot take it now: unavailable, or busy (statement timeout behind an
operator's lock, deadlock). It ends when it lands,
when the lease is lost (`LeaseLost` is raised to the caller), or at the deadline.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import trio

from listener.backoff import first_then_retry
from listener.errors import DatabaseBusy, DatabaseUnavailable, ListenerError

log = logging.getLogger("listener.engine")

T = TypeVar("T")

RETRYABLE = (DatabaseUnavailable, DatabaseBusy)


class WriteAbandoned(ListenerError):
    """A durable write was abandoned at shutdown: the database could not take it."""


class Guard:
    def __init__(self) -> None:
        self.deadline = math.inf
        self.hard = False  # a second signal: paid calls are cut too
        self._scopes: dict[trio.CancelScope, float] = {}  # scope -> its own floor
        self._waits: set[trio.CancelScope] = set()  # cancelled by the stop

    @contextmanager
    def shielded(self, *, until: float = -math.inf) -> Iterator[trio.CancelScope]:
        """A scope that ignores cancellation until the shutdown deadline, or, for a paid
        call, until `until` (trio clock) when that is later, unless the stop is hard."""
        with trio.CancelScope(shield=True, deadline=self._deadline_for(until)) as scope:
            self._scopes[scope] = until
            try:
                yield scope
            finally:
                self._scopes.pop(scope, None)

    @contextmanager
    def until_stopped(self) -> Iterator[trio.CancelScope]:
        """A scope the stop cancels (at once if stopping already): for a wait that a stop
        makes pointless or must cut short. `cancelled_caught` tells it was cut."""
        with trio.CancelScope() as scope:
            if self.stopping:
                scope.cancel()
            self._waits.add(scope)
            try:
                yield scope
            finally:
                self._waits.discard(scope)

    @property
    def stopping(self) -> bool:
        return self.deadline < math.inf

    def _deadline_for(self, floor: float) -> float:
        return self.deadline if self.hard else max(self.deadline, floor)

    def stop_by(self, deadline: float, *, hard: bool = False) -> None:
        """From now on, nothing shielded outlives `deadline` (trio clock), but a paid
        call its own deadline; with `hard`, not even that."""
        self.deadline = min(self.deadline, deadline)
        self.hard = self.hard or hard
        for scope, floor in self._scopes.items():
            scope.deadline = min(scope.deadline, self._deadline_for(floor))
        for wait in self._waits:
            wait.cancel()

    def paid_until(self) -> float:
        """When the last paid call in flight (and the writes of its outcome) must end."""
        floors = [floor for floor in self._scopes.values() if floor > -math.inf]
        return -math.inf if self.hard or not floors else max(floors)

    async def durable(
        self, what: str, write: Callable[[], Awaitable[T]], *, until: float = -math.inf
    ) -> T:
        """Run `write` until it lands; shielded, retried while the database cannot take it.
        `until`: the paid call's own deadline, when the write records its outcome."""

        async def once() -> T:
            try:
                return await write()
            except RETRYABLE as exc:
                log.warning("%s: %s; retrying", what, exc.message)
                raise

        with self.shielded(until=until):
            return await first_then_retry(
                once,
                on=RETRYABLE,
                attempts=None,
                timeout=None,
                wait_initial=0.1,
                wait_max=5.0,
                wait_jitter=0.5,
            )
        raise WriteAbandoned(f"{what}: abandoned at shutdown, the database could not take it")
