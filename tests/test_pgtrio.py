"""The claims' lane without threads (listener.pgtrio) against a real PostgreSQL: a claim
cancelled while it waits on the socket, a claim whose connection is terminated, a server
restart and a statement the server refuses each leave no row claimed by nobody (leased
to this worker with no task of it on the row), and the lane goes on."""

from __future__ import annotations

import functools

import psycopg
import pytest
import trio
import trio.testing

from listener.config import load_settings
from listener.db import open_database
from listener.engine.flow import account_id
from listener.engine.ports import SlotAsk
from listener.errors import DatabaseError, DatabaseUnavailable
from listener.slotstore import PgSlots
from listener.store import PgStore

ACCOUNT = account_id("fusionbrain", "key", "secret")


def insert(conn, n: int) -> list[int]:
    return [
        conn.execute("INSERT INTO images (prompt) VALUES (%s) RETURNING id", (f"p{i}",)).fetchone()[
            0
        ]
        for i in range(n)
    ]


def leased(conn) -> dict[int, tuple[str, int]]:
    """Every leased row: id -> (holder, attempts)."""
    rows = conn.execute(
        "SELECT id, locked_by, attempts FROM images WHERE locked_by IS NOT NULL ORDER BY id"
    ).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


async def lock_table_while(url: str, ready: trio.Event, release: trio.Event) -> None:
    """Hold an ACCESS EXCLUSIVE lock on images (an operator's migration): a claim waits."""

    def hold() -> None:
        with psycopg.connect(url) as c:
            c.execute("LOCK TABLE images IN ACCESS EXCLUSIVE MODE")
            trio.from_thread.run_sync(ready.set)
            trio.from_thread.run(release.wait)

    await trio.to_thread.run_sync(hold)


async def waiting_on_the_lock(conn, pid: int) -> None:
    query = "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s"
    with trio.fail_after(10):
        while not conn.execute(query, (pid,)).fetchone()[0]:  # noqa: ASYNC110 - polls the server
            await trio.sleep(0.02)


async def test_a_claim_cancelled_while_waiting_on_the_socket_takes_nothing(db, conn, database_url):
    ids = insert(conn, 3)
    store = PgStore(db, "w", 30)
    await store.claim_ready(0)  # the lane is open
    pid = db.pickup.conn.pgconn.backend_pid
    ready, release = trio.Event(), trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lock_table_while, database_url, ready, release)
        await ready.wait()
        with trio.CancelScope() as scope:

            async def interrupt() -> None:
                await waiting_on_the_lock(conn, pid)
                scope.cancel()  # Ctrl-C: the engine cancels the claims' scope

            nursery.start_soon(interrupt)
            await store.claim_ready(5)
        assert scope.cancelled_caught  # prompt, though the server still held the lock
        release.set()
    # the statement was cancelled in the server: nothing claimed, nothing to repair, and
    # the same connection goes on
    assert leased(conn) == {}
    assert not db.pickup.unsettled and db.pickup.connects == 1
    claimed = await store.claim_ready(5)
    assert sorted(r.id for r in claimed) == ids
    assert leased(conn) == {i: ("w", 1) for i in ids}


async def test_a_claim_whose_connection_is_terminated_leaves_nothing_unowned(
    db, conn, database_url
):
    ids = insert(conn, 2)
    store = PgStore(db, "w", 30)
    await store.claim_ready(0)
    pid = db.pickup.conn.pgconn.backend_pid
    ready, release = trio.Event(), trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lock_table_while, database_url, ready, release)
        await ready.wait()

        async def terminate() -> None:
            await waiting_on_the_lock(conn, pid)
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))

        nursery.start_soon(terminate)
        with pytest.raises(DatabaseUnavailable):
            await store.claim_ready(5)
        release.set()
    # its outcome could not be known: the next claim repairs first, on a new connection
    assert db.pickup.unsettled
    claimed = await store.claim_ready(5)
    assert not db.pickup.unsettled and db.pickup.connects == 2
    assert sorted(r.id for r in claimed) == ids
    assert leased(conn) == {i: ("w", 1) for i in ids}


async def test_rows_a_lost_claim_took_are_given_back_before_the_next_claim(db, conn):
    """A claim that landed but whose answer never arrived (its connection broke just
    after the COMMIT): its rows are ours in the table and nobody's here. The repair
    gives them back, uncounted, with their slots, and leaves held rows alone."""
    ids = insert(conn, 3)
    slots = PgSlots(db, account=ACCOUNT, provider="fusionbrain", worker="w", lease=30)
    await slots.register(4, explicit=True)
    store = PgStore(db, "w", 30)
    held = await store.claim_ready(1)  # a live task holds this one
    ask = SlotAsk(account=ACCOUNT, mine=[], bind=True, known=[])
    lost = await store.claim_ready(2, held=[held[0].id], slots=ask)
    assert len(lost) == 2 and len(ask.got) == 2
    store._handed_out.clear()  # the answer "never arrived"
    db.pickup.unsettled = True
    ask = SlotAsk(account=ACCOUNT, mine=[], bind=True, known=[])
    again = await store.claim_ready(5, held=[held[0].id], slots=ask)
    assert sorted(r.id for r in again) == sorted(r.id for r in lost)
    assert all(r.attempts == 1 for r in again)  # the lost claim's attempt was given back
    assert leased(conn) == {i: ("w", 1) for i in ids}
    # the lost claim's slots were let go: only the new claim's are held
    assert conn.execute(
        "SELECT array_agg(slot ORDER BY slot) FROM listener_slots WHERE holder = 'w'"
    ).fetchone()[0] == sorted(ask.got)


