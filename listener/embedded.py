"""A private PostgreSQL for when no database is configured.

`pgserver` ships PostgreSQL binaries in a wheel, so a fresh clone needs no server of its
own, and no psql either: its own psql is used when none is installed. The data lives
under DATA_DIR/pg (git-ignored) and the server keeps running after the listener stops,
so `make psql` works and the next start is instant; `listener embedded stop` stops it,
`listener embedded status` says whether it runs. It listens on a Unix socket only.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

import psycopg.conninfo

from listener.errors import DatabaseUnavailable, ListenerError

log = logging.getLogger(__name__)

STOP_TIMEOUT = 60.0


def _pgserver():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs' XDG_RUNTIME_DIR notice at import
        import pgserver
    return pgserver


def pgdata_of(data_dir: Path) -> Path:
    return (data_dir / "pg").resolve()


def start_embedded(data_dir: Path) -> str:
    """Start (or reuse) the embedded server; return its connection URI."""
    pgdata = pgdata_of(data_dir)
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    pgserver = _pgserver()
    try:
        server = pgserver.get_server(pgdata, cleanup_mode=None)
    except Exception as exc:
        raise DatabaseUnavailable(
            f"could not start the embedded PostgreSQL in {pgdata}: {exc} "
            f"(see {pgdata / 'log'}); or configure DB_HOST / DATABASE_URL"
        ) from exc
    return server.get_uri()


def _bundled_bin() -> Path:
    return Path(_pgserver().__file__).parent / "pginstall" / "bin"


def psql_executable() -> str:
    """The psql to run: the system's when installed, else the one pgserver ships."""
    return shutil.which("psql") or str(_bundled_bin() / "psql")


def psql_target(conninfo: str) -> str:
    """The one command line that opens psql on this database, for log lines: the psql
    that exists here and the connection string without its password (psql asks for
    it, PGPASSWORD or ~/.pgpass gives it). Every line that tells a user how to connect
    uses this, so they all show the same string."""
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    params.pop("password", None)
    target = psycopg.conninfo.make_conninfo("", **{k: v for k, v in params.items() if v})
    psql = psql_executable()
    command = "psql" if psql == shutil.which("psql") else shlex.quote(psql)
    return f"{command} {shlex.quote(target)}"


# -- status and stop ---------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddedState:
    pgdata: Path
    exists: bool
    pid: int | None = None
    uri: str | None = None

    @property
    def running(self) -> bool:
        return self.pid is not None


def embedded_state(data_dir: Path) -> EmbeddedState:
    """Whether an embedded server was made in DATA_DIR, and whether it runs (its
    postmaster.pid names a live process)."""
    pgdata = pgdata_of(data_dir)
    if not (pgdata / "PG_VERSION").exists():
        return EmbeddedState(pgdata, exists=False)
    _pgserver()  # imported once with its start-up warning silenced
    from pgserver.utils import PostmasterInfo

    try:
        info = PostmasterInfo.read_from_pgdata(pgdata)
    except (OSError, ValueError, AssertionError):
        info = None
    if info is None or not info.is_running():
        return EmbeddedState(pgdata, exists=True)
    try:
        uri = info.get_uri()
    except RuntimeError:
        uri = None
    return EmbeddedState(pgdata, exists=True, pid=info.pid, uri=uri)


def stop_embedded(data_dir: Path) -> EmbeddedState:
    """Stop the embedded server (fast shutdown: sessions are closed, nothing is lost);
    return the state it was in. Not running is not an error."""
    state = embedded_state(data_dir)
    if not state.running:
        return state
    kwargs: dict = {}
    if os.geteuid() == 0:
        kwargs["user"] = "pgserver"  # pgserver runs the server as this user under root
    try:
        subprocess.run(
            [str(_bundled_bin() / "pg_ctl"), "-D", str(state.pgdata), "-m", "fast", "-w",
             "-t", str(int(STOP_TIMEOUT)), "stop"],
            check=True,
            capture_output=True,
            text=True,
            timeout=STOP_TIMEOUT + 10,
            **kwargs,
        )  # fmt: skip
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or "").strip().splitlines()
        raise ListenerError(
            f"could not stop the embedded PostgreSQL in {state.pgdata}: "
            + (detail[-1] if detail else f"pg_ctl exited with {exc.returncode}")
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise ListenerError(
            f"the embedded PostgreSQL in {state.pgdata} did not stop within {STOP_TIMEOUT:g}s"
        ) from exc
    return state
