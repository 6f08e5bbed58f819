"""Submitting, at its edges: a row that may not be sent, a stop that comes between the
claim and the send, the request's defaults (survivors of the partial mutation run of
2026-12-07)."""

from __future__ import annotations

import trio

from tests.engine.conftest import make_engine, run_until
from tests.engine.fakes import FakeProvider, FakeStore, StopWhileClaiming


async def _serve_until(engine, predicate) -> None:
    async with trio.open_nursery() as n:
        await n.start(engine.serve)
        await run_until(predicate)
        engine.stop("test")


async def test_a_row_claimed_with_its_resends_used_up_fails_without_being_sent(
    store, provider, autojump_clock
):
    (id_,) = store.add(1)
    over = provider.traits.unknown_outcome_resends + 1
    store.rows[id_].unknown_outcomes = over
    engine = make_engine(store, provider)
    await _serve_until(engine, lambda: store.rows[id_].status == "Failed")
    assert provider.submitted == []
    assert store.rows[id_].last_error.startswith(
        f"gave up: {over} run(s) sent without a usable answer (the API may have generated"
    )
    assert store.rows[id_].locked_by is None


async def test_a_row_claimed_as_the_stop_comes_is_released_uncounted_and_not_sent(
    autojump_clock,
):
    store = StopWhileClaiming()
    (id_,) = store.add(1)
    provider = FakeProvider()
    engine = make_engine(store, provider)
    store.engine = engine
    with trio.fail_after(60):
        await engine.serve()
    row = store.rows[id_]
    assert provider.submitted == []
    assert (row.status, row.attempts, row.locked_by, row.uuid) == (
        "ReadyToGenerate",
        0,
        None,
        None,
    )


async def test_the_negative_prompt_is_the_rows_else_the_setting_else_none(autojump_clock):
    store = FakeStore()
    own, default = store.add(2)
    store.rows[own].negative_prompt = "  grain  "
    provider = FakeProvider()
    engine = make_engine(store, provider, settings={"default_negative_prompt": "blurry"})
    await _serve_until(engine, lambda: store.statuses()["ReadyToPublish"] == 2)
    sent = {r.row_id: r.negative_prompt for r in provider.requests}
    assert sent[own] == "grain" and sent[default] == "blurry"

    store = FakeStore()
    (id_,) = store.add(1)
    provider = FakeProvider()
    engine = make_engine(store, provider, settings={"default_negative_prompt": ""})
    await _serve_until(engine, lambda: store.rows[id_].status == "ReadyToPublish")
    assert provider.requests[0].negative_prompt is None  # nothing: not an empty string
