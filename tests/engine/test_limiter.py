"""The AIMD arithmetic of `Limiter` on the fake clock, against a recording table: what
it asks the table, when, and what it believes afterwards. (The shared budget across
listeners is in test_flow.py; the SQL behind it in tests/test_flow_slots.py.)"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pytest
import trio

from listener.engine.flow import COOLDOWN, PROBE_WINDOWS, Limiter, Limits


@dataclass
class Table:
    """What the shared row says, and every write asked of it."""

    limits: Limits
    lower_answer: int | str | None = "value"  # "value": accept the value asked
    raise_answer: int | str | None = "value"
    calls: list[tuple] = field(default_factory=list)

    async def lower(self, value: int, reason: str, cooldown: float) -> int | None:
        self.calls.append(("lower", value, reason, cooldown))
        return value if self.lower_answer == "value" else self.lower_answer  # type: ignore[return-value]

    async def raise_(self, from_: int, reason: str) -> int | None:
        self.calls.append(("raise", from_, reason))
        return from_ + 1 if self.raise_answer == "value" else self.raise_answer  # type: ignore[return-value]

    async def read(self) -> Limits:
        self.calls.append(("read",))
        return self.limits

    async def forget_ceiling(self) -> None:
        self.calls.append(("forget_ceiling",))


def limiter(configured: int, effective: int, ceiling: int | None = None, **table) -> Limiter:
    limits = Limits(configured=configured, effective=effective, ceiling=ceiling)
    return Limiter(Table(limits, **table), limits)  # type: ignore[arg-type]


def calls(lim: Limiter) -> list[tuple]:
    return lim.store.calls  # type: ignore[attr-defined]


# -- decrease ----------------------------------------------------------------------------


@pytest.mark.parametrize(("effective", "lowered"), [(10, 7), (8, 5), (4, 2), (3, 2), (2, 1)])
async def test_a_refusal_lowers_the_value_by_thirty_percent_at_least_by_one(
    autojump_clock, effective, lowered
):
    lim = limiter(10, effective)
    assert await lim.refused("429") is True
    reason = f"lowered from {effective} after 429"
    assert calls(lim) == [("lower", lowered, reason, COOLDOWN)]
    assert (lim.effective, lim.ceiling, lim.reason) == (lowered, effective, reason)
    assert (lim.refusals, lim.decreases) == (1, 1)


async def test_refusals_of_one_burst_lower_once_and_the_next_burst_again(autojump_clock):
    lim = limiter(10, 10)
    assert await lim.refused("429") is True
    await trio.sleep(COOLDOWN - 0.01)
    assert await lim.refused("429") is False  # the same burst
    assert [c[0] for c in calls(lim)] == ["lower"]
    await trio.sleep(0.01)
    assert await lim.refused("busy") is True  # COOLDOWN after the change: a new burst
    assert calls(lim)[-1] == ("lower", 4, "lowered from 7 after busy", COOLDOWN)
    assert (lim.effective, lim.ceiling, lim.refusals, lim.decreases) == (4, 7, 3, 2)


async def test_lowered_first_by_another_listener_we_take_what_the_table_says(autojump_clock):
    lim = limiter(10, 8, lower_answer=None)
    lim.store.limits = Limits(configured=10, effective=5, ceiling=8, reason="theirs")  # type: ignore[attr-defined]
    assert await lim.refused("429") is False
    assert [c[0] for c in calls(lim)] == ["lower", "read"]
    assert (lim.effective, lim.ceiling, lim.reason, lim.decreases) == (5, 8, "theirs", 0)
    # and the burst is over for us too: a second refusal at once lowers nothing
    assert await lim.refused("429") is False
    assert [c[0] for c in calls(lim)] == ["lower", "read"]


async def test_refused_at_one_at_a_time_forgets_the_ceiling_once_and_lowers_nothing(
    autojump_clock,
):
    lim = limiter(10, 1, ceiling=4)
    assert await lim.refused("busy") is False
    assert await lim.refused("busy") is False
    assert calls(lim) == [("forget_ceiling",)]
    assert (lim.effective, lim.ceiling, lim.refusals, lim.decreases) == (1, None, 2, 0)


# -- increase ----------------------------------------------------------------------------


async def test_a_window_of_effective_successes_raises_the_value_by_one(autojump_clock):
    lim = limiter(8, 3)
    for _ in range(2):
        await lim.succeeded()
    assert calls(lim) == []
    await lim.succeeded()
    assert calls(lim) == [("raise", 3, "raised from 3 after 3 successes")]
    assert (lim.effective, lim.reason, lim.increases, lim.successes) == (
        4,
        "raised from 3 after 3 successes",
        1,
        3,
    )
    for _ in range(3):  # the window starts again, at the new value
        await lim.succeeded()
    assert len(calls(lim)) == 1
    await lim.succeeded()
    assert calls(lim)[-1] == ("raise", 4, "raised from 4 after 4 successes")


async def test_at_the_configured_limit_successes_are_counted_and_nothing_is_asked(
    autojump_clock, caplog
):
    lim = limiter(4, 3)
    caplog.set_level(logging.INFO, logger="listener.engine")
    for _ in range(3):
        await lim.succeeded()
    assert lim.effective == 4
    assert "Provider concurrency back at its limit, 4" in caplog.text
    for _ in range(20):
        await lim.succeeded()
    assert len(calls(lim)) == 1 and lim.successes == 23 and lim.effective == 4


async def test_next_to_the_value_last_refused_a_step_up_waits_fifty_windows(autojump_clock):
    lim = limiter(10, 4, ceiling=5)
    for _ in range(4 * PROBE_WINDOWS - 1):
        await lim.succeeded()
    assert calls(lim) == []
    await lim.succeeded()
    assert calls(lim) == [("raise", 4, "raised from 4 after 4 successes")]
    # two below the ceiling is not "near": one window is enough
    lim = limiter(10, 3, ceiling=5)
    for _ in range(3):
        await lim.succeeded()
    assert [c[0] for c in calls(lim)] == ["raise"]


async def test_raised_first_by_another_listener_we_take_what_the_table_says(autojump_clock):
    lim = limiter(8, 2, raise_answer=None)
    lim.store.limits = Limits(configured=8, effective=6, reason="theirs")  # type: ignore[attr-defined]
    await lim.succeeded()
    await lim.succeeded()
    assert [c[0] for c in calls(lim)] == ["raise", "read"]
    assert (lim.effective, lim.reason, lim.increases) == (6, "theirs", 0)


# -- what the table says -----------------------------------------------------------------


async def test_a_change_seen_in_the_table_starts_a_new_window_and_a_cooldown(autojump_clock):
    lim = limiter(8, 3)
    await lim.succeeded()
    await lim.succeeded()
    lim.seen(Limits(configured=8, effective=4, ceiling=6, reason="psql"))
    assert (lim.effective, lim.ceiling, lim.reason) == (4, 6, "psql")
    for _ in range(3):
        await lim.succeeded()
    assert calls(lim) == []  # two successes before the change do not count
    # a refusal right after the change is part of the burst that caused it
    assert await lim.refused("429") is False
    await trio.sleep(COOLDOWN)
    assert await lim.refused("429") is True


async def test_the_same_limits_seen_again_keep_the_window(autojump_clock):
    lim = limiter(8, 3)
    await lim.succeeded()
    await lim.succeeded()
    lim.seen(Limits(configured=8, effective=3, reason="configured"))
    await lim.succeeded()
    assert [c[0] for c in calls(lim)] == ["raise"]
    # a heartbeat that sees nothing new starts no cooldown: a refusal lowers at once
    fresh = limiter(8, 6)
    fresh.seen(Limits(configured=8, effective=6, reason="configured"))
    assert await fresh.refused("429") is True
