"""The operator commands as a user runs them: processes against a real database."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import subprocess
import time
from types import SimpleNamespace

import psycopg
import pytest
from PIL import Image

from listener.cli import main
from listener.operator import format_duration, image_extension, parse_duration, parse_since
from tests.helpers import CONFIG_PREFIXES, clean_env, listener_cmd, run_listener


def image_bytes(fmt: str = "PNG", size=(8, 6)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, format=fmt)
    return out.getvalue()


@pytest.fixture
def cli(database_url, tmp_path):
    env = clean_env(DATABASE_URL=database_url)

    def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return run_listener(*args, env=env, cwd=tmp_path, timeout=timeout)

    return run


@pytest.fixture
def inproc(database_url, tmp_path, monkeypatch, capsys):
    """The same command line run in this process: the error cases, without paying a
    Python start-up for each (every command is also run as a process above/below)."""
    for key in list(os.environ):
        if key.startswith(CONFIG_PREFIXES):
            monkeypatch.delenv(key)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def run(*args: str) -> SimpleNamespace:
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse
            code = exc.code
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    yield run
    root.handlers[:] = handlers
    root.setLevel(level)


def one(conn, query, params=None):
    row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def publish(conn, image_id: int, data: bytes) -> None:
    conn.execute("UPDATE images SET status = 'Generate', uuid = 'u-1' WHERE id = %s", (image_id,))
    conn.execute(
        "UPDATE images SET status = 'ReadyToPublish', base64 = %s WHERE id = %s",
        (base64.b64encode(data).decode(), image_id),
    )


def assert_one_error_line(result, code: int, text: str) -> None:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("listener: ")
    assert text in lines[0]


# -- enqueue ---------------------------------------------------------------------------


def test_enqueue_prints_the_id(cli, conn):
    result = cli("enqueue", "a snowy owl", "--style", "UHD", "--width", "512", "--height", "640")
    assert result.returncode == 0, result.stderr
    image_id = int(result.stdout.strip())
    row = conn.execute(
        "SELECT prompt, style, width, height, negative_prompt, status FROM images WHERE id = %s",
        (image_id,),
    ).fetchone()
    assert row == ("a snowy owl", "UHD", 512, 640, None, "ReadyToGenerate")


def test_enqueue_negative_prompt(cli, conn):
    result = cli("enqueue", "a cat", "--negative-prompt", "dogs")
    assert result.returncode == 0
    assert one(conn, "SELECT negative_prompt FROM images") == "dogs"


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["  "], "prompt_must_not_be_blank"),
        (["x", "--width", "5000"], "width_must_be_between_64_and_1024"),
        (["x", "--style", "NOPE"], "style_must_be_listed_in_image_styles"),
        (["x", "--timeout", "3"], "--timeout only makes sense with --wait"),
    ],
)
def test_enqueue_refuses_bad_input(inproc, conn, args, text):
    result = inproc("enqueue", *args)
    assert_one_error_line(result, 2, text)
    assert one(conn, "SELECT count(*) FROM images") == 0


def test_enqueue_bad_number_is_a_usage_error(inproc):
    result = inproc("enqueue", "x", "--width", "wide")
    assert result.returncode == 2
    assert "invalid int value" in result.stderr


def _wait_for_row(conn, proc) -> int:
    line = proc.stdout.readline()
    assert line.strip().isdigit(), line
    return int(line)


def test_enqueue_wait_until_ready(database_url, conn, tmp_path):
    png = image_bytes()
    proc = subprocess.Popen(
        listener_cmd("enqueue", "a lighthouse", "--wait", "--timeout", "60"),
        env=clean_env(DATABASE_URL=database_url),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        image_id = _wait_for_row(conn, proc)
        time.sleep(0.3)
        publish(conn, image_id, png)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out == ""
    assert f"image {image_id}: ReadyToGenerate" in err
    assert f"image {image_id}: ReadyToPublish" in err


def test_enqueue_wait_reports_failure(database_url, conn, tmp_path):
    proc = subprocess.Popen(
        listener_cmd("enqueue", "a lighthouse", "--wait"),
        env=clean_env(DATABASE_URL=database_url),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        image_id = _wait_for_row(conn, proc)
        conn.execute(
            "UPDATE images SET status = 'Failed', last_error = 'censored by the API' WHERE id = %s",
            (image_id,),
        )
        _out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert f"listener: image {image_id} failed: censored by the API" in err


def test_enqueue_wait_timeout(cli, conn):
    result = cli("enqueue", "slow", "--wait", "--timeout", "0.5")
    assert result.returncode == 5
    image_id = int(result.stdout.strip())
    assert f"listener: image {image_id} is still ReadyToGenerate after 0.5 s" in result.stderr
    assert one(conn, "SELECT status FROM images WHERE id = %s", (image_id,)) == "ReadyToGenerate"


# -- status ----------------------------------------------------------------------------


def test_status_summary(cli, conn):
    conn.execute("INSERT INTO images (prompt) VALUES ('a'), ('b')")
    conn.execute("INSERT INTO images (prompt, status, uuid) VALUES ('c', 'Generate', 'u')")
    conn.execute("INSERT INTO images (prompt, status, last_error) VALUES ('d', 'Failed', 'boom')")
    result = cli("status")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:5] == ["status", "rows", "held", "due", "delayed"]
    table = {line.split()[0]: line.split()[1:5] for line in lines[2:6]}
    assert table == {
        "ReadyToGenerate": ["2", "0", "2", "0"],
        "Generate": ["1", "0", "0", "0"],
        "ReadyToPublish": ["0", "0", "0", "0"],
        "Failed": ["1", "0", "0", "0"],
    }
    assert "in flight: 1" in result.stdout
    assert "failures in the last hour:" in result.stdout
    assert any(line.split()[0] == "1" and "boom" in line for line in lines if line.strip())
    assert "listeners: none connected" in result.stdout


def test_status_of_one_row_never_prints_the_image(cli, conn):
    png = image_bytes()
    encoded = base64.b64encode(png).decode()
    image_id = one(conn, "SELECT images_enqueue('a boat', width => 256)")
    publish(conn, image_id, png)
    result = cli("status", str(image_id))
    assert result.returncode == 0, result.stderr
    fields = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert fields["status"] == "ReadyToPublish"
    assert fields["prompt"] == "a boat"
    assert fields["width"] == "256"
    assert fields["has_image"] == f"yes ({len(png)} bytes)"
    assert "base64" not in fields
    assert encoded[:40] not in result.stdout


def test_status_unknown_id(inproc):
    assert_one_error_line(inproc("status", "999"), 3, "image 999 does not exist")


# -- export ----------------------------------------------------------------------------


def test_export_one(cli, conn, tmp_path):
    png = image_bytes()
    image_id = one(conn, "SELECT images_enqueue('x')")
    publish(conn, image_id, png)
    result = cli("export", str(image_id))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / f"image-{image_id}.png").read_bytes() == png
    assert result.stdout.strip() == f"image-{image_id}.png"


def test_export_jpeg_to_a_named_file_and_stdout(inproc, conn, database_url, tmp_path):
    jpg = image_bytes("JPEG")
    image_id = one(conn, "SELECT images_enqueue('x')")
    publish(conn, image_id, jpg)
    assert inproc("export", str(image_id)).returncode == 0
    assert (tmp_path / f"image-{image_id}.jpg").read_bytes() == jpg
    assert inproc("export", str(image_id), "-o", "out.bin").returncode == 0
    assert (tmp_path / "out.bin").read_bytes() == jpg
    raw = subprocess.run(
        listener_cmd("export", str(image_id), "-o", "-"),
        env=clean_env(DATABASE_URL=database_url),
        cwd=tmp_path,
        capture_output=True,
        check=False,
    )
    assert raw.returncode == 0
    assert raw.stdout == jpg


def test_export_ready(cli, conn, tmp_path):
    png, jpg = image_bytes(), image_bytes("JPEG")
    a = one(conn, "SELECT images_enqueue('a')")
    b = one(conn, "SELECT images_enqueue('b')")
    one(conn, "SELECT images_enqueue('still waiting')")
    publish(conn, a, png)
    publish(conn, b, jpg)
    result = cli("export", "--ready", "out/images")
    assert result.returncode == 0, result.stderr
    assert "2 image(s) written" in result.stdout
    folder = tmp_path / "out" / "images"
    assert sorted(p.name for p in folder.iterdir()) == [f"{a}.png", f"{b}.jpg"]
    assert (folder / f"{a}.png").read_bytes() == png


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (["export"], 2, "needs either an image ID or --ready DIR"),
        (["export", "1", "--ready", "d"], 2, "needs either an image ID or --ready DIR"),
        (["export", "--ready", "d", "-o", "x"], 2, "-o/--output goes with an image ID"),
        (["export", "424242"], 3, "image 424242 does not exist"),
    ],
)
def test_export_errors(inproc, args, code, text):
    assert_one_error_line(inproc(*args), code, text)


def test_export_row_without_image(inproc, conn):
    image_id = one(conn, "SELECT images_enqueue('x')")
    assert_one_error_line(
        inproc("export", str(image_id)),
        4,
        f"image {image_id} has no image (status ReadyToGenerate)",
    )


# -- retry and cancel ------------------------------------------------------------------


def test_retry_one_and_errors(cli, inproc, conn):
    image_id = one(
        conn,
        "INSERT INTO images (prompt, status, last_error, attempts) VALUES ('x', 'Failed', 'e', 3) RETURNING id",
    )
    result = cli("retry", str(image_id))
    assert result.returncode == 0, result.stderr
    row = conn.execute(
        "SELECT status, attempts, last_error FROM images WHERE id = %s", (image_id,)
    ).fetchone()
    assert row == ("ReadyToGenerate", 0, None)
    assert_one_error_line(inproc("retry", str(image_id)), 4, "is ReadyToGenerate, not Failed")
    assert_one_error_line(inproc("retry", "31337"), 3, "image 31337 does not exist")


def test_retry_failed_since(cli, inproc, conn):
    conn.execute("INSERT INTO images (prompt, status) VALUES ('a', 'Failed'), ('b', 'Failed')")
    result = cli("retry", "--failed", "--since", "30m")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2 failed image(s) back to ReadyToGenerate"
    conn.execute("INSERT INTO images (prompt, status) VALUES ('c', 'Failed')")
    result = inproc("retry", "--failed", "--since", "2999-01-01T00:00:00+00:00")
    assert result.stdout.strip() == "0 failed image(s) back to ReadyToGenerate"
    result = inproc("retry", "--failed")
    assert result.stdout.strip() == "1 failed image(s) back to ReadyToGenerate"


@pytest.mark.parametrize(
    ("args", "text"),
    [
        ([], "needs either an image ID or --failed"),
        (["1", "--failed"], "needs either an image ID or --failed"),
        (["1", "--since", "1h"], "--since goes with --failed"),
        (["--failed", "--since", "yesterday"], "is neither an ISO timestamp"),
    ],
)
def test_retry_usage_errors(inproc, args, text):
    assert_one_error_line(inproc("retry", *args), 2, text)


def test_cancel(cli, inproc, conn):
    image_id = one(conn, "SELECT images_enqueue('x')")
    result = cli("cancel", str(image_id))
    assert result.returncode == 0, result.stderr
    row = conn.execute(
        "SELECT status, last_error FROM images WHERE id = %s", (image_id,)
    ).fetchone()
    assert row == ("Failed", "cancelled by operator")
    assert_one_error_line(inproc("cancel", str(image_id)), 4, "only a waiting (ReadyToGenerate)")
    assert_one_error_line(inproc("cancel", "5555"), 3, "image 5555 does not exist")


def test_cancel_refuses_a_claimed_row(inproc, conn):
    image_id = one(conn, "SELECT images_enqueue('x')")
    conn.execute(
        "UPDATE images SET locked_by = 'h:1:ab', locked_until = now() + interval '1 min' WHERE id = %s",
        (image_id,),
    )
    assert_one_error_line(inproc("cancel", str(image_id)), 4, "claimed by listener h:1:ab")


# -- watch -----------------------------------------------------------------------------


def test_watch_prints_finished_images(database_url, conn, tmp_path):
    proc = subprocess.Popen(
        listener_cmd("watch", "--count", "2"),
        env=clean_env(DATABASE_URL=database_url),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        # watching: its connection is in pg_stat_activity and LISTENs
        while not one(
            conn,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'listener watch'"
            " AND datname = current_database() AND query ILIKE 'LISTEN%%'",
        ):
            assert time.monotonic() < deadline, "watch never started listening"
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        a = one(conn, "SELECT images_enqueue('a')")
        b = one(conn, "SELECT images_enqueue('b')")
        publish(conn, a, image_bytes())
        conn.execute("SELECT images_cancel(%s)", (b,))
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 2, out
    assert lines[0].endswith(f"image {a}: ReadyToPublish")
    assert lines[1].endswith(f"image {b}: Failed (cancelled by operator)")
    # the log's date format: 2024/03/21 15:04:05
    assert lines[0][4] == "/" and lines[0][10] == " " and lines[0][13] == ":"


def test_watch_stops_on_ctrl_c(database_url, tmp_path):
    proc = subprocess.Popen(
        listener_cmd("watch"),
        env=clean_env(DATABASE_URL=database_url),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "Watching images_done" in proc.stderr.readline()
        proc.send_signal(subprocess.signal.SIGINT)
        proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0


def test_watch_bad_count(inproc):
    result = inproc("watch", "--count", "0")
    assert result.returncode == 2


def test_not_migrated(make_database, tmp_path):
    url = make_database(migrated=False)
    result = run_listener("status", env=clean_env(DATABASE_URL=url), cwd=tmp_path)
    assert_one_error_line(result, 1, "run `listener migrate` first")


# -- the helpers -----------------------------------------------------------------------


def test_magic_bytes():
    assert image_extension(image_bytes("PNG")) == "png"
    assert image_extension(image_bytes("JPEG")) == "jpg"
    assert image_extension(b"hello") == "bin"


def test_durations():
    assert parse_duration("1h30m").total_seconds() == 5400
    assert parse_duration("45s").total_seconds() == 45
    assert parse_duration("2d").total_seconds() == 172800
    assert format_duration(parse_duration("1h30m5s")) == "1h30m"
    assert format_duration(parse_duration("0s")) == "0s"
    since = parse_since("2024-03-21T15:04:05+00:00")
    assert since.isoformat() == "2024-03-21T15:04:05+00:00"
    assert parse_since("2024-03-21").tzinfo is not None


def test_watch_payload_is_json(conn, database_url):
    # the documented contract of images_done, which watch and enqueue --wait rely on
    with psycopg.connect(database_url, autocommit=True) as l2:
        l2.execute("LISTEN images_done")
        image_id = one(conn, "SELECT images_enqueue('x')")
        conn.execute("SELECT images_cancel(%s)", (image_id,))
        notes = [n.payload for n in l2.notifies(timeout=5, stop_after=1)]
    assert [json.loads(p) for p in notes] == [{"id": image_id, "status": "Failed"}]
