"""A row's task from claim to release: the status it is released in, the account slot it
holds and when that slot is free again, and what a stop waits for (survivors of the
mutation run of 2026-12-07 at commit 5c20a93, listener/engine/rows.py)."""

from __future__ import annotations

import pytest
import trio

from listener.engine.flow import Slots
from listener.engine.ports import Ready, Submitted
from listener.errors import ApiCredentials
from tests.engine.conftest import make_engine, run_until
from tests.engine.fakes import (
    PNG_B64,
    FakeDrawProvider,
    FakeProvider,
    FakeSlotStore,
    FakeSlotTable,
    FakeStore,
)


def _slots(store: FakeStore, kind: str, limit: int) -> tuple[Slots, FakeSlotTable]:
    table = FakeSlotTable(store)
    return Slots(FakeSlotStore(table), kind=kind, limit=limit, explicit=True), table


@pytest.mark.contains_faults
async def test_an_adopted_generation_whose_task_fails_is_released_as_a_generation_counted(
    store, provider, autojump_clock
):
    """Its uuid kept (not sent again), the attempt counted, the reason in last_error."""
    (id_,) = store.add(1, status="Generate", uuid="old-1")
    answers = iter([RuntimeError("a bug in the status check")])

    def outcome(handle):
        for exc in answers:
            raise exc
        return Ready(PNG_B64)

    provider.on_outcome = outcome
    engine = make_engine(store, provider)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.rows[id_].last_error is not None)
        row = store.rows[id_]
        assert (row.status, row.uuid, row.attempts) == ("Generate", "old-1", 1)
        assert row.last_error == "internal error: RuntimeError: a bug in the status check"
        await run_until(lambda: store.rows[id_].status == "ReadyToPublish", seconds=60)
        engine.stop("test")
    assert provider.submitted == []


async def test_a_generation_handed_to_the_processors_keeps_its_slot_until_it_ends(
    autojump_clock,
):
    """Generator only, one slot: the next row waits while the first still generates
    elsewhere; it is sent once a processor has finished the first."""
    store = FakeStore()
    first, second = store.add(2)
    slots, _ = _slots(store, "generation", 1)
    provider = FakeProvider()
    engine = make_engine(store, provider, follow=False, slots=slots)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.rows[first].status == "Generate")
        await trio.sleep(30)
        assert store.rows[second].status == "ReadyToGenerate"
        assert len(provider.submitted) == 1
        store.rows[first].status = "ReadyToPublish"  # a processor finished it
        await run_until(lambda: store.rows[second].status == "Generate", seconds=5)
        engine.stop("test")


async def test_a_call_slot_is_free_as_its_draw_returns_not_after_the_download(
    autojump_clock,
):
    """One call slot (GigaChat's kind), downloads of 50 s: the second draw starts as the
    first returns, while its image downloads, and at once (no rest)."""
    store = FakeStore(provider=FakeDrawProvider.name)
    ids = store.add(2)
    provider = FakeDrawProvider()
    provider.download_time = 50.0
    drawn: list[float] = []

    def on_submit(request):
        drawn.append(trio.current_time())
        handle = f"file-{len(drawn)}"
        provider.started[handle] = trio.current_time()
        return Submitted(handle)

    provider.on_submit = on_submit
    slots, _ = _slots(store, "call", 1)
    engine = make_engine(store, provider, slots=slots, settings={"api_concurrency": 2})
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: all(store.rows[i].status == "ReadyToPublish" for i in ids))
        engine.stop("test")
    draw = provider.run_time + provider.generation_time
    assert draw <= drawn[1] - drawn[0] < draw + 0.5


async def test_a_processor_only_listener_follows_a_generation_with_its_slot_to_the_end(
    autojump_clock,
):
    """A generation left by a dead listener, its slot bound to it: adopted with its slot
    by a listener that only follows, published, and the listener carries on."""
    store = FakeStore()
    (id_,) = store.add(1, status="Generate", uuid="old-1")
    slots, table = _slots(store, "generation", 1)
    table.slots[0] = ["dead", -1.0, id_]
    provider = FakeProvider()
    engine = make_engine(store, provider, generate=False, slots=slots)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.rows[id_].status == "ReadyToPublish")
        await trio.sleep(5)
        engine.stop("test")
    assert store.rows[id_].image == PNG_B64


async def test_an_adopted_generation_waiting_for_the_key_does_not_hold_the_stop(
    store, provider, autojump_clock
):
    """Only a generation this process just paid for has its first check waited for."""

    async def probe():
        raise ApiCredentials("availability: HTTP 401")

    provider.probe = probe
    store.add(1, status="Generate", uuid="old-1")
    engine = make_engine(store, provider, settings={"shutdown_grace": 5})
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: engine.budget.counts["following"] == 1)
        await trio.sleep(1)
        start = trio.current_time()
        engine.stop("SIGTERM")
    assert trio.current_time() - start < 1.0
    assert sum(provider.checks.values()) == 0
    (row,) = store.rows.values()
    assert (row.status, row.uuid, row.locked_by) == ("Generate", "old-1", None)


@pytest.mark.contains_faults
async def test_a_generation_released_after_a_fault_keeps_its_slot_until_it_ends(autojump_clock):
    """One slot, held by an adopted generation whose task fails: the generation is given
    back to the table still generating, so the next row waits until it is over."""
    store = FakeStore()
    (old,) = store.add(1, status="Generate", uuid="old-1")
    (new,) = store.add(1)
    slots, table = _slots(store, "generation", 1)
    table.slots[0] = ["dead", -1.0, old]
    provider = FakeProvider()
    faults = iter([RuntimeError("a bug in the status check")])

    def outcome(handle):
        for exc in faults:
            raise exc
        return Ready(PNG_B64)

    provider.on_outcome = outcome
    sent_while: list[str] = []

    def on_submit(request):
        sent_while.append(store.rows[old].status)
        provider.started["uuid-new"] = trio.current_time()
        return Submitted("uuid-new")

    provider.on_submit = on_submit
    engine = make_engine(store, provider, slots=slots)
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(lambda: store.rows[new].status == "ReadyToPublish", seconds=60)
        engine.stop("test")
    assert store.rows[old].attempts == 1  # the fault was counted: it did happen
    assert sent_while == ["ReadyToPublish"]
