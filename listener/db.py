"""The database from trio: the hot path without threads, the rest through a pool.

psycopg's async API runs only on asyncio. The statements of every row's path run from
trio itself, in autocommit, on connections of their own driven in libpq's non-blocking
mode (`listener.pgtrio`): no hand-off to a worker thread and back, no BEGIN or COMMIT:

* the `pickup` lane, one connection for the claims (always the same warm backend, with
  its prepared plans);
* the `writes` lane, the critical named statements (a uuid or a result the API just
  handed us, a release: `critical=True`), one at a time, in turn; a statement that
  finds it congested, or waits too long for its turn, goes through the pool's critical
  lane.

Everything else (sweeps, heartbeats, renewals, several statements in one transaction)
goes through `trio.to_thread.run_sync` on a `psycopg_pool.ConnectionPool`, where
routine work may hold at most ``max_size - reserve`` connections and the critical
lane (writes that matter, when the `writes` lane is congested) the other ``reserve``.

Cancellation never abandons a query half-way: a thread that is writing finishes its
transaction before the cancelled task unwinds (`abandon_on_cancel=False`); a statement
on a lane is cancelled in the server and waited for, briefly (`listener.pgtrio`). Every
statement is bounded by `statement_timeout`.

psycopg errors are translated here, once: connection problems become
`DatabaseUnavailable` (retry with backoff), anything else `DatabaseError`.
"""

from __future__ import annotations

import functools
import logging
import select
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any, LiteralString, ParamSpec, TypeVar

import psycopg
import psycopg_pool
import trio
from psycopg.rows import dict_row

from listener.config import Settings
from listener.errors import (
    DatabaseBusy,
    DatabaseError,
    DatabaseUnavailable,
    LaneBusy,
    RuleBroken,
)
from listener.sqlfiles import queries

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

STATEMENT_TIMEOUT_MS = 30_000
# The writes lane: how many statements may wait their turn (every running row's write,
# at the most concurrency allowed, with room), and the longest a statement waits before
# it goes through the pool instead (a worker thread and a transaction cost more than a
# short wait; a long one is a write held up by a lock).
WRITES_QUEUE_MAX = 32
WRITES_WAIT_MAX = 0.05
CONNECT_TIMEOUT_S = 10

# TCP keepalives notice a half-open connection (a peer that vanished) within ~1 minute.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


def connect_kwargs(application_name: str) -> dict[str, Any]:
    return {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "application_name": application_name[:63],
        **KEEPALIVES,
    }


def translate(exc: BaseException) -> DatabaseError:
    """One place where driver errors become ours. Messages are PostgreSQL's own text,
    which never contains the password."""
    if isinstance(exc, psycopg_pool.PoolTimeout | psycopg_pool.PoolClosed):
        return DatabaseUnavailable(f"database unavailable: {exc}")
    if isinstance(
        exc,
        psycopg.errors.QueryCanceled
        | psycopg.errors.LockNotAvailable
        | psycopg.errors.DeadlockDetected
        | psycopg.errors.SerializationFailure,
    ):
        return DatabaseBusy(f"database busy: {_primary(exc)}")
    if isinstance(exc, psycopg.OperationalError):
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return DatabaseUnavailable(f"database unavailable: {text}")
    if isinstance(exc, psycopg.errors.IntegrityError):
        return RuleBroken(f"database error: {_primary(exc)}")
    if isinstance(exc, psycopg.Error):
        diag = getattr(exc, "diag", None)
        text = (diag.message_primary if diag and diag.message_primary else str(exc)).strip()
        return DatabaseError(f"database error: {text}")
    return DatabaseError(f"database error: {exc}")


def _primary(exc: psycopg.Error) -> str:
    diag = getattr(exc, "diag", None)
    return (diag.message_primary if diag and diag.message_primary else str(exc)).strip()


def _check_if_spoken_to(conn: psycopg.Connection) -> None:
    """The pool's check before handing a connection out, without a round trip when it is
    healthy: an idle connection has nothing to read unless the server spoke first (a
    terminated backend or a shutting-down server sends FATAL, then closes). Only then
    the real check runs, fails, and the pool replaces the connection."""
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    if poller.poll(0):
        psycopg_pool.ConnectionPool.check_connection(conn)


