"""Claims at their edges: when a due time brings a look, what a failed statement costs,
the shared slots, rows our own tasks hold, and how seldom an idle or contended listener
asks the table (survivors of the mutation run of 2026-12-07 in claims.py)."""

from __future__ import annotations

from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from itertools import pairwise

import pytest
import trio

from listener.engine import Wakeup
from listener.engine.claims import (
    ADOPT_AFTER,
    ADOPT_SPREAD,
    CONTENDED_JITTER,
    RETRY_AFTER_DB_ERROR,
    SKIPPED_RETRY,
)
from listener.engine.flow import HEARTBEAT, SLOT_POLL, Slots
from listener.engine.health import CREDENTIALS_PROBE_INTERVAL
from listener.errors import ApiCredentials, DatabaseUnavailable
from tests.engine.conftest import make_engine, run_until
from tests.engine.fakes import FakeProvider, FakeSlotStore, FakeSlotTable, FakeStore

# No statement is asked this often in a test: more is a loop that never sleeps (which
# the fake clock would otherwise turn into a test that never ends).
TIGHT_LOOP = 1000


@dataclass
class Watched(FakeStore):
    """The fake store, noting when each claim statement ran and what it took; it can
    fail the next calls of a statement, and lose rows to a faster listener."""

    claimed_at: dict[int, float] = field(default_factory=dict)  # the row's last claim
    claims_of: Counter = field(default_factory=Counter)  # row -> how often it was claimed
    claim_times: dict[str, list[float]] = field(
        default_factory=lambda: {"claim_ready": [], "claim_generating": []}
    )
    finalised_at: dict[int, float] = field(default_factory=dict)
    failing: Counter = field(default_factory=Counter)  # statement -> next calls that fail
    faster: set[int] = field(default_factory=set)  # rows another listener claims first

    def _call(self, name: str) -> float:
        if self.calls[name] >= TIGHT_LOOP:
            raise RuntimeError(f"{name} asked {TIGHT_LOOP} times: a loop that never waits")
        if name in self.claim_times:
            self.claim_times[name].append(trio.current_time())
        if self.failing[name]:
            self.failing[name] -= 1
            self.calls[name] += 1
            raise DatabaseUnavailable("database unavailable: a blip for the test")
        return super()._call(name)

    def _others_first(self) -> None:
        now = trio.current_time()
        for id_ in list(self.faster):
            r = self.rows[id_]
            if r.not_before <= now and (r.locked_until is None or r.locked_until < now):
                r.locked_by, r.locked_until = "other", now + self.lease
                self.faster.discard(id_)

    def _claimed(self, ids) -> None:
        for id_ in ids:
            self.claimed_at[id_] = trio.current_time()
            self.claims_of[id_] += 1

    async def claim_ready(self, limit, *, held=(), slots=None):
        self._others_first()
        rows = await super().claim_ready(limit, held=held, slots=slots)
        self._claimed(r.id for r in rows)
        return rows

    async def claim_generating(self, limit, *, held=()):
        self._others_first()
        claimed = await super().claim_generating(limit, held=held)
        self._claimed(g.id for g in claimed.rows)
        return claimed

    async def finalise(self, id_, handle, image, **kw):
        await super().finalise(id_, handle, image, **kw)
        self.finalised_at[id_] = trio.current_time()


@asynccontextmanager
async def serving(engine):
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        yield
        engine.stop("test")


def ring_ready(engine) -> float:
    engine.on_event(Wakeup("ReadyToGenerate"))
    return trio.current_time()


def left_by_a_dead_listener(store: FakeStore, *, lease_until: float | None) -> int:
    """A generation another listener submitted and followed, then died (no ring)."""
    (id_,) = store.add(1, status="Generate", uuid="theirs", locked_by="dead")
    store.rows[id_].locked_until = lease_until
    return id_


def shared_slots(store: FakeStore, limit: int, kind: str = "generation") -> Slots:
    return Slots(FakeSlotStore(FakeSlotTable(store)), kind=kind, limit=limit, explicit=True)


# -- a lease that runs out ---------------------------------------------------------------


