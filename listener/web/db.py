"""The page's own connections: a small pool on HTTP_DATABASE_URL (default: the listener's
connection string), apart from the engine's, so nobody looking at the gallery can slow a
claim down. Nothing is opened until someone asks for a page; idle connections close after
a minute. Queries are the named blocks of sql/web.sql, run in worker threads."""

from __future__ import annotations

import functools
from typing import Any

import psycopg
import psycopg_pool
import trio
from psycopg.rows import dict_row

from listener.db import connect_kwargs, translate
from listener.errors import DatabaseError
from listener.operator import translate_error
from listener.sqlfiles import named

MAX_CONNECTIONS = 3
STATEMENT_TIMEOUT_MS = 5_000
WAIT_FOR_CONNECTION = 5.0


class WebDb:
    def __init__(self, conninfo: str, *, application_name: str, prepared: bool = True) -> None:
        def configure(conn: psycopg.Connection) -> None:
            conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
            conn.commit()
            conn.autocommit = True

        kwargs = connect_kwargs(application_name) | (
            {} if prepared else {"prepare_threshold": None}
        )
        self.pool = psycopg_pool.ConnectionPool(
            conninfo,
            min_size=0,
            max_size=MAX_CONNECTIONS,
            max_idle=60,
            kwargs=kwargs,
            configure=configure,
            timeout=WAIT_FOR_CONNECTION,
            open=False,
            name="listener-web",
        )
        self.limiter = trio.CapacityLimiter(MAX_CONNECTIONS)

    async def open(self) -> None:
        await trio.to_thread.run_sync(functools.partial(self.pool.open, wait=False))

    async def close(self) -> None:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(functools.partial(self.pool.close, timeout=5))

    async def fetch(self, name: str, params: Any = None) -> list[dict[str, Any]]:
        """Rows of a named query; operator-function refusals become NotFound / WrongState /
        UsageError (listener.operator), connection trouble DatabaseUnavailable."""
        query = named("web.sql")[name]

        def go() -> list[dict[str, Any]]:
            try:
                with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                    cur.execute(query, params)
                    return cur.fetchall() if cur.description else []
            except psycopg.Error as exc:
                raise translate_error(exc) from exc
            except (psycopg_pool.PoolTimeout, psycopg_pool.PoolClosed) as exc:
                raise translate(exc) from exc
            except UnicodeError as exc:
                raise DatabaseError(f"database error: cannot encode a value: {exc}") from exc

        return await trio.to_thread.run_sync(go, limiter=self.limiter, abandon_on_cancel=True)

    async def one(self, name: str, params: Any = None) -> dict[str, Any] | None:
        rows = await self.fetch(name, params)
        return rows[0] if rows else None
