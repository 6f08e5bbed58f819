"""The shared concurrency budget on PostgreSQL (tables listener_limits and listener_slots,
sql/migrations/0021_flow_control.sql; queries in sql/queries.sql): leased slot rows,
renewed by a heartbeat, so any pooled connection will do, behind a transaction-mode
pooler too."""

from __future__ import annotations

from typing import Any

import psycopg

from listener.db import Database
from listener.engine.flow import Limits
from listener.sanitize import clean
from listener.sqlfiles import queries


class PgSlots:
    """The account's row and this process's slots; the claims take their slots in their
    own statement (PgStore.claim_ready)."""

    def __init__(self, db: Database, *, account: str, provider: str, worker: str, lease: float):
        self.db, self.account, self.provider = db, account, provider
        self.worker, self.lease = worker, lease

    def _params(self, **extra: Any) -> dict[str, Any]:
        return {"account": self.account, "worker": self.worker, "lease": self.lease, **extra}

    async def register(self, limit: int, *, explicit: bool) -> Limits:
        q = queries()
        params = self._params(provider=self.provider, limit=limit, explicit=explicit)

        def go(conn: psycopg.Connection) -> Limits:
            conn.execute(q["limits_register"], params)
            conn.execute(q["slots_fill"], params)
            return _limits(conn.execute(q["limits_read"], params).fetchone())

        return await self.db.run(go)

    async def read(self) -> Limits:
        rows = await self.db.fetch("limits_read", self._params())
        if not rows:
            raise LookupError(f"no listener_limits row for {self.account}")
        return _limits(tuple(rows[0].values()))

    async def inherit(self, image_id: int) -> int | None:
        rows = await self.db.fetch("slots_inherit", self._params(id=image_id))
        return rows[0]["slot"] if rows else None

    async def release(self, slots: list[int]) -> None:
        if slots:
            await self.db.execute("slots_release", self._params(slots=slots), critical=True)

    async def renew(self) -> None:
        await self.db.execute("slots_renew", self._params())

    async def lower(self, value: int, reason: str, cooldown: float) -> int | None:
        rows = await self.db.fetch(
            "limits_lower", self._params(value=value, reason=clean(reason), cooldown=cooldown)
        )
        return rows[0]["effective"] if rows else None

    async def raise_(self, from_: int, reason: str) -> int | None:
        rows = await self.db.fetch(
            "limits_raise", self._params(**{"from": from_, "reason": clean(reason)})
        )
        return rows[0]["effective"] if rows else None

    async def want(self) -> None:
        await self.db.execute("limits_want", self._params())

    async def forget_ceiling(self) -> None:
        await self.db.execute("limits_forget_ceiling", self._params())


def _limits(row: Any) -> Limits:
    configured, effective, ceiling, reason, set_by, orphaned, others_want = row
    return Limits(configured, effective, ceiling, clean(reason), set_by, orphaned, others_want)
