"""docs/operations.md's cookbook, run as written: every block tagged `cookbook=NAME` is
executed (sql blocks by psql, sh blocks by bash) against a fresh database, in the order
below, and its output compared with the doc's `cookbook-output=NAME` block. The commands
are read from the doc, so the doc and the test cannot drift apart."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import REPO, clean_env

DOC = REPO / "docs" / "operations.md"
BLOCK = re.compile(r"^```(\w+) (cookbook(?:-output)?)=([\w-]+)\n(.*?)^```\s*$", re.M | re.S)
PSQL = shutil.which("psql") or "/usr/bin/psql"

pytestmark = pytest.mark.skipif(not Path(PSQL).exists(), reason="psql is not installed")


def blocks() -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    commands: dict[str, tuple[str, str]] = {}
    outputs: dict[str, str] = {}
    for lang, kind, name, body in BLOCK.findall(DOC.read_text(encoding="utf-8")):
        target = outputs if kind == "cookbook-output" else commands
        assert name not in target, f"two {kind} blocks named {name}"
        if kind == "cookbook-output":
            outputs[name] = body
        else:
            commands[name] = (lang, body)
    return commands, outputs


def normalise(text: str) -> list[str]:
    text = re.sub(r"with PID \d+", "with PID <pid>", text)
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def assert_output_matches(name: str, actual: str, documented: str) -> None:
    """Every documented line appears, in order, in what really came out (psql adds lines
    the doc leaves out, such as CONTEXT and DETAIL of an error)."""
    got = normalise(actual)
    position = 0
    for line in normalise(documented):
        try:
            position = got.index(line, position) + 1
        except ValueError:
            pytest.fail(f"cookbook {name}: {line!r} not in the output:\n{actual}")


class Cookbook:
    def __init__(self, database_url: str, cwd: Path) -> None:
        self.commands, self.outputs = blocks()
        self.ran: list[str] = []
        bindir = str(Path(sys.executable).parent)
        self.env = clean_env(
            DATABASE_URL=database_url, PATH=bindir + os.pathsep + os.environ.get("PATH", "")
        )
        self.url = database_url
        self.cwd = cwd

    def run(self, name: str) -> str:
        lang, body = self.commands[name]
        if lang == "sql":
            argv = [PSQL, "-X", self.url]
        elif lang == "sh":
            argv = ["bash", "-eo", "pipefail", "-c", body]
        else:
            raise AssertionError(f"cookbook {name}: unknown language {lang}")
        result = subprocess.run(
            argv,
            input=body if lang == "sql" else None,
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=30,
            check=False,
        )
        if lang == "sh":
            assert result.returncode == 0, f"cookbook {name} failed:\n{result.stdout}"
        self.ran.append(name)
        if name in self.outputs:
            assert_output_matches(name, result.stdout, self.outputs[name])
        return result.stdout


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 9), (10, 120, 200)).save(out, format="PNG")
    return out.getvalue()


def test_the_cookbook_runs_as_documented(database_url, conn, tmp_path):
    book = Cookbook(database_url, tmp_path)

    book.run("insert")
    rows = conn.execute(
        "SELECT id, prompt, style, width, height FROM images ORDER BY id"
    ).fetchall()
    assert rows == [
        (1, "a beautiful sunset over mountains", None, None, None),
        (2, "a lighthouse in a storm", None, None, None),
        (3, "a red fox in the snow", "UHD", 768, 512),
    ]

    book.run("refused")
    assert conn.execute("SELECT count(*) FROM images").fetchone() == (3,)

    book.run("listen")
    book.run("queue")
    book.run("failures")

    conn.execute(
        "UPDATE images SET status = 'Generate', uuid = 'u-2', locked_by = 'h:7:abc123',"
        " locked_until = now() + interval '30 s' WHERE id = 2"
    )
    out = book.run("in-flight")
    assert "u-2" in out and "h:7:abc123" in out and "(1 row)" in out
    out = book.run("listeners")
    assert "h:7:abc123" in out and "(1 row)" in out
    conn.execute(
        "UPDATE images SET status = 'ReadyToGenerate', uuid = NULL, locked_by = NULL,"
        " locked_until = NULL WHERE id = 2"
    )

    out = book.run("row")
    assert "cancelled by operator" in out

    book.run("retry")
    assert conn.execute("SELECT status FROM images WHERE id = 3").fetchone() == ("ReadyToGenerate",)
    book.run("refusals")

    image = png()
    conn.execute("UPDATE images SET status = 'Generate', uuid = 'u-1' WHERE id = 1")
    conn.execute(
        "UPDATE images SET status = 'ReadyToPublish', base64 = %s, image_type = 'png' "
        "WHERE id = 1",  # as the listener writes an image: with its media type
        (base64.b64encode(image).decode(),),
    )
    for name in ("export-cli", "export-shell", "export-psql"):
        target = tmp_path / "image-1.png"
        target.unlink(missing_ok=True)
        book.run(name)
        assert target.read_bytes() == image, name

    book.run("regenerate")
    assert conn.execute("SELECT status, base64, uuid FROM images WHERE id = 1").fetchone() == (
        "ReadyToGenerate",
        None,
        None,
    )
    conn.execute("UPDATE images SET status = 'Generate', uuid = 'u-2' WHERE id = 2")
    book.run("regenerate-by-hand")
    assert conn.execute("SELECT status, uuid FROM images WHERE id = 2").fetchone() == (
        "ReadyToGenerate",
        None,
    )

    assert sorted(book.ran) == sorted(book.commands), "a cookbook block is not tested"
    assert set(book.outputs) <= set(book.commands)


def test_the_doc_lists_every_exit_code():
    text = DOC.read_text(encoding="utf-8")
    from listener import operator
    from listener.errors import NotFound, WaitTimeout, WrongState

    for code in (
        operator.EXIT_OK,
        operator.EXIT_IMAGE_FAILED,
        operator.EXIT_USAGE,
        NotFound.exit_code,
        WrongState.exit_code,
        WaitTimeout.exit_code,
    ):
        assert re.search(rf"^\| {code} \|", text, re.M), code
