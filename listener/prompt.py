"""Prompt text, for every provider: what "blank" means, and how a prompt is cut for sending
and for a log line.

A prompt is written by whoever may insert a row, so every function here is linear in the
length of its input and does its real work on a piece cut first: the claims read at most
`READ` characters of a prompt, taken after its leading blanks (`images_prompt_head` in
sql/migrations/0016_prompt_bounds.sql), and the functions below cut again before they
segment, strip or split. No regular expression here can backtrack: each is one character
class, matched once (`+`/`*` of a single class, anchored at one end only, or a plain
search for one character), so its cost is one pass over the characters it looks at.

What is "blank" is defined once, here, as a class of every character that shows nothing:
Unicode white space (non-breaking spaces included), control characters, and the invisible
ones (zero-width spaces and joiners, the BOM, bidi marks, variation selectors, Hangul
fillers, the blank Braille pattern, tags, the interlinear annotation marks, the Egyptian
hieroglyph format controls and blank signs, the musical null notehead and format
controls, and the 66 noncharacters). The database's `images_prompt_is_blank(text)`, its
`prompt_must_not_be_blank` and `negative_prompt_must_not_be_blank` constraints, the claims
and `images_prompt_head` use the same class, verbatim (tests/test_blank_prompt.py holds
them together). A prompt is sent without its blank edges, so 999 spaces and a letter reach
the provider as the letter, and a prompt with nothing else is never sent at all.

Cutting respects grapheme clusters, so an emoji with a skin-tone modifier or a letter with
its combining accent is kept whole or dropped whole, never split into a broken character.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from listener.errors import BlankPrompt
from listener.sanitize import clean

if TYPE_CHECKING:
    import regex

# The API takes 1 to 1000 characters of query (the seed cut at 999) and up to 1000 of
# negative prompt.
MAX_PROMPT = 999
MAX_NEGATIVE_PROMPT = 1000
# What a claim reads of a prompt or a negative prompt, after its leading blanks: twice
# what can be sent, enough to cut at a grapheme boundary and drop a blank tail.
READ = 2000
# The database's rules (0016): longer prompts are refused at INSERT.
MAX_STORED_PROMPT = 100_000
MAX_STORED_NEGATIVE_PROMPT = 10_000
# A grapheme cluster longer than this past the limit is cut by code points.
_CLUSTER_LOOKAHEAD = 64
PROMPT_IN_LOG = 80

# Escapes that both Python's `regex` and PostgreSQL's regular expressions read the same
# way. NUL is left out: PostgreSQL text cannot hold it.
BLANK_CLASS = (
    r"\u0001-\u0020\u007F-\u00A0\u00AD\u034F\u061C\u115F-\u1160\u1680\u17B4-\u17B5"
    r"\u180B-\u180F\u2000-\u200F\u2028-\u202F\u205F-\u206F\u2800\u3000\u3164"
    r"\uFDD0-\uFDEF\uFE00-\uFE0F\uFEFF\uFFA0\uFFF0-\uFFFB\uFFFE-\uFFFF"
    r"\U0001BCA0-\U0001BCA3\U00013430-\U0001343F\U00013441-\U00013442"
    r"\U0001D159\U0001D173-\U0001D17A\U000E0000-\U000E0FFF"
    r"\U0001FFFE-\U0001FFFF\U0002FFFE-\U0002FFFF\U0003FFFE-\U0003FFFF\U0004FFFE-\U0004FFFF"
    r"\U0005FFFE-\U0005FFFF\U0006FFFE-\U0006FFFF\U0007FFFE-\U0007FFFF\U0008FFFE-\U0008FFFF"
    r"\U0009FFFE-\U0009FFFF\U000AFFFE-\U000AFFFF\U000BFFFE-\U000BFFFF\U000CFFFE-\U000CFFFF"
    r"\U000DFFFE-\U000DFFFF\U000EFFFE-\U000EFFFF\U000FFFFE-\U000FFFFF\U0010FFFE-\U0010FFFF"
)

# The standard library's `re` reads these classes as `regex` does; `regex` (for grapheme
# clusters, `\X`) is imported only for a prompt longer than what is sent: it is 1.3 MB
# the service would otherwise hold for nothing.
_SHOWN = re.compile(f"[^{BLANK_CLASS}\\x00]")
_LEADING_BLANKS = re.compile(f"[{BLANK_CLASS}\\x00]*")
_LOG_BLANKS = re.compile(f"[{BLANK_CLASS}\\x00]+")
_grapheme: regex.Pattern[str] | None = None


def _graphemes() -> regex.Pattern[str]:
    global _grapheme
    if _grapheme is None:
        import regex

        _grapheme = regex.compile(r"\X")
    return _grapheme


def is_blank(text: str) -> bool:
    """True when the text shows nothing in its first MAX_STORED_PROMPT characters (only
    white space and invisible characters), as the database decides it: no waiting row
    holds more, so for every prompt a rule admits this is the whole text."""
    return _SHOWN.search(text, 0, MAX_STORED_PROMPT) is None


def _leading(text: str) -> int:
    """How many blank characters `text` starts with (one pass over them, no further)."""
    found = _LEADING_BLANKS.match(text)
    return found.end() if found else 0


def strip_blank(text: str) -> str:
    """The text without its leading and trailing blank characters. Each end is scanned
    once, from its own side, up to the first character that shows something."""
    start = _leading(text)
    if start == len(text):
        return ""
    # The trailing blanks are the leading ones of the reversed text: one pass over them.
    trailing = _leading(text[:start:-1])
    return text[start : len(text) - trailing]


def cut_graphemes(text: str, limit: int) -> str:
    """The longest prefix of whole grapheme clusters that is at most `limit` characters
    (code points) long. Looks at no more than `limit` + 64 characters."""
    if len(text) <= limit:
        return text
    end = 0
    for cluster in _graphemes().finditer(text, 0, limit + _CLUSTER_LOOKAHEAD):
        if cluster.end() > limit:
            break
        end = cluster.end()
    # One cluster longer than the limit (a letter under hundreds of combining marks):
    # whole code points are the best that can be kept.
    return text[: end or limit]


def sendable(text: str, limit: int = MAX_PROMPT) -> str:
    """Leading blanks skipped, cut to `limit` at a grapheme boundary, blank tail dropped."""
    start = _leading(text)
    piece = text[start : start + limit + _CLUSTER_LOOKAHEAD]
    return strip_blank(cut_graphemes(piece, limit))


def truncate_prompt(text: str, limit: int = MAX_PROMPT) -> str:
    """The query as sent: blank edges removed, then cut to `limit`. Raises BlankPrompt
    when nothing is left, so a run of white space is never paid for."""
    cut = sendable(text, limit)
    if not cut:
        raise BlankPrompt()
    return cut


def cap_negative_prompt(text: str, limit: int = MAX_NEGATIVE_PROMPT) -> str:
    """The negative prompt as sent; empty (so left out of the request) when blank."""
    return sendable(text, limit)


def for_log(text: str, limit: int = PROMPT_IN_LOG) -> str:
    """A prompt on one log line: cut first, runs of blanks shown as one space, made safe
    (`listener.sanitize.clean`), at most `limit` characters with an ellipsis when cut."""
    head = text[: limit * 4]
    shown = clean(_LOG_BLANKS.sub(" ", head).strip(" "), limit=limit * 2)
    if len(shown) <= limit and len(head) == len(text):
        return shown
    return shown[: limit - 1] + "…" if len(shown) >= limit else shown + "…"
