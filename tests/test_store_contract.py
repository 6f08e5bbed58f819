"""The Store contract: one suite, run against PostgreSQL (`listener.store.PgStore`) and
against the engine's in-memory fake (`tests.engine.fakes.FakeStore`).

The engine's fake-clock tests drive it through the fake; whatever they prove holds for the
service only as far as the fake does what PostgreSQL does. So every `Store` method is here,
with each way a write can be refused (lease lost, lease lapsed but still ours, status
changed by someone else, row deleted, a status the listener does not own, a rule broken
by an old row) and what each returns or raises, and both stores must agree. A new `Store`
method gets its contract test here before the engine uses it.

Times are relative: a backend arranges rows with leases and back-offs in seconds from
now, and reports them the same way (its own clock: trio's for the fake, the database's
for PostgreSQL).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from listener.config import load_settings
from listener.db import open_database
from listener.engine.flow import account_id
from listener.engine.ports import SlotAsk
from listener.errors import LeaseLost, RuleBroken
from listener.slotstore import PgSlots
from listener.store import PgStore
from tests.engine.fakes import FakeSlotTable, FakeStore, Row
from tests.fixtures.database import _create_db, _drop_db, with_dbname

LEASE = 30.0
COLUMNS = (
    "status",
    "uuid",
    "attempts",
    "locked_by",
    "last_error",
    "unknown_outcomes",
    "provider",
    "image_type",
)
PROVIDER = "fusionbrain"  # the provider the stores run (also the legacy one: PgStore's default)
ACCOUNT = account_id(PROVIDER, "key", "secret")


class FakeBackend:
    """Rows in memory, shared by the FakeStores of any number of workers."""

    def __init__(self) -> None:
        self.rows: dict[int, Row] = {}
        self.row_locks: set[int] = set()
        self.last_id = 0  # ids are never reused, as with a sequence
        self.styles: dict[str, str] = {}  # image_styles.system_prompt

    def store(self, worker: str = "w", provider: str = PROVIDER) -> FakeStore:
        return FakeStore(
            worker=worker,
            lease=LEASE,
            rows=self.rows,
            locked=self.row_locks,
            provider=provider,
            default_style="ANIME",
            styles=self.styles,
        )

    def style_words(self, name: str, words: str | None) -> None:
        if words is None:
            self.styles.pop(name, None)
        else:
            self.styles[name] = words

    def add(
        self, *, lease_in: float | None = None, not_before_in: float = -1.0, **cols: Any
    ) -> int:
        now = trio.current_time()
        id_ = self.last_id = self.last_id + 1
        locked_until = None if lease_in is None else now + lease_in
        self.rows[id_] = Row(
            id_,
            not_before=now + not_before_in,
            locked_until=locked_until,
            started=now,
            created=now,
            **{"prompt": "a fox", **cols},
        )
        return id_

    def set(self, id_: int, **cols: Any) -> None:
        for k, v in cols.items():
            setattr(self.rows[id_], k, v)

    def delete(self, id_: int) -> None:
        del self.rows[id_]

    def get(self, id_: int) -> dict[str, Any] | None:
        r = self.rows.get(id_)
        if r is None:
            return None
        now = trio.current_time()
        return {
            **{c: getattr(r, c) for c in COLUMNS},
            "lease_left": None if r.locked_until is None else r.locked_until - now,
            "not_before_in": r.not_before - now,
            "image": r.image,
            "censored": r.censored,
            "image_size": r.image_size or (None, None),
        }

    def add_status(self, name: str) -> None:
        pass  # the fake knows no list of statuses

    async def budget(self, limit: int) -> str:
        """The account's shared budget of `limit` slots; its account."""
        table = FakeSlotTable(self.store(), configured=limit, effective=limit)
        table.fill()
        self.slot_table = table
        return table.account

    def slots(self) -> dict[int, tuple[str | None, int | None]]:
        """slot -> (holder, image_id) of the slots someone holds."""
        return {n: (h, i) for n, (h, _, i) in self.slot_table.slots.items() if h is not None}

    @contextlib.contextmanager
    def locked(self, id_: int) -> Iterator[None]:
        self.row_locks.add(id_)
        try:
            yield
        finally:
            self.row_locks.discard(id_)


