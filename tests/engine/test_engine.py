"""The wired engine, on the fake clock: the data path and the shutdown phases."""

from __future__ import annotations

import pytest
import trio

from listener.engine import Connected, Polling, Wakeup
from listener.engine.ports import Submitted
from listener.errors import ApiCredentials
from tests.engine.conftest import make_engine, run_until, with_hint
from tests.engine.fakes import PNG_B64


async def test_rows_inserted_while_running_are_generated(store, provider, autojump_clock):
    engine = make_engine(store, provider)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        store.add(20)
        engine.on_event(Wakeup("ReadyToGenerate"))
        await run_until(lambda: store.statuses()["ReadyToPublish"] == 20)
        engine.stop("test")
    assert sorted(provider.submitted) == ["a fox"] * 20
    assert engine.budget.held == 0
    assert all(r.locked_by is None for r in store.rows.values())


@pytest.mark.shapes("poll")  # a draw in flight at stop: test_a_draw_in_flight_...
async def test_soft_stop_lets_runs_in_flight_finish_then_releases_the_rest(
    store, provider, autojump_clock
):
    provider.run_time = 2.0
    provider.generation_time = 1000.0
    engine = make_engine(store, provider, settings={"shutdown_grace": 5})
    store.add(3)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: provider.in_flight == 3)
        engine.stop("SIGTERM")
    # The runs in flight finished within the grace period: uuids are durable ...
    assert store.statuses() == {"Generate": 3}
    assert all(r.uuid for r in store.rows.values())
    # ... and the followers were cancelled and their rows released for the next start.
    assert all(r.locked_by is None for r in store.rows.values())


async def test_a_paid_call_keeps_its_own_deadline_at_a_stop_then_is_abandoned(
    store, provider, autojump_clock
):
    """SHUTDOWN_GRACE is shorter than one draw: the call in flight is given until the
    provider's call timeout (Traits.call_timeout), not the grace; past it, abandoned."""
    provider.run_time = 1000.0
    engine = make_engine(store, provider, settings={"shutdown_grace": 1})
    store.add(1)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: provider.in_flight == 1)
        start = trio.current_time()
        engine.stop("SIGTERM")
    took = trio.current_time() - start
    assert provider.traits.call_timeout <= took < provider.traits.call_timeout + 3
    (row,) = store.rows.values()
    assert row.status == "ReadyToGenerate" and row.locked_by is None


async def test_a_draw_in_flight_at_a_stop_lands_its_image_before_serve_returns(
    store, provider, autojump_clock
):
    """A draw longer than the grace (5 s): the stop waits for it (within its own
    deadline), records its handle, then makes its first outcome check (a draw's download,
    a poll whose image is ready) and writes the image, all before serve() returns."""
    provider.run_time = provider.traits.call_timeout * 2 / 3  # 20 s, or 80 s for a draw
    provider.generation_time = 0.0
    engine = make_engine(store, provider, settings={"shutdown_grace": 5})
    store.add(1)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: provider.in_flight == 1)
        start = trio.current_time()
        longest = engine.longest_stop()
        engine.stop("SIGTERM")
    assert trio.current_time() - start <= longest
    (row,) = store.rows.values()
    assert (row.status, row.image, row.locked_by) == ("ReadyToPublish", PNG_B64, None)
    assert row.uuid and row.unknown_outcomes == 0
    assert len(provider.submitted) == 1 and sum(provider.checks.values()) == 1


@pytest.mark.shapes("poll")  # a draw's image is there at once (check_after 0)
async def test_a_poll_accepted_at_a_stop_is_checked_once_in_its_deadline_then_resumed(
    store, provider, autojump_clock
):
    """Submit-then-poll: the first check waits the provider's hint when the call's own
    deadline leaves room (it says "not yet": the row keeps its uuid, released), and is not
    made when it does not (the stop does not wait for a hint past it)."""
    provider.run_time = 10.0
    provider.generation_time = 1000.0
    hints = {"a hint that fits": 3.0, "a hint past the deadline": 100.0}

    with_hint(provider, lambda request: hints[request.prompt])
    engine = make_engine(store, provider, settings={"shutdown_grace": 5})
    (fits,) = store.add(1, prompt="a hint that fits")
    (late,) = store.add(1, prompt="a hint past the deadline")
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: provider.in_flight == 2)
        start = trio.current_time()
        engine.stop("SIGTERM")
    took = trio.current_time() - start
    assert 12.9 <= took < 14  # the rest of the call (10 s), then the hint, then one check
    assert provider.checks == {store.rows[fits].uuid: 1}
    for id_ in (fits, late):
        row = store.rows[id_]
        assert (row.status, row.locked_by, row.unknown_outcomes) == ("Generate", None, 0)
    again = make_engine(store, provider)
    provider.generation_time = 0.0
    async with trio.open_nursery() as n:
        await n.start(again.serve)
        await run_until(lambda: store.statuses() == {"ReadyToPublish": 2})
        again.stop("test")
    assert len(provider.submitted) == 2, "followed, never drawn again"