async def test_a_lapsing_lease_is_looked_at_a_moment_after_it_runs_out_never_before(
    autojump_clock,
):
    """ADOPT_AFTER plus up to ADOPT_SPREAD after the lease's end (so that many listeners
    do not claim at one instant), whether the periodic look (every LEASE_TIMEOUT / 3)
    or the loop's own pass learned it; no claim statement while the lease runs."""
    store = Watched()
    engine = make_engine(store, FakeProvider(generation_time=0.0))  # a look every 10 s
    async with serving(engine):
        await trio.sleep(1)
        quiet = left_by_a_dead_listener(store, lease_until=15.0)  # found by the look
        await trio.sleep_until(20)
        rung = left_by_a_dead_listener(store, lease_until=20.5)
        engine.on_event(Wakeup("Generate"))  # a pass that finds it half a second early
        await run_until(lambda: rung in store.claimed_at, every=1.0)
    late = (ADOPT_AFTER, ADOPT_AFTER + ADOPT_SPREAD)
    assert 15.0 + late[0] <= store.claimed_at[quiet] < 15.0 + late[1]
    assert 20.5 + late[0] <= store.claimed_at[rung] < 20.5 + late[1]
    early = [t for t in store.claim_times["claim_generating"] if 1 < t < 15.05 or 20 < t < 20.55]
    assert early == []


async def test_a_generation_the_periodic_look_finds_unfollowed_is_adopted_at_once(
    autojump_clock,
):
    store = Watched()
    engine = make_engine(store, FakeProvider(generation_time=0.0))  # a look every 10 s
    async with serving(engine):
        await trio.sleep(1)
        id_ = left_by_a_dead_listener(store, lease_until=2.0)  # ran out before any look
        await run_until(lambda: id_ in store.claimed_at, every=1.0)
    assert 10.0 <= store.claimed_at[id_] < 10.0 + ADOPT_AFTER


async def test_a_sweep_that_learns_of_a_lease_running_out_brings_the_adoption_forward(
    autojump_clock,
):
    """The adoption loop waits for its next look (LEASE_TIMEOUT / 3, here 100 s): a
    catch-up sweep that learns of an earlier lease end shortens that wait."""
    store = Watched()
    engine = make_engine(store, FakeProvider(generation_time=0.0), settings={"lease_timeout": 300})
    async with serving(engine):
        await trio.sleep(1)
        id_ = left_by_a_dead_listener(store, lease_until=10.0)
        engine.sweeps.request_catch_up()  # the LISTEN stream reconnected
        await run_until(lambda: id_ in store.claimed_at, every=1.0)
    # a moment after the lease ran out, spread (not at that instant, with every listener)
    assert 10.0 + ADOPT_AFTER <= store.claimed_at[id_] <= 10.0 + ADOPT_AFTER + ADOPT_SPREAD


# -- contention: another listener was faster ---------------------------------------------


async def test_after_a_wakeup_that_found_nothing_the_next_claim_waits_a_moment(autojump_clock):
    """Another listener took the row first: this one waits up to CONTENDED_JITTER before
    its next claim, so ten listeners do not stampede the next row."""
    store = Watched()
    engine = make_engine(store, FakeProvider())
    async with serving(engine):
        await trio.sleep(1)
        store.faster.update(store.add(1))
        ring_ready(engine)
        await trio.sleep(1)
        (id_,) = store.add(1)
        rang = ring_ready(engine)
        await run_until(lambda: id_ in store.claimed_at)
    assert rang < store.claimed_at[id_] <= rang + CONTENDED_JITTER


async def test_after_a_wakeup_that_found_work_the_next_claim_is_at_once(autojump_clock):
    store = Watched()
    engine = make_engine(store, FakeProvider())
    async with serving(engine):
        await trio.sleep(1)
        (first,) = store.add(1)
        ring_ready(engine)
        await trio.sleep(1)
        (second,) = store.add(1)
        rang = ring_ready(engine)
        await run_until(lambda: second in store.claimed_at)
    assert store.claimed_at[first] == 1.0 and store.claimed_at[second] == rang


async def test_a_row_lost_at_its_due_time_to_a_faster_listener_does_not_delay_the_next_wakeup(
    autojump_clock,
):
    """Only a wake-up (a notification) that found nothing is contention: a look at a due
    time that found nothing is not."""
    store = Watched()
    (retry,) = store.add(1, not_before=15.0)  # learned at the look at 10 s
    store.faster.add(retry)
    engine = make_engine(store, FakeProvider())
    async with serving(engine):
        await trio.sleep_until(16)
        (new,) = store.add(1)
        rang = ring_ready(engine)
        await run_until(lambda: new in store.claimed_at)
    assert store.rows[retry].locked_by == "other"
    assert 15.0 in store.claim_times["claim_ready"]  # the look at its due time was made
    assert store.claimed_at[new] == rang


