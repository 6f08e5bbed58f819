"""One psycopg connection driven from trio without a thread: the claims' lane.

psycopg implements every operation as a generator (`psycopg.generators`) that says when
it would block (read, write) and is resumed when the socket is ready; its blocking and
asyncio front ends are two ways of waiting. This is a third: trio's
`wait_readable` / `wait_writable` on the connection's socket, in libpq's non-blocking
mode, as the LISTEN stream does. A claim costs one round trip and no hand-off to a worker
thread and back (two task switches and a thread wake-up each way); the statement is sent
before the calling task first yields, so a claim starts from the wake-up itself.

Statements run one at a time, in autocommit (one UPDATE is atomic by itself: no BEGIN or
COMMIT round trips), with psycopg's own adaptation, row factories and prepared
statements (off behind a transaction pooler: `prepared=False`).

The outcome of a statement is lost only when its connection breaks (a server restart,
pg_terminate_backend) or a cancellation could not be settled in time. A cancelled
statement is first cancelled in the server and then waited for, for a moment, shielded:
it either failed there (nothing happened), or completed, in which case its result is
returned (the pending cancellation strikes at the caller's next checkpoint: a claim's
rows reach their tasks, which own them). Whenever the outcome is unknown, `unsettled`
says so until the owner (listener.store) has repaired what the lost statement may have
done.

Connecting happens in a worker thread (name resolution blocks), once and after a loss.
"""

from __future__ import annotations

import logging
import select
from typing import Any, LiteralString, TypeVar

import psycopg
import trio
from psycopg.rows import RowFactory, dict_row
from psycopg.waiting import Ready, Wait

from listener.db import connect_kwargs, translate
from listener.errors import DatabaseError, LaneBusy

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long a cancelled statement is waited for (after a cancel request) before its
# connection is given up and its outcome taken as unknown.
CANCEL_GRACE = 2.0
# `congested`: this many statements queued, or one in flight for this long.
QUEUE_MAX = 4
STUCK = 0.05


