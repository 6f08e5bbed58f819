"""The engine's two seams, and the values that cross them.

`Store` is where rows live (PostgreSQL in production, `listener.store.PgStore`; a small
in-memory fake in the engine's own tests). `Provider` is an image API seen from the
engine: submit a request, learn its outcome, nothing more. Two shapes fit, and neither
leaks into the engine:

* submit-then-poll: `submit` starts a generation and returns its handle;
  `outcome` asks about it until it is final;
* draw-then-download: `submit` is the blocking, paid draw and returns the
  handle of the drawn file; `outcome` downloads it (Ready at the first ask).

In both, the handle is made durable in the row (its `uuid` column: "the provider's
handle") the moment `submit` returns, before anything else: after a crash the
generation is followed again, never submitted again.

Every write a `Store` makes for a row is fenced on the lease: it raises `LeaseLost` when
this worker no longer owns the row, and then clears this worker's lease on it in the same
step (where it still names us), so the row is nobody's rather than "ours" with no task.
A write retried after its first attempt landed unseen succeeds. The contract, refusals
included, is one test suite run against both stores (tests/test_store_contract.py): a new
method gets its contract test before the engine uses it.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Literal, Protocol


@dataclass(frozen=True)
class ReadyRow:
    """A claimed ReadyToGenerate row."""

    id: int
    prompt: str
    style: str | None = None
    width: int | None = None
    height: int | None = None
    negative_prompt: str | None = None
    attempts: int = 1  # this claim included
    last_error: str | None = None
    unknown_outcomes: int = 0  # runs sent whose outcome never came back
    style_prompt: str | None = None  # image_styles.system_prompt of its (or the default) style
    # For the metrics: seconds since the row fell due (not_before) and since it was
    # committed (created_at), by the database's clock at the claim.
    waited: float | None = None
    age: float | None = None


@dataclass(frozen=True)
class Generation:
    """A generation to follow: the provider's handle (uuid) is durable in the row."""

    id: int
    handle: str
    age: float = 0.0  # seconds since the provider accepted it, by the database's clock
    check_after: float = 0.0  # the provider's hint: no point asking before this
    width: int | None = None
    height: int | None = None
    # Set for a generation this process just paid for: its paid call's own deadline at a
    # stop (trio clock), which its first outcome check keeps too (a draw's download).
    until: float = -math.inf


@dataclass(frozen=True)
class Claimed:
    rows: list[Generation]
    next_due_in: float | None  # seconds until another generation may be adopted


@dataclass
class SlotAsk:
    """A claim bounded by the account's shared budget (listener.engine.flow): one slot per
    row, taken in the claim's own step, `mine` (slots this process holds, kept from
    earlier claims) first. A claim that comes back short gives the unused ones of `mine`
    back to the table. The store fills in `got` (the slot of each row returned, in order)
    and `free` (how many slots there were: 0 when the budget is spent)."""

    account: str
    mine: list[int]
    bind: bool  # the slot names its row: a generation outliving its holder keeps it
    known: list[int]  # every slot this process holds (repairs after a lost claim)
    got: list[int] = field(default_factory=list)
    free: int = 0


class Store(Protocol):
    """Every read and write the engine makes, by intent."""

    # `held`: the rows live tasks of this process hold (Leases); claims and due times
    # leave them out even when their lease lapsed, and only them.
    async def claim_ready(
        self, limit: int, *, held: Collection[int] = (), slots: SlotAsk | None = None
    ) -> list[ReadyRow]: ...
    async def next_ready_in(self, *, held: Collection[int] = ()) -> float | None: ...
    async def claim_generating(self, limit: int, *, held: Collection[int] = ()) -> Claimed: ...
    async def next_generating_in(self, *, held: Collection[int] = ()) -> float | None:
        """Seconds until the next lease of a Generate row not in `held` runs out."""
        ...

    async def record_accepted(self, id_: int, handle: str, *, keep: bool) -> None: ...
    async def retry_later(
        self, id_: int, *, delay: float, error: str, unknown_outcome: bool = False
    ) -> None: ...
    async def release(
        self,
        id_: int,
        *,
        status: str,
        delay: float = 0.0,
        error: str | None = None,
        uncount: bool = False,
        count: bool = False,
    ) -> None: ...
    async def fail(
        self, id_: int, error: str, *, from_status: str, censored: bool = False
    ) -> None: ...
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
        """The image, with what validation found it to be (media type, size)."""
        ...

    async def renew(self, owned: dict[int, str]) -> tuple[set[int], set[int]]:
        """Extend the leases of `owned` (id -> the status its task expects); return
        (renewed, lost). A row locked by someone else for now is in neither."""
        ...

    async def release_rows(self, ids: list[int], *, unknown: Collection[int] = ()) -> int:
        """Release the rows of `ids` still ours; those in `unknown` count one unknown
        outcome (a paid call cut off at a stop). Returns how many were released."""
        ...


@dataclass(frozen=True)
class Request:
    """One generation as the engine asks it of any provider (no provider's wire format).

    `prompt` is already cut to what every provider accepts and stripped; `row_id` and
    `attempt` let a provider derive an idempotency key (the same row and attempt is the
    same request). None means "the provider's own default" for the optional parts;
    `style_prompt` is the style's system message from `image_styles` for providers
    that express styles in words (NULL there: None here)."""

    row_id: int
    attempt: int
    prompt: str
    negative_prompt: str | None = None
    style: str | None = None
    width: int | None = None
    height: int | None = None
    style_prompt: str | None = None


@dataclass(frozen=True)
class Traits:
    """What the engine must respect, declared by each provider."""

    honours_size: bool  # the image comes back with the requested width and height
    default_concurrency: int  # default of API_CONCURRENCY: calls in flight per process
    unknown_outcome_resends: int  # default of UNKNOWN_OUTCOME_RESENDS
    call_timeout: float  # longest one paid call may take: shutdown waits this long for it
    slot: Literal["generation", "call"] = "call"  # what a shared concurrency slot counts


@dataclass(frozen=True)
class Submitted:
    """The provider took the request: it is paid for from now on."""

    handle: str
    check_after: float = 0.0  # no point asking for the outcome before this (seconds)


@dataclass(frozen=True)
class Pending:
    """Not finished yet: ask again later."""


@dataclass(frozen=True)
class Ready:
    """Finished: the image, base64-encoded, as the provider handed it out (once). PNG or
    JPEG: the engine's validation finds out which, and its size."""

    image: str


@dataclass(frozen=True)
class Refused:
    """Finished without an image (or refused at submit, before anything was paid for):
    the reason, and whether it was censorship."""

    reason: str
    censored: bool = False


Outcome = Pending | Ready | Refused


class Provider(Protocol):
    """An image API seen from the engine. Errors are `listener.errors.Api*`:
    ApiTransient / ApiOutcomeUnknown / ApiMalformed, ApiBusy, ApiPermanent / ApiNotFound,
    ApiCredentials, ApiQuotaExhausted. Every call (submit, outcome, probe) goes through
    the provider's one concurrency limit (API_CONCURRENCY), held inside the provider."""

    name: str  # the registry key, stored in rows (images.provider)
    title: str  # for log lines: "<Name> API"
    credentials_help: str  # what to check when the key is refused: names its variables
    traits: Traits

    async def submit(self, request: Request) -> Submitted | Refused: ...
    async def outcome(self, handle: str) -> Outcome: ...
    async def probe(self) -> None:
        """Any cheap authenticated call: raises ApiCredentials while the key is refused."""
        ...