async def test_a_row_lost_after_the_periodic_look_to_a_faster_listener_does_not_delay_the_next_wakeup(
    autojump_clock,
):
    store = Watched()
    engine = make_engine(store, FakeProvider())  # a look every 10 s
    async with serving(engine):
        await trio.sleep(1)
        (quiet,) = store.add(1)  # no notification came for it
        store.faster.add(quiet)
        await trio.sleep_until(12)
        (new,) = store.add(1)
        rang = ring_ready(engine)
        await run_until(lambda: new in store.claimed_at)
    assert store.rows[quiet].locked_by == "other"
    assert 10.0 in store.claim_times["claim_ready"]  # the periodic look found it due
    assert store.claimed_at[new] == rang


# -- a statement that fails --------------------------------------------------------------


async def test_a_claim_that_fails_on_the_database_takes_no_room_and_is_tried_again_a_second_later(
    autojump_clock,
):
    store = Watched()
    (id_,) = store.add(1)
    store.failing["claim_ready"] = 1  # the start-up sweep's
    engine = make_engine(store, FakeProvider(), settings={"api_concurrency": 1})
    async with serving(engine):
        await run_until(lambda: store.rows[id_].status == "ReadyToPublish", seconds=60)
    assert RETRY_AFTER_DB_ERROR <= store.claimed_at[id_] < RETRY_AFTER_DB_ERROR + 0.05
    assert store.rows[id_].attempts == 1


async def test_an_adoption_that_fails_on_the_database_takes_no_room_and_is_tried_again_a_second_later(
    autojump_clock,
):
    store = Watched()
    id_ = left_by_a_dead_listener(store, lease_until=None)
    store.failing["claim_generating"] = 1  # the start-up sweep's
    engine = make_engine(store, FakeProvider(generation_time=0.0), settings={"max_in_flight": 1})
    async with serving(engine):
        await run_until(lambda: store.rows[id_].status == "ReadyToPublish", seconds=60)
    retry = RETRY_AFTER_DB_ERROR
    assert retry <= store.claimed_at[id_] < retry + ADOPT_AFTER + ADOPT_SPREAD


async def test_a_periodic_look_that_fails_is_made_again_a_second_later(autojump_clock):
    store = Watched()
    engine = make_engine(store, FakeProvider())  # a look every 10 s
    async with serving(engine):
        await trio.sleep(1)
        (id_,) = store.add(1)  # no notification came for it
        store.failing["next_ready_in"] = 1  # the look at 10 s
        await run_until(lambda: id_ in store.claimed_at, every=1.0)
    assert 10.0 + RETRY_AFTER_DB_ERROR <= store.claimed_at[id_] < 11.05


async def test_a_due_time_that_cannot_be_read_after_a_claim_is_asked_again_a_second_later(
    autojump_clock,
):
    """... and the row is claimed the moment it falls due (a waiting row's due time has
    no spread: only a lease running out has)."""
    store = Watched()
    (id_,) = store.add(1, not_before=5.0)  # a retry, due in five seconds
    store.failing["next_ready_in"] = 1  # asked after the start-up sweep's claim
    engine = make_engine(store, FakeProvider())  # a look every 10 s
    async with serving(engine):
        await run_until(lambda: id_ in store.claimed_at, every=1.0)
    assert 5.0 <= store.claimed_at[id_] < 5.0 + ADOPT_AFTER


async def test_a_claim_that_fails_on_the_database_keeps_the_listeners_spare_slot(
    autojump_clock,
):
    """The account allows one generation at a time, and the claim that the first row's
    slot rings as it frees fails: the slot is still this listener's for its next claim,
    or no row is ever sent again."""
    store = Watched()
    engine = make_engine(store, FakeProvider(), slots=shared_slots(store, 1))
    first, second = store.add(2)
    finalise = store.finalise

    async def finalise_then_fail_a_claim(id_, *args, **kw):
        await finalise(id_, *args, **kw)
        if id_ == first:
            store.failing["claim_ready"] = 1

    store.finalise = finalise_then_fail_a_claim
    async with serving(engine):
        await run_until(lambda: store.rows[second].status == "ReadyToPublish", seconds=30)
    assert store.failing["claim_ready"] == 0  # the claim failed
    assert store.claims_of[second] == 1


