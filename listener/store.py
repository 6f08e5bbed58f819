"""The engine's store on PostgreSQL: every change the engine makes to a row, as one named
query each (sql/queries.sql).

All writes are fenced on the lease (`locked_by = this worker`): a listener that lost a
row (its lease expired and another listener took it, or an operator moved it) cannot
overwrite the new owner's work. Such a refused write raises `LeaseLost`, and the same
statement clears this listener's lease on the row where it still names us, so that a
row that changed under us is never left "ours" with no task on it. A retried write that
finds its own first attempt landed (the answer to its COMMIT was lost) succeeds. Writes that
carry something the API handed us (a uuid, an image) use the database's critical lane,
which routine work can never exhaust. Text written into a row has been through
`listener.sanitize.clean` (no NUL, no control characters, bounded).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from listener.db import Database
from listener.engine.ports import Claimed, Generation, ReadyRow, SlotAsk
from listener.errors import LeaseLost, RuleBroken
from listener.providers.registry import DEFAULT, LEGACY
from listener.sanitize import clean
from listener.sqlfiles import queries

log = logging.getLogger(__name__)

# After a claim failed on a row that breaks a rule, this long on the checked claim.
CHECKED_CLAIMS_FOR = 300.0
# One claim in this many takes the oldest due rows whatever their priority (the others
# take the highest priority first): urgent rows cannot starve the rest.
PRIORITY_FAIR_SHARE = 4
# How many of the rows last claimed a repair after a lost claim takes to be in good hands.
HANDED_OUT = 1000


def _slot_params(slots: SlotAsk | None) -> dict[str, Any]:
    if slots is None:
        return {"account": None, "mine": [], "bind": False}
    return {"account": slots.account, "mine": slots.mine, "bind": slots.bind}


def _seconds_until(at: datetime | None, now: datetime) -> float | None:
    return None if at is None else max(0.0, (at - now).total_seconds())


class PgStore:
    """`provider`: the name of the provider this process runs (images.provider): claims
    take rows for any provider or pinned to it, and only the generations it accepted
    (a Generate row that names none was written before providers were recorded: it is
    `legacy`'s). `default_style` (DEFAULT_STYLE) finds the style words of a row that
    names no style."""

    def __init__(
        self,
        db: Database,
        worker: str,
        lease: float,
        *,
        provider: str = DEFAULT,
        legacy: str = LEGACY,
        default_style: str = "ANIME",
    ) -> None:
        self.db, self.worker, self.lease = db, worker, lease
        self.provider, self.legacy, self.default_style = provider, legacy, default_style
        self._checked_until = -math.inf
        self._claims = 0
        # The last rows the claims returned: a repair after a lost claim leaves them be.
        self._handed_out: deque[int] = deque(maxlen=HANDED_OUT)

    def _params(self, **extra: Any) -> dict[str, Any]:
        return {
            "worker": self.worker,
            "lease": self.lease,
            "provider": self.provider,
            "legacy": self.legacy,
            "default_style": self.default_style,
            **extra,
        }

    # -- claims (the pickup lane: one warm autocommit connection, no worker thread) -----
    # `held`: the rows a live task of this process holds (Leases). The claims leave them
    # out even when their lease lapsed (a write that waited out a database outage); any
    # other lapsed lease, ours included, is claimable.

    async def claim_ready(
        self, limit: int, *, held: Collection[int] = (), slots: SlotAsk | None = None
    ) -> list[ReadyRow]:
        """The fast claim; after it failed on a row that breaks a rule of the table, the
        claim that leaves such rows out, for CHECKED_CLAIMS_FOR seconds. With `slots`,
        a slot of the account's budget for each row, in the same statement."""
        if self.db.pickup.unsettled:
            await self._repair(held, slots)
        params = self._params(limit=limit, held=list(held), **_slot_params(slots))
        if time.monotonic() < self._checked_until:
            return await self._claim(queries()["claim_ready_checked"], params, slots)
        self._claims += 1
        fair = self._claims % PRIORITY_FAIR_SHARE == 0
        try:
            return await self._claim(
                queries()["claim_ready_oldest" if fair else "claim_ready"], params, slots
            )
        except RuleBroken as exc:
            log.warning(
                "Claims: a waiting row breaks a rule of the table (%s); claiming around "
                "it: SELECT * FROM images_blocked lists such rows, images_fail_blocked() "
                "ends them",
                exc.message,
            )
            self._checked_until = time.monotonic() + CHECKED_CLAIMS_FOR
            return await self._claim(queries()["claim_ready_checked"], params, slots)

    async def _claim(
        self, query: str, params: dict[str, Any], slots: SlotAsk | None
    ) -> list[ReadyRow]:
        rows = await self.db.pickup.fetch(query, params)
        claimed: list[ReadyRow] = []
        got: list[int] = []
        for r in rows:
            slot, free = r.pop("slot"), r.pop("free_slots")
            if slots is not None:
                slots.free = free
            if r["id"] is not None:
                claimed.append(ReadyRow(**r))
                if slot is not None:
                    got.append(slot)
        if slots is not None:
            slots.got = got
        self._handed_out.extend(row.id for row in claimed)
        return claimed

    async def _repair(self, held: Collection[int], slots: SlotAsk | None) -> None:
        """A claim's answer was lost: give back what it may have taken. The rows handed
        out a moment ago count as held (their tasks may not have started yet)."""
        params = self._params(
            held=sorted(set(held) | set(self._handed_out)),
            account=slots.account if slots is not None else None,
            slots=slots.known if slots is not None else [],
        )
        (row,) = await self.db.pickup.fetch(queries()["release_unsettled"], params)
        self.db.pickup.unsettled = False
        if row["released"]:
            log.warning(
                "Claims: %d row(s) taken by a claim whose answer was lost given back",
                row["released"],
            )

    async def _next(self, name: str, held: Collection[int]) -> float | None:
        rows = await self.db.pickup.fetch(queries()[name], self._params(held=list(held)))
        return _seconds_until(rows[0]["at"], rows[0]["now"])

    async def next_ready_in(self, *, held: Collection[int] = ()) -> float | None:
        return await self._next("next_ready_at", held)

    async def next_generating_in(self, *, held: Collection[int] = ()) -> float | None:
        return await self._next("next_generating_at", held)

    async def claim_generating(self, limit: int, *, held: Collection[int] = ()) -> Claimed:
        q = queries()
        params = self._params(limit=limit, held=list(held))

        def go(conn: psycopg.Connection) -> Claimed:
            with conn.cursor(row_factory=dict_row) as cur:
                rows = [
                    Generation(r["id"], r["handle"], r["age"], width=r["width"], height=r["height"])
                    for r in cur.execute(q["claim_generating"], params)
                ]
                if len(rows) == limit:
                    return Claimed(rows, 0.0)
                nxt = cur.execute(q["next_generating_at"], params).fetchone()
                assert nxt is not None
                return Claimed(rows, _seconds_until(nxt["at"], nxt["now"]))

        return await self.db.run(go)

    # -- fenced writes -----------------------------------------------------------------

    async def _fenced(
        self, name: str, id_: int, done: Callable[[dict[str, Any]], bool], **params: Any
    ) -> None:
        """Run a fenced write (one statement: the write, or letting go of a row that
        changed under us). `done(row)` says whether the row as it was found is this
        write already landed: a retry after a COMMIT whose answer was lost."""
        (row,) = await self.db.fetch(name, self._params(id=id_, **params), critical=True)
        if row["written"] or (row["status"] is not None and done(row)):
            return
        if row["status"] is None:
            now = "deleted"
        elif row["locked_by"] not in (None, self.worker):
            now = f"status {clean(row['status'])}, held by another listener"
        else:
            now = f"status {clean(row['status'])}, held by nobody now"
        raise LeaseLost(
            f"image ID {id_}: write refused ({name}): the row changed under this listener "
            f"({now}); let go"
        )

    async def record_accepted(self, id_: int, handle: str, *, keep: bool) -> None:
        def done(r: dict[str, Any]) -> bool:
            mine = r["locked_by"] == self.worker if keep else True
            return r["status"] == "Generate" and r["uuid"] == handle and mine

        await self._fenced("record_accepted", id_, done, uuid=handle, keep=keep)

    async def release(
        self,
        id_: int,
        *,
        status: str,
        delay: float = 0.0,
        error: str | None = None,
        uncount: bool = False,
        count: bool = False,
    ) -> None:
        def done(r: dict[str, Any]) -> bool:
            return r["status"] == status and r["locked_by"] is None

        await self._fenced(
            "release",
            id_,
            done,
            status=status,
            delay=delay,
            error=None if error is None else clean(error),
            uncount=uncount,
            count=count,
        )

    async def retry_later(
        self, id_: int, *, delay: float, error: str, unknown_outcome: bool = False
    ) -> None:
        def done(r: dict[str, Any]) -> bool:
            return r["status"] == "ReadyToGenerate" and r["locked_by"] is None

        await self._fenced(
            "retry_later", id_, done, delay=delay, error=clean(error), unknown=unknown_outcome
        )

    async def fail(self, id_: int, error: str, *, from_status: str, censored: bool = False) -> None:
        def done(r: dict[str, Any]) -> bool:
            return r["status"] == "Failed" and r["locked_by"] is None

        await self._fenced(
            "fail", id_, done, error=clean(error), from_status=from_status, censored=censored
        )

    async def finalise(
        self,
        id_: int,
        handle: str,
        image: str,
        *,
        image_type: str = "png",
        width: int | None = None,
        height: int | None = None,
    ) -> None:
        """Write the image and what it is. Idempotent: if a retried write finds the row
        already holding this generation's result, it was ours and it is durable."""

        def done(r: dict[str, Any]) -> bool:
            return r["status"] == "ReadyToPublish" and r["uuid"] == handle

        await self._fenced(
            "finalise",
            id_,
            done,
            uuid=handle,
            base64=image,
            image_type=image_type,
            image_width=width,
            image_height=height,
        )

    # -- leases ------------------------------------------------------------------------

    async def renew(self, owned: dict[int, str]) -> tuple[set[int], set[int]]:
        ids = list(owned)
        params = self._params(ids=ids, statuses=[owned[i] for i in ids])
        rows = await self.db.fetch("renew", params)
        renewed = {r["id"] for r in rows if r["renewed"]}
        lost = {r["id"] for r in rows if r["lost"]}
        return renewed, lost

    async def release_rows(self, ids: list[int], *, unknown: Collection[int] = ()) -> int:
        rows = await self.db.fetch(
            "release_rows", self._params(ids=ids, unknown=list(unknown)), critical=True
        )
        return int(rows[0]["released"])
