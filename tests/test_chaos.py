"""Reliability: crashes, many listeners, database and API faults, graceful stop under load.
Bounded to seconds each; the promise checked is always the same: every row ends
ReadyToPublish or Failed with a reason, and no paid run is repeated because of us."""

from __future__ import annotations

import random
import signal
from collections import Counter

import psycopg
import trio

from tests.fixtures.listener import API_KEY, API_SECRET, rows, wait_until


def insert_many(url: str, n: int, prefix: str = "row") -> list[int]:
    got = rows(
        url,
        "INSERT INTO images (prompt, status) SELECT %s || ' ' || g, 'ReadyToGenerate' "
        "FROM generate_series(1, %s) AS g RETURNING id",
        (prefix, n),
    )
    return [r[0] for r in got]


def statuses(url: str) -> Counter:
    return Counter(dict(rows(url, "SELECT status, count(*) FROM images GROUP BY status")))


async def all_finished(url: str, n: int, *, seconds: float = 60) -> None:
    def check():
        s = statuses(url)
        return s["ReadyToPublish"] + s["Failed"] == n

    try:
        await wait_until(check, seconds=seconds, every=0.2, what=f"{n} rows to finish")
    except AssertionError as exc:
        left = rows(
            url,
            "SELECT id, status, locked_by, locked_until - now(), not_before - now(), attempts, "
            "last_error FROM images WHERE status NOT IN ('ReadyToPublish', 'Failed') "
            "ORDER BY id LIMIT 10",
        )
        raise AssertionError(f"{exc}; still waiting: {left}") from None


def assert_every_row_consistent(url: str) -> None:
    bad = rows(
        url,
        "SELECT id, status, uuid, last_error FROM images WHERE "
        "status NOT IN ('ReadyToPublish', 'Failed') "
        "OR (status = 'Failed' AND coalesce(last_error, '') = '') "
        "OR (status = 'ReadyToPublish' AND base64 IS NULL)",
    )
    assert bad == []


async def test_sigkill_rounds_lose_nothing_and_repeat_runs_only_for_kills(
    start_listener, database_url, emulator
) -> None:
    emulator.configure(generation_time=0.2)
    n, kills = 200, 0
    insert_many(database_url, n)
    rng = random.Random(7)
    env = {"LEASE_TIMEOUT": "1", "DEFAULT_CHECK_INTERVAL": "0.05"}
    for _ in range(4):
        listener = await start_listener(**env)
        await trio.sleep(rng.uniform(0.1, 0.6))
        listener.kill()
        kills += 1
    survivor = await start_listener(**env)
    await all_finished(database_url, n)
    assert_every_row_consistent(database_url)
    per_prompt = emulator.stats()["runs_by_prompt"]
    assert len(per_prompt) == n or statuses(database_url)["Failed"] > 0
    assert max(per_prompt.values()) <= 1 + kills
    # A kill can only repeat the runs that were in the air at that moment.
    duplicates = sum(c - 1 for c in per_prompt.values())
    assert duplicates <= kills * 8  # API_CONCURRENCY
    assert await survivor.stop() == 0


async def test_a_late_write_after_a_stolen_lease_is_refused(
    start_listener, database_url, emulator
) -> None:
    emulator.configure(generation_time=1.5)
    listener = await start_listener(LEASE_TIMEOUT="30")
    (image_id,) = insert_many(database_url, 1, "stolen")
    await wait_until(
        lambda: (
            rows(database_url, "SELECT status FROM images WHERE id = %s", (image_id,))[0][0]
            == "Generate"
        ),
        what="Generate",
    )
    rows(
        database_url,
        "UPDATE images SET locked_by = 'thief', locked_until = now() + interval '1 hour' "
        "WHERE id = %s",
        (image_id,),
    )
    await listener.wait_for_log("changed under this listener", seconds=20)
    status, owner = rows(
        database_url, "SELECT status, locked_by FROM images WHERE id = %s", (image_id,)
    )[0]
    assert (status, owner) == ("Generate", "thief")


async def test_a_crashed_listeners_claims_are_taken_over(
    start_listener, database_url, emulator
) -> None:
    emulator.configure(generation_time=2.5)
    env = {"LEASE_TIMEOUT": "1", "DEFAULT_CHECK_INTERVAL": "0.2"}
    crashed = await start_listener(**env)
    (image_id,) = insert_many(database_url, 1, "orphan")
    await wait_until(
        lambda: rows(database_url, "SELECT uuid FROM images WHERE id = %s", (image_id,))[0][0],
        what="a uuid",
    )
    crashed.kill()
    taken_over = await start_listener(**env)
    await all_finished(database_url, 1, seconds=15)
    assert rows(database_url, "SELECT status FROM images")[0][0] == "ReadyToPublish"
    assert emulator.stats()["runs_total"] == 1, "resumed, not submitted again"
    assert f"Resuming generation of image ID {image_id}" in taken_over.log


