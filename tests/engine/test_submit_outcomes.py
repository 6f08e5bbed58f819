"""What each answer to a submission does to the row, to the pause and to the shared
budget, and the writes of an outcome that land late at a stop (survivors of the
mutation run of 2026-12-07 at commit 5c20a93, listener/engine/runs.py)."""

from __future__ import annotations

import logging

import pytest
import trio

from listener.engine.engine import Wakeup
from listener.engine.flow import Slots
from listener.engine.ports import Pending, Refused, Submitted
from listener.errors import (
    ApiBusy,
    ApiCredentials,
    ApiNotTaken,
    ApiOutcomeUnknown,
    ApiPermanent,
    ApiQuotaExhausted,
    ApiTransient,
    BlankPrompt,
    DatabaseUnavailable,
)
from listener.sanitize import clean
from tests.engine.conftest import make_engine, run_until, scripted
from tests.engine.fakes import FakeProvider, FakeSlotStore, FakeSlotTable, FakeStore


async def _serve_until(engine, predicate, **kw) -> None:
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(predicate, **kw)
        engine.stop("test")


def _answers(provider, *answers) -> list[float]:
    """provider.on_submit answering from `answers` in turn (an exception is raised), then
    accepting; when each submission was answered."""

    def accept(request):
        handle = f"uuid-{len(times)}"
        provider.started[handle] = trio.current_time()
        return Submitted(handle, check_after=0.0)

    provider.on_submit, times = scripted(answers, accept)
    return times


# -- a prompt with nothing to send ---------------------------------------------------------


async def test_a_prompt_of_invisible_characters_fails_without_being_sent(
    store, provider, autojump_clock
):
    """The table's rule lets a zero-width space through; the request finds it blank."""
    (id_,) = store.add(1, prompt="\u200b\u200b")
    engine = make_engine(store, provider)
    await _serve_until(engine, lambda: store.rows[id_].status == "Failed")
    row = store.rows[id_]
    assert (row.last_error, row.censored, row.locked_by) == ("blank prompt (not sent)", False, None)
    assert provider.submitted == []


async def test_a_prompt_the_provider_finds_blank_fails_at_once_and_is_not_retried(
    store, provider, autojump_clock
):
    _answers(provider, BlankPrompt("run: nothing left to draw"))
    (id_,) = store.add(1)
    engine = make_engine(store, provider)
    await _serve_until(engine, lambda: store.rows[id_].status == "Failed")
    row = store.rows[id_]
    assert (row.last_error, row.censored, row.locked_by) == ("blank prompt (not sent)", False, None)
    assert (row.attempts, len(provider.submitted)) == (1, 1)


# -- refusals for load, with the account's shared budget -----------------------------------


async def _shared(limit: int, *answers, **settings):
    """One row, the account's budget at `limit`; the first submissions answered with
    `answers`; served until the row is generated. The engine, the row, the answer times."""
    store = FakeStore()
    (id_,) = store.add(1)
    provider = FakeProvider()
    times = _answers(provider, *answers)
    slots = Slots(
        FakeSlotStore(FakeSlotTable(store)), kind="generation", limit=limit, explicit=True
    )
    engine = make_engine(store, provider, slots=slots, settings=settings)
    await _serve_until(
        engine, lambda: store.rows[id_].status == "ReadyToPublish", seconds=3600, every=0.5
    )
    return engine, store.rows[id_], times


async def test_a_429_not_taken_lowers_the_shared_value_and_nothing_pauses(autojump_clock):
    engine, row, times = await _shared(4, ApiNotTaken("run: HTTP 429", status_code=429))
    assert engine.slots.limiter.reason == "lowered from 4 after run: HTTP 429"
    assert times[1] - times[0] < 0.5  # sent again at once on another slot, no pause
    assert (row.attempts, row.last_error) == (1, None)


async def test_a_408_lowers_nothing_and_pauses_for_its_retry_after(autojump_clock):
    engine, row, times = await _shared(
        4, ApiNotTaken("run: HTTP 408", retry_after=30, status_code=408)
    )
    assert engine.slots.limiter.refusals == 0 and engine.slots.limiter.effective == 4
    assert times[1] - times[0] >= 30
    assert row.attempts == 1


