"""A private PostgreSQL for when no database is configured.

`pgserver` ships PostgreSQL binaries in a wheel, so a fresh clone needs no server of its
own. The data lives under DATA_DIR/pg (git-ignored) and the server keeps running after
the listener stops, so `make psql` works and the next start is instant. It listens on a
Unix socket only.
"""

from __future__ import annotations

import logging
import shlex
import warnings
from pathlib import Path

from listener.errors import DatabaseUnavailable

log = logging.getLogger(__name__)


def start_embedded(data_dir: Path) -> str:
    """Start (or reuse) the embedded server; return its connection URI."""
    pgdata = (data_dir / "pg").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs' XDG_RUNTIME_DIR notice at import
        import pgserver
    try:
        server = pgserver.get_server(pgdata, cleanup_mode=None)
    except Exception as exc:
        raise DatabaseUnavailable(
            f"could not start the embedded PostgreSQL in {pgdata}: {exc} "
            f"(see {pgdata / 'log'}); or configure DB_HOST / DATABASE_URL"
        ) from exc
    return server.get_uri()


def psql_command(uri: str) -> str:
    return f"psql {shlex.quote(uri)}"