class PgBackend:
    """Rows in this test's own database, arranged and read with plain SQL."""

    def __init__(self, db, url: str) -> None:
        self.db, self.url = db, url
        self.conn = psycopg.connect(url, autocommit=True)

    def close(self) -> None:
        self.conn.close()

    def store(self, worker: str = "w", provider: str = PROVIDER) -> PgStore:
        return PgStore(self.db, worker, LEASE, provider=provider, default_style="ANIME")

    def style_words(self, name: str, words: str | None) -> None:
        self.conn.execute(
            "UPDATE image_styles SET system_prompt = %s WHERE name = %s", (words, name)
        )

    def add(
        self, *, lease_in: float | None = None, not_before_in: float = -1.0, **cols: Any
    ) -> int:
        cols = {"prompt": "a fox", **cols}
        names = ", ".join([*cols, "not_before", "locked_until"])
        marks = ", ".join(["%s"] * len(cols))
        (id_,) = self.conn.execute(
            f"INSERT INTO images ({names}) VALUES ({marks}, "
            "now() + make_interval(secs => %s), now() + make_interval(secs => %s)) "
            "RETURNING id",
            [*cols.values(), not_before_in, lease_in],
        ).fetchone()
        return id_

    def set(self, id_: int, **cols: Any) -> None:
        sets = ", ".join(f"{k} = %s" for k in cols)
        self.conn.execute(
            f"UPDATE images SET {sets} WHERE id = %s",
            [*cols.values(), id_],
        )

    def delete(self, id_: int) -> None:
        self.conn.execute("DELETE FROM images WHERE id = %s", (id_,))

    def get(self, id_: int) -> dict[str, Any] | None:
        cur = self.conn.cursor(row_factory=psycopg.rows.dict_row)
        row = cur.execute(
            f"SELECT {', '.join(COLUMNS)}, "
            "extract(epoch FROM locked_until - now())::float8 AS lease_left, "
            "extract(epoch FROM not_before - now())::float8 AS not_before_in, "
            "base64 AS image, censored, image_width, image_height FROM images WHERE id = %s",
            (id_,),
        ).fetchone()
        if row is not None:
            row["image_size"] = (row.pop("image_width"), row.pop("image_height"))
        return row

    def add_status(self, name: str) -> None:
        self.conn.execute("INSERT INTO image_statuses (name) VALUES (%s)", (name,))

    async def budget(self, limit: int) -> str:
        self.conn.execute("DELETE FROM listener_limits")
        slots = PgSlots(self.db, account=ACCOUNT, provider=PROVIDER, worker="w", lease=LEASE)
        await slots.register(limit, explicit=True)
        return ACCOUNT

    def slots(self) -> dict[int, tuple[str | None, int | None]]:
        rows = self.conn.execute(
            "SELECT slot, holder, image_id FROM listener_slots WHERE holder IS NOT NULL"
        ).fetchall()
        return {n: (h, i) for n, h, i in rows}

    def break_rule(self, id_: int, **cols: Any) -> None:
        """Give the row values a rule forbids, behind the rules' back (an old row)."""
        rules = {"attempts": "attempts_must_not_be_negative", "prompt": "prompt_must_not_be_blank"}
        for column in cols:
            (definition,) = self.conn.execute(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = %s",
                (rules[column],),
            ).fetchone()
            self.conn.execute(f"ALTER TABLE images DROP CONSTRAINT {rules[column]}")
            self.set(id_, **{column: cols[column]})
            self.conn.execute(
                f"ALTER TABLE images ADD CONSTRAINT {rules[column]} "
                f"{definition.removesuffix(' NOT VALID')} NOT VALID"
            )

    @contextlib.contextmanager
    def locked(self, id_: int) -> Iterator[None]:
        """Another session holds the row (an operator's SELECT ... FOR UPDATE)."""
        with psycopg.connect(self.url) as other:
            other.execute("SELECT 1 FROM images WHERE id = %s FOR UPDATE", (id_,))
            yield
            other.rollback()