@pytest.mark.parametrize(
    "refusal",
    [
        ApiBusy("run: HTTP 429", retry_after=10, state="HTTP 429"),
        ApiNotTaken("run: HTTP 429", retry_after=10, status_code=429),
    ],
    ids=["busy", "not taken"],
)
async def test_a_refused_row_waits_its_retry_after_though_the_budget_has_room(
    refusal, autojump_clock
):
    """Nothing pauses (the value is lowered, other slots are free), but the row itself
    is not sent again before the provider's Retry-After."""
    engine, _, times = await _shared(4, refusal)
    assert engine.slots.limiter.decreases == 1
    assert times[1] - times[0] >= 10


async def test_a_429_not_taken_rests_the_slot_it_used(autojump_clock):
    """At two the value goes to one: the one slot left is the refused one, which rests
    REFUSED_SLOT_REST (1 s) before the row is sent again on it."""
    engine, _, times = await _shared(2, ApiNotTaken("run: HTTP 429", status_code=429))
    assert engine.slots.limiter.effective == 1
    assert 1.0 <= times[1] - times[0] < 2.0


async def test_at_one_a_refusal_pauses_generation_with_the_backoff(autojump_clock):
    """Nothing left to lower: the pause is RETRY_BACKOFF_BASE's backoff (2.5 to 5 s at
    the first refusal), longer than the refused slot's 1 s rest."""
    engine, _, times = await _shared(1, ApiBusy("run: HTTP 429"), retry_backoff_base=5)
    assert engine.slots.limiter.refusals == 1 and engine.slots.limiter.effective == 1
    assert times[1] - times[0] >= 2.5


async def test_the_reason_a_refusal_leaves_in_the_shared_table_is_cut_to_64_characters(
    autojump_clock,
):
    word = "QUEUE_" + "X" * 100
    engine, _, _ = await _shared(4, ApiBusy("run: HTTP 200 busy", state=word))
    assert engine.slots.limiter.reason == "lowered from 4 after " + clean(word, limit=64)
    assert len(clean(word, limit=64)) == 64


# -- the key, the quota ---------------------------------------------------------------------


async def test_a_key_refused_at_submit_releases_the_row_uncounted_and_says_why(
    store, provider, autojump_clock, caplog
):
    caplog.set_level(logging.ERROR)
    _answers(provider, ApiCredentials("run: HTTP 401: key revoked"))
    (id_,) = store.add(1)
    engine = make_engine(store, provider)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: not engine.health.credentials_ok.is_set())
        row = store.rows[id_]
        assert (row.status, row.attempts, row.locked_by) == ("ReadyToGenerate", 0, None)
        engine.stop("test")
    assert "refused the credentials (run: HTTP 401: key revoked)" in caplog.text


async def test_a_row_held_by_a_used_up_quota_waits_in_the_table_too(
    store, provider, autojump_clock
):
    """Another listener (its own pause not started) must not draw it at once."""
    times = _answers(provider, ApiQuotaExhausted("quota used up"))
    (id_,) = store.add(1)
    engine = make_engine(store, provider, settings={"retry_backoff_max": 60})
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.rows[id_].last_error is not None)
        row = store.rows[id_]
        assert (row.status, row.attempts, row.locked_by) == ("ReadyToGenerate", 0, None)
        assert row.not_before >= times[0] + 60
        engine.stop("test")


# -- a submission is served before the status checks waiting -------------------------------


class SlowChecks(FakeProvider):
    """Every status check takes a second and finds the image not ready yet."""

    async def outcome(self, handle: str):
        self.checks[handle] += 1
        await trio.sleep(1.0)
        return Pending()


async def test_a_submission_does_not_queue_behind_the_status_checks(autojump_clock):
    """API_CONCURRENCY=1 and sixteen generations followed (a check always waiting): a new
    row is sent when the check in flight ends, not after those queued before it."""
    store, provider = FakeStore(), SlowChecks()
    for n in range(16):
        store.add(1, status="Generate", uuid=f"old-{n}")
    times = _answers(provider)
    engine = make_engine(
        store,
        provider,
        settings={
            "api_concurrency": 1,
            "default_check_interval": 0.1,
            "default_max_attempts": 10_000,  # followed all along
        },
    )
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await trio.sleep(20)
        (id_,) = store.add(1)
        arrived = trio.current_time()
        engine.on_event(Wakeup("ReadyToGenerate"))
        await run_until(lambda: store.rows[id_].status == "Generate")
        engine.stop("test")
    assert times[0] - arrived < 1.5  # the check in flight (1 s), then the run (0.1 s)


# -- the time limit of a generation submitted here -----------------------------------------