async def test_four_listeners_share_1000_rows_each_run_once(
    start_listener, database_url, emulator
) -> None:
    n = 1000
    # The four start together and the rows arrive once all four listen: rows inserted
    # before them went, under CI load, to the first three before the fourth was ready.
    # The account allows what four processes of 8 run calls each used to send at once.
    listeners = [
        await start_listener(DB_MAX_OPEN_CONNS="4", PROVIDER_CONCURRENCY="32", ready=False)
        for _ in range(4)
    ]
    for p in listeners:
        await p.wait_for_log("Listener ready")
    insert_many(database_url, n)
    await all_finished(database_url, n, seconds=120)
    assert statuses(database_url) == Counter({"ReadyToPublish": n})
    stats = emulator.stats()
    assert stats["runs_total"] == n
    assert set(stats["runs_by_prompt"].values()) == {1}
    spread = Counter(dict(rows(database_url,
                               "SELECT generated_by, count(*) FROM images GROUP BY 1")))  # fmt: skip
    assert len(spread) == 4, f"work not spread: {spread}"
    for p in listeners:
        assert await p.stop() == 0


async def test_terminated_backends_are_survived(start_listener, database_url, emulator) -> None:
    emulator.configure(generation_time=0.3)
    listener = await start_listener()
    insert_many(database_url, 100, "before")
    await trio.sleep(0.5)
    killed = rows(
        database_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name LIKE 'fusionbrain-listener%%' AND datname = current_database()",
    )
    assert len(killed) >= 2
    await listener.wait_for_log("LISTEN connection restored", seconds=20)
    insert_many(database_url, 50, "after")
    await all_finished(database_url, 150)
    assert_every_row_consistent(database_url)
    assert "Traceback" not in listener.log
    assert emulator.stats()["runs_total"] == 150


async def test_database_down_for_seconds(start_listener, private_cluster, emulator) -> None:
    url = private_cluster.url
    emulator.configure(generation_time=0.5)
    listener = await start_listener(DATABASE_URL=url)
    insert_many(url, 40, "first")
    await trio.sleep(0.3)
    await trio.to_thread.run_sync(private_cluster.stop)
    await listener.wait_for_log("retrying", seconds=20)
    await trio.sleep(3)
    await trio.to_thread.run_sync(private_cluster.start)
    insert_many(url, 20, "second")
    await all_finished(url, 60, seconds=60)
    assert_every_row_consistent(url)
    log = listener.log
    assert "Traceback" not in log
    assert set(emulator.stats()["runs_by_prompt"].values()) == {1}
    assert await listener.stop() == 0


async def test_emulator_down_for_a_while(start_listener, database_url, emulator) -> None:
    await start_listener(RETRY_MAX_ATTEMPTS="20", RETRY_BACKOFF_MAX="0.5")
    emulator.stop()
    ids = insert_many(database_url, 10, "while down")
    await trio.sleep(1.5)
    emulator.start()
    await all_finished(database_url, len(ids), seconds=30)
    assert statuses(database_url) == Counter({"ReadyToPublish": 10})


async def test_sigterm_with_50_in_flight_then_resume(
    start_listener, database_url, emulator
) -> None:
    emulator.configure(generation_time=4)
    # The emulator keeps each generation's 4 s; checks every 0.05 s must not time out.
    # API_CONCURRENCY is one limit on every call: room for the runs beside the checks of
    # fifty generations polled every 0.05 s, on a loaded machine; and 50 at once must be
    # allowed by the account's shared budget.
    patient = {
        "DEFAULT_MAX_ATTEMPTS": "1000",
        "API_CONCURRENCY": "16",
        "PROVIDER_CONCURRENCY": "64",
    }
    listener = await start_listener(SHUTDOWN_GRACE="2", **patient)
    insert_many(database_url, 50, "inflight")
    await wait_until(lambda: statuses(database_url)["Generate"] == 50, what="50 generations")
    started = trio.current_time()
    assert await listener.stop(signal.SIGTERM, seconds=10) == 0
    assert trio.current_time() - started < 2 + 2.5, "exit within the grace period (+ exit)"
    assert rows(database_url, "SELECT count(*) FROM images WHERE locked_by IS NOT NULL") == [(0,)]
    await start_listener(**patient)
    await all_finished(database_url, 50)
    assert rows(database_url, "SELECT status, last_error, count(*) FROM images GROUP BY 1, 2") == [
        ("ReadyToPublish", None, 50)
    ]
    assert set(emulator.stats()["runs_by_prompt"].values()) == {1}


async def test_secrets_never_reach_the_output(
    start_listener, private_cluster, emulator, listener_env
) -> None:
    from tests.fixtures.cluster import DB_PASSWORD

    url = private_cluster.url
    listener = await start_listener(DATABASE_URL=url, RETRY_BACKOFF_MAX="0.2")
    for endpoint, kind in [("run", "500"), ("run", "malformed"), ("status", "503"),
                           ("run", "401"), ("run", "400"), ("status", "404")]:  # fmt: skip
        emulator.fault(endpoint, kind, 1)
    insert_many(url, 8, "secret test")
    await trio.sleep(1)
    emulator.stop()
    await trio.sleep(1)
    emulator.start()
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name LIKE 'fusionbrain-listener%'"
        )
    await all_finished(url, 8, seconds=40)
    await listener.stop()
    wrong = await start_listener(
        DATABASE_URL=private_cluster.url_with_password("not-the-" + DB_PASSWORD), ready=False
    )
    assert await wrong.wait_exit() == 2
    assert "password authentication failed" in wrong.log
    output = listener.log + wrong.log
    for secret in (API_KEY, API_SECRET, DB_PASSWORD):
        assert secret not in output
