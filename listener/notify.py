"""The LISTEN stream: one autocommit connection of its own, outside the pool, on trio.

Trio waits on the connection's socket (`trio.lowlevel.wait_readable`) and reads
notifications with libpq's non-blocking calls, so no thread is parked on it and
cancellation is immediate. The pitfalls of LISTEN/NOTIFY it is built against:

* NOTIFY is not durable: after every (re)connect the consumer is told (`Connected`),
  *after* LISTEN succeeded, so the sweep it runs cannot miss a row inserted meanwhile.
* Notifications arrive only between transactions: this connection is autocommit and
  never runs anything but LISTEN and a keep-alive.
* Half-open sockets: TCP keepalives, plus an application keep-alive (`SELECT 1`, sent
  without blocking and bounded in time) after `keepalive` seconds of silence.
* A lost connection is reopened at once, then with capped, jittered exponential backoff
  (stamina) while it keeps failing, one log line per attempt.
* A connection that cannot hear: a transaction-mode pooler (PgBouncer, a
  managed pooler) runs LISTEN on whichever server connection it lends for that statement,
  and the notifications never reach us. So after every (re)connect a self-test: a unique
  token is NOTIFYed through an ordinary, short-lived connection (`notify_conninfo`, the
  main DATABASE_URL, through the pooler when there is one) and must arrive here within
  `self_test_timeout`. If it does not, the consumer is told `ListenMode("poll")` (and a
  warning says why and what to do, once): it then looks for work on a timer. The stream
  keeps its connection (keep-alives notice a pooler restart; the next connection is
  tested again), and a token that turns up late proves it can hear after all.
"""

from __future__ import annotations

import logging
import secrets
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import psycopg
import stamina
import trio
from psycopg import pq, sql

from listener.db import connect_kwargs
from listener.errors import DatabaseUnavailable
from listener.sanitize import clean

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Notification:
    channel: str
    payload: str


@dataclass(frozen=True)
class Connected:
    """LISTEN is in place; ``first`` is False after a reconnection."""

    first: bool


@dataclass(frozen=True)
class ListenMode:
    """The self-test's verdict changed. "poll": notifications do not arrive on this
    connection, look for work every POLL_INTERVAL; "listen": they do (again). Sent only on
    a change, before the `Connected` of the same connection: a stream starts in "listen"."""

    mode: Literal["listen", "poll"]


Event = Notification | Connected | ListenMode

# A channel of each connection's own for its self-test: nobody else hears the token.
SELF_TEST_PREFIX = "fbl_selftest_"
# What ends a session (and a failed connect): retried, with backoff while it repeats.
_LOST = (psycopg.Error, DatabaseUnavailable, trio.TooSlowError, OSError)
# A session that lasted this long was healthy: the next reconnect starts a fresh backoff.
HEALTHY_SESSION = 30.0
DEAF_ADVICE = (
    "LISTEN self-test failed: a notification sent through DATABASE_URL did not arrive on the "
    "LISTEN connection within %gs. Likely cause: a connection pooler in transaction mode "
    "(PgBouncer, a managed pooler) between the listener and PostgreSQL, which cannot deliver "
    "notifications. Polling for due rows instead (POLL_INTERVAL). Remedy: set "
    "LISTEN_DATABASE_URL to a direct connection to PostgreSQL (README: 'Behind PgBouncer or "
    "a managed pooler')"
)


def _connect(conninfo: str, channels: Sequence[str], application_name: str) -> psycopg.Connection:
    conn = psycopg.Connection.connect(conninfo, autocommit=True, **connect_kwargs(application_name))
    try:
        for channel in channels:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
    except BaseException:
        conn.close()
        raise
    return conn


def _send_token(conninfo: str, channel: str, token: str, application_name: str) -> None:
    kwargs = {**connect_kwargs(application_name), "prepare_threshold": None}
    with psycopg.Connection.connect(conninfo, autocommit=True, **kwargs) as conn:
        conn.execute("SELECT pg_notify(%s, %s)", (channel, token))


