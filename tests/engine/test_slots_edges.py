"""The account's slots as one listener holds them (`Slots`), at their edges: the heartbeat
that keeps them, what goes back to the table and when, a listener that finds none, a
claim that fails, an adopted generation's slot (survivors of the mutation run of
2026-12-07 at 5c20a93). Listeners here are a `Slots` and a store on one shared table,
claiming the way the engine does: `ask`, the claim's statement, `claimed`."""

from __future__ import annotations

import itertools

import trio

from listener.engine.flow import COOLDOWN, HEARTBEAT, WANT_EVERY, Limiter, Limits, Slots
from tests.engine.conftest import run_until
from tests.engine.fakes import FakeSlotStore, FakeSlotTable, FakeStore

LEASE = 3.0


class Listener:
    """One listener's rows and slots, on the shared rows and slot table."""

    def __init__(self, table: FakeSlotTable, worker: str, *, limit: int, explicit=True) -> None:
        self.store = FakeStore(worker=worker, lease=LEASE, rows=table.rows.rows)
        self.table_store = FakeSlotStore(table, worker=worker, lease=LEASE)
        self.slots = Slots(self.table_store, kind="generation", limit=limit, explicit=explicit)

    async def claim(self, n: int) -> list[int]:
        """The slots a claim of up to `n` rows took."""
        ask = self.slots.ask(n)
        rows = await self.store.claim_ready(n, slots=ask)
        await self.slots.claimed(ask, n)
        self.last = rows
        return sorted(ask.got)


def shared(limit: int, rows: int = 20) -> FakeSlotTable:
    base = FakeStore()
    base.add(rows)
    table = FakeSlotTable(base, configured=limit, effective=limit)
    table.fill()
    return table


def holders(table: FakeSlotTable) -> dict[int, str | None]:
    return {n: holder for n, (holder, _, _) in sorted(table.slots.items())}


# -- the lifetime ------------------------------------------------------------------------


async def test_a_limit_set_for_the_listener_overrides_the_tables_and_a_default_does_not(
    autojump_clock,
):
    table = shared(5)
    for limit, explicit, expected in ((3, True, 3), (8, False, 3)):
        slots = Listener(table, "me", limit=limit, explicit=explicit).slots
        async with trio.open_nursery() as n:
            await n.start(slots.serve)
            assert (table.configured, table.effective, slots.effective) == (expected,) * 3
            n.cancel_scope.cancel()


async def test_the_heartbeat_keeps_our_slots_renewed_at_least_once_a_second(autojump_clock):
    table = shared(2)
    a, b = Listener(table, "a", limit=2), Listener(table, "b", limit=2)
    renewed: list[float] = []
    renew = a.table_store.renew

    async def recorded() -> None:
        renewed.append(trio.current_time())
        await renew()

    a.table_store.renew = recorded  # type: ignore[method-assign]
    async with trio.open_nursery() as n:
        await n.start(a.slots.serve)
        assert await a.claim(1) == [0]
        await trio.sleep(10 * LEASE)
        assert await b.claim(1) == [1]  # slot 0 is still a's, long after its first lease
        n.cancel_scope.cancel()
    gaps = [later - earlier for earlier, later in itertools.pairwise(renewed)]
    assert len(renewed) >= 10 * LEASE and max(gaps) <= HEARTBEAT + 1e-9


async def test_a_listener_that_stops_gives_its_slots_back_at_once(autojump_clock):
    table = shared(3)
    a, b = Listener(table, "a", limit=3), Listener(table, "b", limit=3)
    async with trio.open_nursery() as n:
        await n.start(a.slots.serve)
        assert await a.claim(2) == [0, 1]
        a.slots.give_back([1])  # kept for a's next claim
        n.cancel_scope.cancel()
    assert holders(table) == {0: None, 1: None, 2: None}
    assert await b.claim(3) == [0, 1, 2]  # not after a's lease: now


async def test_a_stop_waits_at_most_five_seconds_for_the_slots_to_be_given_back(
    autojump_clock,
):
    table = shared(2)
    a = Listener(table, "a", limit=2)

    async def stuck(slots) -> None:  # a database that does not answer
        await trio.sleep_forever()

    a.table_store.release = stuck  # type: ignore[method-assign]
    async with trio.open_nursery() as n:
        await n.start(a.slots.serve)
        await a.claim(1)
        stop = trio.current_time()
        n.cancel_scope.cancel()
    assert trio.current_time() - stop == 5.0


