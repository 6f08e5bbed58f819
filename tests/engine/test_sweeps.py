"""The fallback schedule: sweeps never wait for event-driven work."""

from __future__ import annotations

import trio

from listener.engine import Wakeup
from tests.engine.conftest import make_engine, run_until


async def test_a_steady_trickle_of_inserts_does_not_starve_the_processor_sweep(
    store, provider, autojump_clock
):
    """Regression: the generator sweep waited for every run in flight, event-driven ones
    included, while holding the lock both sweeps share; with an insert every 0.3 s the
    processor sweep did not run for a whole simulated hour (here: five minutes)."""
    provider.run_time = 1.0
    provider.generation_time = 5.0
    engine = make_engine(
        store,
        provider,
        settings={"generator_sweep_interval": 30, "processor_sweep_interval": 60},
    )
    processor_sweeps = []
    real = engine.sweeps.processor_sweep

    async def counting():
        processor_sweeps.append(trio.current_time())
        return await real()

    engine.sweeps.processor_sweep = counting
    async with trio.open_nursery() as n:
        await n.start(engine.serve)

        async def trickle():
            while True:
                store.add(1)
                engine.on_event(Wakeup("ReadyToGenerate"))
                await trio.sleep(0.3)

        n.start_soon(trickle)
        await trio.sleep(300)
        engine.stop("test")
        n.cancel_scope.cancel()
    assert len(processor_sweeps) >= 4  # every ~minute


async def test_a_sweep_reports_the_rows_it_claimed(store, provider, autojump_clock, caplog):
    caplog.set_level("INFO")
    engine = make_engine(store, provider, mode="cron")
    store.add(3)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.statuses()["ReadyToPublish"] == 3)
        engine.stop("test")
    assert "Generator sweep finished: 3 row(s) submitted" in caplog.text
