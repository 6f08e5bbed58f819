"""The LISTEN stream: one autocommit connection of its own, outside the pool, on trio.

Trio waits on the connection's socket (`trio.lowlevel.wait_readable`) and reads
notifications with libpq's non-blocking calls, so no thread is parked on it and
cancellation is immediate. Pitfalls designed against (DESIGN.md):

* NOTIFY is not durable: after every (re)connect the consumer is told (`Connected`),
  *after* LISTEN succeeded, so the sweep it runs cannot miss a row inserted meanwhile.
* Notifications arrive only between transactions: this connection is autocommit and
  never runs anything but LISTEN and a keep-alive.
* Half-open sockets: TCP keepalives, plus an application keep-alive (`SELECT 1`, sent
  without blocking and bounded in time) after `keepalive` seconds of silence.
* A lost connection is reopened with capped, jittered exponential backoff, one log line
  per attempt.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psycopg
import trio
from psycopg import pq, sql

from listener.db import connect_kwargs
from listener.errors import DatabaseUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Notification:
    channel: str
    payload: str


@dataclass(frozen=True)
class Connected:
    """LISTEN is in place; ``first`` is False after a reconnection."""

    first: bool


Event = Notification | Connected


class Backoff:
    """Capped exponential backoff with full jitter."""

    def __init__(self, initial: float = 0.1, maximum: float = 10.0) -> None:
        self.initial, self.maximum = initial, maximum
        self.attempt = 0

    def next(self) -> float:
        ceiling = min(self.maximum, self.initial * 2**self.attempt)
        self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


def _connect(conninfo: str, channels: Sequence[str], application_name: str) -> psycopg.Connection:
    conn = psycopg.Connection.connect(conninfo, autocommit=True, **connect_kwargs(application_name))
    try:
        for channel in channels:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
    except BaseException:
        conn.close()
        raise
    return conn


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class ListenStream:
    """Deliver notifications from `channels` to `on_event`, reconnecting forever."""

    def __init__(
        self,
        conninfo: str,
        channels: Sequence[str],
        on_event: Callable[[Event], None],
        *,
        keepalive: float = 30.0,
        application_name: str = "fusionbrain-listener listen",
    ) -> None:
        self.conninfo = conninfo
        self.channels = list(channels)
        self.on_event = on_event
        self.keepalive = keepalive
        self.application_name = application_name
        self.backend_pid: int | None = None
        self.reconnects = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        backoff = Backoff()
        first = True
        while True:
            try:
                conn = await trio.to_thread.run_sync(
                    _connect,
                    self.conninfo,
                    self.channels,
                    self.application_name,
                    abandon_on_cancel=True,
                )
            except psycopg.Error as exc:
                delay = backoff.next()
                log.warning(
                    "LISTEN connection failed: %s; retrying in %.1fs", _describe(exc), delay
                )
                await trio.sleep(delay)
                continue
            try:
                self.backend_pid = conn.pgconn.backend_pid
                backoff.reset()
                if first:
                    log.info("Listening on %s", ", ".join(self.channels))
                else:
                    self.reconnects += 1
                    log.info(
                        "LISTEN connection restored; listening on %s", ", ".join(self.channels)
                    )
                self.on_event(Connected(first=first))
                if first:
                    task_status.started()
                    first = False
                await self._pump(conn)
            except (
                psycopg.OperationalError,
                DatabaseUnavailable,
                trio.TooSlowError,
                OSError,
            ) as exc:
                delay = backoff.next()
                log.warning(
                    "LISTEN connection lost: %s; reconnecting in %.1fs",
                    _describe(exc)
                    if not isinstance(exc, trio.TooSlowError)
                    else "keep-alive unanswered",
                    delay,
                )
                await trio.sleep(delay)
            finally:
                self.backend_pid = None
                conn.close()

    async def _pump(self, conn: psycopg.Connection) -> None:
        pgconn = conn.pgconn
        fd = pgconn.socket
        enc = conn.info.encoding
        while True:
            with trio.move_on_after(self.keepalive) as idle:
                await trio.lowlevel.wait_readable(fd)
            if idle.cancelled_caught:
                await self._ping(pgconn, fd)
            else:
                pgconn.consume_input()
            self._check(pgconn)
            self._deliver(pgconn, enc)

    def _deliver(self, pgconn: pq.abc.PGconn, enc: str) -> None:
        batch: deque[Notification] = deque()
        while (n := pgconn.notifies()) is not None:
            batch.append(Notification(n.relname.decode(enc), n.extra.decode(enc)))
        for item in batch:
            self.on_event(item)

    @staticmethod
    def _check(pgconn: pq.abc.PGconn) -> None:
        if pgconn.status != pq.ConnStatus.OK:
            raise DatabaseUnavailable("server closed the connection")

    async def _ping(self, pgconn: pq.abc.PGconn, fd: int) -> None:
        """SELECT 1 without blocking the event loop; a silent peer is a dead peer."""
        with trio.fail_after(min(10.0, self.keepalive)):
            pgconn.send_query(b"SELECT 1")
            while pgconn.flush():
                await trio.lowlevel.wait_writable(fd)
            while True:
                pgconn.consume_input()
                self._check(pgconn)
                if not pgconn.is_busy():
                    break
                await trio.lowlevel.wait_readable(fd)
            while (res := pgconn.get_result()) is not None:
                if res.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
                    message = (res.error_message or b"keep-alive failed").decode(errors="replace")
                    raise DatabaseUnavailable(message.strip())
