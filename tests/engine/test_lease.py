"""Ownership: renewed only for live tasks, given up when the row moves under us."""

from __future__ import annotations

import pytest
import trio

from listener.engine import Connected, Wakeup
from tests.engine.conftest import long_generation, make_engine, run_until


async def test_only_rows_of_live_tasks_are_renewed(store, provider, autojump_clock):
    long_generation(provider)
    engine = make_engine(
        store, provider, settings={"lease_timeout": 30, "default_max_attempts": 1000}
    )
    (a, b) = store.add(2, status="Generate")
    for i in (a, b):
        store.rows[i].uuid = f"u{i}"
    # b was left leased by this worker by an earlier task that is gone
    store.rows[b].locked_by, store.rows[b].locked_until = "me", 5.0
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.rows[a].locked_by == "me")
        store.rows[b].status = "Failed"  # not adoptable: only its stale lease remains
        await trio.sleep(100)
        assert store.rows[a].locked_until > trio.current_time() + 15  # renewed
        assert store.rows[b].locked_until == 5.0  # never renewed
        engine.stop("test")


# poll only: a download in flight is shielded (it carries an image handed out once), so
# a row moved under it is given up when the download ends, not within seconds
@pytest.mark.shapes("poll")
async def test_a_row_moved_by_an_operator_is_given_up_and_generated_again(
    store, provider, autojump_clock
):
    long_generation(provider)
    engine = make_engine(store, provider, settings={"lease_timeout": 3})
    (id_,) = store.add(1)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.rows[id_].status == "Generate")
        # the operator moves it back by hand, leaving our lease in place
        store.rows[id_].status = "ReadyToGenerate"
        await run_until(lambda: id_ not in engine.leases.owned, seconds=10)
        assert len(provider.submitted) == 1
        assert store.rows[id_].locked_by is None  # renewal dropped our lease
        engine.on_event(Wakeup("ReadyToGenerate"))  # what the trigger sends
        await run_until(lambda: len(provider.submitted) == 2)
        engine.stop("test")


async def test_what_a_cancelled_task_leaves_is_released_in_one_statement(
    store, provider, autojump_clock
):
    long_generation(provider)
    engine = make_engine(store, provider, settings={"api_concurrency": 5})
    store.add(5)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.statuses()["Generate"] == 5)
        engine.stop("test")
    assert store.calls["release_rows"] == 1
    assert all(r.locked_by is None for r in store.rows.values())
    assert not engine.leases.owned


async def test_a_row_whose_lease_lapsed_under_a_live_task_is_not_claimed_twice(
    store, provider, autojump_clock
):
    """Regression: after a database outage longer than the lease, the catch-up sweep
    adopted a row a task of this process still followed, and the second task's claim of
    ownership crashed the process."""
    long_generation(provider)
    engine = make_engine(store, provider, settings={"default_max_attempts": 1000})
    (id_,) = store.add(1)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.rows[id_].status == "Generate")
        store.rows[id_].locked_until = 0.0  # lapsed while the database was away
        engine.on_event(Wakeup("Generate"))
        engine.on_event(Connected())
        await trio.sleep(5)
        assert engine.budget.counts["following"] == 1
        assert list(engine.leases.owned) == [id_]
        engine.stop("test")
