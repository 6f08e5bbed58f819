"""Submitting: each outcome of a run, and the cap on paid runs whose outcome is unknown."""

from __future__ import annotations

import itertools

import pytest
import trio

from listener.engine.doorbell import backoff_delay
from listener.engine.ports import Refused, Submitted
from listener.errors import (
    ApiBusy,
    ApiCredentials,
    ApiNotTaken,
    ApiOutcomeUnknown,
    ApiPermanent,
    ApiQuotaExhausted,
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
    assert store.rows[id_].last_error == (
        f"gave up: {1 + resends} run(s) sent without a usable answer (the API may have "
        "generated the image and charged for it); not sent again to avoid paying twice. "
        "To send it once more: listener retry ID (or SELECT images_retry(ID)); "
        "last: run: no answer from the API: ReadTimeout"
    )


async def test_transient_errors_are_retried_then_given_up(store, provider, autojump_clock, caplog):
    tries, waiting = [], []

    def on_submit(request):
        tries.append(trio.current_time())
        if len(tries) > 1:
            waiting.append(store.rows[id_].last_error)  # kept while it waited
        raise ApiTransient("run: HTTP 503: down", retry_after=1e15)

    provider.on_submit = on_submit
    engine = make_engine(store, provider, settings={"retry_max_attempts": 3})
    (id_,) = store.add(1)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.rows[id_].status == "Failed", seconds=36000, every=1.0)
        engine.stop("test")
    assert store.rows[id_].last_error == "gave up after 3 attempts: run: HTTP 503: down"
    assert len(tries) == 3 and waiting == ["run: HTTP 503: down"] * 2
    assert trio.current_time() < 2 * 300 + 60  # failed at the third answer, not a claim later
    # Retry-After is honoured, capped at RETRY_BACKOFF_MAX (300 s); a draw's own time on top
    draw = provider.run_time + provider.generation_time if provider.name == "fakedraw" else 0
    assert [round(b - a - draw) for a, b in itertools.pairwise(tries)] == [300, 300]
    assert "unexpected error" not in caplog.text


def test_a_back_off_is_spread_over_its_upper_half():
    delays = [backoff_delay(3, 10, 1000) for _ in range(500)]
    assert min(delays) >= 20 and max(delays) <= 40  # ceiling 10 * 2**2
    assert backoff_delay(9, 10, 100) <= 100


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
        # the start-up probe found the key refused before anything was submitted
        assert len(provider.submitted) == 0
        engine.stop("test")


@pytest.mark.parametrize("probe_answer", [None, ApiTransient("availability: HTTP 503")])
async def test_generation_resumes_by_itself_once_the_key_works_again(
    store, provider, autojump_clock, probe_answer
):
    """Any answer of the probe but a refusal means the key is accepted again."""
    refused = {"until": 60.0}

    def on_submit(request):
        if trio.current_time() < refused["until"]:
            raise ApiCredentials("run: HTTP 401")
        provider.started[request.prompt] = trio.current_time()
        return Submitted(request.prompt)

    async def probe():
        if trio.current_time() < refused["until"]:
            raise ApiCredentials("availability: HTTP 401")
        if probe_answer is not None:
            raise probe_answer

    provider.on_submit, provider.probe = on_submit, probe
    engine = make_engine(store, provider)
    (id_,) = store.add(1)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.rows[id_].status == "ReadyToPublish", seconds=600)
        engine.stop("test")
    assert 60 <= trio.current_time() < 60 + 5 + 5  # the next probe after the key came back
    assert engine.health.credentials_ok.is_set()


async def test_a_scheduled_retry_is_made_when_it_falls_due(store, provider, autojump_clock):
    """The row task rings the claims when it schedules a retry: they learn the row's
    due time at once (neither a sweep nor the periodic look is waited for)."""
    tries = []

    def on_submit(request):
        tries.append(trio.current_time())
        if len(tries) == 1:
            raise ApiTransient("run: HTTP 503: down")
        provider.started[request.prompt] = trio.current_time()
        return Submitted(request.prompt)

    provider.on_submit = on_submit
    engine = make_engine(
        store, provider, settings={"retry_backoff_base": 1, "retry_backoff_max": 2}
    )
    (id_,) = store.add(1)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.rows[id_].status == "ReadyToPublish", seconds=600)
        engine.stop("test")
    assert tries[1] - tries[0] < 2.5  # the back-off (at most 2 s), not 10 s or 300 s


async def test_without_the_setting_the_provider_says_how_often_an_unknown_outcome_is_resent(
    store, provider, autojump_clock
):
    """UNKNOWN_OUTCOME_RESENDS unset: the provider's default (Fusion Brain 1; a provider
    that draws in one call, GigaChat, 0: a lost draw is never drawn again by itself)."""

    def on_submit(request):
        raise ApiOutcomeUnknown("draw: the connection dropped after sending")

    provider.on_submit = on_submit
    engine = make_engine(store, provider, settings={"retry_max_attempts": 9})
    (id_,) = store.add(1)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.rows[id_].status == "Failed", seconds=36000)
        engine.stop("test")
    assert len(provider.submitted) == 1 + provider.traits.unknown_outcome_resends
    assert "listener retry" in store.rows[id_].last_error


async def test_a_refusal_known_at_submit_fails_the_row_and_is_not_followed(
    store, provider, autojump_clock
):
    """GigaChat's `blacklist` answer to the draw itself: Refused, censored."""
    provider.on_submit = lambda request: Refused("censored: the model declined", censored=True)
    engine = make_engine(store, provider)
    (id_,) = store.add(1)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.rows[id_].status == "Failed")
        engine.stop("test")
    row = store.rows[id_]
    assert (row.last_error, row.censored, row.uuid) == (
        "censored: the model declined",
        True,
        None,
    )
    assert not provider.checks, "nothing to follow"


