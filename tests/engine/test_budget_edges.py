"""The one concurrency budget at its edges: claims in flight, who is woken and when, a
ticket whose task is over (survivors of the mutation run of 2026-12-07 at 5c20a93)."""

from __future__ import annotations

import math

import trio

from listener.engine.budget import Budget


async def test_two_claims_at_once_never_reserve_more_run_calls_than_there_are():
    budget = Budget(rows=10, calls=4)
    first = budget.reserve(budget.room_for_runs())
    second = budget.reserve(budget.room_for_runs())  # while the first claim is in flight
    assert (first, second) == (4, 0)


async def test_a_claim_that_takes_every_place_it_reserved_wakes_no_one():
    budget = Budget(rows=4, calls=4)
    heard: list[int] = []
    budget.subscribe(lambda: heard.append(budget.free))
    budget.take(budget.reserve(2), 2, "claimed")
    assert heard == []
    budget.take(budget.reserve(2), 1, "claimed")  # one place back
    assert heard == [1]


async def test_a_ticket_once_done_stays_done():
    budget = Budget(rows=2, calls=2)
    (ticket,) = budget.take(budget.reserve(1), 1, "claimed")
    ticket.close()
    ticket.move("following")  # a late step of a task already over
    assert ticket.state == "done" and budget.held == 0 and budget.free == 2


async def test_a_row_released_before_its_run_call_does_not_hold_up_a_sweep(autojump_clock):
    """A -cron sweep waits for its rows' run calls (`submitted`): a row released unsent
    (a stop, a row already ours) has none to wait for."""
    budget = Budget(rows=2, calls=2)
    (ticket,) = budget.take(budget.reserve(1), 1, "claimed")
    ticket.close()
    with trio.fail_after(1):
        await ticket.submitted.wait()


async def test_a_run_already_over_does_not_hold_up_the_stop(autojump_clock):
    budget = Budget(rows=2, calls=2)
    (ticket,) = budget.take(budget.reserve(1), 1, "submitting")
    ticket.close()
    ticket.await_first_check(by=60.0)  # too late: its task is over
    assert budget.first_checks_by() == -math.inf
    with trio.fail_after(1):
        await budget.wait_runs_done()
