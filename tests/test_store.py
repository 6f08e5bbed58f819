"""Claims, leases and fenced writes against the real database."""

from __future__ import annotations

import pytest
import trio

from listener.errors import LeaseLost
from listener.store import PgStore as Store


def insert(conn, n=1, **cols):
    names = ", ".join(["prompt", *cols])
    values = ", ".join(["%s"] * (1 + len(cols)))
    return [
        conn.execute(
            f"INSERT INTO images ({names}) VALUES ({values}) RETURNING id",
            (f"prompt {i}", *cols.values()),
        ).fetchone()[0]
        for i in range(n)
    ]


def row(conn, id_):
    return conn.execute(
        "SELECT status, uuid, attempts, locked_by, last_error, base64 FROM images WHERE id = %s",
        (id_,),
    ).fetchone()


async def test_two_workers_never_claim_the_same_row(db, conn):
    insert(conn, 50)
    a, b = Store(db, "worker-a", 30), Store(db, "worker-b", 30)
    got: dict[str, list[int]] = {"a": [], "b": []}

    async def claim(store, key):
        while True:
            claimed = await store.claim_ready(3)
            if not claimed:
                return
            got[key] += [r.id for r in claimed]

    async with trio.open_nursery() as n:
        n.start_soon(claim, a, "a")
        n.start_soon(claim, b, "b")
    assert sorted(got["a"] + got["b"]) == sorted(set(got["a"] + got["b"]))
    assert len(got["a"]) + len(got["b"]) == 50


async def test_claim_counts_the_attempt_and_takes_the_lease(db, conn):
    (id_,) = insert(conn)
    claimed = await Store(db, "w", 30).claim_ready(10)
    assert [r.id for r in claimed] == [id_]
    assert claimed[0].attempts == 1
    assert row(conn, id_)[2:4] == (1, "w")
    # held: nobody else gets it, and the next due time is the lease's end
    other = Store(db, "x", 30)
    assert await other.claim_ready(10) == []
    assert 25 < await other.next_ready_in() <= 30


async def test_expired_lease_is_taken_over_and_the_old_owner_is_fenced_out(db, conn):
    (id_,) = insert(conn)
    old, new = Store(db, "old", 30), Store(db, "new", 30)
    await old.claim_ready(1)
    conn.execute("UPDATE images SET locked_until = now() - interval '1 second'")
    assert [r.id for r in await new.claim_ready(1)] == [id_]
    with pytest.raises(LeaseLost):
        await old.record_accepted(id_, "uuid-old", keep=True)
    await new.record_accepted(id_, "uuid-new", keep=True)
    with pytest.raises(LeaseLost):
        await old.finalise(id_, "uuid-new", "AAAA")
    with pytest.raises(LeaseLost):
        await old.fail(id_, "late", from_status="Generate")
    await new.finalise(id_, "uuid-new", "AAAA")
    assert row(conn, id_) == ("ReadyToPublish", "uuid-new", 2, None, None, "AAAA")


async def test_fenced_writes_are_idempotent(db, conn):
    (id_,) = insert(conn)
    s = Store(db, "w", 30)
    await s.claim_ready(1)
    await s.record_accepted(id_, "u1", keep=True)
    await s.record_accepted(id_, "u1", keep=True)  # a retry after an unknown commit
    await s.finalise(id_, "u1", "AAAA")
    await s.finalise(id_, "u1", "AAAA")
    assert row(conn, id_)[0] == "ReadyToPublish"


async def test_generator_only_worker_releases_the_generation(db, conn):
    (id_,) = insert(conn)
    s = Store(db, "w", 30)
    await s.claim_ready(1)
    await s.record_accepted(id_, "u1", keep=False)
    assert row(conn, id_)[:4] == ("Generate", "u1", 1, None)
    adopted = await Store(db, "p", 30).claim_generating(10)
    assert [(g.id, g.handle) for g in adopted.rows] == [(id_, "u1")]
    assert adopted.rows[0].age >= 0