async def test_a_second_signal_cuts_the_first_check_of_a_draw_finished_at_the_stop(
    store, provider, autojump_clock
):
    """The first check (a download) kept at a stop is cut by a second signal: the row
    is released in Generate with its handle (durable: the next start downloads it, no
    new draw), not counted as an unknown outcome: nothing paid was lost."""
    provider.run_time = 20.0
    provider.generation_time = 0.0
    checking = []
    check = provider.outcome

    async def slow_check(handle):
        checking.append(handle)
        await trio.sleep(1000)
        return await check(handle)

    provider.outcome = slow_check
    engine = make_engine(store, provider, settings={"shutdown_grace": 5})
    (id_,) = store.add(1)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: provider.in_flight == 1)
        engine.stop("SIGTERM")
        await run_until(lambda: checking, every=0.01)
        await trio.sleep(1)
        start = trio.current_time()
        engine.stop_now()
    assert trio.current_time() - start < 1
    row = store.rows[id_]
    assert (row.status, row.image, row.locked_by) == ("Generate", None, None)
    assert row.uuid == checking[0] and row.unknown_outcomes == 0
    assert store.released == [id_]
    provider.outcome = check
    again = make_engine(store, provider)
    async with trio.open_nursery() as n:
        await n.start(again.serve)
        await run_until(lambda: row.status == "ReadyToPublish")
        again.stop("test")
    assert len(provider.submitted) == 1, "downloaded, never drawn again"


async def test_a_key_refused_at_the_first_check_does_not_hold_the_stop(
    store, provider, autojump_clock
):
    """The first check after a draw finished at a stop finds the key refused: nothing to
    wait for (the probe is stopped), so the stop ends; the row keeps its handle."""
    provider.run_time = 20.0
    provider.generation_time = 0.0

    def refused(handle):
        raise ApiCredentials("status: HTTP 401")

    provider.on_outcome = refused
    engine = make_engine(store, provider, settings={"shutdown_grace": 5})
    (id_,) = store.add(1)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: provider.in_flight == 1)
        start = trio.current_time()
        engine.stop("SIGTERM")
    assert trio.current_time() - start < 20 + 1
    row = store.rows[id_]
    assert (row.status, row.locked_by, row.unknown_outcomes) == ("Generate", None, 0)
    assert row.uuid and sum(provider.checks.values()) == 1


async def test_a_second_signal_cuts_a_paid_call_at_once(store, provider, autojump_clock):
    provider.run_time = 1000.0
    engine = make_engine(store, provider, settings={"shutdown_grace": 5})
    store.add(1)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: provider.in_flight == 1)
        start = trio.current_time()
        engine.stop("SIGTERM")
        await trio.sleep(2)
        engine.stop_now()
    assert trio.current_time() - start < 3
    (row,) = store.rows.values()
    assert row.status == "ReadyToGenerate" and row.locked_by is None


async def test_once_mode_does_one_pass_and_waits_for_what_it_started(
    store, provider, autojump_clock
):
    store.add(5)
    engine = make_engine(store, provider, mode="once")
    await engine.serve()
    assert store.statuses() == {"ReadyToPublish": 5}
    assert engine.stop_reason == "one pass done"


