"""The hardened edge every provider's client shares: reading what an API sent.

Bodies reach these functions already bounded in size (each client reads them as they
stream and abandons them past a cap); these make sure what is inside costs no more than
its length: JSON nesting checked before parsing (a linear scan, no recursion), NaN and
Infinity refused, a Retry-After read as seconds or an HTTP date and capped, and excerpts
of untrusted text short and sanitized.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from listener.sanitize import clean

# The deepest JSON nesting accepted; the documented answers are a few levels deep.
MAX_JSON_DEPTH = 64
# Retry-After is obeyed up to this many seconds (RETRY_BACKOFF_MAX in the service).
RETRY_AFTER_MAX = 300.0
EXCERPT = 200


def json_depth_exceeds(body: bytes | bytearray, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when `body` nests arrays/objects deeper than `limit` (brackets inside strings
    are not counted). Cheap for real answers: with at most `limit` opening brackets in
    the whole body, no nesting can be deeper, and nothing is scanned."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth = 0
    in_string = False
    skip_at = -1  # the position of a character escaped by a backslash
    for match in re.finditer(rb'[\[\]{}"\\]', body):
        if match.start() == skip_at:
            continue
        char = match.group()
        if in_string:
            if char == b"\\":
                skip_at = match.end()
            elif char == b'"':
                in_string = False
        elif char == b'"':
            in_string = True
        elif char in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif char in (b"]", b"}"):
            depth -= 1
    return False


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(body: bytes | bytearray) -> Any:
    """The JSON value of a body already bounded in size: depth checked before parsing,
    NaN and Infinity refused. Raises ValueError with a short reason and excerpt."""
    if json_depth_exceeds(body):
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"a body that is not JSON: {excerpt(body)}") from exc


def parse_retry_after(value: str | None, *, cap: float = RETRY_AFTER_MAX) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP date, at most
    `cap`; None when absent or unreadable (garbage, inf, nan, a negative number)."""
    if value is None:
        return None
    text = value.strip()
    if not text or len(text) > 64:
        return None
    if re.fullmatch(r"\d{1,15}(\.\d{1,6})?", text):
        seconds = float(text)
    else:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive one is read as such
            when = when.replace(tzinfo=UTC)
        seconds = max(0.0, (when - datetime.now(UTC)).total_seconds())
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, cap)


def excerpt(value: Any, limit: int = EXCERPT) -> str:
    """A short, safe excerpt of a body or a parsed value (never the whole of it)."""
    if isinstance(value, bytes | bytearray):
        text = bytes(value[: limit * 4]).decode("utf-8", "replace")
    elif isinstance(value, str):
        text = value[: limit * 4]
    else:
        try:
            text = json.dumps(value, ensure_ascii=False)[: limit * 4]
        except (TypeError, ValueError, RecursionError):
            text = type(value).__name__
    return clean(" ".join(text.split()), limit=limit)
