"""`Pacing` alone: what it learns from a finished generation, what it counts for /metrics
and the log line at exit, and the spacing past every mark (survivors of the partial
mutation run of 2026-12-07; the rest of pacing is in test_flow.py)."""

from __future__ import annotations

import pytest
import trio

from listener.engine.pacing import Pacing
from tests.engine.conftest import make_engine, run_until
from tests.engine.fakes import FakeProvider, FakeStore


def test_a_zero_second_generation_is_learned_and_nonsense_is_not():
    p = Pacing(interval=1.0)
    for nonsense in (-0.5, float("nan"), float("inf")):
        p.observe(nonsense)
    assert p.observed == 0
    p.observe(0.0)
    p.observe(0.5)
    assert p.observed == 2 and p.median == 0.25


@pytest.mark.parametrize(
    ("pending", "ready", "learned"),
    [
        (4.0, 6.0, 5.0),  # two intervals apart: the middle
        (4.0, 5.0, 4.5),
        (4.0, 6.5, 5.5),  # wider: an interval before the answer
        (0.0, 40.0, 35.0),  # much wider: an eighth of the gap before it
    ],
)
def test_what_a_finished_generation_teaches(pending, ready, learned):
    p = Pacing(interval=1.0)
    p.finished_between(pending, ready)
    assert p.median == learned


def test_past_every_mark_checks_come_every_spread_or_a_tenth_of_the_time_so_far():
    p = Pacing(interval=0.5)
    for t in (10.0, 10.0, 10.0, 14.0):
        p.observe(t)
    spread = p.spread
    assert spread > 0.5
    assert p.delay(20.0) == spread  # past every mark: the spread
    assert p.delay(200.0) == 20.0  # or a tenth of the time so far, the longer
    q = Pacing(interval=3.0)
    q.observe(10.0)
    q.observe(10.0)
    assert q.delay(11.0) == 3.0  # never sooner than the interval


async def test_checks_and_finished_generations_are_counted(store, provider, autojump_clock):
    ids = store.add(3)
    engine = make_engine(store, provider)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: all(store.rows[i].status == "ReadyToPublish" for i in ids))
        engine.stop("test")
    assert engine.pacing.finished == 3
    assert engine.pacing.checks == sum(provider.checks.values()) >= 3
    assert engine.pacing.checks_per_image == engine.pacing.checks / 3


async def test_a_generation_adopted_ready_at_its_first_check_teaches_nothing(
    store, provider, autojump_clock
):
    """After a kill, the survivors adopt generations accepted long ago: "ready at the
    first check" bounds nothing, and must not teach a generation time of minutes."""
    await trio.sleep(100)
    ids = store.add(4, status="Generate", uuid="left", started=10.0)  # accepted 90 s ago
    engine = make_engine(store, provider)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: all(store.rows[i].status == "ReadyToPublish" for i in ids))
        engine.stop("test")
    assert engine.pacing.finished == 4
    assert engine.pacing.observed == 0 and engine.pacing.median is None


async def test_a_generation_adopted_and_heard_not_yet_teaches_its_time(autojump_clock):
    store, provider = FakeStore(), FakeProvider(generation_time=3.0)
    await trio.sleep(100)
    (id_,) = store.add(1, status="Generate", uuid="left", started=99.0)  # 1 s ago
    provider.started["left"] = 99.0
    engine = make_engine(store, provider, settings={"default_check_interval": 0.5})
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.rows[id_].status == "ReadyToPublish")
        engine.stop("test")
    assert engine.pacing.observed == 1 and 2.0 <= engine.pacing.median <= 4.0
