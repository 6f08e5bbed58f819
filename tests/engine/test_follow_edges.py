"""Following, at its edges: the exact reason a 404 leaves in the row, the outcome of a
first check made at a stop (written within the paid call's own deadline), a later check
cut at the grace, the spacing of checks near the time limit, and what a check teaches
the pacing (survivors of the mutation run of 2026-12-07 on follow.py)."""

from __future__ import annotations

import itertools
import logging

import pytest
import trio

from listener.engine import Connected, Wakeup
from listener.engine.ports import Pending, Ready, Refused
from listener.errors import (
    ApiBusy,
    ApiCredentials,
    ApiMalformed,
    ApiNotFound,
    ApiPermanent,
    ApiQuotaExhausted,
    ApiTransient,
    DatabaseUnavailable,
    InvalidImage,
)
from tests.engine.conftest import make_engine, run_until, scripted, with_hint
from tests.engine.fakes import PNG_B64, FakeStore


async def _follow(store, provider, **kw):
    engine = make_engine(store, provider, **kw)
    (id_,) = store.add(1)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.rows[id_].status in ("ReadyToPublish", "Failed"))
        engine.stop("test")
    return store.rows[id_]


def _answers(provider, answers) -> list[float]:
    """provider.on_outcome answering from `answers` in turn (then Pending), noting when."""
    provider.on_outcome, times = scripted(answers, lambda handle: Pending())
    return times


# -- the reason a 404 leaves -------------------------------------------------------------

GONE = "the API no longer knows generation {} (404)"


@pytest.mark.parametrize(
    ("before", "reason"),
    [
        pytest.param(
            ApiMalformed("status: malformed answer: result.files missing"),
            GONE + " right after an answer the listener could not read (status: malformed "
            "answer: result.files missing): the result was most likely in that answer (the "
            "API hands a result out once)",
            id="after an unreadable answer",
        ),
        pytest.param(
            ApiTransient("status: HTTP 502: bad gateway"),
            GONE + " right after a status check that failed (status: HTTP 502: bad gateway): "
            "the result was in that answer if the API sent one, else it expired or was "
            "fetched elsewhere",
            id="after a failed check",
        ),
        # a quota refusal carries no result: nothing to say about it
        pytest.param(
            ApiQuotaExhausted("status: HTTP 402: no tokens left"),
            GONE + ": its result expired or was fetched elsewhere",
            id="after a quota refusal",
        ),
    ],
)
async def test_a_404_leaves_the_exact_reason_an_operator_reads(
    store, provider, autojump_clock, before, reason
):
    _answers(provider, [before, ApiNotFound("status: HTTP 404")])
    row = await _follow(store, provider)
    assert (row.status, row.last_error) == ("Failed", reason.format(row.uuid))


# -- the first check made at a stop --------------------------------------------------------


class WritesLandAtTheThirdTry(FakeStore):
    """The database is away for a moment when a generation's end is written: the first
    two tries of each final write fail (retried by the guard until its deadline)."""

    failing = 2

    def _away(self) -> None:
        if self.failing:
            self.failing -= 1
            raise DatabaseUnavailable("database unavailable: connection lost")

    async def finalise(self, *args, **kwargs):
        self._away()
        return await super().finalise(*args, **kwargs)

    async def fail(self, *args, **kwargs):
        self._away()
        return await super().fail(*args, **kwargs)


async def _invalid(image, expected):
    raise InvalidImage("PNG of 1x1, expected 512x256")


def _answer(answer):
    def on_outcome(handle):
        if isinstance(answer, Exception):
            raise answer
        return answer

    return on_outcome


@pytest.mark.parametrize(
    ("setup", "status", "reason"),
    [
        pytest.param({}, "ReadyToPublish", None, id="an image"),
        pytest.param(
            {"validate": _invalid},
            "Failed",
            "invalid image: PNG of 1x1, expected 512x256",
            id="an invalid image",
        ),
        pytest.param(
            {"on_outcome": _answer(Refused("censored", censored=True))},
            "Failed",
            "censored",
            id="refused",
        ),
        pytest.param(
            {"on_outcome": _answer(ApiNotFound("status: HTTP 404"))},
            "Failed",
            GONE + ": its result expired or was fetched elsewhere",
            id="gone",
        ),
        pytest.param(
            {"on_outcome": _answer(ApiPermanent("status: HTTP 400 bad id"))},
            "Failed",
            "status check refused: status: HTTP 400 bad id",
            id="check refused",
        ),
        pytest.param(
            {"slow_not_yet": 7.0, "settings": {"default_generation_timeout": 5}},
            "Failed",
            "timeout: no result 5s after the API accepted the run",
            id="no result in time",
        ),
    ],
)
async def test_the_end_found_by_the_first_check_at_a_stop_is_written_within_the_paid_deadline(
    provider, autojump_clock, setup, status, reason
):
    """A run that ends after SHUTDOWN_GRACE (20 s of a 5 s grace), then a first check whose
    answer the database takes only at the third try: the write is retried within the
    paid call's own deadline, not cut at the grace, whatever the answer."""
    store = WritesLandAtTheThirdTry(provider=provider.name)
    provider.run_time, provider.generation_time = 20.0, 0.0
    if "on_outcome" in setup:
        provider.on_outcome = setup["on_outcome"]
    if "slow_not_yet" in setup:

        async def slow_not_yet(handle):
            await trio.sleep(setup["slow_not_yet"])
            return Pending()

        provider.outcome = slow_not_yet
    kw = {"validate": setup["validate"]} if "validate" in setup else {}
    engine = make_engine(
        store, provider, settings={"shutdown_grace": 5, **setup.get("settings", {})}, **kw
    )
    (id_,) = store.add(1)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: provider.in_flight == 1)
        engine.stop("SIGTERM")
    row = store.rows[id_]
    expected = None if reason is None else reason.format(row.uuid)
    assert (row.status, row.last_error, row.locked_by) == (status, expected, None)
    assert store.failing == 0