@pytest.mark.parametrize("follow", [True, False], ids=["both roles", "generator only"])
async def test_a_run_call_cut_off_by_the_deadline_is_released_and_counted(
    store, provider, autojump_clock, follow
):
    """Regression (generator only): the row was settled though nothing was written, so it
    stayed leased until its lease ran out; in neither role was the abandoned, possibly
    paid, call counted. The deadline is the call's own (Traits.call_timeout) at a stop."""
    provider.run_time = 1000.0
    engine = make_engine(store, provider, follow=follow, settings={"shutdown_grace": 1})
    (id_,) = store.add(1)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        engine.on_event(Wakeup("ReadyToGenerate"))
        await run_until(lambda: provider.in_flight == 1)
        start = trio.current_time()
        engine.stop("SIGTERM")
    took = trio.current_time() - start
    assert provider.traits.call_timeout <= took < provider.traits.call_timeout + 3
    row = store.rows[id_]
    assert (row.status, row.uuid, row.locked_by) == ("ReadyToGenerate", None, None)
    assert row.unknown_outcomes == 1
    assert store.released == [id_]


@pytest.mark.shapes("poll")  # its submit is a poll's (the download of a draw is at once)
async def test_while_a_run_is_in_flight_at_the_stop_the_other_rows_work_goes_on(
    store, provider, autojump_clock
):
    """Phase 1 of the stop waits for the run calls in flight (up to SHUTDOWN_GRACE)
    before it cancels anything: meanwhile a generation that finishes is still written."""
    slow_run = {"a slow run": 4.0}

    async def submit(request):
        provider.in_flight += 1
        try:
            await trio.sleep(slow_run.get(request.prompt, 0.1))
            handle = f"uuid-{request.prompt}"
            provider.submitted.append(request.prompt)
            provider.started[handle] = trio.current_time()
            return Submitted(handle)
        finally:
            provider.in_flight -= 1

    provider.submit = submit
    provider.generation_time = 1.0
    engine = make_engine(store, provider, settings={"shutdown_grace": 10})
    (slow,) = store.add(1, prompt="a slow run")
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        engine.on_event(Wakeup("ReadyToGenerate"))
        await run_until(lambda: provider.in_flight == 1, every=0.01)
        (quick,) = store.add(1, prompt="a quick one")
        engine.on_event(Wakeup("ReadyToGenerate"))
        await run_until(lambda: store.rows[quick].status == "Generate", every=0.01)
        engine.stop("SIGTERM")
    assert store.rows[quick].status == "ReadyToPublish"  # written during phase 1
    assert (store.rows[slow].status, store.rows[slow].uuid) == ("Generate", "uuid-a slow run")
    assert store.rows[slow].locked_by is None  # followed no further: released


async def test_a_deaf_wakeup_source_turns_on_polling_every_poll_interval(
    store, provider, autojump_clock, caplog
):
    caplog.set_level("INFO")
    engine = make_engine(store, provider, settings={"poll_interval": 2})
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        engine.on_event(Connected())
        await trio.sleep(1)
        engine.on_event(Polling(on=True))
        assert caplog.text.count("Looking for due rows every 2s (POLL_INTERVAL)") == 1
        engine.on_event(Polling(on=True))  # said once
        (id_,) = store.add(1)  # no notification comes
        await run_until(lambda: store.rows[id_].locked_by == "me", seconds=2.5, every=0.01)
        engine.on_event(Polling(on=False))
        (other,) = store.add(1)
        await trio.sleep(5)
        assert store.rows[other].locked_by is None  # no more polling: waits for a ring
        engine.stop("test")
    assert caplog.text.count("Looking for due rows every 2s (POLL_INTERVAL)") == 1


async def test_a_generate_wakeup_adopts_at_once(store, provider, autojump_clock):
    engine = make_engine(store, provider)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        engine.on_event(Connected())
        await trio.sleep(1)
        (id_,) = store.add(1, status="Generate", uuid="left")
        engine.on_event(Wakeup("Generate"))
        await run_until(lambda: store.rows[id_].status == "ReadyToPublish", seconds=0.5)
        engine.stop("test")


async def test_a_second_signal_cuts_the_grace_short(store, provider, autojump_clock):
    provider.run_time = 1000.0
    engine = make_engine(store, provider, settings={"shutdown_grace": 100})
    (id_,) = store.add(1)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        engine.on_event(Wakeup("ReadyToGenerate"))
        await run_until(lambda: provider.in_flight == 1)
        engine.stop("SIGTERM")
        await trio.sleep(1)
        start = trio.current_time()
        engine.stop_now()
    assert trio.current_time() - start < 1
    assert engine.stop_reason == "SIGTERM"
    row = store.rows[id_]
    assert (row.status, row.locked_by, row.unknown_outcomes) == ("ReadyToGenerate", None, 1)
