"""Text from outside, made safe once, where it enters.

API messages, error bodies and anything else the listener did not write itself can hold
newlines (forged log lines), terminal escapes, NUL bytes (refused by PostgreSQL text
columns), lone surrogates (refused by every encoder) and megabytes of text. `clean`
turns any such text into one bounded line that is safe in a log line, a column and an
exception message: control characters are escaped, length is capped with a marker, and
the configured secrets are redacted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

LIMIT = 2000
MARKER = "…[cut]"

_secrets: list[str] = []

# C0 and C1 controls, DEL, and lone surrogates.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# Header-shaped credentials an error page may echo back (`X-Key: Key abc...`).
_HEADER = re.compile(r"(?i)(x-(?:key|secret)\W{0,3}\s*(?:key|secret)?\s*)[^\s,;\"'}]+")


def register_secrets(secrets: Iterable[str]) -> None:
    """Remember every configured secret, in every form it was configured in."""
    found: set[str] = set()
    for secret in secrets:
        if not secret:
            continue
        found.add(secret)
        if secret.strip():
            found.add(secret.strip())
    _secrets[:] = sorted(found, key=len, reverse=True)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char) or (
        f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    )


def redact(text: str) -> str:
    for secret in _secrets:
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
