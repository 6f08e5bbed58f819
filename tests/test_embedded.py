"""With no database configured, the listener starts a private PostgreSQL."""

from __future__ import annotations

import re
import warnings

import psycopg

from tests.helpers import clean_env, run_listener


def test_embedded_database_starts_when_nothing_is_configured(tmp_path):
    data = tmp_path / "data"
    env = clean_env(DATA_DIR=str(data))
    result = run_listener("migrate", env=env, cwd=tmp_path, timeout=120)
    try:
        assert result.returncode == 0, result.stderr
        assert "embedded PostgreSQL" in result.stderr
        match = re.search(r"connect with: psql '([^']+)'", result.stderr)
        assert match, result.stderr
        with psycopg.connect(match.group(1)) as c:
            (count,) = c.execute("SELECT count(*) FROM listener_migrations").fetchone()
        assert count >= 3
        # the second start reuses the running server
        again = run_listener("migrate", env=env, cwd=tmp_path, timeout=60)
        assert again.returncode == 0 and "up to date" in again.stderr
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver
        pgserver.get_server(data / "pg", cleanup_mode="delete").cleanup()
