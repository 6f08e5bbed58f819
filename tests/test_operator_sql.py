"""The operator's SQL surface (0010_operator.sql) against a real database."""

from __future__ import annotations

import json

import psycopg
import pytest
from psycopg import errors

STATUSES = ["ReadyToGenerate", "Generate", "ReadyToPublish", "Failed"]


def one(conn, query, params=None):
    row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def insert(conn, **values) -> int:
    values.setdefault("prompt", "a lighthouse")
    cols = ", ".join(values)
    marks = ", ".join(["%s"] * len(values))
    return one(
        conn, f"INSERT INTO images ({cols}) VALUES ({marks}) RETURNING id", list(values.values())
    )


def listen(url: str, channel: str) -> psycopg.Connection:
    c = psycopg.connect(url, autocommit=True)
    c.execute(f"LISTEN {channel}")
    return c


def drain(c: psycopg.Connection, timeout: float = 2.0) -> list[tuple[str, str]]:
    return [(n.channel, n.payload) for n in c.notifies(timeout=timeout, stop_after=1)]


# -- images_enqueue ----------------------------------------------------------------------


def test_enqueue_returns_the_id_and_keeps_overrides(conn):
    image_id = one(conn, "SELECT images_enqueue('a red fox', 'UHD', 512, 768, 'blur')")
    row = conn.execute(
        "SELECT prompt, style, width, height, negative_prompt, status FROM images WHERE id = %s",
        (image_id,),
    ).fetchone()
    assert row == ("a red fox", "UHD", 512, 768, "blur", "ReadyToGenerate")
    assert one(conn, "SELECT pg_typeof(images_enqueue('x'))::text") == "bigint"


def test_enqueue_defaults_are_null(conn):
    image_id = one(conn, "SELECT images_enqueue(prompt => 'just a prompt')")
    row = conn.execute(
        "SELECT style, width, height, negative_prompt FROM images WHERE id = %s", (image_id,)
    ).fetchone()
    assert row == (None, None, None, None)


@pytest.mark.parametrize(
    ("call", "error", "constraint"),
    [
        ("images_enqueue('   ')", errors.CheckViolation, "prompt_must_not_be_blank"),
        (
            "images_enqueue('x', width => 10)",
            errors.CheckViolation,
            "width_must_be_between_64_and_1024",
        ),
        (
            "images_enqueue('x', height => 2048)",
            errors.CheckViolation,
            "height_must_be_between_64_and_1024",
        ),
        (
            "images_enqueue('x', 'NOPE')",
            errors.ForeignKeyViolation,
            "style_must_be_listed_in_image_styles",
        ),
        ("images_enqueue(NULL)", errors.NotNullViolation, "prompt"),
    ],
)
def test_enqueue_lets_the_constraints_speak(conn, call, error, constraint):
    with pytest.raises(error) as info:
        conn.execute(f"SELECT {call}")
    assert constraint in str(info.value)
    assert one(conn, "SELECT count(*) FROM images") == 0


def test_enqueue_wakes_the_listeners(conn, database_url):
    with listen(database_url, "images_wakeup") as waiter:
        conn.execute("SELECT images_enqueue('wake up')")
        assert drain(waiter) == [("images_wakeup", "ReadyToGenerate")]


# -- images_retry / images_retry_failed ---------------------------------------------------


def failed_row(conn, **extra) -> int:
    values = dict(
        status="Failed",
        attempts=5,
        last_error="boom",
        uuid="u-1",
        censored=True,
        locked_by=None,
        generated_by="h:1:aa",
    )
    values.update(extra)
    image_id = insert(conn, **values)
    conn.execute(
        "UPDATE images SET not_before = now() + interval '1 hour',"
        " generation_started_at = now(), generation_finished_at = now() WHERE id = %s",
        (image_id,),
    )
    return image_id


def test_retry_resets_a_failed_row(conn):
    image_id = failed_row(conn, base64="aGVsbG8=")
    assert one(conn, "SELECT images_retry(%s)", (image_id,)) == image_id
    row = conn.execute(
        "SELECT status, attempts, last_error, uuid, base64, locked_by, locked_until, censored,"
        " not_before <= now(), generation_started_at, generation_finished_at FROM images"
        " WHERE id = %s",
        (image_id,),
    ).fetchone()
    assert row == ("ReadyToGenerate", 0, None, None, None, None, None, False, True, None, None)


def test_retry_wakes_the_listeners_at_once(conn, database_url):
    image_id = failed_row(conn)
    with listen(database_url, "images_wakeup") as waiter:
        conn.execute("SELECT images_retry(%s)", (image_id,))
        assert drain(waiter) == [("images_wakeup", "ReadyToGenerate")]


