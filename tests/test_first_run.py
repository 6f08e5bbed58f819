"""The first ten minutes (issue 13): `.env.example` copied to `.env` unchanged and
`make run` (migrate, then `listener --with-emulator`) on a machine without psql. The
placeholders count as "nothing configured" and the log says so; one connection command
is printed, and it works with the psql the embedded server ships; the embedded server
can be asked about and stopped."""

from __future__ import annotations

import re
import shlex
import shutil
import warnings
from pathlib import Path

import psycopg
import pytest
import trio

from tests.fixtures.listener import ListenerProcess, rows, wait_until
from tests.helpers import REPO, clean_env, run_listener

# Where psql is not: the system's tools an embedded start may need, without /usr/bin.
NO_PSQL_PATH = "/usr/sbin:/sbin"


def without_psql(**extra: str) -> dict[str, str]:
    env = clean_env(PATH=NO_PSQL_PATH, **extra)
    assert shutil.which("psql", path=NO_PSQL_PATH) is None
    return env


@pytest.fixture
def first_run(tmp_path: Path):
    """A fresh checkout's working directory: .env is .env.example, unchanged."""
    shutil.copy(REPO / ".env.example", tmp_path / ".env")
    data = tmp_path / "data"
    yield tmp_path, without_psql(DATA_DIR=str(data))
    if (data / "pg").exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver
        pgserver.get_server(data / "pg", cleanup_mode="delete").cleanup()


@pytest.mark.slow
async def test_env_example_unchanged_runs_on_the_emulator_and_the_embedded_database(
    first_run,
) -> None:
    cwd, env = first_run
    migrated = run_listener("migrate", env=env, cwd=cwd, timeout=180)
    assert migrated.returncode == 0, migrated.stderr
    log = migrated.stderr
    assert "hold the .env.example placeholders and count as not set" in log
    assert "FUSION_BRAIN_API_KEY" in log and "DB_PASSWORD" in log
    assert "embedded PostgreSQL" in log and "listener embedded stop" in log
    connect = re.search(r"connect with: (.+)$", log, re.M)
    assert connect, log
    command = connect.group(1)

    service = ListenerProcess(["--with-emulator"], env, cwd, cwd / "listener.log")
    try:
        await service.wait_for_log("Listener ready", seconds=120)
        await service.wait_for_log("Try it: ")
        out = service.log
        assert "using the built-in Fusion Brain emulator" in out
        assert "placeholders and count as not set" in out
        assert "your-api-key-here" not in out
        # One connection string: "Try it" shows the one the start-up line showed.
        try_it = re.search(r"Try it: (.+?) -c \"(.+?)\"", out)
        assert try_it, out
        assert try_it.group(1) == command
        # ... and it works here, where no psql is installed.
        argv = [*shlex.split(command), "-X", "-A", "-t", "-c", try_it.group(2)]
        assert "psql" in argv[0] and argv[0] != "psql"  # the embedded server's own
        inserted = await trio.run_process(argv, env=env, capture_stdout=True, capture_stderr=True,
                                          check=False)  # fmt: skip
        assert inserted.returncode == 0, inserted.stderr
        image_id = int(inserted.stdout.split()[0])
        uri = shlex.split(command)[1]

        def done():
            return rows(uri, "SELECT status FROM images WHERE id = %s", (image_id,)) == [
                ("ReadyToPublish",)
            ]

        await wait_until(done, seconds=60, what="the first image")
        assert await service.stop() == 0
    finally:
        service.kill()

    status = run_listener("embedded", "status", env=env, cwd=cwd)
    assert status.returncode == 0 and "is running" in status.stdout, status
    assert command in status.stdout
    stop = run_listener("embedded", "stop", env=env, cwd=cwd, timeout=90)
    assert stop.returncode == 0 and "Stopped the embedded PostgreSQL" in stop.stdout, stop
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(uri, connect_timeout=3).close()
    status = run_listener("embedded", "status", env=env, cwd=cwd)
    assert status.returncode == 3 and "is not running" in status.stdout, status
    again = run_listener("embedded", "stop", env=env, cwd=cwd)
    assert again.returncode == 0 and "is not running" in again.stdout


def test_embedded_status_without_one(tmp_path) -> None:
    env = clean_env(DATA_DIR=str(tmp_path / "nothing"))
    status = run_listener("embedded", "status", env=env, cwd=tmp_path)
    assert status.returncode == 3 and "No embedded PostgreSQL" in status.stdout


def test_listener_psql_needs_no_system_psql(database_url, tmp_path) -> None:
    result = run_listener(
        "psql", "--", "-X", "-A", "-t", "-c", "SELECT 40 + 2",
        env=without_psql(DATABASE_URL=database_url), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "42"


def test_a_half_edited_env_is_refused_naming_the_placeholder(tmp_path) -> None:
    text = (REPO / ".env.example").read_text().replace("your-password-here", "s3cret")
    (tmp_path / ".env").write_text(text)
    result = run_listener("migrate", env=clean_env(), cwd=tmp_path)
    assert result.returncode == 2
    assert "DB_NAME: is the .env.example placeholder 'your-database-name'" in result.stderr
    assert "s3cret" not in result.stderr


def test_a_missing_database_is_exit_2_with_the_services_words(admin_url, tmp_path) -> None:
    params = psycopg.conninfo.conninfo_to_dict(admin_url)
    params["dbname"] = "no_such_database_for_this_test"
    env = clean_env(DATABASE_URL=psycopg.conninfo.make_conninfo(**params))
    migrate = run_listener("migrate", env=env, cwd=tmp_path)
    service = run_listener("--with-emulator", env=env, cwd=tmp_path)
    assert (migrate.returncode, service.returncode) == (2, 2)
    for result in (migrate, service):
        (last,) = [ln for ln in result.stderr.splitlines() if ln.startswith("listener: ")]
        assert last.startswith("listener: the database refused the connection: ")
        assert "does not exist" in last
