"""Submitting: each outcome of a run, and the cap on paid runs whose outcome is unknown."""

from __future__ import annotations

import pytest
import trio

from listener.engine.ports import Submitted
from listener.errors import (
    ApiCredentials,
    ApiNotTaken,
    ApiOutcomeUnknown,
    ApiPermanent,
    ApiTransient,
)
from tests.engine.conftest import make_engine, run_until


@pytest.mark.parametrize("resends", [0, 1, 2])
async def test_unknown_outcomes_cost_at_most_one_plus_the_resends(
    store, provider, autojump_clock, resends
):
    def on_submit(request):
        raise ApiOutcomeUnknown("run: no answer from the API: ReadTimeout")

    provider.on_submit = on_submit
    engine = make_engine(
        store, provider, settings={"unknown_outcome_resends": resends, "retry_max_attempts": 9}
    )
    (id_,) = store.add(1)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.rows[id_].status == "Failed", seconds=36000)
        engine.stop("test")
    assert len(provider.submitted) == 1 + resends
    assert "the API may have generated the image" in store.rows[id_].last_error
    assert "listener retry" in store.rows[id_].last_error


async def test_transient_errors_are_retried_then_given_up(store, provider, autojump_clock):
    def on_submit(request):
        raise ApiTransient("run: HTTP 503: down", retry_after=1e15)

    provider.on_submit = on_submit
    engine = make_engine(store, provider, settings={"retry_max_attempts": 3})
    (id_,) = store.add(1)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.rows[id_].status == "Failed", seconds=36000)
        engine.stop("test")
    assert store.rows[id_].last_error == "gave up after 3 attempts: run: HTTP 503: down"
    assert trio.current_time() < 3 * 300 + 60  # Retry-After capped at RETRY_BACKOFF_MAX


async def test_a_refused_request_fails_at_once(store, provider, autojump_clock):
    def on_submit(request):
        raise ApiPermanent("run: HTTP 400: bad style\n2030/01/01 forged line")

    provider.on_submit = on_submit
    engine = make_engine(store, provider)
    (id_,) = store.add(1)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.rows[id_].status == "Failed")
        engine.stop("test")
    assert store.rows[id_].last_error == (
        "API refused the request: run: HTTP 400: bad style\\n2030/01/01 forged line"
    )


async def test_refused_credentials_touch_no_row_and_pause_generation(
    store, provider, autojump_clock
):
    def on_submit(request):
        raise ApiCredentials("run: HTTP 401")

    async def probe():
        raise ApiCredentials("availability: HTTP 401")

    provider.on_submit = on_submit
    provider.probe = probe
    engine = make_engine(store, provider)
    (id_,) = store.add(1)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: not engine.health.credentials_ok.is_set())
        await trio.sleep(60)
        row = store.rows[id_]
        assert (row.status, row.attempts, row.locked_by) == ("ReadyToGenerate", 0, None)
        assert len(provider.submitted) == 1
        engine.stop("test")


async def test_a_5xx_after_sending_counts_like_a_timeout(store, provider, autojump_clock):
    """The client turns a 5xx on run into ApiOutcomeUnknown: the engine caps it like any
    unknown outcome, before RETRY_MAX_ATTEMPTS would (2 runs, not 5)."""

    def on_submit(request):
        raise ApiOutcomeUnknown("run: HTTP 504: Gateway Time-out")

    provider.on_submit = on_submit
    engine = make_engine(store, provider, settings={"retry_max_attempts": 5})
    (id_,) = store.add(1)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.rows[id_].status == "Failed", seconds=36000)
        engine.stop("test")
    assert len(provider.submitted) == 2
    reason = store.rows[id_].last_error
    assert "the API may have generated the image" in reason and "HTTP 504" in reason


async def test_a_storm_of_not_taken_answers_fails_nothing_and_counts_nothing(
    store, provider, autojump_clock
):
    """429 (or 408, 425) a hundred times, then the API takes the runs: every row is
    generated, no attempt is counted for the refusals, the pause honours Retry-After."""
    refusals = 100

    def on_submit(request):
        n = len(provider.submitted)
        if n <= refusals:
            raise ApiNotTaken("run: HTTP 429: Too Many Requests", retry_after=3)
        provider.started[f"uuid-{n}"] = trio.current_time()
        return Submitted(f"uuid-{n}", check_after=0.0)

    provider.on_submit = on_submit
    engine = make_engine(store, provider, settings={"retry_max_attempts": 2})
    ids = store.add(3)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(
            lambda: any(store.rows[i].last_error for i in ids) and len(provider.submitted) > 10,
            seconds=36000,
        )
        assert {store.rows[i].status for i in ids} == {"ReadyToGenerate"}
        assert "HTTP 429" in " ".join(store.rows[i].last_error or "" for i in ids)
        await run_until(
            lambda: all(store.rows[i].status == "ReadyToPublish" for i in ids), seconds=36000
        )
        engine.stop("test")
    assert [store.rows[i].attempts for i in ids] == [1, 1, 1], "only the accepted run counts"
    assert trio.current_time() >= 3 * 10, "each pause at least the Retry-After"
