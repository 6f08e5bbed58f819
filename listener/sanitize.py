"""Text from outside, made safe once, where it enters.

API messages, error bodies and anything else the listener did not write itself can hold
newlines (forged log lines), terminal escapes, NUL bytes (refused by PostgreSQL text
columns), lone surrogates (refused by every encoder) and megabytes of text. `clean`
turns any such text into one bounded line that is safe in a log line, a column and an
exception message: control characters are escaped, length is capped with a marker, and
the configured secrets are redacted.

A secret is redacted in every form a message may carry it in (`secret_forms`): as
configured and stripped, JSON-escaped, in any letter case, in base64 (alone, as HTTP
basic auth carries `key:secret`, or anywhere inside a longer base64 text), and, for a
secret that is itself base64 of `id:secret` (GigaChat's authorization key), decoded.
A `WholeToken` secret is redacted only where it stands as a whole token.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from collections.abc import Iterable, Sequence

LIMIT = 2000
MARKER = "…[cut]"


# C0 and C1 controls, DEL, lone surrogates, and the invisible characters that move or
# break a line on screen: zero-width and direction marks, bidi embeddings and isolates,
# the Unicode line and paragraph separators.
_UNSAFE = re.compile(
    r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]"
)
# Header-shaped credentials an error page may echo back, whatever its format:
# `X-Key: Key abc`, `"x-key": "Key abc"`, `'X-Secret': 'Secret abc'`, `x-key=abc`.
# Each run of blanks can be matched one way only (no two unbounded repetitions side by
# side), so a line of spaces after `x-key:` costs linear time.
_HEADER = re.compile(
    r"(?i)(x-(?:key|secret)[\"']?\s*[:=]\s*(?:[\"']\s*)?(?:(?:key|secret)\s+)?)[^\s,;\"'}<&]+"
)


# The shortest base64 piece worth redacting: shorter ones would hit unrelated text.
MIN_BASE64_FORM = 8
# A secret inside a name the logs show is masked (as a whole token) from this length.
MIN_TOKEN_SECRET = 8


class WholeToken(str):
    """A secret redacted only where it stands as a whole token, not inside a longer word:
    a password that is also part of a name the logs show (user, host, database)."""

    __slots__ = ()


def _base64_forms(raw: bytes) -> set[str]:
    """`raw` in base64, standard and URL-safe: whole, and the part of its encoding that
    shows inside any longer base64 text, at each of the three byte alignments (the
    characters that also depend on the bytes around it left out)."""
    found: set[str] = set()
    whole = base64.b64encode(raw).decode("ascii")
    pieces = {whole, whole.rstrip("=")}
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + raw).decode("ascii")
        first = -(-8 * offset // 6)  # the first character made of secret bits only
        last = 8 * (offset + len(raw)) // 6  # past the last such character
        pieces.add(encoded[first:last])
    for piece in pieces:
        if len(piece) >= MIN_BASE64_FORM:
            found.add(piece)
            found.add(piece.translate(str.maketrans("+/", "-_")))
    return found


def _decoded_forms(secret: str) -> set[str]:
    """A secret that is base64 of `id:secret` (a basic-auth credential, GigaChat's
    authorization key): the decoded text and its secret part."""
    if len(secret) < MIN_BASE64_FORM or len(secret) % 4:
        return set()
    try:
        text = base64.b64decode(secret, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return set()
    if not text.isprintable() or ":" not in text:
        return set()
    found = {text}
    part = text.partition(":")[2]
    if len(part) >= MIN_TOKEN_SECRET:
        found.add(part)
    return found


class Forms(list[str]):
    """What `secret_forms` returns: the forms, with their patterns compiled once, on first
    use, and kept (a log line or a message is redacted without rebuilding them). Made
    anew, never changed, when the secrets change."""

    __slots__ = ("_compiled", "_lowered")
    _compiled: tuple[re.Pattern[str], re.Pattern[str]] | None
    _lowered: tuple[str, ...]

    @property
    def patterns(self) -> tuple[re.Pattern[str], re.Pattern[str]] | None:
        try:
            return self._compiled
        except AttributeError:
            self._compiled = _patterns(_key(self))
            return self._compiled

    def found_in(self, lowered: str) -> bool:
        """Whether any form occurs in `lowered` (lower-cased text): one C-speed substring
        search per form, so the alternation runs only on text that holds a secret."""
        try:
            forms = self._lowered
        except AttributeError:
            forms = self._lowered = tuple(f.lower() for f in self if f)
        return any(form in lowered for form in forms)


def secret_forms(secrets: Iterable[str]) -> Forms:
    """Every form a configured secret may show up in, longest first: as configured, without
    its surrounding whitespace (a key read from a file ends in a newline), as JSON escapes
    it (an error body that echoes it), in base64 (alone, inside longer base64, and each
    pair `a:b` as basic auth sends it) and decoded when it is base64 of `id:secret`.
    Letter case is ignored when matching (see `redact`). The first forms of a WholeToken
    stay WholeTokens; base64 text holds no word boundary to respect."""
    found: dict[str, str] = {}

    def add(form: str, whole: bool) -> None:
        if form and (form not in found or not whole):
            found[form] = WholeToken(form) if whole else form

    plain = []
    for secret in secrets:
        whole = isinstance(secret, WholeToken)
        for form in {str(secret), secret.strip()}:
            if not form:
                continue
            add(form, whole)
            add(json.dumps(form, ensure_ascii=False)[1:-1], whole)
            add(json.dumps(form)[1:-1], whole)
        stripped = secret.strip()
        if stripped:
            plain.append(stripped)
            for form in (*_base64_forms(stripped.encode()), *_decoded_forms(stripped)):
                add(form, False)
    for first in plain:
        for second in plain:
            if first != second:
                add(base64.b64encode(f"{first}:{second}".encode()).decode("ascii"), False)
    # Longest first, so a secret that contains another is removed whole.
    return Forms(sorted(found.values(), key=len, reverse=True))


_secrets = Forms()


def _boundary(char: str) -> bool:
    return char.isalnum() or char == "_"


@functools.lru_cache(maxsize=32)
def _patterns(
    forms: tuple[tuple[str, bool], ...],
) -> tuple[re.Pattern[str], re.Pattern[str]] | None:
    """Alternations of the literal forms, longest first (no repetition at all: linear in
    the text for a fixed set of secrets): one of the lower-cased forms, for lower-cased
    text, and a case-insensitive one for text whose lower case is not as long."""
    if not forms:
        return None

    def alternation(lower: bool) -> str:
        branches = []
        for form, whole in forms:
            branch = re.escape(form.lower() if lower else form)
            if whole and _boundary(form[0]):
                branch = r"(?<!\w)" + branch
            if whole and _boundary(form[-1]):
                branch += r"(?!\w)"
            branches.append(branch)
        return "|".join(branches)

    return re.compile(alternation(True)), re.compile(alternation(False), re.IGNORECASE)


def _key(forms: Sequence[str]) -> tuple[tuple[str, bool], ...]:
    return tuple((f, isinstance(f, WholeToken)) for f in forms if f)


def _redact_forms(text: str, forms: Sequence[str]) -> str:
    patterns = forms.patterns if isinstance(forms, Forms) else _patterns(_key(forms))
    if patterns is None:
        return text
    lowered = text.lower()
    if len(lowered) != len(text):  # a character whose lower case is two: slower path
        return patterns[1].sub("***", text)
    if isinstance(forms, Forms) and not forms.found_in(lowered):
        return text  # the usual case: a line without any secret in it
    # Matched in the lower-cased copy (several times faster than IGNORECASE), cut from
    # the text itself: lower() kept every character in its place.
    out, at = [], 0
    for match in patterns[0].finditer(lowered):
        out.append(text[at : match.start()])
        out.append("***")
        at = match.end()
    if not out:
        return text
    out.append(text[at:])
    return "".join(out)


def register_secrets(secrets: Iterable[str]) -> None:
    """Remember every configured secret, in every form it was configured in."""
    global _secrets
    _secrets = secret_forms(secrets)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char) or (
        f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    )


def redact(text: str, forms: Sequence[str] | None = None) -> str:
    """`text` with every secret form (the registered ones unless `forms` is given, as
    `secret_forms` lists them), in any letter case, and every header-shaped credential
    replaced by `***`."""
    text = _redact_forms(text, _secrets if forms is None else forms)
    if "x-" not in text and "X-" not in text:  # _HEADER starts so, in either case
        return text
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
