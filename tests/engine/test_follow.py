"""Following: the image is validated, then written; every other end is a reason."""

from __future__ import annotations

import dataclasses

import pytest
import trio

from listener.engine import Connected
from listener.engine.ports import Pending, Ready, Refused, Submitted
from listener.errors import ApiCredentials, ApiMalformed, ApiNotFound, ApiTransient, InvalidImage
from tests.engine.conftest import make_engine, run_until
from tests.engine.fakes import PNG_B64, accept_all


async def _one(store, provider, **kw):
    engine = make_engine(store, provider, **kw)
    (id_,) = store.add(1, width=512, height=256)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.rows[id_].status in ("ReadyToPublish", "Failed"))
        engine.stop("test")
    return store.rows[id_]


async def test_an_image_that_does_not_validate_fails_the_row(store, provider, autojump_clock):
    seen = []

    async def validate(image, expected):
        seen.append(expected)
        raise InvalidImage("PNG of 1x1, expected 512x256")

    row = await _one(store, provider, validate=validate)
    assert (row.status, row.last_error) == ("Failed", "invalid image: PNG of 1x1, expected 512x256")
    # a provider that draws at its own size is not held to the row's (it records its own)
    expected = (512, 256) if provider.traits.honours_size else None
    assert seen == [expected] and row.image is None and row.censored is False


@pytest.mark.parametrize(
    ("answer", "reason", "censored"),
    [
        (Refused("censored", censored=True), "censored", True),
        (Refused("generation FAIL: \x1b[31mred"), "generation FAIL: \\x1b[31mred", False),
    ],
)
async def test_refusals_end_failed_with_a_clean_reason(
    store, provider, autojump_clock, answer, reason, censored
):
    provider.on_outcome = lambda handle: answer
    row = await _one(store, provider)
    assert (row.status, row.last_error, row.censored) == ("Failed", reason, censored)


async def test_an_unknown_generation_fails(store, provider, autojump_clock):
    def gone(handle):
        raise ApiNotFound("status: HTTP 404")

    provider.on_outcome = gone
    row = await _one(store, provider)
    assert row.last_error == (
        f"the API no longer knows generation {row.uuid} (404): its result expired or was "
        "fetched elsewhere"
    )
    assert row.censored is False


MALFORMED_DONE = ApiMalformed(
    'status: malformed answer: result.files: Input should be a valid list: {"status": "DONE"'
)


@pytest.mark.parametrize(
    ("before", "said", "not_said"),
    [
        # a DONE answer the listener could not read, then 404: the result was in it
        (
            [MALFORMED_DONE],
            "(404) right after an answer the listener could not read (status: malformed "
            "answer: result.files",
            "expired or fetched elsewhere",
        ),
        ([ApiTransient("status: HTTP 502: bad gateway")], "after a status check that failed", None),
        # a malformed answer long before, then a readable one: nothing to say about it
        ([MALFORMED_DONE, Pending()], "its result expired or was fetched elsewhere", "read"),
        ([], "its result expired or was fetched elsewhere", None),
    ],
)
async def test_a_404_says_what_happened_before_it(
    store, provider, autojump_clock, before, said, not_said
):
    answers = [*before, ApiNotFound("status: HTTP 404")]

    def next_answer(handle):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    provider.on_outcome = next_answer
    row = await _one(store, provider)
    assert row.status == "Failed"
    assert said in row.last_error, row.last_error
    assert not_said is None or not_said not in row.last_error, row.last_error


@pytest.mark.shapes("poll")  # a download is asked once: there is nothing to space
async def test_no_result_in_time_fails_after_the_checks_time(store, provider, autojump_clock):
    """DEFAULT_MAX_ATTEMPTS x DEFAULT_CHECK_INTERVAL is a time limit: the checks within it
    are spaced by what generations took, and the last one is made at the limit."""
    provider.generation_time = 10_000
    row = await _one(
        store, provider, settings={"default_max_attempts": 5, "default_check_interval": 2}
    )
    assert row.last_error == "timeout: no result 10s after the first status check (5 x 2s)"
    assert 2 <= sum(provider.checks.values()) <= 5 + 1  # the seed's count, and one at the limit


