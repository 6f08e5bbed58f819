"""Where row tasks live: one task per row from claim to release, in a nursery of its own.

The task is the row's only owner in this process (`Leases.own`). Whatever way it ends,
the row is written to its next state or released, with the reason kept:

* settled by the work itself (ReadyToPublish, Failed, Generate handed to a processor,
  a retry scheduled): nothing more to do;
* an unexpected exception: logged once with its traceback, counted as an attempt, the
  row released with `internal error: ...` in last_error (a submission waits a backoff
  before it is tried again); it never reaches the engine's nursery;
* a database error the work could not get past: released if still ours;
* the row changed under it (a fenced write refused, or the renewal found it moved): the
  statement that found out cleared our lease there; one line is logged, and once the
  task has ended the claims look again (`Leases.on_let_go`): the row may be work again;
* cancelled (shutdown): left to `Leases`, which releases every such row in one statement.
"""

from __future__ import annotations

import logging
import math

import trio

from listener.config import Settings
from listener.engine.budget import Ticket
from listener.engine.doorbell import backoff_delay
from listener.engine.flow import Slots
from listener.engine.follow import Follow
from listener.engine.guard import Guard, WriteAbandoned
from listener.engine.lease import Leases, Ownership
from listener.engine.ports import Generation, ReadyRow, Store
from listener.engine.runs import Runs
from listener.errors import DatabaseError, LeaseLost
from listener.sanitize import clean

log = logging.getLogger("listener.engine")


class Rows:
    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        leases: Leases,
        guard: Guard,
        runs: Runs | None,
        follow: Follow | None,
        slots: Slots | None = None,
    ) -> None:
        self.slots = slots
        self.settings = settings
        self.store = store
        self.leases = leases
        self.guard = guard
        self.runs = runs
        self.follow = follow
        self._nursery: trio.Nursery | None = None

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def cancel(self) -> None:
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()

    # -- starting ----------------------------------------------------------------------

    def start_run(self, row: ReadyRow, ticket: Ticket) -> None:
        assert self._nursery is not None
        name = f"image {row.id}: submit"  # pragma: no mutate (a task name, for debuggers)
        self._nursery.start_soon(self._row, row, ticket, name=name)  # pragma: no mutate

    def start_follow(self, gen: Generation, ticket: Ticket) -> None:
        assert self._nursery is not None
        name = f"image {gen.id}: follow"  # pragma: no mutate (a task name, for debuggers)
        self._nursery.start_soon(self._row, gen, ticket, name=name)  # pragma: no mutate

    # -- one row -----------------------------------------------------------------------

    async def _row(self, item: ReadyRow | Generation, ticket: Ticket) -> None:
        ticket.row_id = item.id
        status = "ReadyToGenerate" if isinstance(item, ReadyRow) else "Generate"
        if item.id in self.leases.owned:
            # Claimed again while a task of ours still owns it (the claims leave out our
            # own rows; this is the last line of defence): the owner carries on.
            log.warning("Image ID %d: claimed again while this listener works on it", item.id)
            ticket.close()
            return
        try:
            with self.leases.own(item.id, status) as own:
                try:
                    await self._work(item, ticket, own)
                except LeaseLost as exc:
                    own.lose()
                    log.warning("%s", exc.message)
                except WriteAbandoned as exc:
                    log.error("Image ID %d: %s", item.id, exc.message)
                except DatabaseError as exc:
                    await self._release(own, exc.message, count=False)  # "database error: ..."
                except Exception as exc:
                    log.exception("Image ID %d: unexpected error in its task", item.id)
                    reason = clean(f"internal error: {type(exc).__name__}: {exc}")
                    await self._release(own, reason, count=True)
        finally:
            self._give_back(ticket)
            ticket.close()

    def _give_back(self, ticket: Ticket) -> None:
        """The row's slot, once its task is over: kept for our next claim when its
        generation is over; when the row is left generating (handed to the processors,
        or at shutdown) its slot stays taken by the row in the table until it ends."""
        if self.slots is None or ticket.slot is None:
            return
        slot, ticket.slot = ticket.slot, None
        busy = ticket.generating and self.slots.kind == "generation"
        rest = self.runs.refused_slots.pop(ticket.row_id, 0.0) if self.runs else 0.0
        if rest > 0 and self._nursery is not None:
            self._nursery.start_soon(self._give_back_later, slot, rest, not busy)
            return
        self.slots.give_back([slot], reusable=not busy)

    async def _give_back_later(self, slot: int, rest: float, reusable: bool) -> None:
        assert self.slots is not None
        try:
            await trio.sleep(rest)
        finally:
            self.slots.give_back([slot], reusable=reusable)

    async def _work(self, item: ReadyRow | Generation, ticket: Ticket, own: Ownership) -> None:
        if isinstance(item, ReadyRow):
            assert self.runs is not None
            ticket.move("submitting")
            gen = await self.runs.submit(item, own)
            ticket.generating = own.status == "Generate"
            if self.slots is not None and self.slots.kind == "call":
                self._give_back(ticket)  # the call is over
            if gen is None or self.follow is None:
                return
            item = gen
        elif self.slots is not None and self.slots.kind == "generation":
            # adopted: the slot its generation holds since it was submitted is ours now
            ticket.generating = True
            ticket.slot = await self.slots.inherit(item.id)
        assert self.follow is not None
        if item.until > -math.inf:
            ticket.await_first_check(item.until)  # part of its run at a stop
        ticket.move("following")
        await self.follow.follow(item, own, first_checked=ticket.first_checked)
        ticket.generating = not own.settled

    async def _release(self, own: Ownership, reason: str, *, count: bool) -> None:
        """Give the row back, durably, with the reason: its task cannot go on."""
        if own.settled or own.lost:
            return
        s = self.settings
        delay = 0.0
        if count:
            delay = backoff_delay(2, s.retry_backoff_base, s.retry_backoff_max)
        try:
            with own.settling():
                await self.guard.durable(
                    f"Image ID {own.id}: releasing it",
                    lambda: self.store.release(
                        own.id, status=own.status, delay=delay, error=reason, count=count
                    ),
                )
        except LeaseLost:
            own.lose()
            return
        except (WriteAbandoned, DatabaseError) as exc:
            log.error("Image ID %d: could not release it: %s", own.id, exc.message)
            return  # left to Leases, which tries again at every tick
        own.settle()
        log.warning("Image ID %d released: %s; it is tried again", own.id, reason)
        if self.leases.on_let_go is not None:
            self.leases.on_let_go()  # the claims learn when it is due again
