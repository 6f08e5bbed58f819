"""Rows and providers, against the real database (migration 0018): a row is drawn by any
provider unless pinned; a generation is followed only by the provider that accepted it;
requeue and retry forget the provider (a pin is kept by retry); what the image is gets
recorded with it."""

from __future__ import annotations

import psycopg
import pytest

from listener.store import PgStore as Store  # the alias `Store` is gone (dead code)


def insert(conn, n=1, **cols) -> list[int]:
    names = ", ".join(["prompt", *cols])
    values = ", ".join(["%s"] * (1 + len(cols)))
    return [
        conn.execute(
            f"INSERT INTO images ({names}) VALUES ({values}) RETURNING id",
            (f"prompt {i}", *cols.values()),
        ).fetchone()[0]
        for i in range(n)
    ]


def column(conn, id_, name):
    return conn.execute(f"SELECT {name} FROM images WHERE id = %s", (id_,)).fetchone()[0]


async def test_a_row_pinned_to_a_provider_is_claimed_only_by_its_listeners(db, conn):
    (anyone,) = insert(conn)
    (pinned,) = insert(conn, provider="gigachat")
    assert column(conn, pinned, "provider_pinned") is True
    assert column(conn, anyone, "provider_pinned") is False
    fusionbrain = Store(db, "fb", 30, provider="fusionbrain")
    assert [r.id for r in await fusionbrain.claim_ready(10)] == [anyone]
    assert await fusionbrain.claim_ready(10) == []
    # `anyone` is held by a task of this process (Leases): its lease is not waited for
    held = [anyone]
    assert await fusionbrain.next_ready_in(held=held) is None, (
        "the pinned row is not its to wait for"
    )
    gigachat = Store(db, "gc", 30, provider="gigachat")
    assert [r.id for r in await gigachat.claim_ready(10)] == [pinned]


async def test_a_generation_is_followed_only_by_the_provider_that_accepted_it(db, conn):
    ids = insert(conn, 3)
    fusionbrain = Store(db, "fb", 30, provider="fusionbrain")
    for r in await fusionbrain.claim_ready(10):
        await fusionbrain.record_accepted(r.id, f"fb-uuid-{r.id}", keep=False)
    assert {column(conn, i, "provider") for i in ids} == {"fusionbrain"}
    # A listener switched to another provider neither asks about them nor fails them ...
    gigachat = Store(db, "gc", 30, provider="gigachat")
    claimed = await gigachat.claim_generating(10)
    assert claimed.rows == [] and claimed.next_due_in is None
    assert {column(conn, i, "status") for i in ids} == {"Generate"}
    # ... a Fusion Brain listener follows them.
    other_fb = Store(db, "fb2", 30, provider="fusionbrain")
    assert sorted(g.id for g in (await other_fb.claim_generating(10)).rows) == ids


async def test_a_generation_from_before_providers_were_recorded_is_fusion_brains(db, conn):
    """Written by an older listener or the seed service: no provider in the row."""
    (id_,) = insert(conn)
    conn.execute("UPDATE images SET status = 'Generate', uuid = 'seed-uuid' WHERE id = %s", (id_,))
    assert column(conn, id_, "provider") is None
    assert (await Store(db, "gc", 30, provider="gigachat").claim_generating(10)).rows == []
    adopted = await Store(db, "fb", 30, provider="fusionbrain").claim_generating(10)
    assert [g.handle for g in adopted.rows] == ["seed-uuid"]


async def test_the_image_is_recorded_with_its_type_and_size(db, conn):
    (id_,) = insert(conn)
    store = Store(db, "w", 30, provider="gigachat")
    (claimed,) = await store.claim_ready(1)
    await store.record_accepted(claimed.id, "file-1", keep=True)
    await store.finalise(id_, "file-1", "/9j/AAAA", image_type="jpeg", width=1024, height=768)
    got = conn.execute(
        "SELECT status, image_type, image_width, image_height, provider FROM images WHERE id = %s",
        (id_,),
    ).fetchone()
    assert got == ("ReadyToPublish", "jpeg", 1024, 768, "gigachat")
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("UPDATE images SET image_type = 'gif' WHERE id = %s", (id_,))
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO images (prompt, provider) VALUES ('x', 'Giga Chat')")


async def test_the_style_words_travel_with_the_claim(db, conn):
    conn.execute("UPDATE image_styles SET system_prompt = 'Draw as anime.' WHERE name = 'ANIME'")
    (styled,) = insert(conn, style="DEFAULT")  # "No style": no words (0019)
    (default,) = insert(conn)
    store = Store(db, "w", 30, default_style="ANIME")
    got = {r.id: r.style_prompt for r in await store.claim_ready(10)}
    assert got == {styled: None, default: "Draw as anime."}


async def test_requeue_moves_one_providers_generations_back_unpinned(db, conn):
    ids = insert(conn, 3)
    (pinned,) = insert(conn, provider="fusionbrain")
    fusionbrain = Store(db, "fb", 30, provider="fusionbrain")
    for r in await fusionbrain.claim_ready(10):
        await fusionbrain.record_accepted(r.id, f"fb-uuid-{r.id}", keep=r.id == ids[0])
    # ids[0] is still held by a live Fusion Brain listener: left to it.
    moved = conn.execute("SELECT images_requeue('fusionbrain')").fetchone()[0]
    assert moved == 3
    assert column(conn, ids[0], "status") == "Generate"
    for i in (ids[1], ids[2], pinned):
        got = conn.execute(
            "SELECT status, uuid, provider, provider_pinned, attempts, last_error "
            "FROM images WHERE id = %s",
            (i,),
        ).fetchone()
        assert got[:5] == ("ReadyToGenerate", None, None, False, 0)
        assert "new paid draw" in got[5] and f"fb-uuid-{i}" in got[5]
    # Another provider's listener draws them now.
    gigachat = Store(db, "gc", 30, provider="gigachat")
    assert sorted(r.id for r in await gigachat.claim_ready(10)) == sorted([ids[1], ids[2], pinned])


async def test_retry_forgets_who_drew_the_row_but_keeps_a_pin(db, conn):
    (free,) = insert(conn)
    (pinned,) = insert(conn, provider="fusionbrain")
    store = Store(db, "fb", 30, provider="fusionbrain")
    for r in await store.claim_ready(10):
        await store.record_accepted(r.id, f"u{r.id}", keep=True)
        await store.fail(r.id, "generation FAIL", from_status="Generate")
    conn.execute("SELECT images_retry_failed()")
    assert column(conn, free, "provider") is None
    assert column(conn, pinned, "provider") == "fusionbrain"
    assert column(conn, pinned, "provider_pinned") is True
