"""The trio database layer: queries in worker threads, errors translated once, a
reserved lane for results, and cancellation that never abandons a write."""

from __future__ import annotations

import psycopg
import pytest
import trio

from listener.config import load_settings
from listener.db import open_database
from listener.errors import DatabaseError, DatabaseUnavailable


async def test_run_executes_in_one_transaction(db):
    def work(conn):
        conn.execute("INSERT INTO images (prompt) VALUES ('one')")
        conn.execute("INSERT INTO images (prompt) VALUES ('two')")
        return conn.execute("SELECT count(*) FROM images").fetchone()[0]

    assert await db.run(work) == 2

    def failing(conn):
        conn.execute("INSERT INTO images (prompt) VALUES ('three')")
        conn.execute("INSERT INTO images (prompt) VALUES ('')")  # refused: all rolled back

    with pytest.raises(DatabaseError) as info:
        await db.run(failing)
    assert "prompt_must_not_be_blank" in info.value.message
    assert await db.sql("SELECT count(*) FROM images") == [(2,)]


async def test_pickup_lane_commits_each_statement_on_one_backend_of_its_own(db):
    with pytest.raises(DatabaseError):
        await db.pickup.fetch(
            "INSERT INTO images (prompt) VALUES ('kept'); INSERT INTO images (prompt) VALUES ('')"
        )
    await db.pickup.fetch("INSERT INTO images (prompt) VALUES ('kept')")
    with pytest.raises(DatabaseError):
        await db.pickup.fetch("INSERT INTO images (prompt) VALUES ('')")  # refused on its own
    assert await db.sql("SELECT prompt FROM images") == [("kept",)]
    assert not await db.run(lambda conn: conn.autocommit)

    def backend(conn):
        return conn.execute("SELECT pg_backend_pid()").fetchone()[0]

    pickup = {(await db.pickup.fetch("SELECT pg_backend_pid() AS pid"))[0]["pid"] for _ in range(5)}
    pooled = {await db.run(backend) for _ in range(5)}
    assert len(pickup) == 1 and not pickup & pooled


async def test_connections_the_server_ended_are_replaced_before_use(db, database_url):
    """The pool's check costs no round trip, yet a connection whose backend was
    terminated while idle is never handed out; the pickup lane reconnects likewise,
    before it sends anything (so nothing it sends is lost)."""
    await db.run(lambda conn: None)
    await db.pickup.fetch("SELECT 1")
    with psycopg.connect(database_url, autocommit=True) as admin:
        ended = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'fbl-test' AND datname = current_database()"
        ).fetchone()[0]
    assert ended >= 2
    await trio.sleep(0.2)  # the FATAL message reaches the idle sockets
    for _ in range(5):  # more than the pool holds: every one is checked
        assert await db.sql("SELECT 1") == [(1,)]
    assert await db.pickup.fetch("SELECT 1 AS one") == [{"one": 1}]
    assert db.pickup.connects == 2 and not db.pickup.unsettled


async def test_unreachable_database_is_unavailable(tmp_path):
    url = "postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=1"
    settings = load_settings(
        env_file=None, database_url=url, db_max_open_conns=2, db_max_idle_conns=0
    )
    async with open_database(url, settings, application_name="t") as d:
        d.pool.timeout = 1
        with pytest.raises(DatabaseUnavailable):
            await d.sql("SELECT 1")


async def test_critical_lane_is_free_when_routine_work_fills_the_pool(db):
    """A pool that runs dry never blocks the writing of a result."""
    assert db.routine.total_tokens == 4 and db.critical.total_tokens == 1
    finished: list[str] = []

    async def routine():
        await db.sql("SELECT pg_sleep(1)")
        finished.append("routine")

    async with trio.open_nursery() as nursery:
        for _ in range(6):  # more than the routine lane holds
            nursery.start_soon(routine)
        await trio.sleep(0.2)
        with trio.fail_after(0.8):  # well before any sleeper returns
            await db.run(
                lambda c: c.execute("INSERT INTO images (prompt) VALUES ('result')"), critical=True
            )
            # the named critical statements (a uuid, a result) have connections of their own
            params = {"worker": "w", "ids": [1], "unknown": []}
            assert await db.fetch("release_rows", params, critical=True) == [{"released": 0}]
        finished.append("critical")
    assert finished[0] == "critical"


async def test_cancellation_lets_the_write_finish(db, database_url):
    def slow_write(conn):
        conn.execute("INSERT INTO images (prompt) VALUES ('kept')")
        conn.execute("SELECT pg_sleep(0.3)")

    with trio.move_on_after(0.05):
        await db.run(slow_write)
    with psycopg.connect(database_url) as c:
        assert c.execute("SELECT prompt FROM images").fetchall() == [("kept",)]


async def test_the_pool_grows_on_demand_and_keeps_at_most_the_idle_cap(database_url):
    """DB_MAX_IDLE_CONNS caps idle connections as Go's database/sql does; nothing but one
    pooled connection (and the pickup lane's) is opened ahead of need."""
    settings = load_settings(
        env_file=None, database_url=database_url, db_max_open_conns=10, db_max_idle_conns=2
    )

    def backends() -> int:
        with psycopg.connect(database_url) as c:
            (n,) = c.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = 'fbl-pool-test'"
            ).fetchone()
            return n

    async with open_database(database_url, settings, application_name="fbl-pool-test") as db:
        await trio.sleep(0.5)
        assert await trio.to_thread.run_sync(backends) <= 2  # one pooled, one pickup
        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(db.sql, "SELECT pg_sleep(0.5)")
            await trio.sleep(0.4)
            assert await trio.to_thread.run_sync(backends) >= 5  # grown on demand
        await trio.sleep(0.3)
        assert db.pool.get_stats()["pool_available"] <= 2
        assert await trio.to_thread.run_sync(backends) <= 3  # two idle, and pickup


def test_db_max_open_conns_zero_means_no_limit_of_ours():
    settings = load_settings(env_file=None, database_url="postgresql://x@h/d", db_max_open_conns=0)
    assert settings.db_max_open_conns == 0
    with pytest.raises(Exception, match="DB_MAX_OPEN_CONNS"):
        load_settings(env_file=None, database_url="postgresql://x@h/d", db_max_open_conns=1)
