"""Every change the service makes to a row, as one named query each (sql/queries.sql).

All writes are fenced on the lease (`locked_by = this worker`): a listener that lost a
row (its lease expired and another listener took it) cannot overwrite the new owner's
work. Such a refused write raises `LeaseLost`, which the caller logs. Writes that carry
something the API handed us (a uuid, an image) use the database's critical lane, which
routine work can never exhaust.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from listener.db import Database
from listener.errors import LeaseLost
from listener.sqlfiles import queries

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReadyRow:
    """A claimed ReadyToGenerate row."""

    id: int
    prompt: str
    style: str | None
    width: int | None
    height: int | None
    negative_prompt: str | None
    attempts: int
    last_error: str | None
    created_at: datetime


@dataclass(frozen=True)
class Generation:
    """A generation to follow: the API's uuid is durable in the row."""

    id: int
    uuid: str
    prompt: str
    age: float  # seconds since the API accepted it, by the database's clock
    status_time: float = 0.0  # the API's hint: no point asking before this


@dataclass(frozen=True)
class Claimed:
    rows: list[Any]
    # Seconds until the next waiting row becomes due (None: nothing waits).
    next_due_in: float | None


def _seconds_until(at: datetime | None, now: datetime) -> float | None:
    return None if at is None else max(0.0, (at - now).total_seconds())


class Store:
    def __init__(self, db: Database, worker: str, lease: float) -> None:
        self.db, self.worker, self.lease = db, worker, lease

    def _params(self, **extra: Any) -> dict[str, Any]:
        return {"worker": self.worker, "lease": self.lease, **extra}

    async def claim_ready(self, limit: int, *, next_due: bool = True) -> Claimed:
        """Claim up to `limit` due rows. When fewer were due, `next_due_in` says when the
        next waiting row falls due, unless `next_due=False`: then the caller asks
        `next_ready_in` itself, after it has set the claimed rows on their way."""
        q = queries()
        params = self._params(limit=limit)

        def go(conn: psycopg.Connection) -> Claimed:
            with conn.cursor(row_factory=dict_row) as cur:
                rows = [ReadyRow(**r) for r in cur.execute(q["claim_ready"], params)]
                if len(rows) == limit or not next_due:
                    return Claimed(rows, 0.0 if len(rows) == limit else None)
                return Claimed(rows, self._next(cur, q["next_ready_at"], params))

        return await self.db.run(go, pickup=True)

    async def next_ready_in(self) -> float | None:
        """Seconds until the next waiting row falls due (None: nothing waits)."""
        q, params = queries(), self._params()

        def go(conn: psycopg.Connection) -> float | None:
            with conn.cursor(row_factory=dict_row) as cur:
                return self._next(cur, q["next_ready_at"], params)

        return await self.db.run(go, pickup=True)

    @staticmethod
    def _next(cur: psycopg.Cursor[dict[str, Any]], query: str, params: Any) -> float | None:
        nxt = cur.execute(query, params).fetchone()
        assert nxt is not None
        return _seconds_until(nxt["at"], nxt["now"])

    async def claim_generating(self, limit: int) -> Claimed:
        q = queries()
        params = self._params(limit=limit)

        def go(conn: psycopg.Connection) -> Claimed:
            with conn.cursor(row_factory=dict_row) as cur:
                rows = [Generation(**r) for r in cur.execute(q["claim_generating"], params)]
                if len(rows) == limit:
                    return Claimed(rows, 0.0)
                nxt = cur.execute(q["next_generating_at"], params).fetchone()
                return Claimed(rows, _seconds_until(nxt["at"], nxt["now"]))

        return await self.db.run(go)

    async def _fenced(self, name: str, id_: int, target: str, **params: Any) -> None:
        """Run a fenced write; a retry that finds its own write already done is fine."""
        n = await self.db.execute(name, self._params(id=id_, **params), critical=True)
        if n == 1:
            return
        state = await self.db.fetch("row_state", {"id": id_}, critical=True)
        if (
            state
            and state[0]["status"] == target
            and state[0]["locked_by"] is None
            and (params.get("uuid") is None or state[0]["uuid"] == params["uuid"])
        ):
            return
        raise LeaseLost(
            f"image ID {id_}: write refused ({name}), another listener owns the row now"
        )

    async def record_accepted(self, id_: int, uuid: str, *, keep: bool) -> None:
        """Status Generate with the uuid. Idempotent like the other fenced writes."""
        n = await self.db.execute(
            "record_accepted", self._params(id=id_, uuid=uuid, keep=keep), critical=True
        )
        if n == 1:
            return
        state = await self.db.fetch("row_state", {"id": id_}, critical=True)
        if state and state[0]["status"] == "Generate" and state[0]["uuid"] == uuid:
            return
        raise LeaseLost(
            f"image ID {id_}: uuid {uuid} not recorded, another listener owns the row now"
        )

    async def release_uncounted(self, id_: int, *, delay: float = 0.0) -> None:
        await self.db.execute("release_uncounted", self._params(id=id_, delay=delay))

    async def retry_later(self, id_: int, *, delay: float, error: str) -> None:
        await self.db.execute("retry_later", self._params(id=id_, delay=delay, error=error))

    async def fail(self, id_: int, error: str, *, from_status: str, censored: bool = False) -> None:
        await self._fenced(
            "fail", id_, "Failed", error=error, from_status=from_status, censored=censored
        )

    async def finalise(self, id_: int, uuid: str, base64: str) -> None:
        """Write the image. Idempotent: if a retried write finds the row already holding
        this generation's result, it was ours and it is durable."""
        await self._fenced("finalise", id_, "ReadyToPublish", uuid=uuid, base64=base64)

    async def heartbeat(self) -> int:
        return await self.db.execute("heartbeat", self._params())

    async def release_all(self) -> int:
        return await self.db.execute("release_all", self._params(), critical=True)

    async def style_check(self, style: str) -> tuple[bool, str]:
        (row,) = await self.db.fetch("style_exists", {"style": style})
        return bool(row["known"]), row["known_styles"] or ""
