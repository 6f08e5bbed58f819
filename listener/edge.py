"""The hostile edge of every provider's HTTP client: what an answer is, before any model.

Provider-neutral, so that each provider's client (listener/providers/<name>/client.py)
reads, bounds, parses and classifies answers the same way:

* `read_capped(response, cap=..., error_cap=...)`: a streamed body, abandoned past its
  cap (TooLarge for a 2xx one);
* `classify(code)`: the one classification of HTTP statuses (docs/api-answers.md says
  what each class means for a paid request and why);
* `parse_json` / `parse_json_async`: JSON of a body already bounded in size, its shape
  checked first in C-speed passes (`json_shape_problem`), NaN and Infinity refused;
* `parse_retry_after`: a Retry-After header as a bounded number of seconds;
* `excerpt`: a short, safe piece of any answer for a message.

Every function here is linear in the size of a body that was bounded before it arrived.
"""

from __future__ import annotations

import enum
import json
import math
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import trio

from listener.sanitize import clean

# The deepest JSON nesting accepted; the documented answers are 3 levels deep.
MAX_JSON_DEPTH = 64
# The most arrays and objects (outside strings) one answer may hold. The documented
# answers hold a handful (a pipeline list, a few per entry); a body of millions of tiny
# arrays costs seconds to parse and is nobody's answer.
MAX_JSON_CONTAINERS = 10_000
# Bodies above this many bytes are parsed in a worker thread, off the event loop.
THREAD_PARSE_BYTES = 256 * 1024
EXCERPT = 200
# Retry-After is obeyed up to this many seconds unless the caller says otherwise.
RETRY_AFTER_MAX = 300.0


class TooLarge(Exception):
    """A 2xx body past its cap, or compressed when no compression was asked for."""


async def read_capped(response: httpx.Response, *, cap: int, error_cap: int) -> bytearray:
    """The body of a streamed `response`, read as it arrives: a 2xx body over `cap` bytes
    (declared or sent) raises TooLarge and is not kept; any other body is cut at
    `error_cap` bytes, enough for its message. The caller bounds the time."""
    ok = response.is_success
    limit = cap if ok else error_cap
    body = bytearray()
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    declared = response.headers.get("content-length", "")
    if encoding not in ("", "identity"):
        if ok:
            raise TooLarge(f"a {clean(encoding, limit=40)}-compressed body was not asked for")
        return body
    if declared.isdigit() and int(declared) > limit:
        if ok:
            raise TooLarge(f"a body of {int(declared)} bytes (the limit is {limit})")
        return body
    over = False
    # Past the cap the read is cancelled from inside the stream, at its next wait for the
    # network: the stream's generators end by that exception instead of being dropped
    # half-way, and httpcore closes the connection.
    with trio.CancelScope() as abandon:
        # Identity encoding only (checked above): these are the bytes as sent.
        async for chunk in response.aiter_bytes():
            if over:
                continue
            if len(body) + len(chunk) > limit:
                over = True
                body += chunk[: limit - len(body)]  # an error body: enough for its message
                abandon.cancel()
                continue
            body += chunk
    if over and ok:
        # Freed now, not when the collector gets to the traceback's frames.
        body.clear()
        raise TooLarge(f"a body over {limit} bytes, abandoned")
    # The bytearray itself, not a copy: a result may be megabytes.
    return body


class Late(Exception):
    """No complete answer within the deadline."""


async def exchange(
    transport: httpx.AsyncBaseTransport,
    request: httpx.Request,
    *,
    total: float,
    headers_within: float,
    cap: int,
    error_cap: int,
) -> tuple[httpx.Response, bytearray]:
    """One request on `transport`: its headers within `headers_within` seconds, the whole
    answer within `total`, the body read as it streams (`read_capped`); the response is
    closed whatever happens. Late when either time runs out. Both providers' clients send
    through this, each with its own request and its own reply type."""
    response: httpx.Response | None = None
    with trio.move_on_after(total):
        with trio.move_on_after(headers_within):
            response = await transport.handle_async_request(request)
        if response is None:
            raise Late(f"no answer within {headers_within:g}s")
        try:
            return response, await read_capped(response, cap=cap, error_cap=error_cap)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await response.aclose()
    if response is None:
        raise Late(f"no answer within {min(total, headers_within):g}s")
    raise Late(f"the answer was not complete within {total:g}s")


