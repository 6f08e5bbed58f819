"""Flow control with listener processes, driven with SQL, against the emulator with the
account's true limits (max_concurrent): the shared budget holds across processes and a
SIGKILL, the limit changes from psql mid-run, a 429 storm fails and counts nothing, and
status checks are few."""

from __future__ import annotations

import os
import signal

import psycopg
import trio

from tests.fixtures.listener import rows, wait_until
from tests.web_fixtures import get, http_url

# The test environment checks every 0.05 s, so the seed's 30 checks are 1.5 s: these
# generations take seconds.
SLOW = {"DEFAULT_MAX_ATTEMPTS": "400"}


def enqueue(url: str, n: int) -> None:
    rows(
        url, "INSERT INTO images (prompt) SELECT 'a fox ' || g FROM generate_series(1, %s) g", (n,)
    )


def counts(url: str) -> dict[str, int]:
    return dict(rows(url, "SELECT status, count(*) FROM images GROUP BY status"))


async def all_done(url: str, n: int, seconds: float = 90) -> None:
    await wait_until(
        lambda: counts(url).get("ReadyToPublish", 0) == n,
        seconds=seconds,
        every=0.2,
        what=f"{n} rows ReadyToPublish ({counts(url)})",
    )


async def test_three_listeners_never_exceed_the_accounts_limit(
    start_listener, database_url, emulator
):
    emulator.configure(generation_time=1.0, max_concurrent=2)
    procs = [await start_listener(PROVIDER_CONCURRENCY="2", **SLOW) for _ in range(3)]
    enqueue(database_url, 12)
    await all_done(database_url, 12)
    stats = emulator.stats()
    assert stats["most_running"] == 2 and stats["runs_refused"] == 0
    assert stats["runs_total"] == 12
    assert rows(database_url, "SELECT DISTINCT attempts FROM images") == [(1,)]
    for p in procs:
        assert await p.stop() == 0
    assert rows(database_url, "SELECT count(*) FROM listener_slots WHERE holder IS NOT NULL") == [
        (0,)
    ]


async def test_a_listener_sigkilled_holding_a_slot_does_not_let_the_others_exceed_it(
    start_listener, database_url, emulator
):
    emulator.configure(generation_time=2.0, max_concurrent=2)
    procs = [await start_listener(PROVIDER_CONCURRENCY="2", **SLOW) for _ in range(3)]
    enqueue(database_url, 10)

    def holder_generating():
        # a listener holding a slot whose row is generating at the provider
        return rows(
            database_url,
            "SELECT s.holder FROM listener_slots s JOIN images i ON i.id = s.image_id "
            "WHERE s.holder IS NOT NULL AND i.status = 'Generate' LIMIT 1",
        )

    ((holder,),) = await wait_until(holder_generating, what="a slot held by a generation")
    pid = int(holder.split(":")[1])
    victim = next(p for p in procs if p.proc.pid == pid)
    os.kill(pid, signal.SIGKILL)
    victim.proc.wait()
    try:
        await all_done(database_url, 10, seconds=30)
    except AssertionError:
        print(
            rows(
                database_url,
                "SELECT id, status, locked_by, locked_until, now() FROM images WHERE status='Generate'",
            )
        )
        print(rows(database_url, "SELECT * FROM listener_slots"))
        for p in procs:
            print(p.log[-3000:])
        raise
    stats = emulator.stats()
    assert stats["most_running"] <= 2 and stats["runs_refused"] == 0
    assert counts(database_url) == {"ReadyToPublish": 10}


