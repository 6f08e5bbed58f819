"""The engine's two seams, and the values that cross them.

`Store` is where rows live (PostgreSQL in production, `listener.store.PgStore`; a small
in-memory fake in the engine's own tests). `Provider` is an image API seen from the
engine: submit a request, learn its outcome, nothing more. Fusion Brain submits and is
polled; a provider that draws in one blocking call (GigaChat) returns its outcome from
`submit` already known and is "polled" once; neither shape leaks into the engine.

Every write a `Store` makes for a row is fenced on the lease: it raises `LeaseLost` when
this worker no longer owns the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from listener.api.models import GenerationRequest


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
    # For the metrics: seconds since the row fell due (not_before) and since it was
    # committed (created_at), by the database's clock at the claim.
    waited: float | None = None
    age: float | None = None


@dataclass(frozen=True)
class Generation:
    """A generation to follow: the provider's handle (uuid) is durable in the row."""

    id: int
    handle: str
    prompt: str = ""
    age: float = 0.0  # seconds since the provider accepted it, by the database's clock
    check_after: float = 0.0  # the provider's hint: no point asking before this
    width: int | None = None
    height: int | None = None
    attempts: int = 0


@dataclass(frozen=True)
class Claimed:
    rows: list[Generation]
    next_due_in: float | None  # seconds until another generation may be adopted


class Store(Protocol):
    """Every read and write the engine makes, by intent."""

    async def claim_ready(self, limit: int) -> list[ReadyRow]: ...
    async def next_ready_in(self) -> float | None: ...
    async def claim_generating(self, limit: int) -> Claimed: ...
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
    async def finalise(self, id_: int, handle: str, image: str) -> None: ...
    async def renew(self, owned: dict[int, str]) -> tuple[set[int], set[int]]:
        """Extend the leases of `owned` (id -> the status its task expects); return
        (renewed, lost). A row locked by someone else for now is in neither."""
        ...

    async def release_rows(self, ids: list[int]) -> int: ...


@dataclass(frozen=True)
class Submitted:
    """The provider took the request: it is paid for from now on."""

    handle: str
    check_after: float = 0.0


@dataclass(frozen=True)
class Pending:
    """Not finished yet: ask again later."""


@dataclass(frozen=True)
class Ready:
    """Finished: the image, base64-encoded, as the provider handed it out (once)."""

    image: str


@dataclass(frozen=True)
class Refused:
    """Finished without an image: the reason, and whether it was censorship."""

    reason: str
    censored: bool = False


Outcome = Pending | Ready | Refused


class Provider(Protocol):
    name: str
    honours_size: bool  # the image comes back with the requested width and height

    async def submit(self, request: GenerationRequest) -> Submitted: ...
    async def outcome(self, handle: str) -> Outcome: ...
    async def probe(self) -> None:
        """Any cheap authenticated call: raises ApiCredentials while the key is refused."""
        ...
