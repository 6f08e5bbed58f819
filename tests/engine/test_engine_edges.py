"""The wired engine, at its edges: a stop before serve, a second signal alone or while a
first check waits, a stop during the hint of a run paid before it, a stop during an
adoption, a wake-up source, API_CONCURRENCY shared by every call, the provider named in
its words, and the lines at exit (survivors of the mutation run of 2026-12-07 on
engine.py)."""

from __future__ import annotations

import pytest
import trio

from listener.engine import Connected, Wakeup
from listener.engine.flow import Slots
from listener.engine.ports import Submitted
from listener.errors import ApiBusy, ApiCredentials
from tests.engine.conftest import make_engine, run_until, with_hint
from tests.engine.fakes import (
    PNG_B64,
    FakeProvider,
    FakeSlotStore,
    FakeSlotTable,
    FakeStore,
    StopWhileClaiming,
)

# -- stopping ------------------------------------------------------------------------------


async def test_a_stop_before_serve_makes_serve_return_at_once_having_claimed_nothing(
    store, provider, autojump_clock
):
    """A signal that comes while the service is still starting (the engine built, not
    yet serving)."""
    (id_,) = store.add(1)
    engine = make_engine(store, provider)
    engine.stop("SIGTERM")
    with trio.fail_after(1):
        await engine.serve()
    assert engine.stop_reason == "SIGTERM"
    assert store.calls["claim_ready"] == 0 and provider.submitted == []
    assert store.rows[id_].locked_by is None


@pytest.mark.parametrize("when", ["before serve", "while serving"])
async def test_a_second_signal_with_no_first_stops_at_once_and_says_stopped(
    store, provider, autojump_clock, when
):
    """`stop_now()` as the only stop: the engine reports itself stopping ("stopped", what
    /health shows) and serve returns at once, nothing sent."""
    (id_,) = store.add(1)
    engine = make_engine(store, provider)
    with trio.fail_after(1):
        if when == "before serve":
            engine.stop_now()
            await engine.serve()
        else:
            async with trio.open_nursery() as n:
                provider.run_time = 1000.0
                await n.start(engine.serve)
                engine.stop_now()
    assert engine.stop_reason == "stopped"
    assert store.rows[id_].locked_by is None


@pytest.mark.shapes("poll")  # a hint is the poll's
async def test_a_second_signal_cuts_the_wait_for_a_first_check_at_a_stop(
    store, provider, autojump_clock
):
    """A run accepted during the stop with a hint that fits its deadline (checked 15 s
    after it): a second signal meanwhile ends the stop at once, the check not made; the
    row keeps its uuid (nothing paid was lost)."""
    provider.run_time, provider.generation_time = 10.0, 1000.0

    with_hint(provider, 15.0)
    engine = make_engine(store, provider, settings={"shutdown_grace": 5})
    (id_,) = store.add(1)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: provider.in_flight == 1)
        engine.stop("SIGTERM")
        await run_until(lambda: store.rows[id_].status == "Generate")
        await trio.sleep(2)
        start = trio.current_time()
        engine.stop_now()
    assert trio.current_time() - start < 1
    assert sum(provider.checks.values()) == 0
    row = store.rows[id_]
    assert (row.status, row.locked_by, row.unknown_outcomes) == ("Generate", None, 0)
    assert row.uuid


@pytest.mark.shapes("poll")
async def test_a_run_paid_before_the_stop_lands_its_image_when_its_hint_falls_in_the_stop(
    store, provider, autojump_clock
):
    """Accepted at 1 s with a hint of 20 s, stopped at 5 s (grace 5 s): the stop waits
    past the grace for that first check, within the paid call's own deadline (36 s), and
    the image it finds is written before serve returns."""
    provider.run_time, provider.generation_time = 1.0, 20.0

    with_hint(provider, 20.0)
    engine = make_engine(store, provider, settings={"shutdown_grace": 5})
    (id_,) = store.add(1)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.rows[id_].status == "Generate")
        await trio.sleep(4)
        engine.stop("SIGTERM")
    row = store.rows[id_]
    assert (row.status, row.image, row.locked_by) == ("ReadyToPublish", PNG_B64, None)
    assert sum(provider.checks.values()) == 1


