"""Row ownership: a row belongs to one live task of this process, or to nobody here.

A task takes ownership of a row it claimed (`own`), names the status it expects the row
to be in, and tells when the row moves on (`expect`) or is written to its next state and
released (`settle`). The renewal loop extends the leases of exactly the rows owned by
live tasks, every LEASE_TIMEOUT / 3, in one statement; a row that moved under us (another
listener took it, an operator changed its status or cleared the lease) is *lost*: its
task is cancelled and must not write it again. A row locked by someone else for now (an
operator's SELECT ... FOR UPDATE) is skipped, not lost, so renewal never waits on it.

A task that lets go of a lost row leaves nothing of ours on it: the statement that found
the row moved (a fenced write, or the renewal) cleared our lease there. When such a task
has ended, `on_let_go` is called (the claims look at the table again): the row may be
work again, and only now do the claims, which leave out every row a live task holds
(`held`), see it.

What a task leaves behind when it ends without settling (it was cancelled, or its own
release could not be written) stays registered; it is released in one statement at the
next tick, and by `serve` when it stops, so the next start or another listener takes
over at once. A paid call cut off at a stop (`unknown_outcome`: by a second signal, or at
its own deadline) is counted in that statement: it may have been accepted and paid for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import trio

from listener.engine.ports import Store
from listener.errors import DatabaseError

log = logging.getLogger("listener.engine")

RELEASE_TIMEOUT = 5.0


class Ownership:
    def __init__(self, id_: int, status: str) -> None:
        self.id = id_
        self.status = status
        self.settled = False
        self.lost = False
        self.abandoned = False  # the task ended without settling: release, never renew
        self.moving = False  # a write that changes the row's status is in flight
        self.unknown_outcome = False  # a run call was cut off: count it when releasing
        self.scope = trio.CancelScope()

    @contextmanager
    def moving_to(self, status: str) -> Iterator[None]:
        """Around a write that moves the row on and keeps it ours (ReadyToGenerate ->
        Generate): renewal leaves the row alone until the write has landed."""
        self.moving = True
        try:
            yield
            self.status = status
        finally:
            self.moving = False

    def settle(self) -> None:
        """Written to its next state and released: nothing left to renew or release."""
        self.settled = True

    def lose(self) -> None:
        self.lost = True
        self.scope.cancel()


class Leases:
    def __init__(self, store: Store, *, lease: float) -> None:
        self.store = store
        self.lease = lease
        self.owned: dict[int, Ownership] = {}
        self.on_let_go: Callable[[], None] | None = None

    def held(self) -> list[int]:
        """The rows a task of this process holds (or left to be released): the claims
        leave these out, and only these, whatever their lease says."""
        return list(self.owned)

    @contextmanager
    def own(self, id_: int, status: str) -> Iterator[Ownership]:
        """Ownership of `id_` for the task inside; cancelled if the row is lost."""
        if id_ in self.owned:
            raise RuntimeError(f"image ID {id_} is already owned by a task of this process")
        ownership = Ownership(id_, status)
        self.owned[id_] = ownership
        try:
            with ownership.scope:
                yield ownership
        finally:
            if ownership.settled or ownership.lost:
                self.owned.pop(id_, None)
            else:  # released by `release_remaining`, at the next tick or at the end
                ownership.abandoned = True
            if ownership.lost and not ownership.settled and self.on_let_go is not None:
                self.on_let_go()

    async def renew_once(self) -> None:
        if any(o.abandoned for o in self.owned.values()):
            await self.release_remaining()
        live = {i: o.status for i, o in self.owned.items() if not (o.abandoned or o.moving)}
        if not live:
            return
        try:
            _renewed, lost = await self.store.renew(live)
        except DatabaseError as exc:
            log.warning("Lease renewal failed: %s", exc.message)
            return
        for id_ in lost:
            ownership = self.owned.get(id_)
            if ownership is not None and not (ownership.settled or ownership.moving):
                log.warning(
                    "Image ID %d changed under this listener (another listener or an "
                    "operator took it); leaving it",
                    id_,
                )
                ownership.lose()

    async def release_remaining(self) -> int:
        """Release, in one statement, every row whose task ended without settling it
        (a shielded release that the shutdown cut short, a database that was down)."""
        ids = [i for i, o in self.owned.items() if o.abandoned]
        if not ids:
            return 0
        unknown = [i for i in ids if self.owned[i].unknown_outcome]
        try:
            n = await self.store.release_rows(ids, unknown=unknown)
        except DatabaseError as exc:
            log.warning(
                "Could not release %d row(s) (%s); their leases run out in %gs",
                len(ids),
                exc.message,
                self.lease,
            )
            return 0
        for id_ in ids:
            self.owned.pop(id_, None)
        if n and self.on_let_go is not None:
            self.on_let_go()  # work again, and no longer left out of the claims
        return n

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                await trio.sleep(self.lease / 3)
                await self.renew_once()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(RELEASE_TIMEOUT):
                n = await self.release_remaining()
                if n:
                    log.info("Released %d row(s) for the next start or another listener", n)
