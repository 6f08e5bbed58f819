"""images_regenerate(id) and `listener regenerate ID`: the operator's "generate this image
again", for a Generate, Failed or ReadyToPublish row, at any moment (0015_regenerate.sql,
re-created with the provider columns by 0018b_regenerate_providers.sql).
The repair with a listener following the row is in tests/test_let_go.py."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors

from tests.helpers import clean_env, run_listener
from tests.test_operator_sql import drain, insert, listen, one

ROW = "SELECT status, attempts, unknown_outcomes, last_error, uuid, base64, locked_by FROM images"


@pytest.mark.parametrize("status", ["Generate", "Failed", "ReadyToPublish"])
def test_regenerate_puts_the_row_back_with_its_reason_and_wakes_the_listeners(
    conn, database_url, status
):
    image_id = insert(
        conn,
        status=status,
        uuid="u-1",
        base64="aGk=",
        attempts=3,
        unknown_outcomes=1,
        last_error="timeout: no result",
        locked_by="h:1:ab",  # a listener follows it right now
        locked_until=None,
    )
    conn.execute(
        "UPDATE images SET locked_until = now() + interval '30 s' WHERE id = %s", (image_id,)
    )
    with listen(database_url, "images_wakeup") as waiter:
        assert one(conn, "SELECT images_regenerate(%s)", (image_id,)) == image_id
        assert drain(waiter) == [("images_wakeup", "ReadyToGenerate")]
    row = conn.execute(ROW + " WHERE id = %s", (image_id,)).fetchone()
    assert row == ("ReadyToGenerate", 0, 0, "timeout: no result", None, None, None)


def test_regenerate_forgets_the_provider_and_the_image_it_drew_but_keeps_a_pin(conn):
    """0018b: generated again, a row starts over as a retry does (images_reset_failed):
    the provider that drew it and what its image was are forgotten; a pin is kept."""
    drawn = insert(conn, status="ReadyToPublish", uuid="u-1", base64="aGk=")
    conn.execute(
        "UPDATE images SET provider = 'gigachat', image_type = 'jpeg', image_width = 1024,"
        " image_height = 768 WHERE id = %s",
        (drawn,),
    )
    pinned = insert(conn, status="Failed", provider="gigachat", last_error="HTTP 400")
    conn.execute(
        "UPDATE images SET image_type = 'png', image_width = 64, image_height = 64 WHERE id = %s",
        (pinned,),
    )
    for image_id in (drawn, pinned):
        assert one(conn, "SELECT images_regenerate(%s)", (image_id,)) == image_id
    rows = conn.execute(
        "SELECT status, provider, provider_pinned, image_type, image_width, image_height"
        " FROM images ORDER BY id"
    ).fetchall()
    assert rows == [
        ("ReadyToGenerate", None, False, None, None, None),
        ("ReadyToGenerate", "gigachat", True, None, None, None),
    ]


def test_regenerate_refuses_what_it_cannot_do(conn):
    waiting = insert(conn)
    conn.execute("INSERT INTO image_statuses VALUES ('Published')")
    published = insert(conn, status="Published", uuid="u", base64="aGk=")
    with pytest.raises(errors.NoDataFound, match="image 7777 does not exist"):
        conn.execute("SELECT images_regenerate(7777)")
    with pytest.raises(errors.ObjectNotInPrerequisiteState, match="waiting to be generated"):
        conn.execute("SELECT images_regenerate(%s)", (waiting,))
    with pytest.raises(errors.ObjectNotInPrerequisiteState, match="is Published"):
        conn.execute("SELECT images_regenerate(%s)", (published,))
    with pytest.raises(errors.NullValueNotAllowed):
        conn.execute("SELECT images_regenerate(NULL)")
    assert conn.execute("SELECT status FROM images ORDER BY id").fetchall() == [
        ("ReadyToGenerate",),
        ("Published",),
    ]


def test_an_operator_may_regenerate_without_update_on_the_table(roles_applied, login_as):
    with psycopg.connect(roles_applied, autocommit=True) as admin:
        image_id = insert(admin, status="ReadyToPublish", uuid="u", base64="aGk=")
    with psycopg.connect(login_as("images_operator"), autocommit=True) as operator:
        with pytest.raises(errors.InsufficientPrivilege):
            operator.execute("UPDATE images SET status = 'ReadyToGenerate'")
        assert one(operator, "SELECT images_regenerate(%s)", (image_id,)) == image_id
    with (
        psycopg.connect(login_as("images_writer"), autocommit=True) as writer,
        pytest.raises(errors.InsufficientPrivilege),
    ):
        writer.execute("SELECT images_regenerate(%s)", (image_id,))


def test_the_regenerate_command(conn, database_url, tmp_path):
    image_id = insert(conn, status="Failed", last_error="censored", attempts=1)
    env = clean_env(DATABASE_URL=database_url)
    done = run_listener("regenerate", str(image_id), env=env, cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, f"image {image_id}: back to ReadyToGenerate\n")
    again = run_listener("regenerate", str(image_id), env=env, cwd=tmp_path)
    assert again.returncode == 4 and "waiting to be generated already" in again.stderr
    unknown = run_listener("regenerate", "5555", env=env, cwd=tmp_path)
    assert unknown.returncode == 3 and "image 5555 does not exist" in unknown.stderr
    assert conn.execute(ROW + " WHERE id = %s", (image_id,)).fetchone()[:4] == (
        "ReadyToGenerate",
        0,
        0,
        "censored",
    )