async def test_the_limit_changed_from_psql_mid_run_takes_effect(
    start_listener, database_url, emulator
):
    emulator.configure(generation_time=1.0)
    await start_listener(PROVIDER_CONCURRENCY="1", **SLOW)
    enqueue(database_url, 16)
    await wait_until(lambda: counts(database_url).get("ReadyToPublish", 0) >= 2, every=0.1)
    assert emulator.stats()["most_running"] == 1
    with psycopg.connect(database_url, autocommit=True) as c:
        c.execute("SELECT images_set_concurrency(3)")
    changed = trio.current_time()
    await wait_until(lambda: emulator.stats()["most_running"] == 3, every=0.05, seconds=5)
    assert trio.current_time() - changed < 1.0 + 1.0  # effective within a second (+ a run)
    await all_done(database_url, 16)
    assert emulator.stats()["most_running"] == 3
    assert rows(database_url, "SELECT configured, set_by FROM listener_limits") == [(3, "operator")]


async def test_a_429_storm_fails_nothing_counts_nothing_and_concurrency_recovers(
    start_listener, database_url, emulator
):
    emulator.configure(generation_time=0.5, max_concurrent=0)  # every run refused: 429
    listener = await start_listener(PROVIDER_CONCURRENCY="4", **SLOW)
    enqueue(database_url, 24)
    await wait_until(
        lambda: rows(database_url, "SELECT effective FROM listener_limits") == [(1,)],
        what="the effective concurrency lowered to 1",
    )
    await trio.sleep(1.0)
    refused = emulator.stats()["runs_refused"]
    assert refused >= 4
    emulator.configure(max_concurrent=4)  # the storm is over; the true limit is 4
    await all_done(database_url, 24)
    assert counts(database_url) == {"ReadyToPublish": 24}
    counted = rows(
        database_url,
        "SELECT id, attempts, unknown_outcomes, last_error FROM images WHERE attempts <> 1",
    )
    assert not counted, f"refusals counted as attempts: {counted}\n{listener.log[-3000:]}"
    assert rows(database_url, "SELECT effective, ceiling FROM listener_limits") == [(4, None)]
    reason = rows(database_url, "SELECT reason FROM listener_limits")[0][0]
    assert reason.startswith("raised from 3")
    await listener.stop()
    assert "Provider concurrency lowered to" in listener.log


async def test_metrics_show_the_shared_limit_lowered_by_a_429_storm(
    start_listener, database_url, emulator
):
    emulator.configure(generation_time=0.5, max_concurrent=0)  # every run refused: 429
    listener = await start_listener("--http", "127.0.0.1:0", PROVIDER_CONCURRENCY="4", **SLOW)
    url = await http_url(listener)
    enqueue(database_url, 12)
    await wait_until(
        lambda: rows(database_url, "SELECT effective FROM listener_limits") == [(1,)],
        what="the effective concurrency lowered to 1",
    )
    m = flow_metrics(get(url + "metrics").text)
    assert m["provider_concurrency", "configured"] == 4
    assert m["provider_concurrency", "effective"] == 1
    assert m["provider_concurrency_changes_total", "decrease"] >= 1
    # each one a 429 the emulator sent (read after the page: more may have come since)
    assert 1 <= m["provider_refusals_total", None] <= emulator.stats()["runs_refused"]
    assert m["provider_concurrency_changes_total", "increase"] == 0
    emulator.configure(max_concurrent=4)
    await all_done(database_url, 12)
    await listener.stop()


async def test_status_checks_per_image_with_a_steady_3s_generation(
    start_listener, database_url, emulator
):
    emulator.configure(generation_time=3.0, status_time=2)
    listener = await start_listener(**SLOW)  # DEFAULT_CHECK_INTERVAL=0.05: 60 checks otherwise
    enqueue(database_url, 16)
    await all_done(database_url, 16)
    stats = emulator.stats()
    per_image = stats["status_calls"] / 16
    assert per_image <= 3, per_image
    await listener.stop()
    assert "Status checks: " in listener.log


def flow_metrics(text: str) -> dict[tuple[str, str | None], float]:
    """The flow-control series of a /metrics page: (name, its value/direction label)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, str | None], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("fusionbrain_listener_provider_"):
                name = s.name.removeprefix("fusionbrain_listener_")
                out[name, s.labels.get("value") or s.labels.get("direction")] = s.value
    return out
