"""Claim order on PostgreSQL: highest priority first, oldest first within one, and one
claim in PRIORITY_FAIR_SHARE takes the oldest whatever its priority (no starvation)."""

from __future__ import annotations

from listener.config import load_settings
from listener.db import open_database
from listener.store import PRIORITY_FAIR_SHARE, PgStore


async def test_priority_first_oldest_within_and_a_fair_share_for_the_oldest(database_url, conn):
    conn.execute(
        "INSERT INTO images (prompt, priority, not_before) "
        "SELECT 'p' || g, CASE WHEN g <= 3 THEN 0 ELSE 5 END, "
        "       now() - make_interval(secs => 100 - g) FROM generate_series(1, 12) AS g"
    )
    ids = dict(conn.execute("SELECT prompt, id FROM images").fetchall())
    s = load_settings(env_file=None, database_url=database_url, db_max_open_conns=3)
    async with open_database(database_url, s, application_name="t") as db:
        store = PgStore(db, "w", 30)
        order = [(await store.claim_ready(1))[0].id for _ in range(8)]
    by_name = {v: k for k, v in ids.items()}
    names = [by_name[i] for i in order]
    assert PRIORITY_FAIR_SHARE == 4
    # p4..p12 are urgent (priority 5), p1..p3 old and ordinary: every fourth claim is
    # the oldest row of all, the others the urgent ones oldest first
    assert names == ["p4", "p5", "p6", "p1", "p7", "p8", "p9", "p2"]


async def test_the_priority_column_defaults_to_zero_and_writers_may_set_it(conn):
    conn.execute("INSERT INTO images (prompt) VALUES ('a')")
    assert conn.execute("SELECT priority FROM images").fetchone()[0] == 0


async def test_the_operator_changes_the_limit_and_the_listener_role_runs_the_budget(
    roles_applied, login_as
):
    import psycopg
    import pytest

    from listener.engine.flow import account_id
    from listener.engine.ports import SlotAsk
    from listener.slotstore import PgSlots

    account = account_id("fusionbrain", "u", "k", "s")
    with psycopg.connect(login_as("images_writer"), autocommit=True) as c:
        c.execute("INSERT INTO images (prompt) VALUES ('a'), ('b'), ('c')")
    listener_url = login_as("images_listener")
    s = load_settings(env_file=None, database_url=listener_url, db_max_open_conns=3)
    async with open_database(listener_url, s, application_name="t") as db:
        slots = PgSlots(db, account=account, provider="fusionbrain", worker="w", lease=30)
        await slots.register(2, explicit=True)
        # the claim takes and binds the slots in its own statement, as the listener role
        ask = SlotAsk(account=account, mine=[], bind=True, known=[])
        assert len(await PgStore(db, "w", 30).claim_ready(3, slots=ask)) == 2
        assert sorted(ask.got) == [0, 1]
        await slots.release([0, 1])
        await slots.renew()
    with psycopg.connect(login_as("images_operator"), autocommit=True) as c:
        assert c.execute("SELECT images_set_concurrency(5)").fetchone()[0] == account
        assert c.execute("SELECT configured, effective FROM listener_limits").fetchone() == (5, 5)
    with psycopg.connect(login_as("images_writer"), autocommit=True) as c:
        c.execute("INSERT INTO images (prompt, priority) VALUES ('urgent', 9)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT images_set_concurrency(5)")
