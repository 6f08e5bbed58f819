"""The one concurrency budget: what a claim may take, and who is told when room frees."""

from __future__ import annotations

import trio

from listener.engine.budget import Budget, Slots


async def test_claims_are_sized_by_room_and_by_free_run_calls():
    budget = Budget(rows=10, calls=4)
    assert budget.room_for_runs() == 4
    tickets = budget.take(budget.reserve(4), 4, "claimed")
    assert budget.room_for_runs() == 0  # every run call is spoken for
    for t in tickets:
        t.move("following")
    assert budget.room_for_runs() == 4 and budget.free == 6
    more = budget.take(budget.reserve(6), 6, "following")
    assert budget.free == 0 and budget.room_for_runs() == 0
    assert str(budget) == "claimed 0, submitting 0, following 10, calling 0, free 0"
    for t in more:
        t.close()
    assert budget.snapshot()["free"] == 6


async def test_a_reservation_is_given_back_when_fewer_rows_come():
    budget = Budget(rows=5, calls=5)
    reserved = budget.reserve(5)
    assert budget.free == 0  # two passes at once can never take more than there is
    budget.take(reserved, 2, "claimed")
    assert budget.free == 3


async def test_subscribers_hear_every_freed_place():
    budget = Budget(rows=2, calls=2)
    heard = []
    budget.subscribe(lambda: heard.append(budget.free))
    (ticket,) = budget.take(budget.reserve(1), 1, "claimed")
    ticket.move("submitting")
    ticket.close()
    assert heard[-1] == 2 and ticket.finished.is_set() and ticket.submitted.is_set()


async def test_a_free_call_slot_goes_to_a_waiting_submission_first(autojump_clock):
    slots = Slots(1)
    order: list[str] = []

    async def call(name: str, first: bool) -> None:
        await slots.acquire(first=first)
        order.append(name)
        await trio.sleep(1)
        slots.release()

    async with trio.open_nursery() as n:
        n.start_soon(call, "check 1", False)
        await trio.sleep(0.1)
        for i in (2, 3):
            n.start_soon(call, f"check {i}", False)
            await trio.sleep(0.1)  # trio starts tasks of one batch in any order
        n.start_soon(call, "submit", True)
    assert order == ["check 1", "submit", "check 2", "check 3"]
    assert slots.free == 1


async def test_a_cancelled_wait_for_a_call_slot_leaks_nothing(autojump_clock):
    slots = Slots(1)
    await slots.acquire()
    with trio.move_on_after(1):
        await slots.acquire(first=True)  # cancelled while waiting
    slots.release()
    assert slots.free == 1
    with trio.move_on_after(1) as scope:
        await slots.acquire()
        await slots.acquire()  # the second waits: no slot left
    assert scope.cancelled_caught and slots.free == 0
    slots.release()
    assert slots.free == 1


async def test_a_stop_waits_for_the_first_check_of_a_run_not_for_later_ones(autojump_clock):
    """A run is over, for the soft stop, when its first outcome check is (a draw's
    download): the room for new runs frees at acceptance all the same."""
    budget = Budget(rows=4, calls=1)
    fresh, adopted = budget.take(budget.reserve(2), 2, "submitting")
    fresh.await_first_check(by=30.0)
    fresh.move("following")
    adopted.move("following")
    assert budget.room_for_runs() == 1 and budget.first_checks_by() == 30.0
    done_at = []

    async def stop() -> None:
        await budget.wait_runs_done()
        done_at.append(trio.current_time())

    async with trio.open_nursery() as n:
        n.start_soon(stop)
        await trio.sleep(5)
        assert not done_at  # the first check is still to come
        fresh.first_checked()
    assert done_at == [5.0] and budget.first_checks_by() == float("-inf")
    again = budget.take(budget.reserve(1), 1, "submitting")[0]
    again.await_first_check(by=60.0)
    again.close()  # its task ended (cancelled, failed): nothing left to wait for
    with trio.move_on_after(1) as waited:
        await budget.wait_runs_done()
    assert not waited.cancelled_caught
