"""Following: the image is validated, then written; every other end is a reason."""

from __future__ import annotations

import pytest
import trio

from listener.engine.ports import Pending, Refused
from listener.errors import ApiMalformed, ApiNotFound, ApiTransient, InvalidImage
from tests.engine.conftest import make_engine, run_until


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
    assert seen == [expected] and row.image is None


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
    assert "no longer knows generation" in row.last_error


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
