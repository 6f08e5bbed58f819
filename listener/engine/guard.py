"""Work that must not be cut half-way, and writes that must not be lost.

An API call in flight may already have cost the user quota (a run) or be carrying a
result the API hands out only once (a status answer): cancelling it would throw that
away. So such calls, and the writes that record their outcome, run *shielded* from
cancellation. Only shutdown bounds them: `stop_by(deadline)` gives every shielded scope,
present and future, until the hard deadline (SHUTDOWN_GRACE after the stop signal).

A durable write (a uuid the API accepted, an image it handed out, a row's release) is
retried with backoff (stamina) while the database cannot take it now: unavailable, or
busy (statement timeout behind an operator's lock, deadlock). It ends when it lands,
when the lease is lost (`LeaseLost` is raised to the caller), or at the deadline.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import stamina
import trio

from listener.errors import DatabaseBusy, DatabaseUnavailable, ListenerError

log = logging.getLogger("listener.engine")

T = TypeVar("T")

RETRYABLE = (DatabaseUnavailable, DatabaseBusy)


class WriteAbandoned(ListenerError):
    """A durable write was abandoned at shutdown: the database could not take it."""


class Guard:
    def __init__(self) -> None:
        self.deadline = math.inf
        self._scopes: set[trio.CancelScope] = set()

    @contextmanager
    def shielded(self) -> Iterator[trio.CancelScope]:
        """A scope that ignores cancellation until the shutdown deadline."""
        with trio.CancelScope(shield=True, deadline=self.deadline) as scope:
            self._scopes.add(scope)
            try:
                yield scope
            finally:
                self._scopes.discard(scope)

    def stop_by(self, deadline: float) -> None:
        """From now on, nothing shielded outlives `deadline` (trio clock)."""
        self.deadline = min(self.deadline, deadline)
        for scope in self._scopes:
            scope.deadline = min(scope.deadline, deadline)

    async def durable(self, what: str, write: Callable[[], Awaitable[T]]) -> T:
        """Run `write` until it lands; shielded, retried while the database cannot take it."""
        with self.shielded():
            async for attempt in stamina.retry_context(
                on=RETRYABLE,
                attempts=None,
                timeout=None,
                wait_initial=0.1,
                wait_max=5.0,
                wait_jitter=0.5,
            ):
                with attempt:
                    try:
                        return await write()
                    except RETRYABLE as exc:
                        log.warning("%s: %s; retrying", what, exc.message)
                        raise
        raise WriteAbandoned(f"{what}: abandoned at shutdown, the database could not take it")