async def test_an_account_row_deleted_by_hand_is_made_again_with_our_limit(autojump_clock):
    table = shared(2)
    a = Listener(table, "a", limit=3)
    async with trio.open_nursery() as n:
        await n.start(a.slots.serve)
        table.delete()
        await trio.sleep(HEARTBEAT)
        assert (table.gone, table.configured, table.effective) == (False, 3, 3)
        assert await a.claim(5) == [0, 1, 2]
        n.cancel_scope.cancel()


async def test_the_heartbeat_tells_the_claims_of_a_free_slot_only_when_the_limit_rose(
    autojump_clock,
):
    table = shared(3)
    a = Listener(table, "a", limit=3)
    heard: list[float] = []
    a.slots.subscribe(lambda: heard.append(trio.current_time()))
    async with trio.open_nursery() as n:
        await n.start(a.slots.serve)
        table.effective = 2  # lowered by another listener: nothing frees
        await trio.sleep(5 * HEARTBEAT)
        assert heard == []
        table.effective = 3
        await trio.sleep(HEARTBEAT)
        assert len(heard) == 1
        n.cancel_scope.cancel()


async def test_slots_held_by_generations_nobody_follows_call_for_their_adoption(
    autojump_clock,
):
    table = shared(2, rows=0)
    (orphan,) = table.rows.add(1, status="Generate", uuid="u")  # its listener died
    table.slots[0] = ["dead", -1.0, orphan]
    a = Listener(table, "a", limit=2)
    adopt: list[float] = []
    a.slots.on_orphans(lambda: adopt.append(trio.current_time()))
    async with trio.open_nursery() as n:
        await n.start(a.slots.serve)
        await trio.sleep(HEARTBEAT)
        assert adopt
        n.cancel_scope.cancel()


# -- what goes back to the table, and when ------------------------------------------------


async def test_a_listener_without_a_free_slot_gets_the_next_one_freed(autojump_clock):
    """It says so (`want`); the holder hands its spare slot and the next one it frees to
    the table instead of keeping them for its own next claim."""
    table = shared(2)
    a, b = Listener(table, "a", limit=2), Listener(table, "b", limit=2)
    async with trio.open_nursery() as n:
        await n.start(a.slots.serve)
        assert await a.claim(2) == [0, 1]
        a.slots.give_back([1])  # its generation is over: kept for a's next claim
        assert await b.claim(1) == []
        await trio.sleep(HEARTBEAT)  # a's heartbeat hears that b waits
        assert holders(table) == {0: "a", 1: None}
        assert await b.claim(1) == [1]
        a.slots.give_back([0])  # freed while b waits: to the table, at once
        await trio.sleep(0.001)
        assert holders(table) == {0: None, 1: "b"}
        n.cancel_scope.cancel()


async def test_a_listener_without_a_free_slot_says_so_at_most_every_half_second(
    autojump_clock,
):
    table = shared(2)
    a, b = Listener(table, "a", limit=2), Listener(table, "b", limit=2)
    assert await a.claim(1) == [0]
    assert await a.claim(1) == [1]
    start = trio.current_time()
    assert await b.claim(1) == []
    assert table.wanted == ("b", start)
    await trio.sleep(WANT_EVERY / 2)
    assert await b.claim(1) == []
    assert table.wanted == ("b", start)  # not written again yet
    await trio.sleep(WANT_EVERY / 2)
    assert await b.claim(1) == []
    assert table.wanted == ("b", start + WANT_EVERY)
    # for /metrics (docs/flow-control.md): slots taken, and claims that found none
    assert (a.slots.taken, a.slots.starved, b.slots.taken, b.slots.starved) == (2, 0, 0, 3)


async def test_at_a_lowered_limit_our_slots_above_it_go_back_to_the_table(autojump_clock):
    table = shared(3)
    a = Listener(table, "a", limit=3)
    async with trio.open_nursery() as n:
        await n.start(a.slots.serve)
        assert await a.claim(3) == [0, 1, 2]
        a.slots.give_back([2])  # its generation is over: kept for a's next claim
        table.effective = 2  # lowered by another listener
        await trio.sleep(2 * HEARTBEAT)
        assert holders(table) == {0: "a", 1: "a", 2: None}  # the spare one went back
        table.effective = 1
        await run_until(lambda: a.slots.effective == 1, every=0.01)
        a.slots.give_back([1])  # at the limit now: to the table at once, not kept
        await trio.sleep(0.001)
        assert holders(table) == {0: "a", 1: None, 2: None}
        n.cancel_scope.cancel()