def _break_rule_fake(self: FakeBackend, id_: int, **cols: Any) -> None:
    self.set(id_, **cols)


FakeBackend.break_rule = _break_rule_fake  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def contract_database(admin_url: str, template_db: str) -> Iterator[str]:
    """One copy of the template for the whole suite, emptied before each test: a fresh
    database per test would cost the suite a minute of copying."""
    name = f"fbl_contract_{os.getpid()}"
    _create_db(admin_url, name, template_db)
    try:
        yield with_dbname(admin_url, name)
    finally:
        _drop_db(admin_url, name)


@pytest.fixture(params=["fake", "postgres"])
async def backend(request) -> AsyncIterator[Any]:
    if request.param == "fake":
        yield FakeBackend()
        return
    url = request.getfixturevalue("contract_database")
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("TRUNCATE images RESTART IDENTITY")
        c.execute("DELETE FROM image_statuses WHERE name = 'Published'")
    settings = load_settings(
        env_file=None, database_url=url, db_max_open_conns=4, db_max_idle_conns=1
    )
    async with open_database(url, settings, application_name="fbl-contract") as db:
        pg = PgBackend(db, url)
        try:
            yield pg
        finally:
            pg.close()


def near(value: float | None, expected: float, slack: float = 2.0) -> bool:
    return value is not None and expected - slack <= value <= expected + slack


# -- claim_ready / next_ready_in -------------------------------------------------------


async def test_claim_ready_takes_a_slot_per_row_in_the_same_step(backend):
    """The account's shared budget (SlotAsk): a row is claimed only with a slot of its
    own, ours kept from earlier claims first; none free, nothing claimed (free = 0); a
    claim that comes back short gives our unused slots back to the table."""
    account = await backend.budget(3)
    a, b, c, d = (backend.add(not_before_in=-4 + i) for i in range(4))
    store = backend.store("w")

    def ask(mine: list[int], bind: bool = True) -> SlotAsk:
        return SlotAsk(account=account, mine=mine, bind=bind, known=mine)

    first = ask([])
    got = await store.claim_ready(2, slots=first)
    assert [r.id for r in got] == [a, b] and first.free == 2 and sorted(first.got) == [0, 1]
    assert backend.slots() == {s: ("w", r.id) for s, r in zip(first.got, got, strict=True)}
    # bounded by the slots left, not by the rows due
    second = ask([])
    assert [r.id for r in await store.claim_ready(5, slots=second)] == [c]
    assert second.free == 1 and second.got == [2]
    third = ask([])
    assert await store.claim_ready(5, slots=third) == [] and third.free == 0
    assert backend.get(d)["locked_by"] is None  # no slot, no claim
    # row a's generation is over: its slot is ours to reuse (mine), and the claim that
    # takes d with it, asked for more, comes back short
    backend.set(a, status="Failed", locked_by=None, locked_until=None)
    backend.set(b, status="Failed", locked_by=None, locked_until=None)
    fourth = ask([first.got[0], first.got[1]], bind=False)
    assert [r.id for r in await store.claim_ready(5, slots=fourth)] == [d]
    assert fourth.got == [first.got[0]] and fourth.free == 2
    # a call slot (bind=False) names no row; the unused one of ours went back
    held = backend.slots()
    assert held[first.got[0]] == ("w", None) and first.got[1] not in held
    # another listener cannot take what we hold
    other = SlotAsk(account=account, mine=[first.got[0]], bind=True, known=[])
    backend.add()
    assert await backend.store("x").claim_ready(5, slots=other) != []
    assert other.got == [first.got[1]]  # the free one, not ours


