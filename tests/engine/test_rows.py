"""A row task releases or settles its row whatever way it ends; its faults stay its own."""

from __future__ import annotations

import pytest
import trio

from listener.engine.ports import Ready
from listener.errors import DatabaseError
from tests.engine.conftest import make_engine, run_until


@pytest.mark.contains_faults
async def test_an_unexpected_exception_is_contained_counted_and_the_row_released(
    store, provider, autojump_clock, caplog
):
    calls = {"n": 0}

    def on_outcome(handle):
        calls["n"] += 1
        if calls["n"] == 1:
            raise TypeError("'int' object is not iterable")  # an answer of the wrong shape
        return Ready("aGVsbG8=")

    provider.on_outcome = on_outcome
    engine = make_engine(store, provider)
    (id_,) = store.add(1)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.rows[id_].status == "ReadyToPublish", seconds=900)
        engine.stop("test")
    assert caplog.text.count("unexpected error in its task") == 1
    assert caplog.text.count("Traceback") == 1
    assert store.rows[id_].attempts == 2  # the submission, and the failed follow
    assert len(provider.submitted) == 1  # followed again, never submitted again


@pytest.mark.contains_faults
async def test_a_submission_that_raises_is_released_with_its_reason(
    store, provider, autojump_clock
):
    def on_submit(request):
        raise UnicodeEncodeError("utf-8", "\udc80", 0, 1, "surrogates not allowed")

    provider.on_submit = on_submit
    engine = make_engine(
        store, provider, settings={"retry_max_attempts": 2, "retry_backoff_base": 10}
    )
    (id_,) = store.add(1)
    waits = []
    real_release = store.release

    async def release(*a, **kw):
        await real_release(*a, **kw)
        waits.append(store.rows[id_].not_before - trio.current_time())

    store.release = release
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.rows[id_].status == "Failed", seconds=3600)
        engine.stop("test")
    assert len(waits) == 2 and all(10 <= w <= 20 for w in waits)  # as for attempt 2
    row = store.rows[id_]
    assert row.last_error.startswith("gave up after 2 attempts: internal error: UnicodeEncodeError")
    assert row.locked_by is None


async def test_a_result_in_hand_is_written_when_the_database_comes_back(
    store, provider, autojump_clock
):
    engine = make_engine(store, provider)
    (id_,) = store.add(1)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.rows[id_].status == "Generate")
        store.down = True
        await trio.sleep(120)  # the result arrives meanwhile; writes keep failing
        assert store.rows[id_].status == "Generate"
        store.down = False
        await run_until(lambda: store.rows[id_].status == "ReadyToPublish", seconds=30)
        engine.stop("test")


async def test_a_database_error_releases_the_row_with_its_reason(store, provider, autojump_clock):
    engine = make_engine(store, provider)
    (id_,) = store.add(1)
    real, released = store.record_accepted, []

    async def refuse(*a, **kw):
        raise DatabaseError("database error: value too long")

    async def release(*a, **kw):
        await type(store).release(store, *a, **kw)
        row = store.rows[id_]
        released.append((row.status, row.locked_by, row.last_error, row.not_before))

    store.record_accepted, store.release = refuse, release
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: released, every=0.001)
        released_at = trio.current_time()
        store.record_accepted = real
        # due at once (no back-off), and the claims are told: claimed again at once
        draw = provider.run_time + provider.generation_time  # a draw's own time (draw shape)
        await run_until(lambda: len(provider.submitted) == 2, seconds=1 + draw, every=0.001)
        engine.stop("test")
    assert released[0][:3] == ("ReadyToGenerate", None, "database error: value too long")
    assert released[0][3] <= released_at