async def test_release_uncounted_and_retry_later(db, conn):
    a, b = insert(conn, 2)
    s = Store(db, "w", 30)
    await s.claim_ready(2)
    await s.release(a, status="ReadyToGenerate", uncount=True)
    await s.retry_later(b, delay=60, error="HTTP 503\x00 and a NUL", unknown_outcome=True)
    assert row(conn, a)[2:5] == (0, None, None)
    assert row(conn, b)[2:5] == (1, None, "HTTP 503\\x00 and a NUL")
    assert conn.execute("SELECT unknown_outcomes FROM images WHERE id = %s", (b,)).fetchone() == (
        1,
    )
    claimed = await s.claim_ready(5)
    assert [r.id for r in claimed] == [a]  # b waits for its backoff
    assert 55 < await s.next_ready_in(held=[a]) <= 60  # a: held by its task


async def test_renewal_extends_live_rows_only_and_never_moves_updated_at(db, conn):
    ids = insert(conn, 3)
    s = Store(db, "w", 2)
    await s.claim_ready(3)
    await s.record_accepted(ids[0], "u0", keep=True)
    conn.execute("UPDATE images SET locked_until = now() + interval '1 second'")
    before = dict(conn.execute("SELECT id, updated_at FROM images").fetchall())
    # ids[0] is followed, ids[1] waits for its run; ids[2] has no live task any more
    renewed, lost = await s.renew({ids[0]: "Generate", ids[1]: "ReadyToGenerate"})
    assert (renewed, lost) == ({ids[0], ids[1]}, set())
    left = dict(conn.execute("SELECT id, locked_until - now() FROM images").fetchall())
    assert left[ids[0]].total_seconds() > 1.5 and left[ids[2]].total_seconds() <= 1
    assert dict(conn.execute("SELECT id, updated_at FROM images").fetchall()) == before
    assert await s.release_rows(ids) == 3
    assert conn.execute("SELECT count(*) FROM images WHERE locked_by IS NOT NULL").fetchone() == (
        0,
    )
    assert row(conn, ids[0])[:2] == ("Generate", "u0")  # keeps its uuid: resumed, not re-run


async def test_renewal_gives_up_a_row_an_operator_moved_and_skips_a_locked_one(
    db, conn, database_url
):
    import psycopg

    a, b = insert(conn, 2)
    s = Store(db, "w", 30)
    await s.claim_ready(2)
    await s.record_accepted(a, "ua", keep=True)
    await s.record_accepted(b, "ub", keep=True)
    conn.execute("UPDATE images SET status = 'ReadyToGenerate', uuid = NULL WHERE id = %s", (a,))
    with psycopg.connect(database_url) as operator:
        operator.execute("SELECT * FROM images WHERE id = %s FOR UPDATE", (b,))
        renewed, lost = await s.renew({a: "Generate", b: "Generate"})
    assert (renewed, lost) == (set(), {a})  # b: locked for now, neither renewed nor lost
    assert row(conn, a)[3] is None  # our lease on the moved row is dropped: it is work again


async def test_seed_rows_in_generate_are_adopted(db, conn):
    conn.execute(
        "INSERT INTO images (prompt, uuid, status) VALUES ('old', 'seed-uuid', 'Generate')"
    )
    adopted = await Store(db, "p", 30).claim_generating(10)
    assert [g.handle for g in adopted.rows] == ["seed-uuid"]


async def test_a_row_that_breaks_a_rule_is_claimed_around(db, conn, caplog):
    """The fast claim fails on such a row (its UPDATE breaks a CHECK); the store then
    claims around it with the checked claim, and the other rows move on."""
    good = insert(conn, 3)
    (bad,) = insert(conn)
    conn.execute("ALTER TABLE images DROP CONSTRAINT prompt_must_not_be_blank")
    conn.execute("UPDATE images SET prompt = '   ' WHERE id = %s", (bad,))
    conn.execute(
        "ALTER TABLE images ADD CONSTRAINT prompt_must_not_be_blank "
        "CHECK (status <> 'ReadyToGenerate' OR NOT images_prompt_is_blank(prompt)) NOT VALID"
    )
    claimed = await Store(db, "w", 30).claim_ready(10)
    assert sorted(r.id for r in claimed) == good
    assert "breaks a rule of the table" in caplog.text
    assert row(conn, bad)[3] is None  # untouched
