"""Ownership: renewed only for live tasks, given up when the row moves under us."""

from __future__ import annotations

import pytest
import trio

from listener.engine import Connected, Wakeup
from listener.errors import ApiTransient, DatabaseUnavailable
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
        store.rows[id_].status, store.rows[id_].uuid = "ReadyToGenerate", None
        # the renewal (every LEASE_TIMEOUT / 3) drops our lease and, once the task has
        # ended, the claims look again: no notification is needed
        await run_until(lambda: len(provider.submitted) == 2, seconds=2)
        assert store.calls["renew"] >= 1 and store.calls["finalise"] == 0
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


async def test_a_write_refused_on_a_moved_row_lets_go_and_the_row_is_claimed_again(
    store, provider, autojump_clock, caplog
):
    """Regression: the row's task ended on the refused write, but the row kept this
    listener's lease and every claim left out "ours": stranded while the process lived."""
    provider.generation_time = 2.0
    engine = make_engine(store, provider, settings={"lease_timeout": 300})  # no renewal
    (id_,) = store.add(1)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.rows[id_].status == "Generate")
        # by hand, as the table's owner: the lease stays in place
        store.rows[id_].status, store.rows[id_].uuid = "ReadyToGenerate", None
        await run_until(lambda: store.rows[id_].status == "ReadyToPublish", seconds=10)
        engine.stop("test")
    assert len(provider.submitted) == 2
    assert store.calls["renew"] == 0  # the write was the first to notice
    assert caplog.text.count("write refused (finalise)") == 1


@pytest.mark.parametrize("change", ["deleted", "Published"])
async def test_a_row_deleted_or_moved_downstream_while_its_image_arrives_is_let_go(
    store, provider, autojump_clock, caplog, change
):
    provider.generation_time = 2.0
    engine = make_engine(store, provider, settings={"lease_timeout": 300})
    (id_,) = store.add(1)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.rows[id_].status == "Generate")
        if change == "deleted":
            row = store.rows.pop(id_)
        else:
            row = store.rows[id_]
            row.status = change
        await run_until(lambda: not engine.leases.owned, seconds=10)
        await trio.sleep(5)
        engine.stop("test")
    assert caplog.text.count("write refused") == 1
    assert row.locked_by is None or change == "deleted"
    assert engine.budget.held == 0 and len(provider.submitted) == 1


async def test_a_lapsed_lease_of_ours_that_no_task_holds_is_claimed(
    store, provider, autojump_clock
):
    engine = make_engine(store, provider)
    (id_,) = store.add(1, locked_by="me", locked_until=-1.0)  # left by a task long gone
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        engine.on_event(Connected())
        await run_until(lambda: store.rows[id_].status == "ReadyToPublish", seconds=10)
        engine.stop("test")


async def test_a_retry_whose_commit_answer_was_lost_finds_it_done_and_looks_again(
    store, provider, autojump_clock
):
    """Regression: the retried release/retry_later found nothing to write, called the
    row lost ("leaving it to its new owner", there was none) and rang nobody: the row
    waited for the generator sweep."""
    provider.on_submit = None
    failed = {"n": 0}
    real_submit = provider.submit

    async def submit(request):
        if not failed["n"]:
            failed["n"] += 1
            await trio.sleep(0.1)
            raise ApiTransient("run: HTTP 503: down")
        return await real_submit(request)

    provider.submit = submit
    real_retry = store.retry_later

    async def retry_later(*a, **kw):
        await real_retry(*a, **kw)
        if store.calls["retry_later"] == 1:  # landed; the answer to its COMMIT is lost
            raise DatabaseUnavailable("database unavailable: connection lost")

    store.retry_later = retry_later
    engine = make_engine(
        store, provider, settings={"retry_backoff_base": 1, "retry_backoff_max": 2}
    )
    (id_,) = store.add(1)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        engine.on_event(Wakeup("ReadyToGenerate"))
        await run_until(lambda: store.rows[id_].status == "ReadyToPublish", seconds=10)
        engine.stop("test")
    assert store.calls["retry_later"] == 2
    assert store.rows[id_].unknown_outcomes == 0 and store.rows[id_].attempts == 2
