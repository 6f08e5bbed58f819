"""`Guard` alone on the fake clock: how long a stop waits for the paid calls in flight
(survivors of the partial mutation run of 2026-12-07: `paid_until` was only seen through
whole engines)."""

from __future__ import annotations

import math

import trio

from listener.engine.guard import Guard


async def test_a_stop_waits_for_the_latest_paid_call_and_a_hard_stop_for_none(autojump_clock):
    guard = Guard()
    assert guard.paid_until() == -math.inf  # nothing in flight
    with guard.shielded():  # an ordinary call: no deadline of its own
        assert guard.paid_until() == -math.inf
        with guard.shielded(until=30.0), guard.shielded(until=50.0):
            assert guard.paid_until() == 50.0
        assert guard.paid_until() == -math.inf  # over: forgotten
    with guard.shielded(until=40.0):
        guard.stop_by(trio.current_time() + 5)
        assert guard.paid_until() == 40.0
        guard.stop_by(trio.current_time(), hard=True)
        assert guard.paid_until() == -math.inf  # a second signal waits for no paid call


async def test_a_paid_call_runs_to_its_own_deadline_past_the_grace_unless_cut(autojump_clock):
    guard = Guard()
    ended = {}

    async def call(name: str, until: float, seconds: float) -> None:
        with guard.shielded(until=until) as scope:
            await trio.sleep(seconds)
            ended[name] = trio.current_time()
        if scope.cancelled_caught:
            ended[name] = -trio.current_time()

    async with trio.open_nursery() as n:
        n.start_soon(call, "paid", 20.0, 15.0)
        n.start_soon(call, "plain", -math.inf, 15.0)
        await trio.sleep(1)
        guard.stop_by(trio.current_time() + 5)
    assert ended == {"paid": 15.0, "plain": -6.0}  # the plain call: the grace only

    guard = Guard()
    ended.clear()
    t0 = trio.current_time()
    async with trio.open_nursery() as n:
        n.start_soon(call, "paid", t0 + 20.0, 15.0)
        await trio.sleep(1)
        guard.stop_by(trio.current_time() + 5)
        await trio.sleep(1)
        guard.stop_by(trio.current_time(), hard=True)  # the second signal
    assert ended == {"paid": -(t0 + 2.0)}  # cut at once, its own deadline or not
