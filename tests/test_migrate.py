"""Migrations: ordered, recorded, idempotent, safe when run concurrently, and an
in-place upgrade of a database the seed service created."""

from __future__ import annotations

import subprocess
import sys
import threading
import zipfile

import psycopg
import pytest

from listener.errors import SchemaNotMigrated
from listener.migrate import check_migrated, migrate
from listener.sqlfiles import migrations
from tests.helpers import REPO, clean_env, run_listener

SEED_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id SERIAL PRIMARY KEY,
    prompt TEXT NOT NULL,
    uuid TEXT,
    status TEXT NOT NULL DEFAULT 'ReadyToGenerate',
    base64 TEXT,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX IF NOT EXISTS idx_images_status ON images(status);
CREATE INDEX IF NOT EXISTS idx_images_uuid ON images(uuid);
"""


def applied(url):
    with psycopg.connect(url) as c:
        return [r[0] for r in c.execute("SELECT name FROM listener_migrations ORDER BY name")]


def test_migrate_applies_all_in_order_then_is_a_no_op(make_database):
    url = make_database(migrated=False)
    names = [m.name for m in migrations()]
    assert migrate(url) == names
    assert migrate(url) == []
    assert applied(url) == names
    with psycopg.connect(url) as c:
        check_migrated(c)


def test_unmigrated_database_is_refused(make_database):
    url = make_database(migrated=False)
    with psycopg.connect(url) as c, pytest.raises(SchemaNotMigrated) as info:
        check_migrated(c)
    assert "listener migrate" in info.value.message


def test_concurrent_migrations_are_safe(make_database):
    url = make_database(migrated=False)
    results, errors = [], []

    def go():
        try:
            results.append(migrate(url))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    # Each file is applied once, by whichever run took its lock first (issue 15: the lock
    # is per migration transaction, so that it is safe through a transaction pooler).
    assert len(results) == 6
    assert sorted(name for r in results for name in r) == [m.name for m in migrations()]
    assert applied(url) == [m.name for m in migrations()]


def test_seed_database_upgrades_in_place(make_database):
    url = make_database(migrated=False)
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(SEED_SCHEMA)
        c.execute("INSERT INTO images (prompt, status) VALUES ('old sunset', 'ReadyToGenerate')")
        c.execute(
            "INSERT INTO images (prompt, uuid, status) VALUES ('in flight', 'u-1', 'Generate')"
        )
        c.execute(
            "INSERT INTO images (prompt, uuid, status, base64) "
            "VALUES ('done', 'u-0', 'ReadyToPublish', 'iVBORw0KGgo=')"
        )
        c.execute("INSERT INTO images (prompt, status) VALUES ('lost', 'Generate')")
    migrate(url)
    with psycopg.connect(url) as c:
        rows = c.execute(
            "SELECT prompt, uuid, status, base64, attempts FROM images ORDER BY id"
        ).fetchall()
    assert rows == [
        ("old sunset", None, "ReadyToGenerate", None, 0),
        ("in flight", "u-1", "Generate", None, 0),
        ("done", "u-0", "ReadyToPublish", "iVBORw0KGgo=", 0),
        # never accepted by the API (no uuid): back in the queue
        ("lost", None, "ReadyToGenerate", None, 0),
    ]


def test_migrate_command_from_any_directory(make_database, tmp_path):
    url = make_database(migrated=False)
    result = run_listener("migrate", env=clean_env(DATABASE_URL=url), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Applied migration 0001_seed_schema" in result.stderr
    again = run_listener("migrate", env=clean_env(DATABASE_URL=url), cwd=tmp_path)
    assert "up to date" in again.stderr


@pytest.mark.slow
def test_sql_ships_in_the_wheel_and_is_found_there(make_database, tmp_path):
    """An installed listener (a wheel, not the source tree) finds its migrations."""
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = dist.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for m in migrations():
        assert f"listener/_sql/migrations/{m.name}.sql" in names
    assert "listener/_sql/queries.sql" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    url = make_database(migrated=False)
    env = clean_env(DATABASE_URL=url, PYTHONPATH=str(site))
    where = subprocess.run(
        [sys.executable, "-c", "import listener.sqlfiles as s; print(s.sql_dir())"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.strip().startswith(str(site))
    result = run_listener("migrate", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert applied(url) == [m.name for m in migrations()]
