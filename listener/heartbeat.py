"""Lease renewal: every LEASE_TIMEOUT / 3 the worker extends the lease of every row it
holds, in one statement. A listener that stops renewing (crashed, frozen, cut off from
the database) loses its rows to the others after LEASE_TIMEOUT."""

from __future__ import annotations

import logging

import trio

from listener.errors import DatabaseError
from listener.store import Store

log = logging.getLogger(__name__)


async def serve_heartbeat(
    store: Store, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    interval = store.lease / 3
    task_status.started()
    while True:
        await trio.sleep(interval)
        try:
            await store.heartbeat()
        except DatabaseError as exc:
            log.warning("Lease heartbeat failed: %s", exc.message)