class TrioConnection:
    """A lazily (re)opened autocommit connection for statements run from trio."""

    def __init__(
        self,
        conninfo: str,
        *,
        application_name: str,
        statement_timeout: float = 30.0,
        prepared: bool = True,
        queue_max: int = QUEUE_MAX,
        wait_max: float | None = None,
    ) -> None:
        self.conninfo = conninfo
        # `congested` from this many queued; with `wait_max`, a statement that waited that
        # long for its turn is not sent (LaneBusy): its caller runs it elsewhere.
        self.queue_max = queue_max
        self.wait_max = wait_max
        self.application_name = application_name
        self.timeout_ms = max(1, int(statement_timeout * 1000))
        self.prepared = prepared
        self.conn: psycopg.Connection[Any] | None = None
        self._lock = trio.Lock()
        # A statement's outcome was lost: what it did (if anything) is not known.
        self.unsettled = False
        self.connects = 0  # for tests and the trace: how often it (re)connected
        self._since = 0.0  # when the statement in flight began (trio clock)
        self.closed = False

    # -- the connection --------------------------------------------------------------

    def _open(self) -> psycopg.Connection[Any]:
        kwargs = connect_kwargs(self.application_name)
        if not self.prepared:
            kwargs["prepare_threshold"] = None
        conn = psycopg.Connection.connect(self.conninfo, autocommit=True, **kwargs)
        try:
            conn.execute(f"SET statement_timeout = {self.timeout_ms}")
        except BaseException:
            conn.close()
            raise
        return conn

    async def _connection(self) -> psycopg.Connection[Any]:
        conn = self.conn
        if conn is not None and not _alive(conn):
            self._drop()  # gone while idle (a terminated backend, a restart): nothing sent
            conn = None
        if conn is None:
            if self.closed:
                raise DatabaseError("database error: the claim connection is closed")
            try:
                conn = await trio.to_thread.run_sync(self._open, abandon_on_cancel=True)
            except psycopg.Error as exc:
                raise translate(exc) from exc
            self.conn = conn
            self.connects += 1
        return conn

    def _drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()

    @property
    def congested(self) -> bool:
        """Worth going elsewhere: `queue_max` statements wait already, or the one in flight
        has taken more than STUCK seconds (waiting for a lock, say). A short queue is
        cheaper than a thread and a transaction of the pool's."""
        if not self._lock.locked():
            return False
        waiting = self._lock.statistics().tasks_waiting
        return waiting >= self.queue_max or trio.current_time() - self._since > STUCK

    def get_stats(self) -> dict[str, int]:
        """As psycopg_pool's, for the connection gauges: a pool of one."""
        size = int(self.conn is not None)
        return {"pool_size": size, "pool_available": size - int(self._lock.locked())}

    async def aclose(self) -> None:
        self.closed = True
        self._drop()

    # -- statements ------------------------------------------------------------------

    async def fetch(
        self,
        query: LiteralString | str,
        params: Any = None,
        *,
        row_factory: RowFactory[Any] = dict_row,
    ) -> list[Any]:
        """Run one statement; its rows (none for a statement without a result)."""
        await self._turn()
        try:
            cur = await self._execute(query, params, row_factory)
            return cur.fetchall() if cur.description else []
        finally:
            self._lock.release()

    async def execute(self, query: LiteralString | str, params: Any = None) -> int:
        """Run one statement; how many rows it touched."""
        await self._turn()
        try:
            return (await self._execute(query, params, dict_row)).rowcount
        finally:
            self._lock.release()

    async def _turn(self) -> None:
        """The lane, for one statement. Free: taken at once, without a trip through the
        scheduler (the statement's own wait on the socket is its checkpoint), which a
        claim on the pickup path would pay. Busy: queued, in order; with `wait_max`,
        for at most that long (LaneBusy: nothing was sent)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self._lock.acquire_nowait()
            return
        except trio.WouldBlock:
            pass
        if self.wait_max is None:
            await self._lock.acquire()
            return
        with trio.move_on_after(self.wait_max):
            await self._lock.acquire()
            return
        raise LaneBusy(f"database lane busy for {self.wait_max:g}s: the statement was not sent")

    async def _execute(
        self, query: LiteralString | str, params: Any, row_factory: RowFactory[Any]
    ) -> psycopg.Cursor[Any]:
        self._since = trio.current_time()
        conn = await self._connection()
        cur = conn.cursor(row_factory=row_factory)
        try:
            # psycopg's own execute, waited for by trio (Cursor.execute minus its blocking
            # wait): adaptation, prepared statements, errors as psycopg raises them.
            await self._drive(conn, cur._execute_gen(query, params))
        except psycopg.Error as exc:
            if conn.closed or conn.pgconn.status != psycopg.pq.ConnStatus.OK:
                # Lost with the statement in flight: it may have run to its end.
                self.unsettled = True
                self._drop()
            raise translate(exc) from exc
        except UnicodeError as exc:  # parameters psycopg cannot encode: nothing sent
            raise DatabaseError(f"database error: cannot encode a value: {exc}") from exc
        return cur

    async def _drive(self, conn: psycopg.Connection[Any], gen: Any) -> None:
        fd = conn.pgconn.socket
        try:
            state = next(gen)  # sends the statement before the first wait
            while True:
                try:
                    ready = await _wait(fd, state)
                except trio.Cancelled:
                    if await self._settle(conn, gen, fd, state):
                        return  # it completed after all: its result stands
                    raise
                state = gen.send(ready)
        except StopIteration:
            return
        except OSError as exc:
            raise psycopg.OperationalError(f"connection socket failed: {exc}") from exc

    async def _settle(self, conn: psycopg.Connection[Any], gen: Any, fd: int, state: int) -> bool:
        """The caller is cancelled with the statement in flight: cancel it in the server,
        then wait for its end, briefly and shielded. True: it completed after all (its
        result stands); False: it failed in the server (it did nothing), or its outcome
        cannot be known (the connection is dropped, `unsettled`)."""
        with trio.CancelScope(shield=True, deadline=trio.current_time() + CANCEL_GRACE):
            try:
                await trio.to_thread.run_sync(lambda: conn.cancel_safe(timeout=CANCEL_GRACE))
                while True:
                    state = gen.send(await _wait(fd, state))
            except StopIteration:
                return True
            except psycopg.Error as exc:
                if not conn.closed and conn.pgconn.status == psycopg.pq.ConnStatus.OK:
                    return False  # cancelled (or refused) in the server: nothing happened
                log.warning("Claim connection lost while cancelling a statement: %s", exc)
            except OSError as exc:
                log.warning("Claim connection lost while cancelling a statement: %s", exc)
        self.unsettled = True
        self._drop()
        return False


async def _wait(fd: int, state: int) -> int:
    if state == Wait.R:
        await trio.lowlevel.wait_readable(fd)
        return Ready.R
    if state == Wait.W:
        await trio.lowlevel.wait_writable(fd)
        return Ready.W
    # Wait.RW: a long message being flushed; the server may have spoken meanwhile.
    await trio.lowlevel.wait_writable(fd)
    return Ready.RW if _readable(fd) else Ready.W


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _alive(conn: psycopg.Connection[Any]) -> bool:
    """Still connected, as far as can be told without a round trip: an idle connection
    has nothing to read unless the server spoke first (a terminated backend or a server
    shutting down sends FATAL, then closes; nothing else is sent to an idle
    autocommit connection that does not LISTEN)."""
    if conn.closed or conn.pgconn.status != psycopg.pq.ConnStatus.OK:
        return False
    try:
        return not _readable(conn.pgconn.socket)
    except (psycopg.OperationalError, OSError):
        return False