class _IdleCappedPool(psycopg_pool.ConnectionPool):
    """A pool that, like Go's database/sql, keeps at most `idle_cap` idle connections:
    a connection coming back to a pool that already has that many idle is closed
    instead of kept. (psycopg_pool alone only shrinks one connection per `max_idle`.)"""

    def __init__(self, *args: Any, idle_cap: int, **kwargs: Any) -> None:
        self._idle_cap = idle_cap
        super().__init__(*args, **kwargs)

    def _add_to_pool(self, conn: Any) -> None:
        with self._lock:
            surplus = (
                not self._closed
                and not self._waiting
                and len(self._pool) >= self._idle_cap
                and self._nconns > self._min_size
            )
            if surplus:
                self._nconns -= 1
        if surplus:
            self._close_connection(conn)
            return
        super()._add_to_pool(conn)


# DB_MAX_OPEN_CONNS=0 means "no limit" in Go; a pool needs a number: this one.
UNLIMITED_OPEN = 100


class Database:
    """A pool of connections for trio code. Use `open_database` to get one.

    Nothing is opened ahead of need but one pooled connection and the pickup lane's:
    idle, a listener holds the LISTEN connection, the pickup lane and one or two pooled
    connections. The pool grows on demand up to DB_MAX_OPEN_CONNS, keeps at most
    DB_MAX_IDLE_CONNS idle, and closes what stays idle longer than DB_MAX_IDLE_TIME."""

    def __init__(
        self,
        conninfo: str,
        *,
        max_open: int,
        max_idle_conns: int,
        max_lifetime: float,
        max_idle_time: float = 30.0,
        statement_timeout: float = STATEMENT_TIMEOUT_MS / 1000,
        application_name: str,
        prepared: bool = True,
    ) -> None:
        max_size = max_open or UNLIMITED_OPEN
        self.prepared = prepared
        self.reserve = max(1, min(2, max_size // 5))
        timeout_ms = max(1, int(statement_timeout * 1000))

        def configure(conn: psycopg.Connection) -> None:
            conn.execute(f"SET statement_timeout = {timeout_ms}")
            conn.commit()

        def pool(
            name: str, size: tuple[int, int], setup, idle_cap: int
        ) -> psycopg_pool.ConnectionPool:
            return _IdleCappedPool(
                conninfo,
                idle_cap=idle_cap,
                min_size=size[0],
                max_size=size[1],
                max_lifetime=max_lifetime if max_lifetime > 0 else 10 * 365 * 86400,
                max_idle=max_idle_time,
                kwargs=connect_kwargs(application_name) | _prepared_kwargs(prepared),
                configure=setup,
                check=_check_if_spoken_to,
                timeout=CONNECT_TIMEOUT_S,
                reconnect_timeout=3600,
                open=False,
                name=name,
            )

        self.pool = pool(
            "listener", (min(1, max_idle_conns), max_size), configure, max(1, max_idle_conns)
        )
        self.routine = trio.CapacityLimiter(max_size - self.reserve)
        self.critical = trio.CapacityLimiter(self.reserve)
        from listener.pgtrio import TrioConnection  # it builds on this module

        def lane(**queue: Any) -> TrioConnection:
            return TrioConnection(
                conninfo,
                application_name=application_name,
                statement_timeout=statement_timeout,
                prepared=prepared,
                **queue,
            )

        # Opened at the first claim, and again at the first claim after it broke (a
        # failed claim is retried by the claims' own loop, after a second).
        self.pickup = lane()
        # The critical named statements (a uuid, an image, a release), one at a time,
        # queued as every running row's write may be at once; a statement that waited
        # WRITES_WAIT_MAX for its turn, or finds the lane congested (WRITES_QUEUE_MAX
        # waiting, or one statement in flight for long), goes through the pool's critical
        # lane instead, so one write waiting for a lock never holds up the others for
        # long, and the process holds at most one connection more than before.
        self.writes = lane(queue_max=WRITES_QUEUE_MAX, wait_max=WRITES_WAIT_MAX)

    async def run(self, fn: Callable[..., T], *args: Any, critical: bool = False) -> T:
        """Run ``fn(conn, *args)`` in a worker thread, in one transaction."""
        pool = self.pool

        def work() -> T:
            try:
                with pool.connection() as conn:
                    return fn(conn, *args)
            except (psycopg.Error, psycopg_pool.PoolTimeout, psycopg_pool.PoolClosed) as exc:
                raise translate(exc) from exc
            except UnicodeError as exc:  # psycopg encodes parameters outside its errors
                raise DatabaseError(f"database error: cannot encode a value: {exc}") from exc

        limiter = self.critical if critical else self.routine
        return await trio.to_thread.run_sync(work, limiter=limiter)

    # Convenience wrappers over named queries from sql/queries.sql.

    async def fetch(
        self, name: str, params: Any = None, *, critical: bool = False
    ) -> list[dict[str, Any]]:
        """A named query's rows; `critical`: on the writes lane (one statement, its own
        connections, no worker thread)."""
        query = queries()[name]
        if critical and not self.writes.congested:
            try:
                return await self.writes.fetch(query, params)
            except LaneBusy:
                pass  # waited its longest turn, nothing sent: the pool's critical lane

        def go(conn: psycopg.Connection) -> list[dict[str, Any]]:
            with conn.cursor(row_factory=dict_row) as cur:
                cur.execute(query, params)
                return cur.fetchall() if cur.description else []

        return await self.run(go, critical=critical)

    async def execute(self, name: str, params: Any = None, *, critical: bool = False) -> int:
        query = queries()[name]
        if critical and not self.writes.congested:
            try:
                return await self.writes.execute(query, params)
            except LaneBusy:
                pass  # waited its longest turn, nothing sent: the pool's critical lane

        def go(conn: psycopg.Connection) -> int:
            return conn.execute(query, params).rowcount

        return await self.run(go, critical=critical)

    async def sql(self, query: LiteralString, params: Any = None) -> list[tuple[Any, ...]]:
        """Ad-hoc statement (tests, start-up checks)."""

        def go(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

        return await self.run(go)


@asynccontextmanager
async def open_database(
    conninfo: str, settings: Settings, *, application_name: str, prepared: bool = True
):
    """Open a pool sized by the DB_* settings; close it on exit, even when cancelled.
    ``prepared=False``: no server-side prepared statements (see `use_prepared_statements`)."""
    db = Database(
        conninfo,
        max_open=settings.db_max_open_conns,
        max_idle_conns=settings.db_max_idle_conns,
        max_lifetime=settings.db_conn_max_lifetime,
        max_idle_time=settings.db_max_idle_time,
        statement_timeout=settings.db_statement_timeout,
        application_name=application_name,
        prepared=prepared,
    )
    # open(wait=False) starts the pool's own connector threads and returns at once.
    await trio.to_thread.run_sync(functools.partial(db.pool.open, wait=False))
    try:
        yield db
    finally:
        with trio.CancelScope(shield=True):
            await db.pickup.aclose()
            await db.writes.aclose()
            await trio.to_thread.run_sync(functools.partial(db.pool.close, timeout=5))


# -- prepared statements behind a transaction pooler ------------------------------------------


def _prepared_kwargs(prepared: bool) -> dict[str, Any]:
    """psycopg prepares a statement server-side after its 5th run on a connection; a
    transaction pooler hands the next transaction another server connection, where that
    statement does not exist (`prepared statement "_pg3_0" does not exist`)."""
    return {} if prepared else {"prepare_threshold": None}


def detect_transaction_pooler(conninfo: str, rounds: int = 3) -> bool:
    """True when `conninfo` leads to a pooler that shares server connections between
    clients transaction by transaction (PgBouncer or a managed pooler in transaction or
    statement mode). Blocking: run it in a thread.

    Two client connections, A and B, both open throughout, so PostgreSQL gives them two
    different backends for good when nothing is in between. Evidence of a pooler: B, in a
    transaction, runs on the backend A used a moment before (poolers reuse the server
    connection released last), or A's backend changes between two of its transactions
    while B holds one open. Direct (or a session pooler) shows neither, ever; so there is
    no false positive, and a busy pool that hides it in one round rarely does in three.
    """
    kwargs = {**connect_kwargs("fusionbrain-listener pooler probe"), "prepare_threshold": None}

    def pid(conn: psycopg.Connection) -> int:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        return int(row[0])

    with (
        psycopg.connect(conninfo, autocommit=True, **kwargs) as a,
        psycopg.connect(conninfo, autocommit=True, **kwargs) as b,
    ):
        for _ in range(rounds):
            first = pid(a)
            try:
                with b.transaction():
                    if pid(b) == first or pid(a) != first:
                        return True
            except psycopg.errors.FeatureNotSupported:
                return True  # statement pooling: transaction blocks are refused
            if pid(a) != first:
                return True
    return False


def use_prepared_statements(setting: str, conninfo: str) -> bool:
    """DB_PREPARED_STATEMENTS: on, off, or auto (off behind a transaction pooler).
    Blocking (auto opens two short connections): run it in a thread."""
    if setting in ("on", "off"):
        return setting == "on"
    if detect_transaction_pooler(conninfo):
        log.info(
            "DATABASE_URL leads to a transaction-mode connection pooler: server-side "
            "prepared statements are off (DB_PREPARED_STATEMENTS=auto)"
        )
        return False
    return True
