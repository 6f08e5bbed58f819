"""The shared concurrency budget on a real PostgreSQL (0021_flow_control.sql): slots are
never more than the limit across listeners, a dead holder's generation keeps its slot
until it ends, the limit changes from psql in one call, and it all holds behind a
transaction-mode pooler. Slots are taken the way the listener takes them: by the claim's
own statement (PgStore.claim_ready with a SlotAsk), one per row claimed."""

from __future__ import annotations

import psycopg
import pytest
import trio

from listener.config import load_settings
from listener.db import open_database
from listener.engine.flow import Limiter, Limits, Slots, account_id
from listener.engine.ports import SlotAsk
from listener.slotstore import PgSlots
from listener.store import PgStore

pytest_plugins = ("tests.fixtures.pgbouncer",)

ACCOUNT = account_id("fusionbrain", "key", "secret")


def settings(url: str):
    return load_settings(env_file=None, database_url=url, db_max_open_conns=3, db_max_idle_conns=1)


def one(url: str, query: str, params=None):
    with psycopg.connect(url, autocommit=True) as c:
        row = c.execute(query, params).fetchone()
        return None if row is None else row[0]


def waiting(conn, n: int) -> None:
    """`n` ReadyToGenerate rows, due now."""
    conn.execute("INSERT INTO images (prompt) SELECT 'p' || g FROM generate_series(1, %s) g", (n,))


async def claim(store: PgStore, n: int, *, bind: bool = True) -> list[int]:
    """The slots a claim of up to `n` rows took (one per row it claimed)."""
    ask = SlotAsk(account=ACCOUNT, mine=[], bind=bind, known=[])
    await store.claim_ready(n, slots=ask)
    return sorted(ask.got)


async def claim_through(slots: Slots, store: PgStore, n: int) -> list[int]:
    """A claim of up to `n` rows as the engine makes it: asked of `slots`, told back."""
    ask = slots.ask(n)
    await store.claim_ready(n, slots=ask)
    await slots.claimed(ask, n)
    return sorted(ask.got)


async def test_slots_are_never_more_than_the_limit_across_listeners(database_url, conn):
    waiting(conn, 20)
    async with open_database(database_url, settings(database_url), application_name="t") as db:
        budgets = [
            PgSlots(db, account=ACCOUNT, provider="fusionbrain", worker=f"w{i}", lease=30)
            for i in range(3)
        ]
        stores = [PgStore(db, f"w{i}", 30) for i in range(3)]
        limits = await budgets[0].register(2, explicit=True)
        assert limits == Limits(2, 2, None, "configured", "setting")
        await budgets[1].register(8, explicit=False)  # the default does not override
        assert (await budgets[1].read()).configured == 2
        got = [await claim(s, 2) for s in stores]
        assert got == [[0, 1], [], []]
        # ... claimed concurrently, many times over: never more than two holders at once
        await budgets[0].release([0, 1])

        async def grab(store, out):
            out.extend(await claim(store, 1))

        for _ in range(5):
            out: list[int] = []
            async with trio.open_nursery() as n:
                for s in stores:
                    n.start_soon(grab, s, out)
            assert len(out) <= 2 and len(set(out)) == len(out)
            held = one(database_url, "SELECT count(*) FROM listener_slots WHERE holder IS NOT NULL")
            assert held == len(out)
            for b in budgets:
                await b.release([0, 1])


async def test_a_dead_holder_keeps_its_generations_slot_until_the_generation_ends(
    database_url, conn
):
    waiting(conn, 4)
    async with open_database(database_url, settings(database_url), application_name="t") as db:
        await PgSlots(db, account=ACCOUNT, provider="fusionbrain", worker="w", lease=30).register(
            2, explicit=True
        )
        alive_slots = PgSlots(db, account=ACCOUNT, provider="fusionbrain", worker="alive", lease=30)
        dead, alive = PgStore(db, "dead", 0.3), PgStore(db, "alive", 30)
        ask = SlotAsk(account=ACCOUNT, mine=[], bind=True, known=[])
        rows = await dead.claim_ready(2, slots=ask)
        assert sorted(ask.got) == [0, 1]
        gen_id = dict(zip(ask.got, (r.id for r in rows), strict=True))[0]
        conn.execute("UPDATE images SET status = 'Generate', uuid = 'u' WHERE id = %s", (gen_id,))
        assert await claim(alive, 2) == []
        await trio.sleep(0.5)  # the dead listener's lease runs out (no heartbeat)
        # the slot of a row that never started generating frees; the generating one not
        assert await claim(alive, 2) == [1]
        # whoever adopts the generation takes its slot over
        assert await alive_slots.inherit(gen_id) == 0
        await alive_slots.release([0])
        assert await claim(alive, 1) == []  # still generating: still taken
        conn.execute(
            "UPDATE images SET status = 'ReadyToPublish', base64 = 'x' WHERE id = %s", (gen_id,)
        )
        assert await claim(alive, 1) == [0]


