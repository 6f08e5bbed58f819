"""What the operator commands share: connection, errors, exit codes, formatting.

The commands (`listener enqueue|status|export|retry|regenerate|cancel|watch`) are
short-lived processes, not the trio service: they use plain sync psycopg on one connection and call
the views and functions of `sql/migrations/0010_operator.sql` through the named queries of
`sql/operator.sql`, so that what they do is exactly what an operator can do in psql.

Exit codes (documented in docs/operations.md):

    0  done
    1  the image failed (`enqueue --wait`), or another error (database unreachable...)
    2  bad usage: a bad option or value, or input the database refused (blank prompt,
       size out of range, unknown style)
    3  no image with that id
    4  the image is not in a state that allows this (retry of a row that is not
       Failed, regenerate of a row that is waiting already or in another application's
       status, cancel of a row that is not waiting or is claimed, export of a row
       without an image)
    5  `enqueue --wait` gave up after --timeout seconds
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any, LiteralString

import psycopg
from psycopg import errors as pgerrors
from psycopg.rows import dict_row

from listener.db import connect_kwargs, translate
from listener.errors import (
    DatabaseError,
    ListenerError,
    NotFound,
    SchemaNotMigrated,
    UsageError,
    WrongState,
)
from listener.sanitize import clean
from listener.sqlfiles import named

EXIT_OK = 0
EXIT_IMAGE_FAILED = 1
EXIT_USAGE = 2

DONE_CHANNEL = "images_done"


def query(name: str) -> LiteralString:
    return named("operator.sql")[name]


def _primary(exc: psycopg.Error) -> str:
    diag = getattr(exc, "diag", None)
    text = diag.message_primary if diag and diag.message_primary else str(exc)
    return text.strip()


def translate_error(exc: psycopg.Error) -> ListenerError:
    """PostgreSQL's answer as one of ours: the SQLSTATEs raised by 0010_operator.sql map
    to exit codes, refused input is a usage error, the rest goes through listener.db."""
    if isinstance(exc, pgerrors.NoDataFound):
        return NotFound(_primary(exc))
    if isinstance(exc, pgerrors.ObjectNotInPrerequisiteState):
        return WrongState(_primary(exc))
    if isinstance(exc, pgerrors.IntegrityError | pgerrors.DataError):
        return UsageError(_primary(exc))
    if isinstance(exc, pgerrors.InsufficientPrivilege):
        return DatabaseError(
            f"database error: {_primary(exc)}: this login lacks the role for it "
            "(images_operator: status, retry, regenerate, cancel, watch, export; images_writer: "
            "enqueue; README, Running in production)"
        )
    if isinstance(exc, pgerrors.UndefinedTable | pgerrors.UndefinedFunction):
        return SchemaNotMigrated(
            f"{_primary(exc)}: the database is not migrated; run `listener migrate` first"
        )
    return translate(exc)


@contextmanager
def database_errors() -> Iterator[None]:
    try:
        yield
    except psycopg.Error as exc:
        raise translate_error(exc) from exc


@contextmanager
def connect(conninfo: str, command: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """One autocommit connection; errors, including those of the block, become ours."""
    with (
        database_errors(),
        psycopg.connect(
            conninfo,
            autocommit=True,
            row_factory=dict_row,
            **connect_kwargs(f"listener {command}"),
        ) as conn,
    ):
        yield conn


Row = dict[str, Any]


def fetch_one(conn: psycopg.Connection[Row], name: str, params: Any = None) -> Row | None:
    return conn.execute(query(name), params).fetchone()


def fetch_all(conn: psycopg.Connection[Row], name: str, params: Any = None) -> list[Row]:
    return conn.execute(query(name), params).fetchall()


def confirmed(row: dict[str, Any] | None, column: str, expected: Any, function: str) -> Any:
    """An operator function's answer, checked: a missing or different answer (an old or
    tampered function) is an error, never a success message."""
    value = row.get(column) if row else None
    if value is None or (expected is not None and value != expected):
        raise DatabaseError(
            f"database error: {function} answered {value!r} instead of {expected!r}: "
            "nothing is known to have changed; check with `listener status`"
        )
    return value


# -- values on a terminal --------------------------------------------------------------


def format_duration(value: timedelta) -> str:
    """3d4h, 2h5m, 4m12s, 7s: the two largest units, never microseconds."""
    seconds = int(value.total_seconds())
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return sign + "".join(parts[:2])


def format_value(value: Any) -> str:
    """One cell: text from the table (a prompt, a reason: anyone with INSERT wrote it) is
    made one safe line, so no newline or terminal escape reaches the operator's screen."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, datetime):
        return value.astimezone().strftime("%Y/%m/%d %H:%M:%S")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return ", ".join(format_value(v) for v in value)
    return clean(str(value))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An aligned text table; numbers right-aligned, everything else left-aligned."""
    cells = [[format_value(v) for v in row] for row in rows]
    numeric = [
        all(isinstance(row[i], int | float) and not isinstance(row[i], bool) for row in rows)
        and bool(rows)
        for i in range(len(headers))
    ]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        out = [
            v.rjust(w) if numeric[i] else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "  ".join(out).rstrip()

    lines = [line(headers), line(["-" * w for w in widths])]
    lines += [line(row) for row in cells]
    return "\n".join(lines)


# -- times given on the command line ---------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(w|d|h|m|s)", re.IGNORECASE)
_DURATION_ALL = re.compile(r"^\s*(?:\d+(?:\.\d+)?\s*[wdhms]\s*)+$", re.IGNORECASE)
_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> timedelta:
    """`90s`, `30m`, `1h30m`, `2d`, `1w`."""
    if not _DURATION_ALL.match(text):
        raise UsageError(f"{text!r} is not a duration (examples: 30m, 1h, 1h30m, 2d)")
    seconds = sum(float(n) * _UNITS[u.lower()] for n, u in _DURATION.findall(text))
    return timedelta(seconds=seconds)


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """A moment: an ISO timestamp (local time unless it names a zone) or a duration ago."""
    if _DURATION_ALL.match(text):
        return (now or datetime.now(UTC)) - parse_duration(text)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"{text!r} is neither an ISO timestamp (2024-03-21T15:04:05, "
            "2024-03-21 15:04:05+01:00) nor a duration (30m, 1h, 2d)"
        ) from None
    return moment if moment.tzinfo else moment.astimezone()


# -- images ----------------------------------------------------------------------------

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
)


def image_extension(data: bytes) -> str:
    """The file extension for an image's bytes, from its magic number (`bin` if unknown)."""
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "bin"


def decode_image(image_id: int, text: str) -> bytes:
    """The row's base64 text as bytes (a `data:...;base64,` prefix is tolerated)."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise WrongState(f"image {image_id}: the base64 column is not valid base64") from None
