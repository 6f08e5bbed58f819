"""A row task releases or settles its row whatever way it ends; its faults stay its own."""

from __future__ import annotations

import trio

from listener.engine.ports import Ready
from listener.errors import DatabaseUnavailable
from tests.engine.conftest import make_engine, run_until


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
    assert engine.rows.errors == 1
    assert caplog.text.count("Traceback") == 1
    assert store.rows[id_].attempts == 2  # the submission, and the failed follow
    assert len(provider.submitted) == 1  # followed again, never submitted again


async def test_a_submission_that_raises_is_released_with_its_reason(
    store, provider, autojump_clock
):
    def on_submit(request):
        raise UnicodeEncodeError("utf-8", "\udc80", 0, 1, "surrogates not allowed")

    provider.on_submit = on_submit
    engine = make_engine(store, provider, settings={"retry_max_attempts": 2})
    (id_,) = store.add(1)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.rows[id_].status == "Failed", seconds=3600)
        engine.stop("test")
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
    real = store.record_accepted

    async def refuse(*a, **kw):
        from listener.errors import DatabaseError

        raise DatabaseError("database error: value too long")

    store.record_accepted = refuse
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.calls["release"] >= 1)
        row = store.rows[id_]
        # released with its reason (and claimed again at once: the next try may be on)
        assert "value too long" in row.last_error and store.released == [id_]
        store.record_accepted = real
        engine.stop("test")
    assert row.locked_by is None
    assert isinstance(DatabaseUnavailable("x"), Exception)