async def test_claim_ready_takes_due_free_rows_in_order_counts_the_attempt_and_leases(backend):
    later = backend.add(not_before_in=-1)
    first = backend.add(
        not_before_in=-5,
        style="UHD",
        width=512,
        height=768,
        negative_prompt="blur",
        last_error="HTTP 503",
        unknown_outcomes=1,
        attempts=2,
    )
    backend.add(not_before_in=60)  # not due yet
    backend.add(status="Generate", uuid="u")  # not waiting
    claimed = await backend.store().claim_ready(1)
    assert [(r.id, r.prompt, r.style, r.width, r.height, r.negative_prompt) for r in claimed] == [
        (first, "a fox", "UHD", 512, 768, "blur")
    ]
    assert (claimed[0].attempts, claimed[0].last_error, claimed[0].unknown_outcomes) == (
        3,
        "HTTP 503",
        1,
    )
    row = backend.get(first)
    assert (row["attempts"], row["locked_by"]) == (3, "w") and near(row["lease_left"], LEASE)
    assert [r.id for r in await backend.store().claim_ready(10)] == [later]
    assert await backend.store().claim_ready(10) == []


async def test_claim_ready_leaves_held_rows_out_and_takes_lapsed_leases(backend):
    live_other = backend.add(locked_by="x", lease_in=20)
    lapsed_other = backend.add(locked_by="x", lease_in=-1)
    lapsed_ours_no_task = backend.add(locked_by="w", lease_in=-1)
    lapsed_ours_held = backend.add(locked_by="w", lease_in=-1)
    locked_now = backend.add()
    with backend.locked(locked_now):
        claimed = await backend.store().claim_ready(10, held=[lapsed_ours_held])
    assert sorted(r.id for r in claimed) == [lapsed_other, lapsed_ours_no_task]
    assert backend.get(live_other)["locked_by"] == "x"
    assert backend.get(lapsed_ours_held)["attempts"] == 0  # untouched


async def test_claim_ready_leaves_a_row_that_breaks_a_rule_out(backend):
    good = backend.add()
    bad = backend.add()
    backend.break_rule(bad, prompt="   ")
    assert [r.id for r in await backend.store().claim_ready(10)] == [good]
    assert backend.get(bad)["locked_by"] is None
    assert await backend.store().next_ready_in(held=[good]) is None  # never looks due


async def test_next_ready_in(backend):
    s = backend.store()
    assert await s.next_ready_in() is None
    retry = backend.add(not_before_in=40)
    assert near(await s.next_ready_in(), 40)
    other = backend.add(locked_by="x", lease_in=20)  # another listener's lease runs out
    assert near(await s.next_ready_in(), 20)
    assert near(await s.next_ready_in(held=[other]), 40)  # only ids held by our tasks
    backend.set(retry, status="Failed")
    backend.set(other, status="Failed")
    backend.add(not_before_in=-3)
    assert await s.next_ready_in() == 0.0  # due now


# -- claim_generating / next_generating_in ---------------------------------------------


async def test_claim_generating_adopts_orphans_and_says_when_the_next_lease_runs_out(backend):
    never_leased = backend.add(status="Generate", uuid="seed", width=256, height=128, attempts=1)
    lapsed = backend.add(status="Generate", uuid="dead", locked_by="x", lease_in=-2)
    backend.add(status="Generate", uuid="live", locked_by="x", lease_in=15)
    held = backend.add(status="Generate", uuid="mine", locked_by="w", lease_in=-2)
    backend.add(status="ReadyToGenerate")
    claimed = await backend.store().claim_generating(10, held=[held])
    got = [(g.id, g.handle, g.width, g.height) for g in claimed.rows]
    assert got == [
        (never_leased, "seed", 256, 128),  # never leased first
        (lapsed, "dead", None, None),
    ]
    assert all(g.age >= 0 for g in claimed.rows)
    assert near(claimed.next_due_in, 15)
    assert backend.get(lapsed)["locked_by"] == "w" and near(backend.get(lapsed)["lease_left"], 30)
    assert backend.get(held)["locked_by"] == "w" and backend.get(held)["lease_left"] < 0
    assert near(await backend.store().next_generating_in(held=[held]), 15)


async def test_claim_generating_a_full_batch_is_due_again_at_once(backend):
    for i in range(3):
        backend.add(status="Generate", uuid=f"u{i}")
    claimed = await backend.store().claim_generating(2)
    assert len(claimed.rows) == 2 and claimed.next_due_in == 0.0