class StopWhileAdopting(FakeStore):
    """The stop arrives while an adoption's statement runs (its rows come back anyway)."""

    engine = None

    async def claim_generating(self, *args, **kwargs):
        claimed = await super().claim_generating(*args, **kwargs)
        if claimed.rows and self.engine is not None:
            self.engine.stop("SIGTERM")
        return claimed


async def test_a_stop_during_an_adoption_ends_at_once_with_no_further_claim(autojump_clock):
    """A full batch adopted (100 generations, room for more) as the stop comes: no other
    batch is claimed, so nothing is left reserved for the stop to wait on (it would wait
    the whole grace)."""
    store = StopWhileAdopting()
    ids = store.add(100, status="Generate", uuid="left")
    provider = FakeProvider()
    engine = make_engine(store, provider, settings={"max_in_flight": 200, "shutdown_grace": 5})
    store.engine = engine
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        start = trio.current_time()
        engine.on_event(Connected())
        await run_until(lambda: engine.stop_reason is not None, every=0.01)
    assert trio.current_time() - start < 1
    assert store.calls["claim_generating"] == 1
    assert all(store.rows[i].locked_by is None for i in ids)


class StopWhileClaimingSlowRelease(StopWhileClaiming):
    """The stop arrives while a claim's statement runs; giving a row back takes the
    database a moment (as over a network: the fake's writes take none)."""

    async def release(self, *args, **kwargs):
        await trio.sleep(0.5)
        return await super().release(*args, **kwargs)


async def test_a_row_claimed_as_the_stop_comes_is_given_back_uncounted_within_the_grace(
    autojump_clock,
):
    """Nothing paid is in flight, yet the stop's first phase lasts up to SHUTDOWN_GRACE:
    long enough for the row's own release (its attempt uncounted), not cut at once and
    left to the final release, which would count the attempt."""
    store = StopWhileClaimingSlowRelease()
    (id_,) = store.add(1)
    provider = FakeProvider()
    engine = make_engine(store, provider, settings={"shutdown_grace": 5})
    store.engine = engine
    with trio.fail_after(60):
        await engine.serve()
    row = store.rows[id_]
    assert provider.submitted == []
    assert (row.status, row.attempts, row.locked_by) == ("ReadyToGenerate", 0, None)


class SlowClaim(FakeStore):
    """A claim's statement takes the database a second."""

    async def claim_ready(self, *args, **kwargs):
        await trio.sleep(1)
        return await super().claim_ready(*args, **kwargs)


async def test_a_stop_during_a_claims_statement_ends_at_once(autojump_clock):
    """A claim cancelled by the stop gives back the places it reserved in the budget;
    the stop's first phase waited for them to the end of SHUTDOWN_GRACE."""
    store = SlowClaim()
    (id_,) = store.add(1)
    engine = make_engine(store, FakeProvider(), settings={"shutdown_grace": 5})
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await trio.sleep(0.5)  # the start-up claim's statement is running
        start = trio.current_time()
        engine.stop("SIGTERM")
    assert store.rows[id_].locked_by is None
    assert trio.current_time() - start < 1


class SlowAdoption(FakeStore):
    """Taking over generations takes the database a second."""

    async def claim_generating(self, *args, **kwargs):
        await trio.sleep(1)
        return await super().claim_generating(*args, **kwargs)


async def test_a_stop_during_an_adoptions_statement_ends_at_once(autojump_clock):
    store = SlowAdoption()
    (id_,) = store.add(1, status="Generate", uuid="left-behind")
    engine = make_engine(store, FakeProvider(), settings={"shutdown_grace": 5})
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await trio.sleep(0.5)  # the start-up adoption's statement is running
        start = trio.current_time()
        engine.stop("SIGTERM")
    assert store.rows[id_].locked_by is None
    assert trio.current_time() - start < 1


