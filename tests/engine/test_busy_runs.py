"""A submission refused for load (busy, 429) with the account's shared budget: what
lowers, what pauses, how soon the row is sent again (survivors of the partial mutation
run of 2026-12-07; the whole storm is in test_flow.py)."""

from __future__ import annotations

import trio

from listener.engine.flow import Slots
from listener.engine.ports import Submitted
from listener.errors import ApiBusy
from tests.engine.conftest import make_engine, run_until
from tests.engine.fakes import FakeProvider, FakeSlotStore, FakeSlotTable, FakeStore


def _refused_once(provider: FakeProvider, exc: Exception) -> list[float]:
    """The first run refused with `exc`, the others accepted; when each was answered."""
    times: list[float] = []

    def answer(request):
        times.append(trio.current_time())
        if len(times) == 1:
            raise exc
        handle = f"uuid-{len(times)}"
        provider.started[handle] = trio.current_time()
        return Submitted(handle, check_after=0.0)

    provider.on_submit = answer
    return times


async def _run(limit: int, exc: Exception):
    store = FakeStore()
    (id_,) = store.add(1)
    provider = FakeProvider()
    times = _refused_once(provider, exc)
    slots = Slots(
        FakeSlotStore(FakeSlotTable(store)), kind="generation", limit=limit, explicit=True
    )
    engine = make_engine(store, provider, slots=slots, settings={"retry_backoff_base": 5})
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.rows[id_].status == "ReadyToPublish")
        engine.stop("test")
    return engine, store.rows[id_], times


async def test_busy_lowers_the_shared_value_by_the_providers_word_and_nothing_pauses(
    autojump_clock,
):
    busy = ApiBusy("run: HTTP 200 queue disabled", state="DISABLED_BY_QUEUE")
    engine, row, times = await _run(4, busy)
    assert engine.slots.limiter.reason == "lowered from 4 after DISABLED_BY_QUEUE"
    assert engine.slots.limiter.refusals == 1
    # no Retry-After and room to lower: sent again at once on another slot, no pause
    # (a pause would be RETRY_BACKOFF_BASE, 5 s, at least)
    assert times[1] - times[0] < 0.5
    assert row.attempts == 1  # a refusal for load is no attempt


async def test_a_429_without_a_word_is_named_by_its_message(autojump_clock):
    engine, _, _ = await _run(3, ApiBusy("run: HTTP 429"))
    assert engine.slots.limiter.reason == "lowered from 3 after run: HTTP 429"


async def test_at_two_the_value_is_lowered_to_one_without_a_pause(autojump_clock):
    engine, _, times = await _run(2, ApiBusy("run: HTTP 429"))
    assert engine.slots.limiter.effective == 1
    # the one slot left is the refused one: it rests REFUSED_SLOT_REST (1 s), not a
    # backoff pause (RETRY_BACKOFF_BASE, 5 s)
    assert 1.0 <= times[1] - times[0] < 2.0


async def test_at_one_at_a_time_there_is_nothing_to_lower_generation_pauses(autojump_clock):
    engine, _, times = await _run(1, ApiBusy("run: HTTP 429", retry_after=30))
    assert engine.slots.limiter.refusals == 1 and engine.slots.limiter.decreases == 0
    assert times[1] - times[0] >= 30  # the pause, at least the provider's Retry-After
