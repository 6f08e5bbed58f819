"""The schema refuses impossible rows with a readable message and keeps the seed's
inserts working."""

from __future__ import annotations

import psycopg
import pytest


def insert(conn, sql, params=()):
    return conn.execute(sql, params).fetchone()


def test_seed_inserts_work(conn):
    a = insert(conn, "INSERT INTO images (prompt) VALUES ('x') RETURNING id, status")
    b = insert(
        conn,
        "INSERT INTO images (prompt, status) VALUES "
        "('a beautiful sunset over mountains', 'ReadyToGenerate') RETURNING status",
    )
    assert a[1] == "ReadyToGenerate" and b[0] == "ReadyToGenerate"
    row = conn.execute(
        "SELECT attempts, last_error, locked_by, censored, style, width FROM images WHERE id = %s",
        (a[0],),
    ).fetchone()
    assert row == (0, None, None, False, None, None)


@pytest.mark.parametrize(
    ("columns", "values", "message"),
    [
        ("prompt", ("",), "prompt_must_not_be_blank"),
        ("prompt", ("  \t\n ",), "prompt_must_not_be_blank"),
        ("prompt, status", ("x", "Done"), "status_must_be_listed_in_image_statuses"),
        ("prompt, status", ("x", "Done"), 'not present in table "image_statuses"'),
        ("prompt", ("\u00a0\u200b\ufeff",), "prompt_must_not_be_blank"),
        ("prompt, width", ("x", 5000), "width_must_be_between_64_and_1024"),
        ("prompt, width", ("x", 0), "width_must_be_between_64_and_1024"),
        ("prompt, height", ("x", 2048), "height_must_be_between_64_and_1024"),
        ("prompt, style", ("x", "NO_SUCH_STYLE"), "style_must_be_listed_in_image_styles"),
        ("prompt, status", ("x", "Generate"), "Generate_needs_a_uuid"),
        ("prompt, status", ("x", "ReadyToPublish"), "ReadyToPublish_needs_base64"),
        ("prompt, status, base64", ("x", "ReadyToPublish", ""), "ReadyToPublish_needs_base64"),
        ("prompt, negative_prompt", ("x", " "), "negative_prompt_must_not_be_blank"),
    ],
)
def test_impossible_rows_are_refused(conn, columns, values, message):
    placeholders = ", ".join(["%s"] * len(values))
    with pytest.raises(psycopg.errors.IntegrityError) as info:
        conn.execute(f"INSERT INTO images ({columns}) VALUES ({placeholders})", values)
    assert message in str(info.value)


def test_nul_byte_is_refused_by_postgresql(conn):
    with pytest.raises(psycopg.DataError) as info:
        conn.execute("INSERT INTO images (prompt) VALUES (%s)", ("a\x00b",))
    assert "NUL" in str(info.value)


def test_width_not_multiple_of_64_is_accepted(conn):
    row = insert(
        conn,
        "INSERT INTO images (prompt, width, height) VALUES ('x', 1000, 600) "
        "RETURNING width, height",
    )
    assert row == (1000, 600)


def test_new_style_can_be_added_by_operators(conn):
    conn.execute("INSERT INTO image_styles (name, title) VALUES ('PIXEL_ART', 'Pixel art')")
    insert(conn, "INSERT INTO images (prompt, style) VALUES ('x', 'PIXEL_ART') RETURNING id")


def test_updated_at_follows_changes(conn):
    (id_, before) = insert(
        conn, "INSERT INTO images (prompt) VALUES ('x') RETURNING id, updated_at"
    )
    conn.execute("UPDATE images SET last_error = 'e' WHERE id = %s", (id_,))
    (after,) = conn.execute("SELECT updated_at FROM images WHERE id = %s", (id_,)).fetchone()
    assert after > before


def test_claim_index_is_partial(conn):
    """The claim indexes hold only waiting / in-flight rows: finished rows cost nothing."""
    conn.execute(
        "INSERT INTO images (prompt, status, base64) "
        "SELECT 'done ' || g, 'ReadyToPublish', 'AA==' FROM generate_series(1, 500) g"
    )
    conn.execute("INSERT INTO images (prompt) VALUES ('waiting')")
    conn.execute("ANALYZE images")
    defs = dict(
        conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'images'"
        ).fetchall()
    )
    assert "WHERE (status = 'ReadyToGenerate'::text)" in defs["images_ready_to_generate_idx"]
    assert "WHERE (status = 'Generate'::text)" in defs["images_generate_idx"]
    (entries,) = conn.execute(
        "SELECT reltuples FROM pg_class WHERE relname = 'images_ready_to_generate_idx'"
    ).fetchone()
    assert entries <= 1