async def test_claim_generating_leaves_out_rows_that_cannot_move_on(backend):
    bad = backend.add(status="Generate", uuid="u")
    backend.break_rule(bad, attempts=-1)
    claimed = await backend.store().claim_generating(10)
    assert (claimed.rows, claimed.next_due_in) == ([], None)
    assert await backend.store().next_generating_in() is None


async def test_next_generating_in_says_now_for_a_generation_nobody_holds(backend):
    # e.g. a claim skipped it (its row locked by a dying listener's backend): without
    # this, nothing would look at it again before the sweep
    s = backend.store()
    lapsed = backend.add(status="Generate", uuid="a", locked_by="x", lease_in=-2)
    backend.add(status="Generate", uuid="b", locked_by="x", lease_in=25)
    assert await s.next_generating_in() == 0.0
    assert near(await s.next_generating_in(held=[lapsed]), 25)
    never = backend.add(status="Generate", uuid="c")
    assert await s.next_generating_in(held=[lapsed]) == 0.0
    assert near(await s.next_generating_in(held=[lapsed, never]), 25)


async def test_next_generating_in_counts_every_lease_but_those_of_held_rows(backend):
    s = backend.store()
    assert await s.next_generating_in() is None
    ours_no_task = backend.add(status="Generate", uuid="a", locked_by="w", lease_in=10)
    backend.add(status="Generate", uuid="b", locked_by="x", lease_in=25)
    assert near(await s.next_generating_in(), 10)
    assert near(await s.next_generating_in(held=[ours_no_task]), 25)


# -- the provider rule (0018) and what a claim returns besides the row ------------------


async def test_the_claims_take_rows_for_any_provider_or_pinned_to_ours(backend):
    anyone = backend.add()
    pinned_ours = backend.add(provider=PROVIDER)
    pinned_other = backend.add(provider="gigachat")
    others_lease = backend.add(provider="gigachat", locked_by="x", lease_in=20)
    s = backend.store()
    assert await s.next_ready_in() == 0.0
    claimed = await s.claim_ready(10)
    assert sorted(r.id for r in claimed) == [anyone, pinned_ours]
    held = [anyone, pinned_ours]
    assert await s.next_ready_in(held=held) is None  # the other provider's rows: not ours
    assert backend.get(pinned_other)["locked_by"] is None
    assert backend.get(others_lease)["locked_by"] == "x"
    other = backend.store("v", provider="gigachat")
    assert near(await other.next_ready_in(), 0.0)
    assert [r.id for r in await other.claim_ready(10)] == [pinned_other]


async def test_claim_generating_takes_only_the_generations_our_provider_accepted(backend):
    ours = backend.add(status="Generate", uuid="a", provider=PROVIDER)
    legacy = backend.add(status="Generate", uuid="b")  # written before 0018: the legacy's
    theirs = backend.add(status="Generate", uuid="c", provider="gigachat")
    backend.add(status="Generate", uuid="d", provider="gigachat", locked_by="x", lease_in=20)
    claimed = await backend.store().claim_generating(10)
    assert sorted(g.id for g in claimed.rows) == [ours, legacy]
    # its own new leases (30 s), not the other provider's (20 s): not ours to wait for
    assert near(claimed.next_due_in, LEASE)
    assert await backend.store().next_generating_in(held=[ours, legacy]) is None
    other = backend.store("v", provider="gigachat")
    assert await other.next_generating_in() == 0.0  # its generation nobody follows: now
    assert [g.id for g in (await other.claim_generating(10)).rows] == [theirs]
    assert near(await other.next_generating_in(held=[theirs]), 20)


async def test_claim_ready_returns_the_style_words_and_how_long_the_row_waited(backend):
    backend.style_words("UHD", "Draw a detailed photo.")
    backend.style_words("ANIME", None)
    styled = backend.add(style="UHD", not_before_in=-40)
    plain = backend.add(not_before_in=-10)
    claimed = {r.id: r for r in await backend.store().claim_ready(10)}
    assert claimed[styled].style_prompt == "Draw a detailed photo."
    assert claimed[plain].style_prompt is None  # DEFAULT_STYLE's words: none
    assert near(claimed[styled].waited, 40) and near(claimed[plain].waited, 10)
    assert all(near(r.age, 0.0) for r in claimed.values())
    backend.style_words("ANIME", "Draw it as anime.")  # a row naming no style: the default's
    later = backend.add()
    (row,) = await backend.store().claim_ready(10)
    assert (row.id, row.style_prompt) == (later, "Draw it as anime.")


