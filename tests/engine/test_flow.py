"""Flow control on the fake clock: several engines ("listeners") share one account's
slots; the provider has a true limit; status checks are spaced from observed times."""

from __future__ import annotations

import trio

from listener.engine.flow import Slots
from listener.engine.pacing import Pacing
from tests.engine.conftest import make_engine, run_until
from tests.engine.fakes import FakeSlotStore, FakeSlotTable, FakeStore, LimitedProvider

# -- pacing ------------------------------------------------------------------------------


def test_without_observations_checks_back_off_to_a_quarter_of_the_time_so_far():
    p = Pacing(interval=0.5)
    assert p.delay(0.0) == 0.5  # never sooner than the interval
    assert p.delay(8.0) == 2.0  # found at most 25% late
    assert p.median is None and p.checks_per_image is None


def test_with_observations_checks_land_on_the_quantiles_then_every_spread():
    p = Pacing(interval=0.1)
    for t in [10.0] * 60 + [12.0] * 30 + [20.0] * 10:
        p.observe(t)
    assert p.median == 10.0
    assert p.delay(2.0) == 8.0  # at the median
    assert p.delay(10.0) == 2.0  # at p75 (12)
    assert abs(p.delay(12.0) - 0.8) < 1e-9  # at p90 (12.8)
    assert p.delay(19.0) == 1.0  # at p99 (20)
    assert abs(p.delay(25.0) - 2.8) < 1e-9 and p.delay(25.0) == p.spread  # p90 - p50
    p.observe(-1.0)
    p.observe(float("inf"))
    assert p.observed == 100  # the last 100 only; nonsense ignored


def test_the_interval_is_the_fastest_rate_whatever_was_observed():
    p = Pacing(interval=2.0)
    for _ in range(10):
        p.observe(3.0)
    assert p.delay(2.9) == 2.0 and p.delay(5.0) == 2.0


# -- several listeners, one account --------------------------------------------------------


def listeners(store: FakeStore, table: FakeSlotTable, provider, n: int, limit: int, **settings):
    engines = []
    for i in range(n):
        # each listener its own worker id, on the same rows
        own = FakeStore(worker=f"w{i}", lease=3.0, rows=store.rows) if n > 1 else store
        slots = Slots(
            FakeSlotStore(table, worker=f"w{i}", lease=3.0),
            kind="generation",
            limit=limit,
            explicit=True,
        )
        engines.append(
            make_engine(own, provider, slots=slots, settings={"lease_timeout": 3, **settings})
        )
    return engines


async def test_three_listeners_never_exceed_the_accounts_limit(autojump_clock):
    store = FakeStore()
    store.add(30)
    table = FakeSlotTable(store)
    provider = LimitedProvider(limit=2, generation_time=3.0)
    engines = listeners(store, table, provider, 3, limit=2, default_check_interval=0.1)
    async with trio.open_nursery() as n:
        for e in engines:
            await n.start(e.serve)
        await run_until(lambda: store.statuses()["ReadyToPublish"] == 30)
        for e in engines:
            e.stop("done")
    assert provider.most_running == 2 and provider.refused == 0 and table.most_held == 2
    assert all(r.attempts == 1 for r in store.rows.values())
    checks = sum(e.pacing.checks for e in engines) / 30
    assert checks <= 3, checks  # with a steady 3 s generation


async def test_a_listener_killed_while_holding_a_slot_does_not_let_the_others_exceed_it(
    autojump_clock,
):
    store = FakeStore()
    store.add(12)
    table = FakeSlotTable(store)
    provider = LimitedProvider(limit=2, generation_time=3.0)
    engines = listeners(store, table, provider, 3, limit=2, default_check_interval=0.1)
    async with trio.open_nursery() as outer:
        scopes = []
        for e in engines:
            scope = trio.CancelScope()
            scopes.append(scope)

            async def run(e=e, scope=scope, task_status=trio.TASK_STATUS_IGNORED):
                with scope:
                    await e.serve(task_status=task_status)

            await outer.start(run)
        await run_until(lambda: len(provider.running) == 2)
        victim = next(i for i, e in enumerate(engines) if e.budget.counts["following"])
        # "SIGKILL": the engine vanishes without giving back its rows or slots
        engines[victim].leases.store.release_rows = _forget  # type: ignore[method-assign]
        engines[victim].slots.store.release = _forget  # type: ignore[method-assign]
        scopes[victim].cancel()
        # its generations are still running at the provider: their slots stay taken
        assert provider.running and table.taken(trio.current_time()) == 2
        assert provider.most_running == 2
        # nothing notifies of a dead listener's generations: the slots' heartbeat finds
        # them when their leases run out, and the others adopt them
        await run_until(lambda: store.statuses()["ReadyToPublish"] == 12)
        for i, e in enumerate(engines):
            if i != victim:
                e.stop("done")
    assert provider.most_running <= 2 and provider.refused == 0


async def _forget(ids, **_):
    return 0


async def test_a_429_storm_fails_nothing_counts_nothing_and_concurrency_recovers(
    autojump_clock,
):
    store = FakeStore()
    store.add(40)
    table = FakeSlotTable(store)
    provider = LimitedProvider(limit=4, generation_time=1.0)
    provider.storm_until = 8.0
    (engine,) = listeners(
        store, table, provider, 1, limit=4, default_check_interval=0.1, retry_backoff_base=0.2
    )
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.statuses()["ReadyToPublish"] == 40)
        engine.stop("done")
    assert provider.refused > 0
    assert store.statuses()["Failed"] == 0
    assert all(r.attempts == 1 for r in store.rows.values())  # waiting is no attempt
    assert engine.slots.limiter.decreases >= 1
    assert table.effective == 4 and engine.slots.effective == 4  # recovered
    assert provider.most_running <= 4


def test_what_is_learned_from_a_finished_generation():
    p = Pacing(interval=0.05)
    p.finished_between(2.95, 3.0)  # close: the middle
    assert p.median == 2.975
    p = Pacing(interval=0.05)
    p.finished_between(2.5, 3.125)  # a wide gap: just under the answer, not its middle
    assert p.median == 3.125 - 0.625 / 8
