"""A wake-up that coalesces: any number of rings while nobody waits make one wake-up.

NOTIFY is a doorbell, not a mailbox: a ring only says "look at the table"."""

from __future__ import annotations

import math
import random

import trio


class Doorbell:
    def __init__(self) -> None:
        self._event = trio.Event()

    def ring(self) -> None:
        self._event.set()

    async def wait(self, within: float | None = None) -> bool:
        """Wait for a ring (True), or `within` seconds (False; None = no limit)."""
        with trio.move_on_after(math.inf if within is None else max(0.0, within)):
            await self._event.wait()
        rung = self._event.is_set()
        if rung:
            self._event = trio.Event()
        return rung


def jittered(seconds: float, spread: float = 0.1) -> float:
    """`seconds` plus up to `spread` of it, so many listeners do not act in lockstep."""
    return seconds * (1 + random.uniform(0, spread))


def backoff_delay(attempt: int, base: float, maximum: float) -> float:
    """The delay a row waits before its next attempt (kept in the row's not_before, not
    slept on: a schedule, not a retry loop): capped exponential with full jitter."""
    ceiling = min(maximum, base * 2 ** max(0, attempt - 1))
    return random.uniform(ceiling / 2, ceiling)