# -- the fenced writes -----------------------------------------------------------------

# name -> (the status the task expects, the call, the row's state after it landed)
WRITES: dict[str, tuple[str, Any, dict[str, Any]]] = {
    "record_accepted keep": (
        "ReadyToGenerate",
        lambda s, i: s.record_accepted(i, "u1", keep=True),
        # the handle means something to the provider that accepted it only: named
        {
            "status": "Generate",
            "uuid": "u1",
            "locked_by": "w",
            "last_error": None,
            "provider": PROVIDER,
        },
    ),
    "record_accepted release": (
        "ReadyToGenerate",
        lambda s, i: s.record_accepted(i, "u1", keep=False),
        {
            "status": "Generate",
            "uuid": "u1",
            "locked_by": None,
            "lease_left": None,
            "provider": PROVIDER,
        },
    ),
    "retry_later": (
        "ReadyToGenerate",
        lambda s, i: s.retry_later(i, delay=60, error="HTTP 503", unknown_outcome=True),
        {
            "status": "ReadyToGenerate",
            "locked_by": None,
            "lease_left": None,
            "last_error": "HTTP 503",
            "unknown_outcomes": 1,
        },
    ),
    "release waiting": (
        "ReadyToGenerate",
        lambda s, i: s.release(i, status="ReadyToGenerate", delay=5, error="busy", uncount=True),
        {
            "status": "ReadyToGenerate",
            "locked_by": None,
            "lease_left": None,
            "last_error": "busy",
            "attempts": 1,
        },
    ),
    "release generation": (
        "Generate",
        lambda s, i: s.release(i, status="Generate", delay=5, error="oops", count=True),
        {"status": "Generate", "locked_by": None, "last_error": "oops", "attempts": 3},
    ),
    "fail": (
        "Generate",
        lambda s, i: s.fail(i, "censored", from_status="Generate", censored=True),
        {
            "status": "Failed",
            "locked_by": None,
            "lease_left": None,
            "last_error": "censored",
            "censored": True,
        },
    ),
    "finalise": (
        "Generate",
        lambda s, i: s.finalise(i, "u1", "AAAA", image_type="jpeg", width=640, height=480),
        {
            "status": "ReadyToPublish",
            "uuid": "u1",
            "image": "AAAA",
            "image_type": "jpeg",
            "image_size": (640, 480),
            "locked_by": None,
            "lease_left": None,
            "last_error": None,
        },
    ),
}


def claimed_row(backend, status: str, lease_in: float = 20, **cols: Any) -> int:
    base = {"uuid": "u1" if status == "Generate" else None, "attempts": 2, "last_error": "old"}
    return backend.add(status=status, locked_by="w", lease_in=lease_in, **{**base, **cols})


def assert_state(row: dict[str, Any], expected: dict[str, Any]) -> None:
    got = {k: row[k] for k in expected}
    assert got == expected, (got, expected)


@pytest.mark.parametrize("write", WRITES)
async def test_a_write_lands_on_a_row_that_is_ours(backend, write):
    status, call, after = WRITES[write]
    id_ = claimed_row(backend, status)
    await call(backend.store(), id_)
    row = backend.get(id_)
    assert_state(row, after)
    if write == "retry_later":
        assert near(row["not_before_in"], 60)
    if write == "release waiting":
        assert near(row["not_before_in"], 5)
    if write == "release generation":  # a back-off in locked_until, owned by nobody
        assert near(row["lease_left"], 5)
    if write == "record_accepted keep":
        assert near(row["lease_left"], LEASE)