async def test_the_limit_changes_from_psql_in_one_call(database_url, conn):
    waiting(conn, 8)
    async with open_database(database_url, settings(database_url), application_name="t") as db:
        slots = PgSlots(db, account=ACCOUNT, provider="fusionbrain", worker="w", lease=30)
        store = PgStore(db, "w", 30)
        await slots.register(1, explicit=True)
        assert await claim(store, 3) == [0]
        assert conn.execute("SELECT images_set_concurrency(3)").fetchone()[0] == ACCOUNT
        assert await claim(store, 3) == [1, 2]  # at the next claim
        row = conn.execute(
            "SELECT configured, effective, reason, set_by FROM listener_limits"
        ).fetchone()
        assert row == (3, 3, "set by operator", "operator")
        conn.execute("SELECT images_set_concurrency(1, %s)", (ACCOUNT,))
        await slots.release([0, 1, 2])
        assert await claim(store, 3) == [0]
        # a restart with the default keeps the operator's value; an explicit setting wins
        assert (await slots.register(8, explicit=False)).configured == 1
        assert (await slots.register(2, explicit=True)).configured == 2
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            conn.execute("SELECT images_set_concurrency(0)")
        with pytest.raises(psycopg.errors.NoDataFound):
            conn.execute("SELECT images_set_concurrency(2, 'fusionbrain:' || repeat('0', 32))")


async def test_the_limiter_lowers_once_per_burst_and_creeps_back(database_url, conn):
    async with open_database(database_url, settings(database_url), application_name="t") as db:
        a = PgSlots(db, account=ACCOUNT, provider="fusionbrain", worker="a", lease=30)
        b = PgSlots(db, account=ACCOUNT, provider="fusionbrain", worker="b", lease=30)
        limits = await a.register(4, explicit=True)
        la, lb = Limiter(a, limits), Limiter(b, limits)
        conn.execute("UPDATE listener_limits SET changed_at = now() - interval '1 minute'")
        assert await la.refused("429") is True
        assert await lb.refused("429") is False  # the same burst, seen by another listener
        assert lb.effective == 2 and la.effective == 2
        row = conn.execute("SELECT effective, ceiling, reason FROM listener_limits").fetchone()
        assert row == (2, 4, "lowered from 4 after 429")
        for _ in range(2):
            await la.succeeded()
        assert la.effective == 3  # one window of successes: one step up
        for _ in range(3):
            await la.succeeded()
        assert la.effective == 3  # next to the refused value: much slower
        for _ in range(150):
            await la.succeeded()
        assert la.effective == 4 and la.reason.startswith("raised from 3")


async def test_slots_behind_a_transaction_mode_pooler(pgbouncer, database_url, conn):
    waiting(conn, 3)
    url = pgbouncer.url_for(database_url)
    s = load_settings(env_file=None, database_url=url, db_max_open_conns=3, db_max_idle_conns=1)
    async with open_database(url, s, application_name="t", prepared=False) as db:
        budgets = [
            PgSlots(db, account=ACCOUNT, provider="fusionbrain", worker=f"w{i}", lease=30)
            for i in range(2)
        ]
        stores = [PgStore(db, f"w{i}", 30) for i in range(2)]
        await budgets[0].register(1, explicit=True)
        assert await claim(stores[0], 1) == [0]
        pgbouncer.admin("RECONNECT")  # the server connections are recycled
        assert await claim(stores[1], 1) == []
        await budgets[0].renew()
        assert await claim(stores[1], 1) == []
        await budgets[0].release([0])
        assert await claim(stores[1], 1) == [0]


async def test_slots_component_reuses_its_own_and_gives_back_at_exit(database_url, conn):
    waiting(conn, 4)
    async with open_database(database_url, settings(database_url), application_name="t") as db:
        table = PgSlots(db, account=ACCOUNT, provider="fusionbrain", worker="w", lease=30)
        slots = Slots(table, kind="generation", limit=3, explicit=True)
        store = PgStore(db, "w", 30)
        async with trio.open_nursery() as n:
            await n.start(slots.serve)
            assert await claim_through(slots, store, 2) == [0, 1]
            slots.give_back([1])
            # our own first, though slot 2 is free in the table
            assert await claim_through(slots, store, 1) == [1]
            n.cancel_scope.cancel()
        assert (
            conn.execute("SELECT count(*) FROM listener_slots WHERE holder IS NOT NULL").fetchone()[
                0
            ]
            == 0
        )


async def test_an_account_row_deleted_by_hand_is_made_again(database_url, conn):
    waiting(conn, 2)
    async with open_database(database_url, settings(database_url), application_name="t") as db:
        table = PgSlots(db, account=ACCOUNT, provider="fusionbrain", worker="w", lease=30)
        slots = Slots(table, kind="generation", limit=2, explicit=False)
        async with trio.open_nursery() as n:
            await n.start(slots.serve)
            conn.execute("DELETE FROM listener_limits")
            with trio.fail_after(5):
                while not conn.execute(  # noqa: ASYNC110 - a row of another session
                    "SELECT count(*) FROM listener_slots"
                ).fetchone()[0]:
                    await trio.sleep(0.1)
            assert await claim_through(slots, PgStore(db, "w", 30), 2) == [0, 1]
            n.cancel_scope.cancel()
