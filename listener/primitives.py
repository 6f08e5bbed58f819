"""Small trio building blocks the workflows share."""

from __future__ import annotations

import math
import random

import trio


class Doorbell:
    """A wake-up that coalesces: any number of rings while nobody waits make one wake-up.

    NOTIFY is a doorbell, not a mailbox: the ring only says "look at the table"."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def ring(self) -> None:
        self._event.set()

    async def wait(self, within: float | None = None) -> bool:
        """Wait for a ring (True), or `within` seconds (False; None = no limit)."""
        with trio.move_on_after(math.inf if within is None else within):
            await self._event.wait()
        rung = self._event.is_set()
        if rung:
            self._event = trio.Event()
        return rung


class Capacity:
    """A counter of work in hand with a limit, and a wake-up when room frees."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._freed = Doorbell()
        self._empty = trio.Event()
        self._empty.set()

    @property
    def free(self) -> int:
        return max(0, self.limit - self.used)

    def take(self, n: int = 1) -> None:
        if n and self.used == 0:
            self._empty = trio.Event()
        self.used += n

    def give(self, n: int = 1) -> None:
        self.used -= n
        self._freed.ring()
        if self.used == 0:
            self._empty.set()

    async def wait_for_room(self) -> None:
        while self.free == 0:
            await self._freed.wait()

    async def wait_empty(self) -> None:
        await self._empty.wait()


def jittered(seconds: float, spread: float = 0.1) -> float:
    """`seconds` plus up to `spread` of it, so many listeners do not act in lockstep."""
    return seconds * (1 + random.uniform(0, spread))


def backoff_delay(attempt: int, base: float, maximum: float) -> float:
    """Capped exponential backoff with jitter: attempt 1 -> ~base, 2 -> ~2*base, ..."""
    ceiling = min(maximum, base * 2 ** max(0, attempt - 1))
    return random.uniform(ceiling / 2, ceiling)