@pytest.mark.parametrize("write", WRITES)
async def test_a_write_retried_after_it_landed_succeeds_and_changes_nothing(backend, write):
    """The answer to its COMMIT was lost: the retry finds its own write there."""
    status, call, _ = WRITES[write]
    id_ = claimed_row(backend, status)
    await call(backend.store(), id_)
    before = backend.get(id_)
    await call(backend.store(), id_)
    again = backend.get(id_)
    assert {k: v for k, v in again.items() if k not in ("lease_left", "not_before_in")} == {
        k: v for k, v in before.items() if k not in ("lease_left", "not_before_in")
    }
    assert (again["lease_left"] is None) == (before["lease_left"] is None)


@pytest.mark.parametrize("write", WRITES)
async def test_a_write_on_a_lapsed_lease_still_ours_lands(backend, write):
    status, call, after = WRITES[write]
    id_ = claimed_row(backend, status, lease_in=-10)
    await call(backend.store(), id_)
    assert_state(backend.get(id_), after)


@pytest.mark.parametrize("write", WRITES)
async def test_a_write_on_a_row_another_listener_took_is_refused_and_leaves_it(backend, write):
    status, call, _ = WRITES[write]
    id_ = claimed_row(backend, status)
    backend.set(id_, locked_by="thief")
    with pytest.raises(LeaseLost, match="write refused"):
        await call(backend.store(), id_)
    row = backend.get(id_)
    assert (row["status"], row["locked_by"], row["attempts"]) == (status, "thief", 2)


MOVES = [
    (write, moved_to)
    for write in WRITES
    for moved_to in ("ReadyToGenerate", "Generate", "Failed", "Published")
    if moved_to != WRITES[write][0]
]


@pytest.mark.parametrize(("write", "moved_to"), MOVES)
async def test_a_write_on_a_row_moved_by_someone_else_is_refused_and_lets_go(
    backend, write, moved_to
):
    """An operator moved it (by hand, our lease left in place): the write is refused, and
    the same step clears our lease; the status stays theirs."""
    status, call, _ = WRITES[write]
    backend.add_status("Published")
    id_ = claimed_row(backend, status)
    backend.set(id_, status=moved_to, uuid="theirs" if moved_to != "ReadyToGenerate" else None)
    with pytest.raises(LeaseLost, match="write refused"):
        await call(backend.store(), id_)
    row = backend.get(id_)
    assert (row["status"], row["locked_by"], row["lease_left"]) == (moved_to, None, None)
    assert (row["attempts"], row["last_error"]) == (2, "old")


@pytest.mark.parametrize("write", WRITES)
async def test_a_write_on_a_deleted_row_is_refused(backend, write):
    status, call, _ = WRITES[write]
    id_ = claimed_row(backend, status)
    backend.delete(id_)
    with pytest.raises(LeaseLost, match="deleted"):
        await call(backend.store(), id_)


@pytest.mark.parametrize("write", WRITES)
async def test_a_write_on_an_old_row_that_breaks_a_rule_raises_and_changes_nothing(backend, write):
    """Every UPDATE is checked against every rule. A release sets attempts (never below
    0), so it mends the row and lands; any other write raises and changes nothing."""
    status, call, after = WRITES[write]
    id_ = claimed_row(backend, status)
    backend.break_rule(id_, attempts=-1)
    if write.startswith("release"):
        await call(backend.store(), id_)
        assert_state(backend.get(id_), {**after, "attempts": 0})
        return
    with pytest.raises(RuleBroken):
        await call(backend.store(), id_)
    row = backend.get(id_)
    assert (row["status"], row["locked_by"], row["attempts"]) == (status, "w", -1)


async def test_a_write_that_would_leave_a_waiting_row_breaking_a_rule_raises(backend):
    id_ = claimed_row(backend, "ReadyToGenerate")
    backend.break_rule(id_, prompt="  ")
    with pytest.raises(RuleBroken):
        await backend.store().retry_later(id_, delay=1, error="x")
    await backend.store().fail(id_, "blank prompt", from_status="ReadyToGenerate")
    assert backend.get(id_)["status"] == "Failed"  # a Failed row may have a blank prompt


# -- renew -----------------------------------------------------------------------------


