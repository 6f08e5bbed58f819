"""One error hierarchy for the whole service.

Every exception the service raises on purpose derives from `ListenerError`; the class
docstring is the default message. Driver and HTTP errors are translated into these in one
place each (`listener.db` for psycopg, each provider's client for httpx), always with
``raise ... from exc`` so the cause survives for debugging but never reaches a user-facing
line (which could carry a connection string).

    ListenerError
    ├── ConfigError              bad setting; exit code 2, one line naming the variable
    ├── UsageError               bad command-line argument; exit code 2
    ├── NotFound                 operator command: no image with that id; exit code 3
    ├── WrongState               operator command: not allowed in the row's status; exit 4
    ├── WaitTimeout              `enqueue --wait` gave up; exit code 5
    ├── DatabaseError            the database could not be reached or refused us
    │   ├── DatabaseUnavailable  connection lost / refused: transient, retried with backoff
    │   ├── DatabaseBusy         statement timeout, lock or deadlock: retried with backoff
    │   ├── RuleBroken           a row breaks a rule of the table (CHECK, foreign key)
    │   ├── SchemaNotMigrated    the images schema is missing or older than this release
    │   └── LeaseLost            another worker now owns the row; our write was refused
    ├── InvalidImage             an image that is not a PNG or JPEG of sane dimensions
    └── ApiError                 the image provider's API did not give what we asked for
        ├── ApiTransient         network, timeout, 5xx or 3xx on a read: try again
        │   ├── ApiNotTaken      408, 425, 429: not taken, free; wait and send again
        │   ├── ApiOutcomeUnknown  a paid request may have been carried out (timeout, 5xx
        │   │                    after sending, an answer we cannot read): counted
        │   └── ApiMalformed     an answer of the wrong shape, too large or too deep
        ├── ApiBusy              the provider says "wait": never an attempt, never a failure
        ├── ApiPermanent         400, 404, 415...: retrying cannot help
        │   ├── ApiNotFound      the handle is unknown (result fetched already or expired)
        │   └── BlankPrompt      nothing but white space or invisible characters: not sent
        ├── ApiCredentials       key refused: stop generating, say so loudly, probe
        └── ApiQuotaExhausted    the paid quota is used up: drawing pauses, rows wait

Each provider's client says which of its answers is which (its module docstring); the
words here are the engine's, never one provider's.
"""

from __future__ import annotations


class ListenerError(Exception):
    """The listener failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(ListenerError):
    """The configuration is invalid."""

    exit_code = 2


class UsageError(ListenerError):
    """The command line is invalid."""

    exit_code = 2


class NotFound(ListenerError):
    """No image with that id."""

    exit_code = 3


class WrongState(ListenerError):
    """The image is not in a state that allows this."""

    exit_code = 4


class WaitTimeout(ListenerError):
    """Gave up waiting for the image."""

    exit_code = 5


class DatabaseError(ListenerError):
    """The database refused the request."""


class DatabaseUnavailable(DatabaseError):
    """The database cannot be reached."""


class DatabaseBusy(DatabaseError):
    """The database could not take the statement now (timeout behind a lock, deadlock)."""


class LaneBusy(DatabaseError):
    """A statement waited its lane's longest turn and was not sent: run it elsewhere."""


class RuleBroken(DatabaseError):
    """A row breaks a rule of the table (a CHECK or foreign key constraint)."""


class SchemaNotMigrated(DatabaseError):
    """The database schema is not migrated: run `listener migrate` (make migrate)."""


class LeaseLost(DatabaseError):
    """Another worker owns this row now; the write was refused."""


class ApiError(ListenerError):
    """The image provider's API request failed."""


class ApiTransient(ApiError):
    """The image provider's API is temporarily unavailable."""

    def __init__(self, message: str | None = None, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ApiOutcomeUnknown(ApiTransient):
    """The paid request may have been carried out by the API, but no usable answer came
    back (no answer in time, a dropped connection, a 5xx, a 2xx that cannot be read)."""


class ApiNotTaken(ApiTransient):
    """The API said it did not take the request (408, 425, 429): nothing was charged, the
    request may be sent again once the API has room (Retry-After when it gives one).
    `status_code` tells a 429 (too many: the shared concurrency budget lowers its
    effective value) from a 408 or 425."""

    def __init__(
        self,
        message: str | None = None,
        *,
        retry_after: float | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.status_code = status_code


class ApiBusy(ApiError):
    """The image provider is busy: wait before asking again.

    Never counted as an attempt and never fails a row. `retry_after` is the provider's
    own hint (seconds, capped by the engine); `state` its word for it, already
    sanitized (for the log line only)."""

    def __init__(
        self,
        message: str | None = None,
        *,
        retry_after: float | None = None,
        state: str | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.state = state


class ApiPermanent(ApiError):
    """The image provider's API refused the request."""

    def __init__(self, message: str | None = None, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class ApiNotFound(ApiPermanent):
    """The image provider's API no longer knows this generation."""


class ApiCredentials(ApiError):
    """The image provider's API refused the credentials.

    Nothing fails because of it: generation pauses, a probe asks every few seconds, one
    line a minute says so (with this message: the provider's likely cause)."""


class ApiQuotaExhausted(ApiError):
    """The paid quota of the image provider's account is used up.

    Drawing pauses with the provider's words (the message) and is tried again with one
    draw every RETRY_BACKOFF_MAX seconds; no row fails because of it."""


class BlankPrompt(ApiPermanent):
    """The prompt is blank (only white space or invisible characters): not sent to the API."""


class ApiMalformed(ApiTransient):
    """The image provider's API sent an answer of the wrong shape (malformed answer)."""


class InvalidImage(ListenerError):
    """The image is not a PNG or JPEG of sane dimensions."""
