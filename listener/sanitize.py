"""Text from outside, made safe once, where it enters.

API messages, error bodies and anything else the listener did not write itself can hold
newlines (forged log lines), terminal escapes, NUL bytes (refused by PostgreSQL text
columns), lone surrogates (refused by every encoder) and megabytes of text. `clean`
turns any such text into one bounded line that is safe in a log line, a column and an
exception message: control characters are escaped, length is capped with a marker, and
the configured secrets are redacted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

LIMIT = 2000
MARKER = "…[cut]"

_secrets: list[str] = []

# C0 and C1 controls, DEL, lone surrogates, and the invisible characters that move or
# break a line on screen: zero-width and direction marks, bidi embeddings and isolates,
# the Unicode line and paragraph separators.
_UNSAFE = re.compile(
    r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]"
)
# Header-shaped credentials an error page may echo back, whatever its format:
# `X-Key: Key abc`, `"x-key": "Key abc"`, `'X-Secret': 'Secret abc'`, `x-key=abc`.
# No two unbounded repetitions can share a run of spaces, so a hostile text costs one pass.
_HEADER = re.compile(
    r"(?i)(x-(?:key|secret)[\"']?\s*[:=]\s*(?:[\"']\s*)?(?:(?:key|secret)\s+)?)[^\s,;\"'}<&]+"
)


def secret_forms(secrets: Iterable[str]) -> list[str]:
    """Every form a configured secret may show up in, longest first: as configured, without
    its surrounding whitespace (a key read from a file ends in a newline), and as JSON
    escapes it (an error body that echoes it)."""
    found: set[str] = set()
    for secret in secrets:
        for form in (secret, secret.strip()):
            if form:
                found.add(form)
                found.add(json.dumps(form, ensure_ascii=False)[1:-1])
                found.add(json.dumps(form)[1:-1])
    # Longest first, so a secret that contains another is removed whole.
    return sorted(found, key=len, reverse=True)


def register_secrets(secrets: Iterable[str]) -> None:
    """Remember every configured secret, in every form it was configured in."""
    _secrets[:] = secret_forms(secrets)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char) or (
        f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    )


def redact(text: str, forms: Iterable[str] | None = None) -> str:
    """`text` with every secret form (the registered ones unless `forms` is given) and
    every header-shaped credential replaced by `***`."""
    for secret in _secrets if forms is None else forms:
        text = text.replace(secret, "***")
    return _HEADER.sub(r"\1***", text)


def clean(text: object, *, limit: int = LIMIT) -> str:
    """One safe line: controls escaped, secrets redacted, at most `limit` characters."""
    if not isinstance(text, str):
        text = repr(text)
    # Cut generously first, so a 50 MB message costs no more than a short one.
    head = text[: limit * 2 + 256]
    out = _UNSAFE.sub(_escape, redact(head))
    if len(out) > limit or len(head) < len(text):
        out = out[: max(0, limit - len(MARKER))] + MARKER
    return out