def mode_application_name(application_name: str, mode: str) -> str:
    """'... listen' becomes '... poll' in poll mode, so `images_listeners` shows it."""
    if mode == "poll" and application_name.endswith(" listen"):
        return application_name.removesuffix(" listen") + " poll"
    return application_name


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
        notify_conninfo: str | None = None,
        self_test_timeout: float = 2.0,
    ) -> None:
        self.conninfo = conninfo
        self.channels = list(channels)
        self.on_event = on_event
        self.keepalive = keepalive
        self.application_name = application_name
        # Where the self-test's NOTIFY goes: where the rest of the service writes.
        self.notify_conninfo = notify_conninfo or conninfo
        self.self_test_timeout = self_test_timeout
        self.backend_pid: int | None = None
        self.reconnects = 0
        self.mode: Literal["listen", "poll"] = "listen"
        self.warned_deaf = False
        self._channel = ""  # this connection's self-test channel
        self._late_token = False

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, self-test, LISTEN, deliver; reconnect for ever when the connection is
        lost (stamina: capped, jittered backoff, reset after a session that lasted)."""
        self._first = True
        while True:
            async for attempt in stamina.retry_context(
                on=_LOST,
                attempts=None,
                timeout=None,
                wait_initial=0.1,
                wait_max=10.0,
                wait_jitter=0.5,
            ):
                with attempt:
                    began = trio.current_time()
                    try:
                        conn = await self._open()
                    except psycopg.Error as exc:
                        log.warning("LISTEN connection failed: %s; retrying", _describe(exc))
                        raise
                    try:
                        await self._session(conn, task_status)
                    except _LOST as exc:
                        log.warning(
                            "LISTEN connection lost: %s; reconnecting",
                            "keep-alive unanswered"
                            if isinstance(exc, trio.TooSlowError)
                            else _describe(exc),
                        )
                        if trio.current_time() - began < HEALTHY_SESSION:
                            raise  # lost again at once: back off before the next try
                    finally:
                        self.backend_pid = None
                        conn.close()
                    break  # a session that lasted: reconnect at once, backoff reset

    async def _open(self) -> psycopg.Connection:
        self._channel = SELF_TEST_PREFIX + secrets.token_hex(8)
        return await trio.to_thread.run_sync(
            _connect,
            self.conninfo,
            [self._channel],
            self.application_name,
            abandon_on_cancel=True,
        )

    async def _session(self, conn: psycopg.Connection, task_status: trio.TaskStatus[None]) -> None:
        """Self-test, LISTEN (or poll), tell the consumer, then pump until the connection
        is lost (raises)."""
        first = self._first
        self.backend_pid = conn.pgconn.backend_pid
        verdict = await self._self_test(conn)
        heard = verdict == "heard"
        if heard:
            await self._listen(conn)
        else:
            await self._deaf(conn, unsent=verdict == "unsent")
        channels = ", ".join(self.channels)
        what = f"listening on {channels}" if heard else f"polling, not listening on {channels}"
        if first:
            log.info("%s", what[0].upper() + what[1:])
        else:
            self.reconnects += 1
            log.info("LISTEN connection restored; %s", what)
        self.on_event(Connected(first=first))
        if first:
            self._first = False
            task_status.started()
        await self._pump(conn)

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
            if self._late_token:
                self._late_token = False
                if self.mode == "poll":
                    log.info("LISTEN self-test: the token arrived late; listening after all")
                    await self._listen(conn)
                    self.on_event(Connected(first=False))  # a catch-up, as after a reconnect

    def _deliver(self, pgconn: pq.abc.PGconn, enc: str) -> None:
        batch: deque[Notification] = deque()
        while (n := pgconn.notifies()) is not None:
            channel = n.relname.decode(enc)
            if channel == self._channel:
                self._late_token = True
            elif not channel.startswith(SELF_TEST_PREFIX):
                batch.append(Notification(channel, n.extra.decode(enc)))
        for item in batch:
            self.on_event(item)

    # -- the self-test ----------------------------------------------------------------------

    async def _self_test(self, conn: psycopg.Connection) -> Literal["heard", "deaf", "unsent"]:
        """A unique token NOTIFYed through `notify_conninfo` must arrive on `conn` (which
        LISTENs on this connection's own channel) within `self_test_timeout`. "unsent":
        the NOTIFY could not be sent, so nothing is known: poll, to be safe."""
        pgconn, fd = conn.pgconn, conn.pgconn.socket
        token = self._channel.removeprefix(SELF_TEST_PREFIX)
        try:
            await trio.to_thread.run_sync(
                _send_token,
                self.notify_conninfo,
                self._channel,
                token,
                f"{self.application_name} self-test",
                abandon_on_cancel=True,
            )
        except psycopg.Error as exc:
            log.warning(
                "LISTEN self-test: could not send its notification (%s): polling to be safe",
                clean(_describe(exc)),
            )
            return "unsent"
        with trio.move_on_after(self.self_test_timeout):
            while True:
                pgconn.consume_input()
                self._check(pgconn)
                while (n := pgconn.notifies()) is not None:
                    if n.relname.decode(conn.info.encoding) == self._channel:
                        return "heard"
                await trio.lowlevel.wait_readable(fd)
        return "deaf"

    async def _listen(self, conn: psycopg.Connection) -> None:
        for channel in self.channels:
            query = sql.SQL("LISTEN {}").format(sql.Identifier(channel)).as_bytes(conn)
            await self._command(conn.pgconn, query)
        if self.mode != "listen":
            await self._name(conn.pgconn, self.application_name)
            self.mode = "listen"
            log.info("LISTEN works again: waiting for notifications, no more polling")
            self.on_event(ListenMode("listen"))

    async def _deaf(self, conn: psycopg.Connection, *, unsent: bool) -> None:
        await self._name(conn.pgconn, mode_application_name(self.application_name, "poll"))
        if unsent:
            pass  # said already, with the reason
        elif not self.warned_deaf:
            self.warned_deaf = True
            log.warning(DEAF_ADVICE, self.self_test_timeout)
        else:
            log.info("LISTEN self-test failed again: still polling")
        if self.mode != "poll":
            self.mode = "poll"
            self.on_event(ListenMode("poll"))

    async def _name(self, pgconn: pq.abc.PGconn, name: str) -> None:
        await self._command(
            pgconn, b"SELECT set_config('application_name', $1, false)", [name[:63].encode()]
        )

    @staticmethod
    def _check(pgconn: pq.abc.PGconn) -> None:
        if pgconn.status != pq.ConnStatus.OK:
            raise DatabaseUnavailable("server closed the connection")

    async def _ping(self, pgconn: pq.abc.PGconn, fd: int) -> None:
        """SELECT 1 without blocking the event loop; a silent peer is a dead peer."""
        await self._command(pgconn, b"SELECT 1", seconds=min(10.0, self.keepalive))

    async def _command(
        self,
        pgconn: pq.abc.PGconn,
        query: bytes,
        params: Sequence[bytes] | None = None,
        *,
        seconds: float = 10.0,
    ) -> None:
        """One statement without blocking the event loop, bounded in time; notifications
        that arrive meanwhile stay queued in libpq for `_deliver`."""
        fd = pgconn.socket
        with trio.fail_after(seconds):
            if params is None:
                pgconn.send_query(query)
            else:
                pgconn.send_query_params(query, params)
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
                    message = (res.error_message or b"query failed").decode(errors="replace")
                    raise DatabaseUnavailable(message.strip())
