"""Small in-memory fakes at the engine's seams: a Store and a Provider.

They keep the contracts of the real ones (listener.store.PgStore on PostgreSQL, the
Fusion Brain provider over HTTP) that the engine relies on: claims skip held and
not-yet-due rows, every write is fenced on the lease, renewal reports lost rows; time is
trio's clock, so the tests run on `autojump_clock` in milliseconds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field

import trio
import trio.lowlevel

from listener.config import Settings, load_settings
from listener.engine.ports import (
    Claimed,
    Generation,
    Outcome,
    Pending,
    Ready,
    ReadyRow,
    SlotAsk,
    Submitted,
    Traits,
)
from listener.errors import DatabaseUnavailable, LeaseLost, RuleBroken
from listener.images import ImageInfo
from listener.providers.registry import LEGACY


def settings(**overrides) -> Settings:
    base = dict(
        fusion_brain_api_key="k",
        fusion_brain_secret_key="s",
        database_url="postgresql://x@localhost/x",
    )
    return load_settings(env_file=None, **{**base, **overrides})


@dataclass
class Row:
    id: int
    prompt: str = "a fox"
    status: str = "ReadyToGenerate"
    attempts: int = 0
    not_before: float = 0.0
    locked_by: str | None = None
    locked_until: float | None = None
    uuid: str | None = None
    image: str | None = None
    last_error: str | None = None
    unknown_outcomes: int = 0
    censored: bool = False
    started: float = 0.0
    width: int | None = None
    height: int | None = None
    style: str | None = None
    negative_prompt: str | None = None
    provider: str | None = None  # images.provider: NULL = any provider's, else pinned/accepted
    image_type: str | None = None
    created: float = 0.0  # images.created_at
    image_size: tuple[int | None, int | None] | None = None

    def breaks_a_rule(self, status: str | None = None, attempts: int | None = None) -> bool:
        """The table's CHECKs that an old row (or a rule re-added NOT VALID) may break,
        for the row as a write would leave it: attempts never negative; a waiting row's
        prompt not blank."""
        waiting = (status or self.status) == "ReadyToGenerate"
        attempts = self.attempts if attempts is None else attempts
        return attempts < 0 or (waiting and not self.prompt.strip())


LISTENER_STATUSES = ("ReadyToGenerate", "Generate")


@dataclass
class FakeStore:
    """The contract of `listener.store.PgStore`, in memory (tests/test_store_contract.py
    runs one suite against both)."""

    worker: str = "me"
    lease: float = 30.0
    provider: str = "fake"  # the provider this process runs (PgStore's `provider`)
    legacy: str = LEGACY  # whose a Generate row naming no provider is (PgStore's `legacy`)
    styles: dict[str, str] = field(default_factory=dict)  # image_styles.system_prompt
    default_style: str = "UHD"
    rows: dict[int, Row] = field(default_factory=dict)
    down: bool = False  # every call raises DatabaseUnavailable
    calls: Counter = field(default_factory=Counter)
    released: list[int] = field(default_factory=list)
    locked: set[int] = field(default_factory=set)  # rows another session has locked now
    last_id: int = 0

    def add(self, n: int = 1, **kw) -> list[int]:
        ids = []
        if kw.get("status") == "Generate":
            kw.setdefault("provider", self.provider)  # accepted by our provider
        for _ in range(n):
            id_ = self.last_id = max(self.last_id, *self.rows, 0) + 1  # like a sequence
            self.rows[id_] = Row(id_, **kw)
            ids.append(id_)
        return ids

    def _call(self, name: str) -> float:
        self.calls[name] += 1
        if self.down:
            raise DatabaseUnavailable("database unavailable: down for the test")
        return trio.current_time()

    def _free(self, r: Row, now: float, held: Collection[int]) -> bool:
        """Claimable: no live lease, and not held by a live task of this process (whose
        lease may have lapsed); a lapsed lease of ours that no task holds is free."""
        lapsed = r.locked_until is None or r.locked_until < now
        return lapsed and r.id not in held and r.id not in self.locked and self._ours(r)

    def _ours(self, r: Row) -> bool:
        """The provider rule of the claims: a waiting row for any provider or pinned to
        ours; a generation only if our provider accepted it."""
        if r.status == "Generate":
            return (r.provider or self.legacy) == self.provider
        return r.provider in (None, self.provider)

    def _check(self, r: Row, status: str | None = None, attempts: int | None = None) -> None:
        """Any UPDATE of a row is checked against every rule, whatever it changes."""
        if r.breaks_a_rule(status, attempts):
            raise RuleBroken("database error: new row violates check constraint")

    def _write(
        self, name: str, id_: int, from_status: str, to: str, done, attempts=None
    ) -> Row | None:
        """The fenced write's contract: the row if it is ours in `from_status` (checked
        against the rules as it will be, in status `to`); None when `done(row)` (a retry
        finding its own write landed); otherwise our lease on it is cleared where it
        still names us, and LeaseLost."""
        r = self.rows.get(id_)
        if r is not None and r.locked_by == self.worker and r.status == from_status:
            self._check(r, to, attempts(r) if attempts else None)
            return r
        if r is not None and done(r):
            return None
        if r is not None and r.locked_by == self.worker:
            self._check(r)
            r.locked_by = r.locked_until = None
        now = "deleted" if r is None else f"status {r.status}"
        raise LeaseLost(f"image ID {id_}: write refused ({name}): the row changed ({now})")

    # -- claims ------------------------------------------------------------------------

    async def claim_ready(
        self, limit: int, *, held: Collection[int] = (), slots: SlotAsk | None = None
    ) -> list[ReadyRow]:
        now = self._call("claim_ready")
        await trio.lowlevel.checkpoint()
        asked = limit
        free: list[int] = []
        if slots is not None:  # the budget's slots, in the same step (sql: claim_ready)
            free = SLOT_TABLES[slots.account].usable(self.worker, slots.mine, limit, now)
            limit = len(free)
        due = sorted(
            (
                r
                for r in self.rows.values()
                if r.status == "ReadyToGenerate"
                and r.not_before <= now
                and self._free(r, now, held)
                and not r.breaks_a_rule()
            ),
            key=lambda r: (r.not_before, r.id),
        )[:limit]
        out = []
        for r in due:
            r.locked_by, r.locked_until = self.worker, now + self.lease
            r.attempts += 1
            out.append(
                ReadyRow(
                    r.id,
                    r.prompt,
                    style=r.style,
                    negative_prompt=r.negative_prompt,
                    attempts=r.attempts,
                    last_error=r.last_error,
                    unknown_outcomes=r.unknown_outcomes,
                    width=r.width,
                    height=r.height,
                    style_prompt=self.styles.get(r.style or self.default_style),
                    waited=now - r.not_before,
                    age=now - r.created,
                )
            )
        if slots is not None:
            table = SLOT_TABLES[slots.account]
            slots.free, slots.got = len(free), free[: len(out)]
            for slot, row in zip(slots.got, out, strict=True):
                table.slots[slot] = [self.worker, now + self.lease, row.id if slots.bind else None]
            if len(out) < asked:  # short: our unused slots go back to the table
                for slot in set(slots.mine) - set(slots.got):
                    if table.slots[slot][0] == self.worker:
                        table.slots[slot][:2] = [None, None]
            table.most_held = max(table.most_held, table.taken(now))
        return out

    async def next_ready_in(self, *, held: Collection[int] = ()) -> float | None:
        now = self._call("next_ready_in")
        waits = [
            max(0.0, r.not_before - now)
            for r in self.rows.values()
            if r.status == "ReadyToGenerate"
            and (r.locked_until is None or r.locked_until < now)
            and r.id not in held
            and self._ours(r)
            and not r.breaks_a_rule()
        ]
        waits += [
            r.locked_until - now
            for r in self.rows.values()
            if r.status == "ReadyToGenerate"
            and r.locked_by is not None
            and r.id not in held
            and r.locked_until is not None
            and r.locked_until >= now
            and self._ours(r)
        ]
        return min(waits) if waits else None

    def _generating_due(self, now: float, held: Collection[int]) -> float | None:
        # a generation nobody holds already (lapsed or no lease) is due now
        later = [
            max(0.0, r.locked_until - now) if r.locked_until is not None else 0.0
            for r in self.rows.values()
            if r.status == "Generate"
            and r.id not in held
            and self._ours(r)
            and r.uuid is not None
            and r.attempts >= 0
        ]
        return min(later) if later else None

    async def claim_generating(self, limit: int, *, held: Collection[int] = ()) -> Claimed:
        now = self._call("claim_generating")
        await trio.lowlevel.checkpoint()
        free = [
            r
            for r in self.rows.values()
            if r.status == "Generate"
            and self._free(r, now, held)
            and r.uuid is not None
            and r.attempts >= 0
        ]
        out = []
        order = sorted(free, key=lambda r: (r.locked_until is not None, r.locked_until or 0, r.id))
        for r in order[:limit]:
            r.locked_by, r.locked_until = self.worker, now + self.lease
            out.append(
                Generation(
                    r.id,
                    r.uuid or "",
                    age=now - r.started,
                    width=r.width,
                    height=r.height,
                )
            )
        if len(out) == limit:
            return Claimed(out, 0.0)
        return Claimed(out, self._generating_due(now, held))

    async def next_generating_in(self, *, held: Collection[int] = ()) -> float | None:
        now = self._call("next_generating_in")
        return self._generating_due(now, held)

    # -- writes ------------------------------------------------------------------------

    async def record_accepted(self, id_: int, handle: str, *, keep: bool) -> None:
        now = self._call("record_accepted")

        def done(r: Row) -> bool:
            mine = r.locked_by == self.worker if keep else True
            return r.status == "Generate" and r.uuid == handle and mine

        r = self._write("record_accepted", id_, "ReadyToGenerate", "Generate", done)
        if r is None:
            return
        r.status, r.uuid, r.started, r.last_error = "Generate", handle, now, None
        r.locked_until = now + self.lease if keep else None
        r.locked_by = self.worker if keep else None
        r.provider = self.provider

    async def retry_later(self, id_, *, delay, error, unknown_outcome=False) -> None:
        now = self._call("retry_later")

        def done(r: Row) -> bool:
            return r.status == "ReadyToGenerate" and r.locked_by is None

        r = self._write("retry_later", id_, "ReadyToGenerate", "ReadyToGenerate", done)
        if r is None:
            return
        r.locked_by = r.locked_until = None
        r.last_error, r.not_before = error, now + delay
        r.unknown_outcomes += 1 if unknown_outcome else 0

    async def release(self, id_, *, status, delay=0.0, error=None, uncount=False, count=False):
        now = self._call("release")

        def done(r: Row) -> bool:
            return r.status == status and r.locked_by is None

        def attempts(r: Row) -> int:  # never below 0, even for an old row's
            return max(
                0, r.attempts - (1 if uncount else 0) + (1 if count and status == "Generate" else 0)
            )

        r = self._write("release", id_, status, status, done, attempts)
        if r is None:
            return
        r.locked_by, r.locked_until = None, None
        if status == "Generate" and delay > 0:
            r.locked_until = now + delay
        if status == "ReadyToGenerate":
            r.not_before = now + delay
        r.attempts = attempts(r)
        r.last_error = error if error is not None else r.last_error
        self.released.append(id_)

    async def fail(self, id_, error, *, from_status, censored=False) -> None:
        self._call("fail")

        def done(r: Row) -> bool:
            return r.status == "Failed" and r.locked_by is None

        r = self._write("fail", id_, from_status, "Failed", done)
        if r is None:
            return
        r.status, r.last_error, r.censored = "Failed", error, censored
        r.locked_by = r.locked_until = None

    async def finalise(self, id_, handle, image, *, image_type="png", width=None, height=None):
        self._call("finalise")

        def done(r: Row) -> bool:
            return r.status == "ReadyToPublish" and r.uuid == handle

        r = self._write("finalise", id_, "Generate", "ReadyToPublish", done)
        if r is None:
            return
        r.status, r.image, r.uuid, r.last_error, r.censored = (
            "ReadyToPublish",
            image,
            handle,
            None,
            False,
        )
        r.image_type, r.image_size = image_type, (width, height)
        r.locked_by = r.locked_until = None

    async def renew(self, owned: dict[int, str]):
        now = self._call("renew")
        renewed, lost = set(), set()
        for id_, status in owned.items():
            r = self.rows.get(id_)
            if r is not None and r.locked_by == self.worker and id_ in self.locked:
                continue  # locked by another session for now: neither renewed nor lost
            same = r is not None and (
                r.status == status or (status, r.status) == ("ReadyToGenerate", "Generate")
            )
            if r is None or r.locked_by != self.worker:
                lost.add(id_)
            elif not same:  # an operator moved it: our lease on it is dropped
                r.locked_by = r.locked_until = None
                lost.add(id_)
            else:
                r.locked_until = now + self.lease
                renewed.add(id_)
        return renewed, lost

    async def release_rows(self, ids: list[int], *, unknown: Collection[int] = ()) -> int:
        self._call("release_rows")
        n = 0
        for id_ in ids:
            r = self.rows.get(id_)
            if r and r.locked_by == self.worker and r.status in LISTENER_STATUSES:
                r.locked_by = r.locked_until = None
                r.unknown_outcomes += 1 if id_ in unknown else 0
                self.released.append(id_)
                n += 1
        return n

    # -- reading -----------------------------------------------------------------------

    def statuses(self) -> Counter:
        return Counter(r.status for r in self.rows.values())


class FakeProvider:
    """Accepts every run after `run_time` seconds; each generation is ready after
    `generation_time` seconds. `on_submit` / `on_outcome` may raise or return instead."""

    name = "fake"
    title = "Fake API"
    credentials_help = "check FAKE_KEY"
    traits = Traits(
        honours_size=True, default_concurrency=8, unknown_outcome_resends=1, call_timeout=30.0
    )

    def __init__(self, *, run_time: float = 0.1, generation_time: float = 1.0) -> None:
        self.run_time = run_time
        self.generation_time = generation_time
        self.submitted: list[str] = []
        self.requests: list = []  # the Request of each submission
        self.checks: Counter = Counter()
        self.started: dict[str, float] = {}
        self.on_submit = None  # callable(request) -> Submitted | raise
        self.on_outcome = None  # callable(handle) -> Outcome | raise
        self.in_flight = 0
        self.max_in_flight = 0

    async def submit(self, request) -> Submitted:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await trio.sleep(self.run_time)
            self.submitted.append(request.prompt)
            self.requests.append(request)
            if self.on_submit is not None:
                return self.on_submit(request)
            handle = f"uuid-{len(self.submitted)}"
            self.started[handle] = trio.current_time()
            return Submitted(handle, check_after=0.0)
        finally:
            self.in_flight -= 1

    async def outcome(self, handle: str) -> Outcome:
        self.checks[handle] += 1
        self.in_flight += 1  # a status check is a call too (one API_CONCURRENCY limit)
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await trio.sleep(0.01)
        finally:
            self.in_flight -= 1
        if self.on_outcome is not None:
            return self.on_outcome(handle)
        if trio.current_time() - self.started.get(handle, 0) >= self.generation_time:
            return Ready(PNG_B64)
        return Pending()

    async def probe(self) -> None:
        return None


class FakeDrawProvider(FakeProvider):
    """The other shape (GigaChat's): `submit` is the blocking, paid draw and returns the
    drawn file's handle; `outcome` downloads it: Ready at the first ask, never Pending.

    The same knobs as FakeProvider, so one test runs with either: `run_time` + the
    `generation_time` is the draw (one call), `download_time` the download. It draws at
    its own size (honours_size False) and declares GigaChat's defaults: one call at a
    time, no automatic re-send of a draw whose outcome is unknown."""

    name = "fakedraw"
    title = "Fake drawing API"
    traits = Traits(
        honours_size=False,
        default_concurrency=1,
        unknown_outcome_resends=0,
        call_timeout=120.0,
        slot="call",
    )

    def __init__(self, *, run_time: float = 0.1, generation_time: float = 1.0) -> None:
        super().__init__(run_time=run_time, generation_time=generation_time)
        self.download_time = 0.05
        self.downloads: Counter = Counter()

    async def submit(self, request) -> Submitted:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await trio.sleep(self.run_time + self.generation_time)  # the draw
            self.submitted.append(request.prompt)
            self.requests.append(request)
            if self.on_submit is not None:
                return self.on_submit(request)
            handle = f"file-{len(self.submitted)}"
            self.started[handle] = trio.current_time() - self.generation_time
            return Submitted(handle)
        finally:
            self.in_flight -= 1

    async def outcome(self, handle: str) -> Outcome:
        self.checks[handle] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await trio.sleep(self.download_time)
            if self.on_outcome is not None:
                return self.on_outcome(handle)
            self.downloads[handle] += 1
            return Ready(PNG_B64)
        finally:
            self.in_flight -= 1


PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


async def accept_all(image: str, expected) -> ImageInfo:
    """The engine's validate seam, accepting everything (as the size asked for)."""
    width, height = expected or (1, 1)
    return ImageInfo("png", width, height, len(image))


# account -> its table: how a FakeStore's claim finds the slots it is asked to take
SLOT_TABLES: dict[str, FakeSlotTable] = {}


@dataclass
class FakeSlotTable:
    """listener_limits and listener_slots of one account, shared by the FakeSlotStores of
    several engines ("listeners") on one FakeStore: the rules of sql/queries.sql."""

    rows: FakeStore
    configured: int = 2
    effective: int = 2
    ceiling: int | None = None
    reason: str = "configured"
    changed_at: float = -1e9
    # slot -> [holder, held_until, image_id]
    slots: dict[int, list] = field(default_factory=dict)
    most_held: int = 0
    wanted: tuple = (None, -1e9)  # (worker, when) of the last listener without a slot
    gone: bool = False  # the account's row was deleted by hand (its slots with it)

    def __post_init__(self) -> None:
        self.account = f"fake:{id(self)}"
        SLOT_TABLES[self.account] = self

    def usable(self, worker: str, mine: list[int], limit: int, now: float) -> list[int]:
        """The slots a claim of `worker` may take: its own spare ones first, then free."""
        ok = [
            s
            for s in self.slots
            if s < self.effective
            and ((self.slots[s][0] == worker and s in mine) or self._free(s, now))
        ]
        return sorted(ok, key=lambda s: (s not in mine, s))[:limit]

    def delete(self) -> None:
        """DELETE FROM listener_limits: the slots go with the row (ON DELETE CASCADE)."""
        self.gone = True
        self.slots.clear()

    def fill(self) -> None:
        for n in range(self.configured):
            self.slots.setdefault(n, [None, None, None])

    def taken(self, now: float) -> int:
        return sum(1 for n in self.slots if not self._free(n, now))

    def _free(self, n: int, now: float) -> bool:
        holder, until, image = self.slots[n]
        if holder is not None and until >= now:
            return False
        row = self.rows.rows.get(image) if image is not None else None
        return not (row is not None and row.status == "Generate")


@dataclass
class FakeSlotStore:
    table: FakeSlotTable
    worker: str = "me"
    lease: float = 30.0

    @property
    def account(self) -> str:
        return self.table.account

    def _limits(self):
        from listener.engine.flow import Limits

        t, now = self.table, trio.current_time()
        orphaned = 0
        for _holder, until, image in t.slots.values():
            row = t.rows.rows.get(image) if image is not None else None
            if until is not None and until < now and row is not None and row.status == "Generate":
                orphaned += row.locked_until is None or row.locked_until < now
        who, when = t.wanted
        others = who not in (None, self.worker) and when > now - 1.0
        return Limits(t.configured, t.effective, t.ceiling, t.reason, "setting", orphaned, others)

    async def register(self, limit: int, *, explicit: bool):
        t = self.table
        if explicit or not t.slots:
            t.configured = t.effective = limit
        t.gone = False
        t.fill()
        return self._limits()

    async def read(self):
        await trio.lowlevel.checkpoint()
        if self.table.gone:
            raise LookupError(f"no listener_limits row for {self.account}")
        return self._limits()

    async def inherit(self, image_id: int):
        now = trio.current_time()
        for s, (holder, until, image) in self.table.slots.items():
            if image == image_id and (holder in (None, self.worker) or until < now):
                self.table.slots[s][:2] = [self.worker, now + self.lease]
                return s
        return None

    async def release(self, slots) -> None:
        await trio.lowlevel.checkpoint()  # a statement: a cancelled caller stops here
        for s in slots:
            entry = self.table.slots.get(s)  # gone with a deleted account row
            if entry is not None and entry[0] == self.worker:
                entry[:2] = [None, None]

    async def renew(self) -> None:
        now = trio.current_time()
        for entry in self.table.slots.values():
            if entry[0] == self.worker:
                entry[1] = now + self.lease

    async def lower(self, value, reason, cooldown):
        t, now = self.table, trio.current_time()
        if t.effective <= max(1, value) or t.changed_at >= now - cooldown:
            return None
        t.ceiling, t.effective, t.reason, t.changed_at = t.effective, max(1, value), reason, now
        return t.effective

    async def raise_(self, from_, reason):
        t = self.table
        if t.effective != from_ or t.effective >= t.configured:
            return None
        t.effective, t.reason, t.changed_at = t.effective + 1, reason, trio.current_time()
        return t.effective

    async def forget_ceiling(self) -> None:
        self.table.ceiling = None

    async def want(self) -> None:
        self.table.wanted = (self.worker, trio.current_time())


class LimitedProvider(FakeProvider):
    """A provider with a true limit: at most `limit` generations in progress (from run
    to the final status being fetched); a run beyond it is refused with a 429."""

    def __init__(self, *, limit: int, hint: float = 2.0, **kw) -> None:
        super().__init__(**kw)
        self.hint = hint  # the check_after it answers (Fusion Brain's status_time)
        self.limit = limit
        self.running: set[str] = set()
        self.most_running = 0
        self.refused = 0
        self.storm_until = -1.0  # refuse every run until then

    async def submit(self, request) -> Submitted:
        from listener.errors import ApiBusy

        if len(self.running) >= self.limit or trio.current_time() < self.storm_until:
            self.refused += 1
            await trio.sleep(self.run_time)
            raise ApiBusy("run: HTTP 429", retry_after=None, state="HTTP 429")
        sub = Submitted((await super().submit(request)).handle, check_after=self.hint)
        self.running.add(sub.handle)
        self.most_running = max(self.most_running, len(self.running))
        return sub

    async def outcome(self, handle: str) -> Outcome:
        out = await super().outcome(handle)
        if not isinstance(out, Pending):
            self.running.discard(handle)
        return out


class StopWhileClaiming(FakeStore):
    """The stop arrives while the claim's statement runs (its rows come back anyway)."""

    engine = None

    async def claim_ready(self, *args, **kwargs):
        rows = await super().claim_ready(*args, **kwargs)
        if rows and self.engine is not None:
            self.engine.stop("SIGTERM")
        return rows