@pytest.mark.shapes("poll")  # a download is Ready at its first ask: no later check
async def test_a_later_status_check_hanging_at_a_stop_is_cut_at_the_grace(
    store, provider, autojump_clock
):
    """Only the first check of a generation just paid for keeps the paid call's deadline;
    the next one, hanging, gets SHUTDOWN_GRACE like any other call."""
    provider.generation_time = 1000.0
    check = provider.outcome
    asked = []

    async def second_hangs(handle):
        asked.append(trio.current_time())
        if len(asked) > 1:
            await trio.sleep(10_000)
        return await check(handle)

    provider.outcome = second_hangs
    engine = make_engine(store, provider, settings={"shutdown_grace": 5})
    (id_,) = store.add(1)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: len(asked) == 2, every=1.0)
        start = trio.current_time()
        engine.stop("SIGTERM")
    assert 5 <= trio.current_time() - start < 6
    row = store.rows[id_]
    assert (row.status, row.locked_by) == ("Generate", None) and row.uuid


@pytest.mark.shapes("poll")  # a hint is the poll's
@pytest.mark.parametrize(("hint", "checks"), [(20.0, 1), (21.0, 0)])
async def test_at_a_stop_the_first_check_is_made_only_if_it_leaves_the_grace_before_the_paid_deadline(
    store, provider, autojump_clock, hint, checks
):
    """The run takes 10 s of its 30 s call timeout and the grace is 5 s: its deadline is
    35 s after it started; a first check due at 30 s leaves the grace (made), one due at
    31 s does not (not made: the row keeps its uuid for the next start)."""
    provider.run_time, provider.generation_time = 10.0, 1000.0

    with_hint(provider, hint)
    engine = make_engine(store, provider, settings={"shutdown_grace": 5})
    (id_,) = store.add(1)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: provider.in_flight == 1)
        engine.stop("SIGTERM")
    assert sum(provider.checks.values()) == checks
    row = store.rows[id_]
    assert (row.status, row.locked_by, row.unknown_outcomes) == ("Generate", None, 0)


# -- the spacing of checks -----------------------------------------------------------------


@pytest.mark.shapes("poll")  # a download is asked once: there is nothing to space
async def test_checks_under_a_second_apart_keep_the_interval_after_busy_without_retry_after(
    store, provider, autojump_clock
):
    """DEFAULT_CHECK_INTERVAL of half a second is the spacing while nothing is learned,
    and a busy answer that names no wait is asked again at that spacing too."""
    times = _answers(provider, [ApiBusy("status: HTTP 429"), Pending(), Pending(), Ready(PNG_B64)])
    row = await _follow(store, provider, settings={"default_check_interval": 0.5})
    assert row.status == "ReadyToPublish"
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == pytest.approx([0.51, 0.51, 0.51])  # each asked 0.5 s after an answer


@pytest.mark.shapes("poll")
async def test_the_last_check_is_made_at_the_time_limit_when_it_is_nearer_than_a_second(
    store, provider, autojump_clock
):
    """Limit 2.5 s, checks 2 s apart: the third is at the limit, not 1 s or 2 s later."""
    times = _answers(provider, [])  # never ready
    row = await _follow(
        store,
        provider,
        settings={
            "default_generation_timeout": 2.5,
            "default_check_interval": 2,
            "default_max_attempts": 1000,
        },
    )
    assert row.last_error == "timeout: no result 2.5s after the API accepted the run"
    accepted = provider.started[row.uuid]
    assert len(times) == 3
    assert 2.5 <= times[-1] - accepted < 2.52  # asked at the limit (the call takes 0.01 s)


@pytest.mark.shapes("poll")
async def test_a_not_yet_answered_at_once_at_the_time_limit_is_the_last_check(
    store, provider, autojump_clock
):
    """A check made at the limit whose "not yet" comes back in the same instant ends the
    row: it is not asked again and again at the limit."""
    asked = []

    async def at_once(handle):
        asked.append(trio.current_time())
        if len(asked) > 10:  # asked in a loop at the limit: end the row otherwise
            raise ApiPermanent("status: asked in a loop")
        return Pending()

    provider.outcome = at_once
    provider.run_time = 1.0
    row = await _follow(
        store,
        provider,
        settings={
            "default_generation_timeout": 4,
            "default_check_interval": 2,
            "default_max_attempts": 1000,
        },
    )
    assert row.last_error == "timeout: no result 4s after the API accepted the run"
    assert [t - asked[0] for t in asked] == [0.0, 2.0, 4.0]


