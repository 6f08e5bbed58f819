"""The API's health as every call sees it: one busy back-off per burst, capped."""

from __future__ import annotations

import random

import trio

from listener.engine.health import ApiHealth


async def test_busy_answers_of_one_burst_share_one_back_off_which_grows_to_a_cap(
    autojump_clock, monkeypatch
):
    monkeypatch.setattr(random, "uniform", lambda low, high: high)  # the ceiling
    health = ApiHealth(backoff_base=10, backoff_max=300)
    assert health.busy("DISABLED_BY_QUEUE") == 10
    await trio.sleep(4)
    assert health.busy("DISABLED_BY_QUEUE") == 6  # the same burst: what is left of it
    assert health.busy_streak == 1 and not health.may_generate()
    pauses = []
    for _ in range(5):
        await trio.sleep(health.busy_until - trio.current_time())
        assert health.may_generate()
        pauses.append(health.busy("DISABLED_BY_QUEUE"))
    assert pauses == [20, 40, 60, 60, 60]  # doubling, capped at a minute
    health.accepted()
    assert health.busy_streak == 0 and health.may_generate()
    assert health.busy("DISABLED_BY_QUEUE") == 10
