"""`listener export` writes only files it chose: a symlink planted where its output goes
is never followed, an existing file is never overwritten without --force, and a stored
image that does not decode is refused with a non-zero exit code."""

from __future__ import annotations

import base64
import io
import logging
import os
import struct
import zlib
from types import SimpleNamespace

import pytest
from PIL import Image

from listener.cli import main
from tests.helpers import CONFIG_PREFIXES, clean_env, run_listener


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (8, 6)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(out, format=fmt)
    return out.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG with a valid header claiming these dimensions, and no pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.fixture
def export(database_url, tmp_path, monkeypatch, capsys):
    """`listener export ...` in this process, in tmp_path."""
    for key in list(os.environ):
        if key.startswith(CONFIG_PREFIXES):
            monkeypatch.delenv(key)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def run(*args: str) -> SimpleNamespace:
        try:
            code = main(["export", *args])
        except SystemExit as exc:
            code = exc.code
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    yield run
    root.handlers[:] = handlers
    root.setLevel(level)


def ready_row(conn, data: bytes | str, prompt: str = "x") -> int:
    text = data if isinstance(data, str) else base64.b64encode(data).decode()
    (image_id,) = conn.execute("SELECT images_enqueue(%s)", (prompt,)).fetchone()
    conn.execute("UPDATE images SET status = 'Generate', uuid = 'u-1' WHERE id = %s", (image_id,))
    conn.execute(
        "UPDATE images SET status = 'ReadyToPublish', base64 = %s WHERE id = %s",
        (text, image_id),
    )
    return image_id


def test_ready_into_a_directory_with_a_planted_symlink_leaves_its_target_untouched(
    export, conn, tmp_path
):
    png = image_bytes()
    image_id = ready_row(conn, png)
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (out / f"{image_id}.png").symlink_to(victim)

    result = export("--ready", str(out))
    assert result.returncode == 0, result.stderr
    assert "1 skipped" in result.stdout
    assert victim.read_text() == "precious"
    assert (out / f"{image_id}.png").is_symlink()

    forced = export("--ready", str(out), "--force")
    assert forced.returncode == 0, forced.stderr
    assert victim.read_text() == "precious", "the link is replaced, never followed"
    assert not (out / f"{image_id}.png").is_symlink()
    assert (out / f"{image_id}.png").read_bytes() == png
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [], "no temp left"


def test_one_image_to_a_symlink_is_refused_without_force_and_replaces_the_link_with(
    export, conn, tmp_path
):
    png = image_bytes()
    image_id = ready_row(conn, png)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "out.png").symlink_to(victim)

    refused = export(str(image_id), "-o", "out.png")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == ["listener: out.png exists: --force replaces it"]
    assert victim.read_text() == "precious"

    default = tmp_path / f"image-{image_id}.png"
    default.symlink_to(victim)
    assert export(str(image_id)).returncode == 2
    assert victim.read_text() == "precious"

    assert export(str(image_id), "-o", "out.png", "--force").returncode == 0
    assert victim.read_text() == "precious"
    assert (tmp_path / "out.png").read_bytes() == png


def test_no_overwrite_without_force(export, conn, tmp_path):
    png = image_bytes()
    image_id = ready_row(conn, png)
    existing = tmp_path / "mine.png"
    existing.write_bytes(b"my own file")
    assert export(str(image_id), "-o", "mine.png").returncode == 2
    assert existing.read_bytes() == b"my own file"
    assert export(str(image_id), "-o", "mine.png", "--force").returncode == 0
    assert existing.read_bytes() == png

    folder = tmp_path / "ready"
    folder.mkdir()
    (folder / f"{image_id}.png").write_bytes(b"an older export")
    result = export("--ready", str(folder))
    assert result.returncode == 0
    assert (folder / f"{image_id}.png").read_bytes() == b"an older export"


@pytest.mark.parametrize(
    ("stored", "reason"),
    [
        # ('' cannot be stored: the table refuses a ReadyToPublish row without an image)
        (base64.b64encode(b"<!DOCTYPE html><html>502</html>").decode(), "not a PNG or JPEG"),
        (base64.b64encode(png_header(50000, 50000)).decode(), "too many pixels"),
        (base64.b64encode(png_header(5000, 64)).decode(), "outside 1 to 4096"),
        ("not base64 at all!", "not valid base64"),
    ],
)
def test_an_image_that_does_not_decode_is_refused(export, conn, tmp_path, stored, reason):
    image_id = ready_row(conn, stored)
    result = export(str(image_id))
    assert result.returncode == 4, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f"image {image_id}" in line
    assert reason in line
    assert list(tmp_path.glob("image-*")) == []

    good = ready_row(conn, image_bytes("JPEG"), "good")
    many = export("--ready", "all")
    assert many.returncode == 4
    assert "1 refused" in many.stdout
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == [f"{good}.jpg"]


def test_export_as_a_process_refuses_an_invalid_image(database_url, conn, tmp_path):
    image_id = ready_row(conn, base64.b64encode(b"\x89PNG\r\n\x1a\nbroken").decode())
    done = run_listener(
        "export", str(image_id), env=clean_env(DATABASE_URL=database_url), cwd=tmp_path
    )
    assert done.returncode == 4
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert list(tmp_path.iterdir()) == []