@pytest.mark.shapes("poll")  # a draw's image is there at its first check
async def test_a_generation_submitted_here_times_out_its_full_limit_after_acceptance(
    store, provider, autojump_clock
):
    accepted = _answers(provider)
    checks: list[float] = []

    def pending(handle):
        checks.append(trio.current_time())
        return Pending()

    provider.on_outcome = pending
    (id_,) = store.add(1)
    engine = make_engine(
        store,
        provider,
        settings={
            "default_generation_timeout": 20,
            "default_check_interval": 1,
            "default_max_attempts": 1000,
        },
    )
    await _serve_until(engine, lambda: store.rows[id_].status == "Failed")
    assert store.rows[id_].last_error.startswith("timeout")
    assert 20.0 <= checks[-1] - accepted[0] < 20.5


# -- the writes of an outcome at a stop keep the paid call's own deadline ------------------

# outcome -> (the row before its claim, the answer, what the row must say afterwards)
OUTCOMES = {
    "refused for good": (
        {},
        lambda p: ApiPermanent("run: HTTP 400: bad style"),
        ("Failed", "API refused the request: run: HTTP 400: bad style"),
    ),
    "blank": ({}, lambda p: BlankPrompt("run: blank"), ("Failed", "blank prompt (not sent)")),
    "censored": ({}, lambda p: Refused("censored", censored=True), ("Failed", "censored")),
    "transient": (
        {},
        lambda p: ApiTransient("run: HTTP 503: down"),
        ("ReadyToGenerate", "run: HTTP 503: down"),
    ),
    "transient, last attempt": (
        {"attempts": 4},
        lambda p: ApiTransient("run: HTTP 503: down"),
        ("Failed", "gave up after 5 attempts: run: HTTP 503: down"),
    ),
    "unknown, resends used": (
        {"unknown_outcomes": -1},  # the provider's resends, all used
        lambda p: ApiOutcomeUnknown("run: HTTP 504"),
        ("Failed", "gave up: "),
    ),
    "accepted": ({}, lambda p: Submitted("uuid-late"), (None, None)),
}


@pytest.mark.parametrize("outcome", list(OUTCOMES))
async def test_the_outcome_of_a_paid_call_is_written_after_the_grace_within_its_deadline(
    store, provider, autojump_clock, outcome
):
    """The stop's grace (1 s) is long over when the answer comes (half the call timeout);
    the database is down for 3 s just then: the write of the outcome is retried until
    it lands, within the paid call's own deadline, not abandoned at the grace."""
    before, answer, (status, reason) = OUTCOMES[outcome]
    if before.get("unknown_outcomes") == -1:
        before = {"unknown_outcomes": provider.traits.unknown_outcome_resends}
    provider.run_time, provider.generation_time = provider.traits.call_timeout / 2, 0.0

    def on_submit(request):
        store.down = True
        a = answer(provider)
        if isinstance(a, Exception):
            raise a
        return a

    provider.on_submit = on_submit
    (id_,) = store.add(1, **before)
    engine = make_engine(store, provider, settings={"shutdown_grace": 1})
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: provider.in_flight == 1)
        engine.stop("SIGTERM")
        await run_until(lambda: store.down, seconds=200, every=0.5)
        await trio.sleep(3)
        store.down = False
    row = store.rows[id_]
    if outcome == "accepted":
        assert (row.uuid, row.unknown_outcomes) == ("uuid-late", 0)
    else:
        assert row.status == status and row.last_error.startswith(reason)
        assert row.uuid is None and row.locked_by is None
    assert row.censored is (outcome == "censored")


class UuidNeverLands(FakeStore):
    async def record_accepted(self, id_, handle, *, keep):
        self._call("record_accepted")
        raise DatabaseUnavailable("database unavailable: down for the uuid")


async def test_a_uuid_that_cannot_be_written_by_the_deadline_counts_as_an_unknown_outcome(
    provider, autojump_clock
):
    """Accepted (paid) at a stop, but its handle never lands: the row is released with
    the run counted as an unknown outcome, so re-sends stay bounded."""
    store = UuidNeverLands(provider=provider.name)
    (id_,) = store.add(1)
    provider.run_time = 10.0
    engine = make_engine(store, provider, settings={"shutdown_grace": 1})
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: provider.in_flight == 1)
        engine.stop("SIGTERM")
    row = store.rows[id_]
    assert len(provider.submitted) == 1
    assert (row.status, row.uuid, row.locked_by) == ("ReadyToGenerate", None, None)
    assert row.unknown_outcomes == 1
