"""GigaChat's answers as the client accepts them, and the one place a chat reply is read.

Strict pydantic models of the documented shapes (and the variants the protocol notes
list): whatever does not fit is a malformed answer, never a value read by guesswork.
Unknown extra fields are ignored (the API adds fields); every string that can reach a
log line, a column or a URL is bounded here.

`find_image` reads the file id out of the reply's free text: one linear scan of a text
bounded first, no regular expression, so a hostile reply costs no more than its length.
"""

from __future__ import annotations

import math
import time
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, StrictStr

# The reply text read for an image tag and an excerpt; a drawing reply is a few hundred
# characters, and a tag far beyond this is not one we look for.
MAX_CONTENT_SCAN = 64 * 1024
# A file id goes back into a URL path and into the `uuid` column.
MAX_FILE_ID = 128
# A value of expires_at/exp below this is seconds, not milliseconds (2001 in ms is 10^12).
MS_THRESHOLD = 10**11


class _Answer(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


Short = Annotated[StrictStr, Field(min_length=1, max_length=200)]


def _finite_number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


Number = Annotated[float, BeforeValidator(_finite_number)]


class TokenAnswer(_Answer):
    """`POST {auth_url}`: {access_token, expires_at (ms)}; also {tok, exp} (the user and
    password endpoint's shape, which the SDK parses too; seconds there)."""

    access_token: Annotated[StrictStr, Field(min_length=1, max_length=16384)] | None = None
    expires_at: Number | None = None
    tok: Annotated[StrictStr, Field(min_length=1, max_length=16384)] | None = None
    exp: Number | None = None

    def token(self) -> tuple[str, float]:
        """(token, expiry as Unix seconds); ValueError when the answer has neither shape."""
        token = self.access_token or self.tok
        when = self.expires_at if self.expires_at is not None else self.exp
        if token is None or when is None:
            raise ValueError("no access_token/expires_at (nor tok/exp)")
        if not token.isascii() or not token.isprintable() or " " in token:
            raise ValueError("a token that an HTTP header cannot carry")
        seconds = when / 1000 if when >= MS_THRESHOLD else float(when)
        return token, seconds

    def valid_for(self, now: float | None = None) -> float:
        """Seconds of validity left by the wall clock."""
        return self.token()[1] - (time.time() if now is None else now)


class Message(_Answer):
    role: Short | None = None
    # null for a pure function call; bounded by the body cap.
    content: StrictStr | None = None


class Choice(_Answer):
    message: Message
    index: StrictInt | None = None
    finish_reason: Short | None = None


class ChatAnswer(_Answer):
    """`POST chat/completions` (v1, non-streaming)."""

    choices: Annotated[list[Choice], Field(min_length=1, max_length=64)]
    model: Short | None = None
    object: Short | None = None


class ModelEntry(_Answer):
    id: Short
    type: Short | None = None
    owned_by: StrictStr | None = None


class ModelsAnswer(_Answer):
    """`GET models`."""

    data: Annotated[list[ModelEntry], Field(max_length=1000)]


class BalanceEntry(_Answer):
    usage: Short
    value: Number


class BalanceAnswer(_Answer):
    """`GET balance` (prepaid accounts only; pay-as-you-go gets 403)."""

    balance: Annotated[list[BalanceEntry], Field(max_length=1000)]


# -- the reply's image tag ---------------------------------------------------------------------


def find_image(content: str) -> str | None:
    """The `src` of the first `<img ...>` tag in `content`, or None.

    Lenient as the protocol notes ask: any whitespace, any attribute order, single or
    double quotes, `fuse` optional, self-closing or not. Linear: every character of the
    bounded text is looked at a small constant number of times."""
    text = content[:MAX_CONTENT_SCAN]
    lowered = text.lower()
    start = 0
    while True:
        at = lowered.find("<img", start)
        if at < 0:
            return None
        after = at + 4
        if after < len(text) and not (text[after].isspace() or text[after] in "/>"):
            start = after  # `<imgx`: not our tag
            continue
        end = text.find(">", after)
        if end < 0:
            return None
        src = _attribute(text[after:end], "src")
        if src is not None:
            return src
        start = end + 1


def _attribute(attrs: str, wanted: str) -> str | None:
    """The value of attribute `wanted` in `attrs` (the inside of one tag), or None."""
    i, n = 0, len(attrs)
    while i < n:
        while i < n and (attrs[i].isspace() or attrs[i] == "/"):
            i += 1
        name_start = i
        while i < n and not (attrs[i].isspace() or attrs[i] in "=/"):
            i += 1
        name = attrs[name_start:i].lower()
        while i < n and attrs[i].isspace():
            i += 1
        value: str | None = None
        if i < n and attrs[i] == "=":
            i += 1
            while i < n and attrs[i].isspace():
                i += 1
            if i < n and attrs[i] in "\"'":
                quote = attrs[i]
                close = attrs.find(quote, i + 1)
                if close < 0:
                    return None  # an unterminated value: no attribute can follow
                value, i = attrs[i + 1 : close], close + 1
            else:
                value_start = i
                while i < n and not attrs[i].isspace():
                    i += 1
                value = attrs[value_start:i]
        if not name and value is None:
            i += 1  # a stray character: move on
            continue
        if name == wanted and value:
            return value.strip() or None
    return None


def usable_file_id(file_id: str) -> bool:
    """A file id we can store and put in a URL path: printable ASCII without spaces or
    slashes, bounded (every id seen is a UUID; the spec's example is a long token)."""
    return (
        0 < len(file_id) <= MAX_FILE_ID
        and file_id.isascii()
        and file_id.isprintable()
        and not any(c.isspace() or c in "/\\?#%" for c in file_id)
        and file_id not in (".", "..")
    )
