"""A wake-up that coalesces: any number of rings while nobody waits make one wake-up.

NOTIFY is a doorbell, not a mailbox: a ring only says "look at the table"."""

from __future__ import annotations

import random

import trio


class Doorbell:
    def __init__(self) -> None:
        self._event = trio.Event()

    def ring(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        """Until a ring (any number of rings since the last wait count as one); a wait
        with a time limit is the caller's cancel scope (`Claims._wait`)."""
        await self._event.wait()
        self._event = trio.Event()


def jittered(seconds: float, spread: float = 0.1) -> float:
    """`seconds` plus up to `spread` of it, so many listeners do not act in lockstep."""
    return seconds * (1 + random.uniform(0, spread))


def backoff_delay(attempt: int, base: float, maximum: float) -> float:
    """The delay a row waits before its next attempt (kept in the row's not_before, not
    slept on: a schedule, not a retry loop): capped exponential with full jitter."""
    ceiling = min(maximum, base * 2 ** max(0, attempt - 1))
    return random.uniform(ceiling / 2, ceiling)