async def test_a_hung_paid_call_makes_the_stop_last_its_call_timeout_and_the_grace_at_most_longest_stop(
    store, provider, autojump_clock
):
    """What the operator is told at the first signal (`longest_stop`) bounds the stop of
    a run that hangs, which keeps its call timeout and the grace for its writes."""
    provider.run_time = 10_000.0
    engine = make_engine(store, provider, settings={"shutdown_grace": 5})
    store.add(1)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: provider.in_flight == 1, every=0.01)
        start = trio.current_time()
        longest = engine.longest_stop()
        engine.stop("SIGTERM")
    took = trio.current_time() - start
    assert provider.traits.call_timeout + 5 - 0.01 <= took <= longest


# -- the wake-up source --------------------------------------------------------------------


class Source:
    """A wake-up source like the LISTEN stream: once in place it says so (Connected),
    then passes on each notification it hears."""

    def __init__(self) -> None:
        self.on_event = None
        self.hear, self._heard = trio.open_memory_channel(10)

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        self.on_event(Connected())
        async for event in self._heard:
            self.on_event(event)


async def test_the_wakeup_source_is_served_and_what_it_hears_is_claimed_at_once(
    store, provider, autojump_clock
):
    source = Source()
    (waiting,) = store.add(1)
    engine = make_engine(store, provider, wakeups=source)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.rows[waiting].attempts == 1, seconds=1)
        await run_until(lambda: store.rows[waiting].status == "ReadyToPublish")
        (new,) = store.add(1)
        source.hear.send_nowait(Wakeup("ReadyToGenerate"))
        await run_until(lambda: store.rows[new].attempts == 1, seconds=1)
        await run_until(lambda: store.rows[new].status == "ReadyToPublish")
        engine.stop("test")


# -- the provider, named -------------------------------------------------------------------


async def test_a_refused_key_is_said_with_the_providers_title_and_what_to_check(
    store, provider, autojump_clock, caplog
):
    async def refused() -> None:
        raise ApiCredentials("probe: HTTP 401: bad key")

    provider.probe = refused
    engine = make_engine(store, provider)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await trio.sleep(1)
        engine.stop("test")
    lines = [m for m in caplog.messages if "refused the credentials" in m]
    assert lines and lines[0].startswith(
        f"{provider.title} refused the credentials (probe: HTTP 401: bad key)"
    )
    assert provider.credentials_help in lines[0]


# -- the lines at exit ---------------------------------------------------------------------


async def _shared_budget(limit: int, refusal: Exception | None, caplog) -> list[str]:
    """One row through an engine on a shared budget of `limit`, its first run refused
    with `refusal`; the engine's lines about the budget at exit."""
    caplog.set_level("INFO", logger="listener.engine")
    store = FakeStore()
    (id_,) = store.add(1)
    provider = FakeProvider()
    sent = []

    def answer(request):
        sent.append(request)
        if refusal is not None and len(sent) == 1:
            raise refusal
        provider.started["h"] = trio.current_time()
        return Submitted("h")

    provider.on_submit = answer
    slots = Slots(
        FakeSlotStore(FakeSlotTable(store)), kind="generation", limit=limit, explicit=True
    )
    engine = make_engine(store, provider, slots=slots)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.rows[id_].status == "ReadyToPublish", every=1.0)
        engine.stop("test")
    return [m for m in caplog.messages if "refusal(s) for load" in m]


async def test_at_exit_a_lowered_budget_is_said_with_its_refusals(autojump_clock, caplog):
    lines = await _shared_budget(4, ApiBusy("run: HTTP 429"), caplog)
    assert lines == [
        "Provider concurrency: effective 2 of 4 (lowered from 4 after run: HTTP 429); "
        "1 refusal(s) for load"
    ]


async def test_at_exit_refusals_are_said_even_when_there_was_nothing_to_lower(
    autojump_clock, caplog
):
    lines = await _shared_budget(1, ApiBusy("run: HTTP 429", retry_after=5), caplog)
    assert lines == ["Provider concurrency: effective 1 of 1 (configured); 1 refusal(s) for load"]


async def test_at_exit_a_budget_nothing_happened_to_is_not_mentioned(autojump_clock, caplog):
    assert await _shared_budget(2, None, caplog) == []