# -- the account's shared slots ----------------------------------------------------------


async def test_a_claim_that_found_every_slot_taken_looks_again_within_the_slot_poll(
    autojump_clock,
):
    """Another listener's slot frees without a word to this one (its lease runs out)."""
    store = Watched()
    slots = shared_slots(store, 1)
    slots.store.table.slots[0] = ["other", 5.0, None]
    (id_,) = store.add(1)
    engine = make_engine(store, FakeProvider(), slots=slots)  # a look every 10 s
    async with serving(engine):
        await run_until(lambda: id_ in store.claimed_at, every=1.0)
    assert 5.0 < store.claimed_at[id_] <= 5.0 + SLOT_POLL + 1e-9


async def test_a_row_waiting_for_a_slot_is_claimed_the_moment_one_of_ours_frees(
    autojump_clock,
):
    """One call at a time for the account: the second row goes as soon as the first
    one's call is over, not at the next look for another listener's slot (SLOT_POLL)."""
    store = Watched()
    provider = FakeProvider(run_time=0.05)
    slots = shared_slots(store, 1, kind="call")
    engine = make_engine(store, provider, slots=slots, settings={"api_concurrency": 2})
    first, second = store.add(2)
    async with serving(engine):
        await run_until(lambda: second in store.claimed_at)
    assert store.claimed_at[second] - store.claimed_at[first] == pytest.approx(provider.run_time)


async def test_generations_holding_slots_that_nobody_follows_are_adopted_at_the_next_heartbeat(
    autojump_clock,
):
    """A dead listener's generation keeps its slot of the account: the heartbeat that
    sees it rings the adoption, long before the next look (LEASE_TIMEOUT / 3: 100 s)."""
    store = Watched()
    slots = shared_slots(store, 2)
    engine = make_engine(
        store, FakeProvider(generation_time=0.0), slots=slots, settings={"lease_timeout": 300}
    )
    async with serving(engine):
        await trio.sleep(1)
        id_ = left_by_a_dead_listener(store, lease_until=0.5)
        slots.store.table.slots[0] = ["dead", 0.5, id_]
        await run_until(lambda: id_ in store.claimed_at, every=1.0)
    assert store.claimed_at[id_] <= 1.0 + HEARTBEAT


# -- room --------------------------------------------------------------------------------


async def test_a_generation_waiting_for_room_is_adopted_the_moment_one_place_frees(
    autojump_clock,
):
    store = Watched()
    for _ in range(2):
        left_by_a_dead_listener(store, lease_until=None)
    engine = make_engine(
        store,
        FakeProvider(generation_time=3.0),
        settings={"max_in_flight": 1, "lease_timeout": 300},  # a look every 100 s
    )
    async with serving(engine):
        await run_until(lambda: store.statuses()["ReadyToPublish"] == 2, every=1.0)
    done = min(store.finalised_at.values())
    assert max(store.claimed_at.values()) == done  # the other one, at that moment


# -- rows our own tasks hold -------------------------------------------------------------


async def test_a_row_our_own_task_submits_is_not_claimed_again_when_its_lease_lapses(
    autojump_clock,
):
    """Its renewal came late (a slow database): the claims leave it to its task."""
    store = Watched()
    (id_,) = store.add(1)
    provider = FakeProvider(run_time=20.0)
    engine = make_engine(store, provider)
    async with serving(engine):
        await run_until(lambda: provider.in_flight == 1)
        store.rows[id_].locked_until = trio.current_time() - 1
        ring_ready(engine)
        await run_until(lambda: store.rows[id_].status == "ReadyToPublish")
    assert store.claims_of[id_] == 1 and store.rows[id_].attempts == 1
    assert len(provider.submitted) == 1