async def test_a_claim_the_server_refuses_claims_nothing_and_the_lane_goes_on(db, conn):
    ids = insert(conn, 2)
    conn.execute(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'refused for the test'; END $$"
    )
    conn.execute(
        "CREATE TRIGGER refuse BEFORE UPDATE ON images FOR EACH ROW EXECUTE FUNCTION refuse()"
    )
    store = PgStore(db, "w", 30)
    with pytest.raises(DatabaseError, match="refused for the test"):
        await store.claim_ready(5)
    assert leased(conn) == {}
    assert not db.pickup.unsettled
    conn.execute("DROP TRIGGER refuse ON images")
    assert sorted(r.id for r in await store.claim_ready(5)) == ids
    assert db.pickup.connects == 1


async def test_the_claim_lane_survives_a_server_restart(private_cluster):
    url = private_cluster.url
    settings = load_settings(env_file=None, database_url=url, db_max_open_conns=3)
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("DELETE FROM images")
        first = insert(c, 1)
    async with open_database(url, settings, application_name="fbl-test") as db:
        store = PgStore(db, "w", 30)
        assert [r.id for r in await store.claim_ready(5)] == first
        await trio.to_thread.run_sync(private_cluster.stop)
        with pytest.raises(DatabaseUnavailable):
            await store.claim_ready(5)  # down: refused, nothing sent
        await trio.to_thread.run_sync(private_cluster.start)
        with psycopg.connect(url, autocommit=True) as c:
            second = insert(c, 1)
        assert [r.id for r in await store.claim_ready(5)] == second
        with psycopg.connect(url, autocommit=True) as c:
            assert leased(c) == {first[0]: ("w", 1), second[0]: ("w", 1)}


# -- the writes lane: in turn, and around a write held up by a lock -----------------------


async def lock_row_while(url: str, row_id: int, ready: trio.Event, release: trio.Event) -> None:
    """An operator's open transaction holding one row."""

    def hold() -> None:
        with psycopg.connect(url) as c:
            c.execute("SELECT 1 FROM images WHERE id = %s FOR UPDATE", (row_id,))
            trio.from_thread.run_sync(ready.set)
            trio.from_thread.run(release.wait)

    await trio.to_thread.run_sync(hold)


def through_the_pool(db, monkeypatch) -> list[str]:
    """The names of the statements that went through a worker thread."""
    seen: list[str] = []
    run = db.run

    async def counted(fn, *args, critical=False):
        seen.append(getattr(fn, "__qualname__", "?"))
        return await run(fn, *args, critical=critical)

    monkeypatch.setattr(db, "run", counted)
    return seen


async def test_a_burst_of_writes_takes_its_turns_on_the_lane_without_a_thread(
    db, conn, monkeypatch
):
    """Every running row may write at the same moment (8 rows at API_CONCURRENCY 8, and
    more following): they queue on the writes lane rather than spill into the pool's
    worker threads and transactions. (The lane's stuck-statement rule is set aside here:
    under load a statement may take longer, which is the other test's matter.)"""
    monkeypatch.setattr("listener.pgtrio.STUCK", 60.0)
    monkeypatch.setattr(db.writes, "wait_max", 60.0)
    ids = insert(conn, 20)
    store = PgStore(db, "w", 30)
    assert len(await store.claim_ready(20)) == 20
    threads = through_the_pool(db, monkeypatch)
    async with trio.open_nursery() as nursery:
        for i in ids:
            nursery.start_soon(
                functools.partial(store.release, i, status="ReadyToGenerate", uncount=True)
            )
    assert threads == []
    assert leased(conn) == {}


async def test_a_write_queued_behind_one_held_up_by_a_lock_goes_through_the_pool(
    db, conn, database_url, monkeypatch
):
    """A write waiting for an operator's row lock holds the lane for as long as the lock
    is held; the write queued behind it waits its longest turn (WRITES_WAIT_MAX), then
    goes through the pool's critical lane and lands while the lock is still held."""
    held_up, other = insert(conn, 2)
    store = PgStore(db, "w", 30)
    assert len(await store.claim_ready(2)) == 2
    threads = through_the_pool(db, monkeypatch)
    ready, release = trio.Event(), trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lock_row_while, database_url, held_up, ready, release)
        await ready.wait()
        nursery.start_soon(
            functools.partial(store.release, held_up, status="ReadyToGenerate", uncount=True)
        )
        await trio.testing.wait_all_tasks_blocked()  # sent, and waiting for the lock
        with trio.fail_after(10):
            await store.release(other, status="ReadyToGenerate", uncount=True)
        assert leased(conn) == {held_up: ("w", 1)}  # the lock still holds the first
        assert len(threads) == 1
        release.set()
    assert leased(conn) == {}
