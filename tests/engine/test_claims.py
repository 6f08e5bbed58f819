"""Wake-ups become claims: how many rows, and a new look whenever room frees."""

from __future__ import annotations

import trio

from listener.engine import Connected, Wakeup
from listener.engine.ports import Submitted
from listener.errors import ApiBusy
from tests.engine.conftest import make_engine, run_until


async def test_a_wakeup_claims_no_more_rows_than_free_run_calls(store, provider, autojump_clock):
    provider.run_time = 5.0
    engine = make_engine(store, provider, settings={"api_concurrency": 3})
    store.add(10)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: provider.in_flight == 3)
        held = [r for r in store.rows.values() if r.locked_by]
        assert len(held) == 3  # the other 7 stay free for other listeners
        await run_until(lambda: store.statuses()["ReadyToPublish"] == 10)
        engine.stop("test")
    assert provider.max_in_flight == 3


async def test_busy_api_pauses_claims_without_counting_attempts(store, provider, autojump_clock):
    busy = {"left": 2}

    def on_submit(request):
        if busy["left"]:
            busy["left"] -= 1
            raise ApiBusy("pipeline is DISABLED_BY_QUEUE", state="DISABLED_BY_QUEUE")
        provider.started[f"u{len(provider.submitted)}"] = trio.current_time()
        return Submitted(f"u{len(provider.submitted)}")

    provider.on_submit = on_submit
    engine = make_engine(store, provider, settings={"api_concurrency": 1})
    (id_,) = store.add(1)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.rows[id_].status == "ReadyToPublish")
        engine.stop("test")
    assert store.rows[id_].attempts == 1  # the two busy answers were not counted
    assert engine.health.busy_streak == 0


async def test_generations_left_behind_when_full_are_adopted_as_room_frees(
    store, provider, autojump_clock
):
    """Regression: adoption found more generations than room; they waited for the next
    sweep (10 minutes), past the API's 5-8 minute result lifetime."""
    provider.generation_time = 2.0
    engine = make_engine(store, provider, settings={"max_in_flight": 4})
    for i in store.add(10, status="Generate"):
        store.rows[i].uuid = f"old-{i}"
        provider.started[f"old-{i}"] = 0.0
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        engine.on_event(Wakeup("Generate"))
        await run_until(lambda: store.statuses()["ReadyToPublish"] == 10, seconds=60)
        engine.stop("test")
    assert trio.current_time() < 60  # long before any sweep


async def test_waiting_rows_are_claimed_as_room_frees(store, provider, autojump_clock):
    engine = make_engine(store, provider, settings={"max_in_flight": 2, "api_concurrency": 2})
    store.add(9)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        engine.on_event(Wakeup("ReadyToGenerate"))  # one wake-up for all nine rows
        await run_until(lambda: store.statuses()["ReadyToPublish"] == 9, seconds=120)
        engine.stop("test")
    assert trio.current_time() < 120


async def test_generations_of_a_dead_listener_are_adopted_when_its_lease_runs_out(
    store, provider, autojump_clock
):
    """Regression: the start-up sweep learned when the dead listener's leases end, but the
    adoption loop, waiting for its first ring, did not look again until the next sweep."""
    provider.generation_time = 0.0
    engine = make_engine(store, provider, settings={"processor_sweep_interval": 600})
    for i in store.add(3, status="Generate"):
        row = store.rows[i]
        row.uuid, row.locked_by, row.locked_until = f"dead-{i}", "dead", 10.0
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        engine.on_event(Connected())  # the start-up sweep
        await run_until(lambda: store.statuses()["ReadyToPublish"] == 3, seconds=60)
        engine.stop("test")
    assert 10 <= trio.current_time() < 20


async def test_a_generation_leased_after_the_last_pass_is_adopted_when_its_lease_runs_out(
    store, provider, autojump_clock
):
    """Regression: a row that entered Generate leased by another listener rang nobody;
    this listener learned its lease's end only at its next pass (the 10-minute sweep),
    past the provider's result lifetime. The due time is asked again every
    LEASE_TIMEOUT / 3."""
    provider.generation_time = 0.0
    engine = make_engine(store, provider, settings={"lease_timeout": 30})
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        engine.on_event(Connected())  # the start-up sweep: nothing to adopt
        await trio.sleep(7)
        # another listener submits a row, follows it, renews its lease, then dies
        (id_,) = store.add(1, status="Generate", uuid="theirs", locked_by="other")
        provider.started["theirs"] = 0.0
        for _ in range(3):
            store.rows[id_].locked_until = trio.current_time() + 30
            await trio.sleep(10)
        died = store.rows[id_].locked_until
        await run_until(lambda: store.rows[id_].status == "ReadyToPublish", seconds=120)
        engine.stop("test")
    assert died <= trio.current_time() < died + 1.5


async def test_a_busy_answer_pauses_every_run_call_for_the_back_off(
    store, provider, autojump_clock
):
    """Not only the row that got the answer waits: no run call at all is made until
    the back-off is over, and the back-off grows while the API stays busy."""

    calls, pauses = [], []
    busy = {"left": 2}

    def on_submit(request):
        calls.append(trio.current_time())
        if busy["left"]:
            busy["left"] -= 1
            raise ApiBusy("DISABLED_BY_QUEUE", state="DISABLED_BY_QUEUE")
        provider.started[request.prompt] = trio.current_time()
        return Submitted(request.prompt)

    provider.on_submit, provider.run_time = on_submit, 0.0
    engine = make_engine(store, provider, settings={"api_concurrency": 1, "retry_backoff_base": 10})
    real_busy = engine.health.busy

    def busy_answer(state, **kw):
        pauses.append(real_busy(state, **kw))
        return pauses[-1]

    engine.health.busy = busy_answer
    store.add(3)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        engine.on_event(Wakeup("ReadyToGenerate"))
        await run_until(lambda: store.statuses()["ReadyToPublish"] == 3, seconds=600)
        engine.stop("test")
    assert 5 <= pauses[0] <= 10 and 10 <= pauses[1] <= 20  # base, then twice the base
    assert calls[1] - calls[0] >= pauses[0] - 1e-9  # the clock's floats
    assert calls[2] - calls[1] >= pauses[1] - 1e-9


async def test_after_a_short_claim_the_runs_go_out_before_the_next_due_time_is_asked(
    store, provider, autojump_clock
):
    """A claim that took fewer rows than it could asks when the next row falls due; the
    runs it started share the thread, and their requests go out first (asked at once,
    the question would come between a row's claim and its request)."""
    provider.run_time = 5.0
    asked_with_runs_out: list[int] = []
    next_ready_in = store.next_ready_in

    async def watched(**kw):
        asked_with_runs_out.append(provider.in_flight)
        return await next_ready_in(**kw)

    store.next_ready_in = watched
    engine = make_engine(store, provider, settings={"api_concurrency": 4})
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        asked_with_runs_out.clear()  # the start-up look
        store.add(2)
        engine.on_event(Wakeup("ReadyToGenerate"))
        await run_until(lambda: provider.in_flight == 2)
        engine.stop("test")
    assert asked_with_runs_out[:1] == [2]