async def test_a_generation_our_own_task_follows_is_not_claimed_again_when_its_lease_lapses(
    autojump_clock,
):
    store = Watched()
    id_ = left_by_a_dead_listener(store, lease_until=None)
    engine = make_engine(store, FakeProvider(generation_time=30.0))
    async with serving(engine):
        await run_until(lambda: id_ in store.claimed_at)
        await trio.sleep(1)
        store.rows[id_].locked_until = trio.current_time() - 1
        engine.on_event(Wakeup("Generate"))
        await run_until(lambda: store.rows[id_].status == "ReadyToPublish")
    assert store.claims_of[id_] == 1


# -- how often the table is asked --------------------------------------------------------


@pytest.mark.parametrize("sharing", [False, True], ids=["alone", "sharing-slots"])
async def test_an_idle_listener_makes_no_claim_between_wakeups(sharing, autojump_clock):
    """Only its look every LEASE_TIMEOUT / 3 (a due-time query) while nothing happens
    after a wake-up that found nothing; with the account's slots (two, fewer than the
    eight run calls) too."""
    store = Watched()
    slots = shared_slots(store, 2) if sharing else None
    engine = make_engine(store, FakeProvider(), slots=slots)
    async with serving(engine):
        await trio.sleep(1)
        ring_ready(engine)
        engine.on_event(Wakeup("Generate"))
        await trio.sleep(1)
        before = Counter(store.calls)
        await trio.sleep(60)
        asked = store.calls - before
    assert asked["claim_ready"] == 0 and asked["claim_generating"] == 0
    assert asked["next_ready_in"] <= 6 and asked["next_generating_in"] <= 6


async def test_a_generation_locked_elsewhere_for_the_moment_is_asked_for_again_each_second(
    autojump_clock,
):
    """A claim skips a row another session has locked (an operator's open transaction);
    it is due now, yet not taken: looked at again SKIPPED_RETRY later, not in a loop."""
    store = Watched()
    id_ = left_by_a_dead_listener(store, lease_until=None)
    store.locked.add(id_)
    engine = make_engine(store, FakeProvider(generation_time=0.0))
    async with serving(engine):
        await trio.sleep(10)
        store.locked.discard(id_)
        await run_until(lambda: id_ in store.claimed_at, every=1.0)
    times = store.claim_times["claim_generating"]
    assert all(b - a >= SKIPPED_RETRY for a, b in pairwise(times))
    assert store.claimed_at[id_] < 10.0 + SKIPPED_RETRY + ADOPT_AFTER + ADOPT_SPREAD


async def test_a_waiting_row_locked_elsewhere_for_the_moment_is_asked_for_again_each_second(
    autojump_clock,
):
    store = Watched()
    (id_,) = store.add(1)
    store.locked.add(id_)
    engine = make_engine(store, FakeProvider())  # a periodic look every 10 s
    async with serving(engine):
        await trio.sleep(12)
        store.locked.discard(id_)
        await run_until(lambda: id_ in store.claimed_at, every=0.1)
    times = store.claim_times["claim_ready"]
    assert all(b - a >= SKIPPED_RETRY for a, b in pairwise(times))
    assert store.claimed_at[id_] <= 12 + SKIPPED_RETRY  # not at the next periodic look


async def test_a_row_falling_due_in_under_a_second_is_claimed_when_it_does(autojump_clock):
    """A short claim asks when the next row falls due and claims it then: a row due in
    half a second is not made to wait the second a row locked elsewhere waits."""
    store = Watched()
    (now,) = store.add(1)
    (soon,) = store.add(1, not_before=0.5)
    engine = make_engine(store, FakeProvider())
    async with serving(engine):
        await run_until(lambda: soon in store.claimed_at, every=0.05)
    assert store.claimed_at[now] == 0
    assert 0.5 <= store.claimed_at[soon] < 0.6


async def test_rows_waiting_while_the_key_was_refused_are_claimed_once_it_works_again(
    autojump_clock,
):
    store = Watched()
    (id_,) = store.add(1)
    provider = FakeProvider()
    refused = {"now": True}

    async def probe():
        if refused["now"]:
            raise ApiCredentials("HTTP 401: key blocked")

    provider.probe = probe
    engine = make_engine(store, provider)  # a look every 10 s
    async with serving(engine):
        await trio.sleep(1)
        refused["now"] = False  # the next probe, every CREDENTIALS_PROBE_INTERVAL, works
        await run_until(lambda: id_ in store.claimed_at, every=1.0)
    assert store.claimed_at[id_] <= CREDENTIALS_PROBE_INTERVAL + 1.0
