"""Live updates for the gallery, by Server-Sent Events.

The server sends hints, not rows: "there are new rows" and "these rows changed"; the page
then asks for the cards it needs (only the rows on screen). Hints come from the LISTEN
connection: `images_done` (a row reached ReadyToPublish or Failed, its id in the payload)
and the wake-up channel (new or released rows); each makes one comparison of the latest
WINDOW rows' states with the previous one (the primary key, backwards: a fraction of a
millisecond). Under -cron, or when the LISTEN self-test found a transaction pooler, the
same comparison runs every POLL_INTERVAL instead. With nobody watching, nothing runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import trio

from listener.errors import DatabaseError
from listener.notify import ListenMode, Notification
from listener.web.db import WebDb

log = logging.getLogger("listener.web")

WINDOW = 200  # latest rows compared at each look
COALESCE = 0.1  # seconds: a burst of notifications makes one look
KEEPALIVE = 15.0  # seconds between comments on an idle stream (proxies close silent ones)
MAX_PENDING = 500  # changed ids kept per subscriber before it is told to reload
DONE_PAYLOAD_MAX = 200


class Subscriber:
    def __init__(self) -> None:
        self.new = False
        self.changed: set[int] = set()
        self.reload = False
        self.ready = trio.Event()

    def tell(self, new: bool, changed: set[int]) -> None:
        self.new |= new
        self.changed |= changed
        if len(self.changed) > MAX_PENDING:
            self.changed.clear()
            self.reload = True
        self.ready.set()

    def take(self) -> dict[str, Any]:
        hint = {"new": self.new, "changed": sorted(self.changed), "reload": self.reload}
        self.new, self.changed, self.reload = False, set(), False
        self.ready = trio.Event()
        return hint


class Live:
    def __init__(self, db: WebDb, *, polling: bool, poll_interval: float) -> None:
        self.db = db
        self.polling = polling
        self.poll_interval = poll_interval
        self.subscribers: set[Subscriber] = set()
        self._kick = trio.Event()
        self._done: set[int] = set()
        self._snapshot: dict[int, tuple[str, Any]] | None = None

    # -- what the LISTEN stream reports (listener.notify events) -----------------------

    def on_stream_event(self, event: object) -> None:
        if isinstance(event, ListenMode):
            self.polling = event.mode == "poll"
        elif isinstance(event, Notification) and event.channel == "images_done":
            self._done_id(event.payload)
        if self.subscribers:
            self._kick.set()

    def _done_id(self, payload: str) -> None:
        if not self.subscribers or len(payload) > DONE_PAYLOAD_MAX:
            return
        try:
            value = json.loads(payload).get("id")
        except (ValueError, AttributeError):
            return
        if isinstance(value, int) and len(self._done) < MAX_PENDING:
            self._done.add(value)

    # -- serving -----------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            if self.polling and self.subscribers:
                with trio.move_on_after(self.poll_interval):
                    await self._kick.wait()
            else:
                await self._kick.wait()
            self._kick = trio.Event()
            if not self.subscribers:
                self._snapshot, self._done = None, set()
                continue
            await trio.sleep(COALESCE)
            try:
                await self.look()
            except DatabaseError as exc:
                log.debug("Live updates: %s", exc.message)
                await trio.sleep(1.0)

    async def look(self) -> None:
        rows = await self.db.fetch("recent_states", {"limit": WINDOW})
        now = {r["id"]: (r["status"], r["updated_at"]) for r in rows}
        before, self._snapshot = self._snapshot, now
        done, self._done = self._done, set()
        if before is None:
            new, changed = bool(done), done
        else:
            top = max(before, default=0)
            new = any(i > top for i in now)
            changed = {i for i, state in now.items() if i in before and before[i] != state}
            changed |= done
        if new or changed:
            for sub in self.subscribers:
                sub.tell(new, changed)

    async def events(self) -> AsyncIterator[str]:
        """One subscriber's stream, in the text/event-stream format."""
        sub = Subscriber()
        self.subscribers.add(sub)
        if self._snapshot is None:
            # Compared from now on: the page fetches what happened before (its `onopen`).
            with contextlib.suppress(DatabaseError):
                await self.look()
        self._kick.set()  # the serve loop re-evaluates (polling starts with a watcher)
        try:
            yield "retry: 3000\n\n"
            while True:
                with trio.move_on_after(KEEPALIVE):
                    await sub.ready.wait()
                if not sub.ready.is_set():
                    yield ": keep-alive\n\n"
                    continue
                yield f"data: {json.dumps(sub.take())}\n\n"
        finally:
            self.subscribers.discard(sub)
