"""Leases and durable writes at their edges: a renewal that races a row's last write, the
rows left at a stop, the renewal's cadence, and how a write waits out an outage
(survivors of the mutation run of 2026-12-07 at commit 5c20a93, listener/engine/lease.py
and guard.py)."""

from __future__ import annotations

import itertools
import types

import pytest
import tenacity
import trio
import trio.lowlevel

from listener.engine.guard import Guard
from listener.engine.lease import Leases
from listener.errors import DatabaseUnavailable
from tests.engine.conftest import long_generation, make_engine, run_until
from tests.engine.fakes import FakeStore

# -- a renewal racing a row's last write --------------------------------------------------


class _SlowRenewal:
    """A renewal statement that answers when told, finding every row it was asked about
    gone (the rows' own writes released them meanwhile)."""

    def __init__(self) -> None:
        self.asked = trio.Event()
        self.answer = trio.Event()

    async def renew(self, owned: dict[int, str]) -> tuple[set[int], set[int]]:
        self.asked.set()
        await self.answer.wait()
        return set(), set(owned)


async def test_a_row_whose_task_ended_during_the_renewal_is_not_a_renewal_error(autojump_clock):
    store = _SlowRenewal()
    leases = Leases(store, lease=3)  # type: ignore[arg-type]
    let_go: list[int] = []
    leases.on_let_go = lambda: let_go.append(1)
    async with trio.open_nursery() as n:
        with leases.own(7, "ReadyToGenerate") as own:
            n.start_soon(leases.renew_once)
            await store.asked.wait()
            own.settle()  # its write landed; the task ends
        store.answer.set()
    assert not leases.owned and let_go == []


async def test_a_settled_row_still_in_its_task_is_not_given_up_by_a_renewal(autojump_clock):
    """The renewal finds it released (by the task's own write): the task is not cut."""
    store = _SlowRenewal()
    store.answer.set()
    leases = Leases(store, lease=3)  # type: ignore[arg-type]
    carried_on = False
    with leases.own(7, "ReadyToGenerate") as own:
        own.settle()
        await leases.renew_once()
        await trio.lowlevel.checkpoint()
        carried_on = True
    assert carried_on and not leases.owned


@pytest.mark.parametrize("ours", [True, False], ids=["released", "taken by another"])
async def test_the_claims_look_again_when_a_left_row_is_released(ours, autojump_clock):
    """A row a task left behind is released at the next tick: the claims look at the
    table again then, since it is work again; not when nothing was released."""
    store = FakeStore()
    (id_,) = store.add(1, locked_by="me" if ours else "other", locked_until=100.0)
    leases = Leases(store, lease=30)
    looks: list[float] = []
    leases.on_let_go = lambda: looks.append(trio.current_time())
    with leases.own(id_, "ReadyToGenerate"):
        pass  # ended without settling it (cancelled, or its release failed)
    assert await leases.release_remaining() == (1 if ours else 0)
    assert len(looks) == (1 if ours else 0)
    assert not leases.owned


# -- the rows left at a stop, the renewal's cadence ---------------------------------------


class SlowStatements(FakeStore):
    """Releasing rows takes a round trip, as a statement does; renewals are noted."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.renewed: list[float] = []

    async def release_rows(self, ids, *, unknown=()):
        await trio.sleep(0.05)
        return await super().release_rows(ids, unknown=unknown)

    async def renew(self, owned):
        self.renewed.append(trio.current_time())
        return await super().renew(owned)


async def test_the_rows_left_at_a_stop_are_released_though_their_statement_takes_time(
    provider, autojump_clock
):
    long_generation(provider)
    store = SlowStatements(provider=provider.name)
    ids = store.add(2)
    engine = make_engine(store, provider, settings={"api_concurrency": 2})
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.statuses()["Generate"] == 2)
        engine.stop("test")
    assert [(store.rows[i].status, store.rows[i].locked_by) for i in ids] == [
        ("Generate", None)
    ] * 2


async def test_a_held_row_is_renewed_every_third_of_its_lease(provider, autojump_clock):
    long_generation(provider)
    store = SlowStatements(provider=provider.name)
    store.add(1)
    settings = {"lease_timeout": 30, "default_max_attempts": 1000}
    engine = make_engine(store, provider, settings=settings)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await trio.sleep(100)
        engine.stop("test")
    gaps = [b - a for a, b in itertools.pairwise(store.renewed)]
    assert len(store.renewed) >= 9 and all(9.9 < g < 10.1 for g in gaps)


# -- a durable write waits out an outage --------------------------------------------------


@pytest.fixture
def retries_on_trios_clock(monkeypatch):
    """The retry loop's own clock (its timeout) is trio's fake one, as the sleeps are."""
    monkeypatch.setattr(tenacity, "time", types.SimpleNamespace(monotonic=trio.current_time))


async def test_a_write_held_up_by_an_outage_is_retried_quickly_then_every_5s_until_it_lands(
    retries_on_trios_clock, autojump_clock
):
    """However long the outage (two minutes here, three times over), the write lands once
    the database is back: tried again after 0.1 s doubling (each with up to 0.5 s of
    jitter), then every 5 s, never given up for a count of tries or a time limit."""
    guard = Guard()
    jitter: list[float] = []  # how much later than the bare doubling each early try came
    for _ in range(3):
        back = trio.current_time() + 120
        tries: list[float] = []

        async def write(tries=tries, back=back) -> str:
            tries.append(trio.current_time())
            if trio.current_time() < back:
                raise DatabaseUnavailable("database unavailable: down for the test")
            return "landed"

        assert await guard.durable("a write", write) == "landed"
        assert back <= tries[-1] <= back + 5.0
        gaps = [b - a for a, b in itertools.pairwise(tries)]
        for k, gap in enumerate(gaps):
            base = 0.1 * 2**k
            assert min(base, 5.0) - 1e-6 <= gap <= min(base + 0.5, 5.0) + 1e-6, (k, gap)
            if base < 4.5:
                jitter.append(gap - base)
    # spread, so that writers held up by one outage do not all come back at one instant
    assert max(jitter) - min(jitter) > 0.1