async def test_api_concurrency_is_one_limit_on_every_call(store, provider, autojump_clock):
    """Submissions, status checks and downloads together: never more than
    API_CONCURRENCY calls in flight (its default: the provider's)."""
    provider.generation_time = 0.5
    engine = make_engine(store, provider, settings={"api_concurrency": 2})
    store.add(12)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.statuses()["ReadyToPublish"] == 12)
        engine.stop("test")
    assert provider.max_in_flight == 2 == engine.budget.most_calling
    default = make_engine(store, provider)
    assert default.concurrency == provider.traits.default_concurrency


async def test_busy_waits_at_least_the_providers_retry_after(store, provider, autojump_clock):
    calls = []
    real_submit = provider.submit

    async def submit(request):
        calls.append(trio.current_time())
        if len(calls) == 1:
            raise ApiBusy("busy: 429", retry_after=40)
        return await real_submit(request)

    provider.submit = submit
    engine = make_engine(store, provider)
    (id_,) = store.add(1)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.rows[id_].status == "ReadyToPublish")
        engine.stop("test")
    assert calls[1] - calls[0] >= 40, "Retry-After honoured (capped by RETRY_BACKOFF_MAX)"
    assert store.rows[id_].attempts == 1, "busy is never an attempt"


async def test_a_used_up_quota_pauses_drawing_one_try_per_backoff_and_fails_nothing(
    store, provider, autojump_clock
):
    """402 (GigaChat): no row fails; after the first refusals, one draw is tried every
    RETRY_BACKOFF_MAX with the provider's words kept in the waiting rows; drawing
    resumes once a draw is accepted."""
    tries = []
    refusals = 6
    real_submit = provider.submit

    async def submit(request):
        tries.append(trio.current_time())
        if len(tries) <= refusals:
            raise ApiQuotaExhausted("402: Payment Required: no tokens left")
        return await real_submit(request)

    provider.submit = submit
    engine = make_engine(store, provider, settings={"api_concurrency": 4, "retry_backoff_max": 100})
    ids = store.add(4)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: len(tries) > refusals - 1, seconds=3600, every=1.0)
        waiting = [store.rows[i] for i in ids if store.rows[i].status == "ReadyToGenerate"]
        assert any("paid quota used up" in (r.last_error or "") for r in waiting)
        assert "no tokens left" in engine.health.quota_reason()
        await run_until(lambda: store.statuses()["ReadyToPublish"] == 4, seconds=3600, every=1.0)
        engine.stop("test")
    assert not store.statuses()["Failed"]
    assert all(r.attempts <= 1 for r in store.rows.values()), "a paused draw is no attempt"
    burst = [t for t in tries if t - tries[0] < 1]  # the calls already under way
    assert len(burst) <= 4
    trials = tries[len(burst) : refusals + 1]  # one at a time, a pause apart
    gaps = [b - a for a, b in zip([burst[-1], *trials[:-1]], trials, strict=True)]
    assert gaps and all(gap >= 100 for gap in gaps), gaps


async def test_the_request_is_neutral_and_carries_what_an_idempotency_key_needs(
    store, provider, autojump_clock
):
    engine = make_engine(store, provider, settings={"default_style": "UHD"})
    (id_,) = store.add(1, prompt="  " + "fox " * 400, width=512, height=256)
    store.styles = {"UHD": "Draw a detailed photo."}
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.rows[id_].status == "ReadyToPublish")
        engine.stop("test")
    (request,) = provider.requests
    assert (request.row_id, request.attempt) == (id_, 1)
    assert (
        len(request.prompt) <= 999
        and request.prompt.startswith("fox")
        and (request.prompt == request.prompt.strip())
    )
    assert request.style == "UHD" and request.style_prompt == "Draw a detailed photo."
    if provider.traits.honours_size:
        assert (request.width, request.height) == (512, 256)
    else:  # it draws at its own size: none is asked
        assert (request.width, request.height) == (None, None)


async def test_a_5xx_after_sending_counts_like_a_timeout(store, provider, autojump_clock):
    """The client turns a 5xx on run into ApiOutcomeUnknown: the engine caps it like any
    unknown outcome, before RETRY_MAX_ATTEMPTS would (2 runs, not 5, with Fusion Brain's
    default of one re-send; 1 with a provider that never re-sends by itself)."""

    def on_submit(request):
        raise ApiOutcomeUnknown("run: HTTP 504: Gateway Time-out")

    provider.on_submit = on_submit
    engine = make_engine(store, provider, settings={"retry_max_attempts": 5})
    (id_,) = store.add(1)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.rows[id_].status == "Failed", seconds=36000)
        engine.stop("test")
    assert len(provider.submitted) == 1 + provider.traits.unknown_outcome_resends
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
            every=1.0,
        )
        assert {store.rows[i].status for i in ids} == {"ReadyToGenerate"}
        assert "HTTP 429" in " ".join(store.rows[i].last_error or "" for i in ids)
        await run_until(
            lambda: all(store.rows[i].status == "ReadyToPublish" for i in ids),
            seconds=36000,
            every=1.0,
        )
        engine.stop("test")
    assert [store.rows[i].attempts for i in ids] == [1, 1, 1], "only the accepted run counts"
    assert trio.current_time() >= 3 * 10, "each pause at least the Retry-After"
