"""The provider account's concurrency budget, shared by every listener through PostgreSQL,
and how much of it the listeners allow themselves (adapting to 429 / busy answers).

`Slots` holds this process's share: a claim of rows to submit takes one slot per row in
its own statement (`ask`, then `claimed`); the slot is bound to the row and given back
when its generation is over (provider slot kind "generation": Fusion Brain's queue counts
generations in progress) or when its submit call returns (kind "call": one call in
flight). The table decides what is free (sql/queries.sql, claim_ready's `free`): a slot
held by a live lease, or taken for a row that is still generating, is not. A listener
that dies (SIGKILL) keeps its generations' slots taken until they end and are adopted;
its other slots free themselves when their lease runs out. Rows, not session advisory
locks: docs/flow-control.md.

`Limiter` is the adaptation (AIMD): a refusal (429, DISABLED_BY_QUEUE) lowers the shared
effective value multiplicatively, once per burst; successes raise it by one per window of
`effective` successes, much more slowly near the value that was last refused. It never
exceeds the configured limit, and a refused submission is never an attempt of the row.
Its plain attributes (configured, effective, reason, refusals, ...) are for /metrics.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

import trio

from listener.engine.ports import SlotAsk
from listener.errors import DatabaseError

log = logging.getLogger("listener.engine")

SlotKind = Literal["generation", "call"]

FINGERPRINT_LABEL = b"fusionbrain-listener concurrency account v1"
# How often the heartbeat renews this process's slots and reads the limit (a limit
# changed from psql is seen within this long; new slots obey it at once).
HEARTBEAT = 1.0
# How often a claim that found no free slot looks again (another listener's slot frees).
SLOT_POLL = 0.2
# A listener that finds no free slot says so at most this often (limits_want).
WANT_EVERY = 0.5
# Multiplicative decrease; and a second refusal within this long of a change is taken
# to be the same burst (three listeners refused at once lower the value once).
DECREASE = 0.7
COOLDOWN = 2.0
# Near the last refused value, a step up waits this many windows of successes.
PROBE_WINDOWS = 50


def account_id(provider: str, *secrets: str) -> str:
    """'<provider>:<32 hex>': a keyed hash of the credentials under a fixed label, so the
    table tells accounts apart without holding anything that leads back to a key."""
    message = b"\0".join(s.encode() for s in (provider, *secrets))
    digest = hmac.new(FINGERPRINT_LABEL, message, hashlib.sha256).hexdigest()
    return f"{provider}:{digest[:32]}"


@dataclass(frozen=True)
class Limits:
    configured: int
    effective: int
    ceiling: int | None = None
    reason: str = "configured"
    set_by: str = "setting"
    orphaned: int = 0  # slots held by generations nobody follows (their listener died)
    others_want: bool = False  # another listener found no free slot within the second


class SlotStore(Protocol):
    """The budget's table (PgSlots on PostgreSQL; a fake in the engine's tests). The
    claims take their slots in their own statement (`Store.claim_ready`, `SlotAsk`)."""

    @property
    def account(self) -> str: ...

    async def register(self, limit: int, *, explicit: bool) -> Limits: ...
    async def read(self) -> Limits: ...
    async def inherit(self, image_id: int) -> int | None: ...
    async def release(self, slots: list[int]) -> None: ...
    async def renew(self) -> None: ...
    async def lower(self, value: int, reason: str, cooldown: float) -> int | None: ...
    async def raise_(self, from_: int, reason: str) -> int | None: ...
    async def forget_ceiling(self) -> None: ...
    async def want(self) -> None: ...


class Limiter:
    """AIMD on the shared effective value; the table is the truth, this is our view."""

    def __init__(self, store: SlotStore, limits: Limits) -> None:
        self.store = store
        self.configured = limits.configured
        self.effective = limits.effective
        self.ceiling = limits.ceiling
        self.reason = limits.reason
        self.refusals = 0  # 429 / busy answers to submissions, this process
        self.successes = 0  # accepted submissions, this process
        self.decreases = 0
        self.increases = 0
        self._window = 0  # successes since the last change we saw
        self._changed_at = -math.inf

    def seen(self, limits: Limits) -> None:
        if (limits.configured, limits.effective) != (self.configured, self.effective):
            self._window = 0
            self._changed_at = trio.current_time()
        self.configured, self.effective = limits.configured, limits.effective
        self.ceiling, self.reason = limits.ceiling, limits.reason

    async def refused(self, what: str) -> bool:
        """A submission was refused for load. True when this lowered the value (a new
        burst); False when another refusal of the same burst already did."""
        self.refusals += 1
        self._window = 0
        now = trio.current_time()
        if self.effective <= 1:
            # Refused with one at a time: the provider is busy for everyone, which says
            # nothing of the account's limit. Forget the ceiling, so the way back up is
            # quick once the storm is over.
            if self.ceiling is not None:
                self.ceiling = None
                await self.store.forget_ceiling()
            return False
        if now - self._changed_at < COOLDOWN:
            return False
        value = max(1, min(self.effective - 1, math.floor(self.effective * DECREASE)))
        reason = f"lowered from {self.effective} after {what}"
        got = await self.store.lower(value, reason, COOLDOWN)
        self._changed_at = now
        if got is None:  # another listener lowered it first: read what it is now
            self.seen(await self.store.read())
            return False
        self.decreases += 1
        self.ceiling, self.effective, self.reason = self.effective, got, reason
        log.warning("Provider concurrency lowered to %d (%s)", got, what)
        return True

    async def succeeded(self) -> None:
        self.successes += 1
        self._window += 1
        if self.effective >= self.configured:
            return
        near = self.ceiling is not None and self.effective + 1 >= self.ceiling
        if self._window < self.effective * (PROBE_WINDOWS if near else 1):
            return
        self._window = 0
        reason = f"raised from {self.effective} after {self.effective} successes"
        got = await self.store.raise_(self.effective, reason)
        self._changed_at = trio.current_time()
        if got is None:
            self.seen(await self.store.read())
            return
        self.increases += 1
        self.effective, self.reason = got, reason
        if got >= self.configured:
            log.info("Provider concurrency back at its limit, %d", got)


class Slots:
    """This process's slots of the shared budget; `serve` keeps them alive."""

    def __init__(self, store: SlotStore, *, kind: SlotKind, limit: int, explicit: bool) -> None:
        self.store = store
        self.kind: SlotKind = kind
        self.limit = limit
        self.explicit = explicit
        self.limiter: Limiter | None = None
        self.held: set[int] = set()
        self._spare: set[int] = set()  # given back, still ours: reused before the table
        self._returned: set[int] = set()  # given back, to be released in the table
        self._wake = trio.Event()
        self._subscribers: list[Callable[[], None]] = []
        self._orphan_watchers: list[Callable[[], None]] = []
        self.others_want = False  # another listener waits: our freed slots go to the table
        self._wanted_at = -math.inf
        self.taken = 0  # slots taken (this process)
        self.starved = 0  # takes that found no free slot

    # -- reading -----------------------------------------------------------------------

    @property
    def effective(self) -> int:
        return self.limiter.effective if self.limiter else self.limit

    def subscribe(self, on_free: Callable[[], None]) -> None:
        """`on_free()`: a slot may be free (one of ours given back, the limit raised)."""
        self._subscribers.append(on_free)

    def on_orphans(self, call: Callable[[], None]) -> None:
        """`call()`: some slots are held by generations nobody follows: adopt them."""
        self._orphan_watchers.append(call)

    def _freed(self) -> None:
        for call in self._subscribers:
            call()

    # -- the lifetime ------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        limits = await self.store.register(self.limit, explicit=self.explicit)
        self.limiter = Limiter(self.store, limits)
        log.info(
            "Provider concurrency: %d at once for this account (effective %d: %s)",
            limits.configured,
            limits.effective,
            limits.reason,
        )
        try:
            task_status.started()
            while True:
                with trio.move_on_after(HEARTBEAT * random.uniform(0.9, 1.0)):
                    await self._wake.wait()
                self._wake = trio.Event()
                await self._beat()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                try:
                    await self.store.release(sorted(self.held | self._returned))
                except DatabaseError as exc:
                    log.warning("Could not give back provider slots: %s", exc.message)

    async def _beat(self) -> None:
        try:
            if self._returned:
                returned = sorted(self._returned)
                await self.store.release(returned)
                self._returned.difference_update(returned)
            await self.store.renew()
            before = self.effective
            assert self.limiter is not None
            try:
                limits = await self.store.read()
            except LookupError:  # the account's row was deleted by hand: make it again
                log.warning("Provider concurrency: the account's row is gone; recreated")
                limits = await self.store.register(self.limit, explicit=True)
            self.limiter.seen(limits)
            if self.effective > before:
                self._freed()
            if limits.orphaned:
                for call in self._orphan_watchers:
                    call()
            self.others_want = limits.others_want
            if self.others_want:
                self.spare_to_table()
            for slot in [s for s in self._spare if s >= self.effective]:
                self._spare.discard(slot)
                self.held.discard(slot)
                self._returned.add(slot)
        except DatabaseError as exc:
            log.warning("Provider slots: cannot renew: %s", exc.message)

    # -- taking and giving back --------------------------------------------------------

    def ask(self, n: int) -> SlotAsk:
        """For a claim of up to `n` rows: our spare slots first (then the table's)."""
        mine = sorted(s for s in self._spare if s < self.effective)[:n]
        self._spare.difference_update(mine)
        return SlotAsk(
            account=self.store.account,
            mine=mine,
            bind=self.kind == "generation",
            known=sorted(self.held),
        )

    async def claimed(self, ask: SlotAsk, limit: int) -> None:
        """What the claim's statement did with the slots: `got` are ours (one per row);
        the rest of `mine` stays spare, or went back to the table when the claim came back
        short. No free slot at all: say so (`want`), at most every WANT_EVERY."""
        self.held.update(ask.got)
        self.taken += len(ask.got)
        unused = set(ask.mine).difference(ask.got)
        if len(ask.got) < limit:
            self.held.difference_update(unused)
        else:
            self._spare.update(unused)
        if ask.free == 0:
            self.starved += 1
            now = trio.current_time()
            if now - self._wanted_at >= WANT_EVERY:
                # The listeners holding slots hand them to the table as they free (fair
                # share), instead of keeping them for their own next claim.
                self._wanted_at = now
                await self.store.want()

    def unclaimed(self, ask: SlotAsk) -> None:
        """The claim failed: nothing changed in the table; `mine` is spare again."""
        self._spare.update(s for s in ask.mine if s in self.held)

    async def inherit(self, image_id: int) -> int | None:
        """The slot of a generation adopted from another listener, if it had one."""
        try:
            slot = await self.store.inherit(image_id)
        except DatabaseError as exc:
            log.warning(
                "Image ID %d: cannot take over its provider slot: %s", image_id, exc.message
            )
            return None
        if slot is not None:
            self.held.add(slot)
        return slot

    def give_back(self, slots: Iterable[int], *, reusable: bool = True) -> None:
        """Synchronous (it runs in finally blocks and cancelled tasks): a reusable slot
        is kept for our next claim; one whose row still generates elsewhere, or that is
        above the limit now, is released in the table at the next heartbeat (at once)."""
        for slot in slots:
            if slot not in self.held:
                continue
            if reusable and slot < self.effective and not self.others_want:
                self._spare.add(slot)
            else:
                self.held.discard(slot)
                self._returned.add(slot)
                self._wake.set()
        self._freed()

    def spare_to_table(self) -> None:
        """Nothing waits for our spare slots: let other listeners have them."""
        if self._spare:
            self.held.difference_update(self._spare)
            self._returned.update(self._spare)
            self._spare.clear()
            self._wake.set()

    # -- adaptation --------------------------------------------------------------------

    async def refused(self, what: str) -> bool:
        if self.limiter is None:
            return False
        try:
            return await self.limiter.refused(what)
        except DatabaseError as exc:
            log.warning("Provider concurrency: cannot record a refusal: %s", exc.message)
            return False

    async def succeeded(self) -> None:
        if self.limiter is None:
            return
        try:
            await self.limiter.succeeded()
        except DatabaseError as exc:
            log.warning("Provider concurrency: cannot record a success: %s", exc.message)
