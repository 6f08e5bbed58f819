"""Row ownership as a user sees it: listener processes driven with SQL.

An operator's lock longer than the statement timeout, an operator moving a row back by
hand, ten listeners with the default pool settings on one database."""

from __future__ import annotations

import threading

import psycopg
import trio

from tests.fixtures.listener import rows, wait_until
from tests.test_chaos import all_finished, assert_every_row_consistent, insert_many


def state(url: str, id_: int) -> tuple:
    return rows(
        url, "SELECT status, locked_by, uuid, last_error FROM images WHERE id = %s", (id_,)
    )[0]


async def test_an_image_that_arrives_behind_an_operators_lock_lands_after_it(
    start_listener, database_url, emulator
) -> None:
    emulator.configure(generation_time=0.5)
    listener = await start_listener(DB_STATEMENT_TIMEOUT="0.5", LEASE_TIMEOUT="3")
    (id_,) = insert_many(database_url, 1, "locked")
    await wait_until(lambda: state(database_url, id_)[0] == "Generate", what="Generate")
    locked, release = threading.Event(), threading.Event()

    def operator() -> None:
        with psycopg.connect(database_url) as c:
            c.execute("SELECT * FROM images WHERE id = %s FOR UPDATE", (id_,))
            locked.set()
            release.wait(30)

    holder = threading.Thread(target=operator)
    holder.start()
    try:
        await trio.to_thread.run_sync(locked.wait)
        # The image arrives while the row is locked: its write times out, again and again.
        await listener.wait_for_log("database busy", seconds=20)
        await trio.sleep(4)  # longer than the lease, eight statement timeouts
        assert state(database_url, id_)[0] == "Generate"
    finally:
        release.set()
        await trio.to_thread.run_sync(holder.join)
    await wait_until(lambda: state(database_url, id_)[0] == "ReadyToPublish", what="the image")
    assert state(database_url, id_)[1] is None
    assert emulator.stats()["runs_total"] == 1


async def test_a_generate_row_moved_back_by_hand_is_generated_again_and_not_held(
    start_listener, database_url, emulator
) -> None:
    emulator.configure(generation_time=2)
    listener = await start_listener(LEASE_TIMEOUT="3", DEFAULT_MAX_ATTEMPTS="500")
    (id_,) = insert_many(database_url, 1, "again")
    await wait_until(lambda: state(database_url, id_)[0] == "Generate", what="Generate")
    rows(
        database_url,
        "UPDATE images SET status = 'ReadyToGenerate', uuid = NULL WHERE id = %s",
        (id_,),
    )
    await listener.wait_for_log("changed under this listener", seconds=10)
    await wait_until(lambda: emulator.stats()["runs_total"] == 2, seconds=10, what="a second run")
    done = await wait_until(
        lambda: (
            state(database_url, id_)[0] in ("ReadyToPublish", "Failed") and state(database_url, id_)
        ),
        seconds=30,
        what="the row to finish",
    )
    assert done[0] == "ReadyToPublish" and done[1] is None


async def test_ten_listeners_with_default_pool_settings_share_one_database(
    start_listener, database_url, emulator, listener_env
) -> None:
    emulator.configure(generation_time=0.3)
    env = {k: v for k, v in listener_env.items() if not k.startswith("DB_MAX_")}
    listeners = [await start_listener(env=env) for _ in range(10)]
    n = 500
    insert_many(database_url, n, "ten")
    peak = 0

    def connections() -> int:
        return rows(
            database_url,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()",
        )[0][0]

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, await trio.to_thread.run_sync(connections))
            await trio.sleep(0.1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample)
        await all_finished(database_url, n, seconds=120)
        nursery.cancel_scope.cancel()
    assert_every_row_consistent(database_url)
    assert set(emulator.stats()["runs_by_prompt"].values()) == {1}
    assert peak < 60, peak
    for listener in listeners:
        assert await listener.stop() == 0


async def test_the_start_up_sweeps_count_what_they_did(start_listener, database_url, emulator):
    emulator.configure(generation_time=0.2)
    insert_many(database_url, 5, "waiting")
    rows(
        database_url,
        "INSERT INTO images (prompt, status, uuid) VALUES ('left', 'Generate', 'old-uuid')",
    )
    listener = await start_listener()
    await all_finished(database_url, 6)
    log = listener.log
    assert "Generator sweep finished: 5 row(s) submitted" in log
    assert "Processor sweep finished: 1 generation(s) resumed" in log
    started = log.index("Generator sweep started")
    finished = log.index("Generator sweep finished")
    assert log[started:finished].count("Processing image ID") == 5


async def test_an_idle_listener_holds_at_most_four_connections(
    start_listener, database_url, listener_env
) -> None:
    env = {k: v for k, v in listener_env.items() if not k.startswith("DB_MAX_")}
    await start_listener(env=env)
    await trio.sleep(1)  # start-up's short connections are gone
    (held,) = rows(
        database_url,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name LIKE 'fusionbrain-listener%%'",
    )[0]
    assert held <= 4, held  # LISTEN, the claims lane, at most two pooled