async def test_a_spare_slot_the_claim_could_not_use_still_goes_back_to_the_table(
    autojump_clock,
):
    """Kept spare above a limit lowered since (the claim leaves it out): not forgotten
    while the table still names us, or nobody could use it until we stop."""
    table = shared(4)
    a = Listener(table, "a", limit=4)
    async with trio.open_nursery() as n:
        await n.start(a.slots.serve)
        assert await a.claim(4) == [0, 1, 2, 3]
        a.slots.give_back([0, 1, 2], reusable=False)
        a.slots.give_back([3])
        await trio.sleep(0.001)
        table.effective = 3  # lowered by another listener, before a's heartbeat sees it
        assert await a.claim(1) == [0]
        await trio.sleep(2 * HEARTBEAT)
        assert holders(table)[3] is None
        n.cancel_scope.cancel()


async def test_a_generation_still_running_keeps_its_slot_out_of_our_next_claim(
    autojump_clock,
):
    table = shared(2)
    a = Listener(table, "a", limit=2)
    async with trio.open_nursery() as n:
        await n.start(a.slots.serve)
        assert await a.claim(1) == [0]
        # handed to the processors: it generates on, its slot bound to it
        (row,) = a.last
        table.rows.rows[row.id].status = "Generate"
        a.slots.give_back([0], reusable=False)
        assert await a.claim(2) == [1]
        n.cancel_scope.cancel()


async def test_after_a_failed_claim_our_spare_slot_is_still_ours_and_used_first(
    autojump_clock,
):
    table = shared(2)
    a = Listener(table, "a", limit=2)
    async with trio.open_nursery() as n:
        await n.start(a.slots.serve)
        assert await a.claim(1) == [0]
        a.slots.give_back([0])
        ask = a.slots.ask(1)
        a.slots.unclaimed(ask)  # its statement failed: nothing changed in the table
        assert await a.claim(1) == [0]  # slot 1 is free too: ours first
        n.cancel_scope.cancel()


async def test_a_claim_names_every_slot_we_hold_for_a_repair_after_a_lost_answer(
    autojump_clock,
):
    """`known`: a claim whose answer is lost is repaired by giving back our slots that we
    do not know of (PgStore); the ones we hold must be named, or they would go too."""
    table = shared(3)
    a = Listener(table, "a", limit=3)
    assert await a.claim(2) == [0, 1]
    assert a.slots.ask(1).known == [0, 1]


async def test_an_adopted_generations_slot_is_ours_while_we_follow_it(autojump_clock):
    table = shared(2, rows=0)
    (gen,) = table.rows.add(1, status="Generate", uuid="u")
    table.slots[1] = ["dead", -1.0, gen]  # its listener died
    table.rows.add(2)
    a = Listener(table, "a", limit=2)
    async with trio.open_nursery() as n:
        await n.start(a.slots.serve)
        assert await a.slots.inherit(gen) == 1
        await trio.sleep(10 * LEASE)  # renewed by our heartbeat all along
        assert holders(table)[1] == "a" and table.slots[1][1] > trio.current_time()
        table.rows.rows[gen].status = "ReadyToPublish"
        a.slots.give_back([1])
        assert await a.claim(1) == [1]  # ours, kept for our next claim (0 is free too)
        n.cancel_scope.cancel()


# -- adaptation --------------------------------------------------------------------------


async def test_each_step_up_is_counted_and_a_refusal_right_after_one_is_the_same_burst(
    autojump_clock,
):
    table = shared(8)
    table.effective = 2
    lim = Limiter(FakeSlotStore(table), Limits(configured=8, effective=2))
    for _ in range(2 + 3):  # a window of 2 successes, then one of 3
        await lim.succeeded()
    assert (table.effective, lim.effective, lim.increases) == (4, 4, 2)
    assert await lim.refused("429") is False  # the step up may have caused it
    await trio.sleep(COOLDOWN + 0.1)
    assert await lim.refused("429") is True and table.effective == 2
