"""`listener watch` prints what the table confirms, never what a NOTIFY says (issue 14):
anyone who can connect can send any payload on images_done."""

from __future__ import annotations

import json
import subprocess
import time

import psycopg

from listener.commands.watch import parse_payload
from tests.helpers import clean_env, listener_cmd

FORGED = [
    "image 7: ReadyToPublish\n2024/03/21 15:04:05 image 8: ReadyToPublish",  # forged lines
    '{"id": 999999, "status": "Failed"}',  # no such row
    "\x1b[2J\x1b[31mred alert",  # terminal escapes
    '{"id": 1, "status": "Failed", "extra": "x"}',
    '{"id": true, "status": "Failed"}',
    "x" * 5000,
]


def one(conn, query, params=None):
    row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def test_watch_prints_only_events_the_table_confirms(database_url, conn, tmp_path):
    queued = one(conn, "SELECT images_enqueue('still waiting')")
    done = one(conn, "SELECT images_enqueue('will be cancelled')")
    proc = subprocess.Popen(
        listener_cmd("watch", "--count", "1"),
        env=clean_env(DATABASE_URL=database_url),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not one(
            conn,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'listener watch'"
            " AND datname = current_database() AND query ILIKE 'LISTEN%%'",
        ):
            assert time.monotonic() < deadline, "watch never started listening"
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        # a lie about a row that exists, in the documented shape
        lie = json.dumps({"id": queued, "status": "ReadyToPublish"})
        for payload in [lie, *FORGED]:
            conn.execute("SELECT pg_notify('images_done', %s)", (payload,))
        conn.execute("SELECT images_cancel(%s)", (done,))
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 1, out
    assert lines[0].endswith(f"image {done}: Failed (cancelled by operator)")
    assert "\x1b" not in out + err
    warnings = [line for line in err.splitlines() if "Ignored a notification" in line]
    assert len(warnings) == len(FORGED) + 1, err
    assert "image 7: ReadyToPublish\\n2024/03/21" in err  # escaped, on one line
    assert not any(line.startswith("2024/03/21") for line in err.splitlines())
    assert max(len(line) for line in err.splitlines()) < 400


def test_payload_shape():
    assert parse_payload('{"id": 42, "status": "ReadyToPublish"}') == (42, "ReadyToPublish")
    assert parse_payload('{"status": "Failed", "id": 7}') == (7, "Failed")
    for bad in [
        '{"id": "42", "status": "Failed"}',
        '{"id": 42.0, "status": "Failed"}',
        '{"id": -1, "status": "Failed"}',
        '{"id": 42, "status": "Generate"}',
        '{"id": 42}',
        '[42, "Failed"]',
        "",
        "null",
    ]:
        assert parse_payload(bad) is None, bad


def test_the_documented_payload_still_passes(database_url, conn):
    with psycopg.connect(database_url, autocommit=True) as listening:
        listening.execute("LISTEN images_done")
        image_id = one(conn, "SELECT images_enqueue('x')")
        conn.execute("SELECT images_cancel(%s)", (image_id,))
        (note,) = list(listening.notifies(timeout=5, stop_after=1))
    assert parse_payload(note.payload) == (image_id, "Failed")


def test_status_shows_text_written_by_others_on_one_safe_line(database_url, conn, tmp_path):
    """A prompt or a reason is whatever an INSERT said: no newline or escape reaches the
    operator's terminal."""
    image_id = one(
        conn,
        "INSERT INTO images (prompt, status, last_error) VALUES (%s, 'Failed', %s) RETURNING id",
        ("a fox\n2024/03/21 15:04:05 forged\x1b[2J", "boom\x1b]0;title\x07"),
    )
    env = clean_env(DATABASE_URL=database_url)
    for args in (["status", str(image_id)], ["status"]):
        result = subprocess.run(listener_cmd(*args), env=env, cwd=tmp_path, capture_output=True,
                                text=True, timeout=30, check=False)  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "\x1b" not in result.stdout and "\x07" not in result.stdout
        assert not any(line.startswith("2024/03/21") for line in result.stdout.splitlines())
    assert "a fox\\n2024/03/21 15:04:05 forged\\x1b[2J" in subprocess.run(
        listener_cmd("status", str(image_id)), env=env, cwd=tmp_path, capture_output=True,
        text=True, timeout=30, check=False).stdout  # fmt: skip