async def test_renew_extends_the_rows_of_live_tasks_and_reports_the_lost(backend):
    backend.add_status("Published")
    followed = claimed_row(backend, "Generate", lease_in=2)
    submitting = claimed_row(backend, "ReadyToGenerate", lease_in=2)
    moved_on = claimed_row(backend, "ReadyToGenerate", lease_in=2)  # its own move landed
    backend.set(moved_on, status="Generate", uuid="u9")
    moved_back = claimed_row(backend, "Generate")
    backend.set(moved_back, status="ReadyToGenerate", uuid=None)
    published = claimed_row(backend, "Generate")
    backend.set(published, status="Published")
    taken = claimed_row(backend, "Generate")
    backend.set(taken, locked_by="x")
    deleted = claimed_row(backend, "Generate")
    backend.delete(deleted)
    locked = claimed_row(backend, "Generate", lease_in=2)
    no_task = claimed_row(backend, "Generate", lease_in=2)
    owned = {
        followed: "Generate",
        submitting: "ReadyToGenerate",
        moved_on: "ReadyToGenerate",
        moved_back: "Generate",
        published: "Generate",
        taken: "Generate",
        deleted: "Generate",
        locked: "Generate",
    }
    with backend.locked(locked):
        renewed, lost = await backend.store().renew(owned)
    assert renewed == {followed, submitting, moved_on}
    assert lost == {moved_back, published, taken, deleted}  # locked: neither, for now
    for id_ in renewed:
        assert near(backend.get(id_)["lease_left"], LEASE)
    for id_ in (moved_back, published):  # our lease dropped, their status kept
        assert backend.get(id_)["locked_by"] is None
    assert backend.get(moved_back)["status"] == "ReadyToGenerate"
    assert backend.get(published)["status"] == "Published"
    assert backend.get(taken)["locked_by"] == "x"
    assert backend.get(locked)["lease_left"] < 3 and backend.get(no_task)["lease_left"] < 3
    assert await backend.store().renew({}) == (set(), set())


# -- release_rows ----------------------------------------------------------------------


async def test_release_rows_releases_ours_and_counts_the_cut_off_runs(backend):
    backend.add_status("Published")
    waiting = claimed_row(backend, "ReadyToGenerate")
    cut_off = claimed_row(backend, "ReadyToGenerate")
    following = claimed_row(backend, "Generate")
    theirs = backend.add(status="Generate", uuid="t", locked_by="x", lease_in=20)
    published = claimed_row(backend, "Generate")
    backend.set(published, status="Published")
    ids = [waiting, cut_off, following, theirs, published]
    assert await backend.store().release_rows(ids, unknown=[cut_off, theirs]) == 3
    for id_ in (waiting, cut_off, following):
        row = backend.get(id_)
        assert (row["locked_by"], row["lease_left"]) == (None, None)
    assert backend.get(following)["uuid"] == "u1"  # resumed later, never sent again
    assert [backend.get(i)["unknown_outcomes"] for i in ids] == [0, 1, 0, 0, 0]
    assert backend.get(theirs)["locked_by"] == "x"
    assert backend.get(published)["locked_by"] == "w"  # another application's status
    assert await backend.store().release_rows([]) == 0


# -- several workers -------------------------------------------------------------------


async def test_two_workers_never_claim_the_same_row(backend):
    for _ in range(30):
        backend.add()
    got: dict[str, list[int]] = {"a": [], "b": []}

    async def claim(worker: str) -> None:
        store = backend.store(worker)
        while claimed := await store.claim_ready(3):
            got[worker] += [r.id for r in claimed]

    async with trio.open_nursery() as n:
        n.start_soon(claim, "a")
        n.start_soon(claim, "b")
    everything = got["a"] + got["b"]
    assert len(everything) == len(set(everything)) == 30


def test_both_stores_have_the_same_methods() -> None:
    """A method only one store has is a method without a contract test."""

    def methods(cls: type) -> set[str]:
        return {n for n in vars(cls) if not n.startswith("_") and callable(getattr(cls, n))}

    fake_only = {"add", "statuses"}  # arranging and reading the fake in tests
    assert methods(PgStore) == methods(FakeStore) - fake_only
    tested = Path(__file__).read_text(encoding="utf-8")
    for name in methods(PgStore):
        assert f".{name}(" in tested, f"{name} has no contract test"