def test_retry_failed_wakes_once_per_call(conn, database_url):
    for _ in range(3):
        failed_row(conn)
    with listen(database_url, "images_wakeup") as waiter:
        assert one(conn, "SELECT images_retry_failed()") == 3
        assert drain(waiter) == [("images_wakeup", "ReadyToGenerate")]
        assert drain(waiter, 0.3) == []


def test_retry_unknown_id(conn):
    with pytest.raises(errors.NoDataFound, match="image 4242 does not exist"):
        conn.execute("SELECT images_retry(4242)")


@pytest.mark.parametrize("status", ["ReadyToGenerate", "Generate", "ReadyToPublish"])
def test_retry_refuses_a_row_that_is_not_failed(conn, status):
    image_id = insert(conn, status=status, uuid="u", base64="aGk=")
    with pytest.raises(errors.ObjectNotInPrerequisiteState, match=f"is {status}, not Failed"):
        conn.execute("SELECT images_retry(%s)", (image_id,))
    assert one(conn, "SELECT status FROM images WHERE id = %s", (image_id,)) == status


def test_retry_failed_since(conn):
    old = failed_row(conn)
    new = failed_row(conn)
    # the touch trigger keeps updated_at current: set it past the trigger
    conn.execute("ALTER TABLE images DISABLE TRIGGER images_touch_updated_at")
    conn.execute("UPDATE images SET updated_at = now() - interval '2 hours' WHERE id = %s", (old,))
    conn.execute("ALTER TABLE images ENABLE TRIGGER images_touch_updated_at")
    untouched = insert(conn, status="ReadyToPublish", base64="aGk=")
    assert one(conn, "SELECT images_retry_failed(now() - interval '1 hour')") == 1
    statuses = dict(conn.execute("SELECT id, status FROM images").fetchall())
    assert statuses == {old: "Failed", new: "ReadyToGenerate", untouched: "ReadyToPublish"}
    assert one(conn, "SELECT images_retry_failed()") == 1
    assert one(conn, "SELECT images_retry_failed()") == 0


# -- images_cancel ---------------------------------------------------------------------


def test_cancel_fails_a_waiting_row_and_announces_it(conn, database_url):
    image_id = one(conn, "SELECT images_enqueue('never mind')")
    with listen(database_url, "images_done") as waiter:
        assert one(conn, "SELECT images_cancel(%s)", (image_id,)) == image_id
        [(_channel, payload)] = drain(waiter)
    assert json.loads(payload) == {"id": image_id, "status": "Failed"}
    row = conn.execute(
        "SELECT status, last_error FROM images WHERE id = %s", (image_id,)
    ).fetchone()
    assert row == ("Failed", "cancelled by operator")


def test_cancel_unknown_id(conn):
    with pytest.raises(errors.NoDataFound, match="image 77 does not exist"):
        conn.execute("SELECT images_cancel(77)")


@pytest.mark.parametrize("status", ["Generate", "ReadyToPublish", "Failed"])
def test_cancel_refuses_other_states(conn, status):
    image_id = insert(conn, status=status, uuid="u", base64="aGk=")
    with pytest.raises(errors.ObjectNotInPrerequisiteState, match="only a waiting"):
        conn.execute("SELECT images_cancel(%s)", (image_id,))


def test_cancel_refuses_a_claimed_row_but_not_an_expired_claim(conn):
    image_id = insert(conn)
    conn.execute(
        "UPDATE images SET locked_by = 'h:1:ab', locked_until = now() + interval '30 s' WHERE id = %s",
        (image_id,),
    )
    with pytest.raises(errors.ObjectNotInPrerequisiteState, match="claimed by listener h:1:ab"):
        conn.execute("SELECT images_cancel(%s)", (image_id,))
    conn.execute(
        "UPDATE images SET locked_until = now() - interval '1 s' WHERE id = %s", (image_id,)
    )
    conn.execute("SELECT images_cancel(%s)", (image_id,))
    row = conn.execute("SELECT status, locked_by FROM images WHERE id = %s", (image_id,)).fetchone()
    assert row == ("Failed", None)


# -- views -----------------------------------------------------------------------------


def test_queue_lists_every_status_even_when_empty(conn):
    rows = conn.execute(
        "SELECT status, rows, held, due, delayed, oldest_age FROM images_queue"
    ).fetchall()
    assert rows == [(s, 0, 0, 0, 0, None) for s in STATUSES]