# -- what a check teaches the pacing -------------------------------------------------------


def _hinted(provider, hints: dict[str, float]) -> dict[str, list[float]]:
    """Each prompt's run answered with its hint; each handle's checks noted (Ready once
    `provider.generation_time` has passed since its acceptance)."""
    asked: dict[str, list[float]] = {}

    with_hint(provider, lambda request: hints.get(request.prompt, 0.0))

    def on_outcome(handle):
        asked.setdefault(handle, []).append(trio.current_time())
        if trio.current_time() - provider.started[handle] >= provider.generation_time:
            return Ready(PNG_B64)
        return Pending()

    provider.on_outcome = on_outcome
    return asked


@pytest.mark.shapes("poll")
async def test_a_generation_ready_at_its_first_check_teaches_the_pacing_its_time(
    store, provider, autojump_clock
):
    """Asked first at its hint (16 s) and ready then, it took at most 16 s: what is
    learned is just under it (16 s less an eighth, 14 s), and the next generation is asked
    again at 14 s rather than every second (DEFAULT_CHECK_INTERVAL)."""
    asked = _hinted(provider, {"first": 16.0})
    provider.generation_time = 16.0
    engine = make_engine(store, provider, settings={"default_check_interval": 1})
    (first,) = store.add(1, prompt="first")
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.rows[first].status == "ReadyToPublish", every=1.0)
        (second,) = store.add(1, prompt="second")
        engine.on_event(Wakeup("ReadyToGenerate"))
        await run_until(lambda: store.rows[second].status == "ReadyToPublish", every=1.0)
        engine.stop("test")
    assert len(asked[store.rows[first].uuid]) == 1
    checks = asked[store.rows[second].uuid]
    assert 13.9 < checks[1] - checks[0] < 14.1


@pytest.mark.shapes("poll")
@pytest.mark.parametrize(
    "failure",
    [
        ApiTransient("status: HTTP 502: bad gateway"),
        ApiBusy("status: HTTP 429"),
        ApiQuotaExhausted("status: HTTP 402: no tokens left"),
    ],
    ids=["transient", "busy", "quota"],
)
async def test_a_check_that_failed_is_no_not_yet_for_the_pacing(
    store, provider, autojump_clock, failure
):
    """An adopted generation (accepted 100 s ago) whose first check fails and whose
    second finds it ready says nothing of how long generations take: the next one is
    checked as if nothing was learned (every DEFAULT_CHECK_INTERVAL at first), not about
    100 s apart."""
    asked = _hinted(provider, {})
    provider.generation_time = 10.0
    on_outcome = provider.on_outcome

    def adopted_fails_first(handle):
        if handle == "old" and "old" not in asked:
            asked["old"] = [trio.current_time()]
            raise failure
        return on_outcome(handle)

    provider.on_outcome = adopted_fails_first
    provider.started["old"] = -100.0
    engine = make_engine(store, provider, settings={"default_check_interval": 2})
    (old,) = store.add(1, status="Generate", uuid="old", started=-100.0)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        engine.on_event(Connected())
        await run_until(lambda: store.rows[old].status == "ReadyToPublish", every=1.0)
        (fresh,) = store.add(1)
        engine.on_event(Wakeup("ReadyToGenerate"))
        await run_until(lambda: store.rows[fresh].status == "ReadyToPublish", every=1.0)
        engine.stop("test")
    assert len(asked["old"]) == 2
    checks = asked[store.rows[fresh].uuid]
    assert 2.0 <= checks[1] - checks[0] < 2.1  # the interval after an answer of 0.01 s


# -- what the operator reads ---------------------------------------------------------------


@pytest.mark.shapes("poll")
async def test_the_ready_line_says_how_long_since_the_api_accepted_the_run(
    store, provider, autojump_clock, caplog
):
    caplog.set_level(logging.INFO, logger="listener.engine")
    _hinted(provider, {"a fox": 16.0})
    provider.generation_time = 16.0
    row = await _follow(store, provider)
    assert f"Image ID {row.id} ready (ReadyToPublish) in 16.0s" in caplog.text


async def test_a_key_refused_at_a_status_check_is_said_with_the_providers_words(
    store, provider, autojump_clock, caplog
):
    """The probe at start accepted the key; a status check is the first to be refused:
    the line the operator reads carries that check's words."""
    _answers(provider, [ApiCredentials("status: HTTP 401: key revoked"), Ready(PNG_B64)])
    row = await _follow(store, provider)
    assert row.status == "ReadyToPublish"
    refused = [m for m in caplog.messages if "refused the credentials" in m]
    assert refused and refused[0].startswith(
        f"{provider.title} refused the credentials (status: HTTP 401: key revoked)"
    )
