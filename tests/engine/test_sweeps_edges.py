"""The sweeps at their edges: their cadence, what a processor sweep reports, and how
long one lasts with -cron (survivors of the mutation run of 2026-12-07 in sweeps.py,
doorbell.py and the adoption pass)."""

from __future__ import annotations

from itertools import pairwise

import trio

from listener.engine.claims import ADOPT_BATCH
from tests.engine.conftest import make_engine, run_until
from tests.engine.fakes import FakeProvider, FakeStore


def noting_starts(engine, name: str) -> list[float]:
    """When each sweep of `name` ('generator_sweep', 'processor_sweep') started."""
    starts: list[float] = []
    real = getattr(engine.sweeps, name)

    async def sweep():
        starts.append(trio.current_time())
        return await real()

    setattr(engine.sweeps, name, sweep)
    return starts


async def test_sweeps_come_every_interval_late_by_at_most_two_percent(autojump_clock):
    """Never early, and spread by up to 2% so that many listeners do not sweep in step."""
    engine = make_engine(
        FakeStore(),
        FakeProvider(),
        settings={"generator_sweep_interval": 10, "processor_sweep_interval": 20},
    )
    generator = noting_starts(engine, "generator_sweep")
    processor = noting_starts(engine, "processor_sweep")
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await trio.sleep(201)
        engine.stop("test")
    for starts, interval in ((generator, 10), (processor, 20)):
        gaps = [b - a for a, b in pairwise(starts)]
        assert len(gaps) >= 200 // interval - 1
        assert all(interval <= gap <= interval * 1.02 for gap in gaps), gaps


async def test_a_processor_sweep_reports_the_generations_it_resumed(autojump_clock, caplog):
    """More than one batch of ADOPT_BATCH, and only as many as there is room for."""
    caplog.set_level("INFO")
    store = FakeStore()
    store.add(ADOPT_BATCH + 3, status="Generate", uuid="theirs")  # nobody follows them
    room = ADOPT_BATCH + 2
    engine = make_engine(
        store, FakeProvider(generation_time=0.0), mode="cron", settings={"max_in_flight": room}
    )
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: "Processor sweep finished" in caplog.text)
        engine.stop("test")
    assert f"Processor sweep finished: {room} generation(s) resumed" in caplog.text
    assert store.statuses() == {"ReadyToPublish": room, "Generate": 1}  # no room for it


async def test_with_cron_a_processor_sweep_lasts_until_the_generations_it_resumed_are_done(
    autojump_clock,
):
    store = FakeStore()
    (id_,) = store.add(1, status="Generate", uuid="theirs")
    engine = make_engine(store, FakeProvider(generation_time=30.0), mode="cron")
    ends: list[tuple[float, str]] = []
    real = engine.sweeps.processor_sweep

    async def sweep():
        n = await real()
        ends.append((trio.current_time(), store.rows[id_].status))
        return n

    engine.sweeps.processor_sweep = sweep
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: ends, every=1.0)
        engine.stop("test")
    when, status = ends[0]
    assert status == "ReadyToPublish" and when >= 30.0