@pytest.mark.shapes("poll")
async def test_the_image_is_validated_against_the_size_asked_for_and_written_as_given(
    store, provider, autojump_clock
):
    seen = []

    async def validate(image, expected):
        seen.append((image, expected))
        return await accept_all(image, expected)

    row = await _one(store, provider, validate=validate)  # asked 512 x 256
    assert seen == [(PNG_B64, (512, 256))]
    assert (row.status, row.image, row.uuid) == ("ReadyToPublish", PNG_B64, "uuid-1")


@pytest.mark.parametrize("honours_size", [True, False])
async def test_no_size_is_expected_where_none_is_known(
    store, provider, autojump_clock, honours_size
):
    """A provider that does not honour sizes, or a row that asked for none (an adopted
    generation of the seed service's): nothing to compare the image with."""
    seen = []

    async def validate(image, expected):
        seen.append(expected)
        return await accept_all(image, expected)

    provider.traits = dataclasses.replace(provider.traits, honours_size=honours_size)
    engine = make_engine(store, provider, validate=validate)
    store.add(1, width=512, height=None, status="Generate", uuid="u")
    store.add(1, width=512, height=256, status="Generate", uuid="v")
    provider.started.update(u=0.0, v=0.0)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        engine.on_event(Connected())
        await run_until(lambda: store.statuses()["ReadyToPublish"] == 2)
        engine.stop("test")
    assert sorted(seen, key=str) == sorted([None, (512, 256) if honours_size else None], key=str)


@pytest.mark.shapes("poll")  # a draw's download is Ready at the first ask
async def test_a_generation_resumed_past_its_deadline_is_asked_once_then_fails(
    store, provider, autojump_clock
):
    provider.generation_time = 10_000
    engine = make_engine(store, provider, settings={"default_generation_timeout": 600})
    (id_,) = store.add(1, status="Generate", uuid="old", started=-1000.0)  # 1000 s ago
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        engine.on_event(Connected())
        await run_until(lambda: store.rows[id_].status == "Failed")
        engine.stop("test")
    assert store.rows[id_].last_error == "timeout: no result 600s after the API accepted the run"
    assert provider.checks["old"] == 1


async def test_the_providers_hint_is_waited_before_the_first_question(
    store, provider, autojump_clock
):
    accepted = {}

    def on_submit(request):
        accepted["at"] = trio.current_time()
        provider.started["h"] = trio.current_time()
        return Submitted("h", check_after=1.0)

    asked = []

    def on_outcome(handle):
        asked.append(trio.current_time())
        return Ready(PNG_B64)

    provider.on_submit, provider.on_outcome = on_submit, on_outcome
    row = await _one(store, provider)
    assert row.status == "ReadyToPublish"
    assert asked[0] - accepted["at"] >= 1.0


@pytest.mark.shapes("poll")  # a hint is the poll's
async def test_the_hint_is_cut_at_the_deadline(store, provider, autojump_clock):
    asked = []

    def on_submit(request):
        provider.started["h"] = trio.current_time()
        return Submitted("h", check_after=5.0)

    def on_outcome(handle):
        asked.append(trio.current_time())
        return Pending()

    provider.on_submit, provider.on_outcome = on_submit, on_outcome
    row = await _one(store, provider, settings={"default_generation_timeout": 0.5})
    assert row.last_error == "timeout: no result 0.5s after the API accepted the run"
    # asked at the deadline (the status call itself takes 0.01 s), not after the hint
    assert len(asked) == 1 and asked[0] - provider.started["h"] < 0.5 + 0.02


async def test_a_refused_key_while_following_pauses_and_the_row_is_kept(
    store, provider, autojump_clock
):
    calls = {"n": 0}

    def on_outcome(handle):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ApiCredentials("status: HTTP 401")
        return Ready(PNG_B64)

    provider.on_outcome = on_outcome
    row = await _one(store, provider)
    assert row.status == "ReadyToPublish" and store.released == []  # never let go
    assert calls["n"] == 2


async def test_a_key_refused_at_a_later_check_pauses_that_check_and_the_row_is_kept(
    store, provider, autojump_clock
):
    """Past the first check (no longer part of the paid call), a refused key pauses the
    row's checks too, and they go on once the key works again."""
    answers = [Pending(), ApiCredentials("status: HTTP 401")]

    def on_outcome(handle):
        if answers:
            a = answers.pop(0)
            if isinstance(a, Exception):
                raise a
            return a
        return Ready(PNG_B64)

    provider.on_outcome = on_outcome
    row = await _one(store, provider)
    assert row.status == "ReadyToPublish" and store.released == []  # never let go
    assert sum(provider.checks.values()) == 3