def test_queue_counts(conn):
    insert(conn)  # due
    delayed = insert(conn)
    conn.execute(
        "UPDATE images SET not_before = now() + interval '1 hour' WHERE id = %s", (delayed,)
    )
    claimed = insert(conn)
    conn.execute(
        "UPDATE images SET locked_by = 'h:1:ab', locked_until = now() + interval '1 min' WHERE id = %s",
        (claimed,),
    )
    old = insert(conn)
    conn.execute("UPDATE images SET created_at = now() - interval '10 min' WHERE id = %s", (old,))
    insert(conn, status="Generate", uuid="u", locked_by="h:1:ab")
    conn.execute(
        "UPDATE images SET locked_until = now() + interval '1 min' WHERE status = 'Generate'"
    )
    insert(conn, status="Failed")
    insert(conn, status="Failed")
    rows = {
        r[0]: r[1:]
        for r in conn.execute("SELECT status, rows, held, due, delayed FROM images_queue")
    }
    assert rows == {
        "ReadyToGenerate": (4, 1, 2, 1),
        "Generate": (1, 1, 0, 0),
        "ReadyToPublish": (0, 0, 0, 0),
        "Failed": (2, 0, 0, 0),
    }
    age = one(conn, "SELECT oldest_age FROM images_queue WHERE status = 'ReadyToGenerate'")
    assert 599 <= age.total_seconds() <= 660


def test_in_flight(conn):
    insert(conn)  # waiting, not in flight
    generating = insert(conn, status="Generate", uuid="u-9", locked_by="h:1:ab")
    conn.execute(
        "UPDATE images SET generation_started_at = now() - interval '90 s',"
        " locked_until = now() + interval '20 s' WHERE id = %s",
        (generating,),
    )
    orphan = insert(conn, status="Generate", uuid="u-8")
    claimed = insert(conn, locked_by="h:2:cd")
    conn.execute(
        "UPDATE images SET locked_until = now() + interval '20 s' WHERE id = %s", (claimed,)
    )
    rows = conn.execute(
        "SELECT id, status, uuid, owner, lease_expired, age FROM images_in_flight ORDER BY id"
    ).fetchall()
    assert [r[:5] for r in rows] == [
        (generating, "Generate", "u-9", "h:1:ab", False),
        (orphan, "Generate", "u-8", None, True),
        (claimed, "ReadyToGenerate", None, "h:2:cd", False),
    ]
    assert 89 <= rows[0][5].total_seconds() <= 120


def test_recent_failures_by_reason(conn):
    for reason in ["censored", "censored", "timeout", None]:
        insert(conn, status="Failed", last_error=reason)
    stale = insert(conn, status="Failed", last_error="ancient")
    conn.execute("ALTER TABLE images DISABLE TRIGGER images_touch_updated_at")
    conn.execute(
        "UPDATE images SET updated_at = now() - interval '2 hours' WHERE id = %s", (stale,)
    )
    conn.execute("ALTER TABLE images ENABLE TRIGGER images_touch_updated_at")
    rows = conn.execute(
        "SELECT reason, failures, latest IS NOT NULL FROM images_recent_failures"
    ).fetchall()
    assert rows[0] == ("censored", 2, True)
    assert sorted(rows[1:]) == [("(no reason recorded)", 1, True), ("timeout", 1, True)]


def test_listeners_live_and_gone(conn, database_url):
    live_worker = "host-a:1234:0a1b2c"
    gone_worker = "host-b:99:ffeedd"
    insert(conn, status="Generate", uuid="u", locked_by=live_worker)
    insert(conn, locked_by=gone_worker)
    conn.execute("UPDATE images SET locked_until = now() + interval '30 s'")
    name = f"fusionbrain-listener {live_worker}"
    with (
        psycopg.connect(database_url, application_name=name),
        psycopg.connect(database_url, application_name=f"{name} listen"),
        psycopg.connect(database_url, application_name="fusionbrain-listener start-up"),
        psycopg.connect(database_url, application_name="listener status"),
    ):
        rows = conn.execute(
            "SELECT worker, connected, connections, listening, rows_held, generating,"
            " earliest_lease_until IS NOT NULL FROM images_listeners"
        ).fetchall()
    assert rows == [
        (live_worker, True, 2, True, 1, 1, True),
        (gone_worker, False, 0, False, 1, 0, True),
    ]


def test_listeners_ignores_other_databases(conn, make_database):
    other = make_database()
    with psycopg.connect(other, application_name="fusionbrain-listener h:1:abcdef"):
        assert conn.execute("SELECT * FROM images_listeners").fetchall() == []