class Answer(enum.Enum):
    """What an HTTP status says about the request it answers (docs/api-answers.md)."""

    OK = "2xx"
    REDIRECT = "3xx: elsewhere; not followed"
    NOT_TAKEN = "not taken: 408, 425, 429"
    CREDENTIALS = "credentials refused: 401, 403"
    NOT_FOUND = "404"
    REFUSED = "refused: any other 4xx"
    SERVER_ERROR = "server error: 5xx (and anything above)"


NOT_TAKEN = frozenset({408, 425, 429})


def classify(code: int) -> Answer:
    """The class of an HTTP status. A server error says nothing about whether a request
    that reached the server was carried out; a 408, 425 or 429 says it was not."""
    if code < 300:
        return Answer.OK
    if code < 400:
        return Answer.REDIRECT
    if code in NOT_TAKEN:
        return Answer.NOT_TAKEN
    if code in (401, 403):
        return Answer.CREDENTIALS
    if code == 404:
        return Answer.NOT_FOUND
    if code < 500:
        return Answer.REFUSED
    return Answer.SERVER_ERROR


# -- JSON ------------------------------------------------------------------------------------

# Everything but the characters that delimit strings and containers.
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')
_ONE_BRACKET = bytes.maketrans(b"{}", b"[]")
# A string whose contents are reduced to brackets: one repetition, bounded by quotes.
_STRING = re.compile(rb'"[^"]*"')


def _containers(body: bytes | bytearray) -> bytes | bytearray:
    """The brackets of `body` outside its strings, `{` and `}` written as `[` and `]`.
    In valid JSON a backslash occurs only in a string, with the character it escapes, so
    taking out escaped backslashes, then escaped quotes, leaves quotes that delimit
    strings only. All C-speed passes (bytes.replace, translate, one simple regex)."""
    data = body.replace(b"\\\\", b"").replace(b'\\"', b"").translate(_ONE_BRACKET, _NOT_STRUCTURE)
    if b'"' not in data:
        return data
    # An adjacent pair of quotes encloses nothing, whichever string it opens or closes.
    data = data.replace(b'""', b"")
    return _STRING.sub(b"", data)


def json_shape_problem(
    body: bytes | bytearray,
    *,
    depth: int = MAX_JSON_DEPTH,
    containers: int = MAX_JSON_CONTAINERS,
) -> str | None:
    """Why `body` must not be parsed (nested deeper than `depth`, or more than
    `containers` arrays and objects), None when it may. Brackets inside strings are not
    counted. Nothing is scanned for a body with at most `depth` opening brackets (a
    real answer: an image in base64 has none); otherwise the structure is reduced in C
    first, and the depth walk, in Python, sees at most 2 x `containers` brackets."""
    if body.count(b"[") + body.count(b"{") <= depth:
        return None
    brackets = _containers(body)
    opened = brackets.count(b"[")
    if opened <= depth:
        return None
    deeper = f"JSON nested deeper than {depth} levels"
    if b"[" * (depth + 1) in brackets:  # the usual attack, found in C
        return deeper
    if max(opened, len(brackets) - opened) > containers:
        return f"JSON holding more than {containers} arrays and objects"
    level = 0
    for char in brackets:
        level += 1 if char == 0x5B else -1  # "["
        if level > depth:
            return deeper
    return None


def json_depth_exceeds(body: bytes | bytearray, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when `body` nests arrays/objects deeper than `limit` (brackets inside strings
    are not counted)."""
    problem = json_shape_problem(body, depth=limit, containers=len(body))
    return problem is not None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(body: bytes | bytearray) -> Any:
    """The JSON value of a body already bounded in size: shape checked before parsing,
    NaN and Infinity refused. Raises ValueError with a short reason and excerpt."""
    problem = json_shape_problem(body)
    if problem is not None:
        raise ValueError(problem)
    try:
        return json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"a body that is not JSON: {excerpt(body)}") from exc


async def parse_json_async(body: bytes | bytearray) -> Any:
    """`parse_json`, in a worker thread when the body is large."""
    if len(body) > THREAD_PARSE_BYTES:
        return await trio.to_thread.run_sync(parse_json, body)
    return parse_json(body)


# -- headers and messages --------------------------------------------------------------------


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
