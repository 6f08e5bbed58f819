"""Following, answer by answer: what each status-check answer does to the row and to the
time of the next check (the partial mutation run of 2026-12-07 found these unpinned)."""

from __future__ import annotations

import trio

from listener.engine.ports import Pending
from listener.errors import ApiBusy, ApiPermanent
from listener.images import ImageInfo
from tests.engine.conftest import make_engine, run_until, scripted


async def _follow(store, provider, **kw):
    engine = make_engine(store, provider, **kw)
    (id_,) = store.add(1, width=512, height=256)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.rows[id_].status in ("ReadyToPublish", "Failed"))
        engine.stop("test")
    return store.rows[id_]


def _checks_at(provider, answers):
    """provider.on_outcome answering from `answers` in turn (then Pending), noting when."""
    provider.on_outcome, times = scripted(answers, lambda handle: Pending())
    return times


async def test_a_status_check_refused_for_good_fails_the_row_with_its_words(
    store, provider, autojump_clock
):
    _checks_at(provider, [ApiPermanent("status: HTTP 400 \x1b[2Jbad id")])
    row = await _follow(store, provider)
    assert (row.status, row.last_error) == (
        "Failed",
        "status check refused: status: HTTP 400 \\x1b[2Jbad id",
    )
    assert row.censored is False and row.locked_by is None


async def test_the_image_is_recorded_as_the_check_of_its_bytes_found_it(
    store, provider, autojump_clock
):
    async def validate(image, expected):
        return ImageInfo("jpeg", 1024, 768, len(image))

    row = await _follow(store, provider, validate=validate)
    assert row.status == "ReadyToPublish"
    assert (row.image_type, row.image_size) == ("jpeg", (1024, 768))


async def test_busy_at_a_status_check_waits_what_the_api_asked_capped(
    store, provider, autojump_clock
):
    times = _checks_at(
        provider,
        [ApiBusy("status: 429", retry_after=7.0), ApiBusy("status: 429", retry_after=1e6)],
    )
    row = await _follow(
        store,
        provider,
        settings={
            "retry_backoff_max": 20,
            "default_check_interval": 0.5,
            "default_max_attempts": 1000,  # the time limit is not what spaces these checks
        },
    )
    assert row.status == "Failed"  # never ready: the generation time limit
    assert len(times) >= 3
    assert times[1] - times[0] >= 7.0  # its Retry-After, not the pacing's half second
    assert 20.0 <= times[2] - times[1] < 21.0  # a year, capped at RETRY_BACKOFF_MAX


async def test_the_check_limit_is_max_attempts_times_the_interval_after_the_first_check(
    store, provider, autojump_clock
):
    times = _checks_at(provider, [])  # never ready
    row = await _follow(
        store,
        provider,
        settings={
            "default_max_attempts": 4,
            "default_check_interval": 5,
            "default_generation_timeout": 1000,
        },
    )
    assert row.status == "Failed"
    assert row.last_error == "timeout: no result 20s after the first status check (4 x 5s)"
    # the last check is made at the limit, 4 x 5 s after the first, not sooner
    assert 20.0 <= times[-1] - times[0] < 20.5
