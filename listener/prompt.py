"""Prompt preparation: the API takes 1 to 1000 characters of query (the seed cut at 999)
and up to 1000 of negative prompt. Cutting respects grapheme clusters, so an emoji with
a skin-tone modifier or a letter with its combining accent is kept whole or dropped whole,
never split into a broken character.

What is "blank" is defined once, here, as a regular-expression class of every character
that shows nothing: Unicode white space (non-breaking spaces included), control
characters, and the invisible ones (zero-width spaces and joiners, the BOM, bidi marks,
variation selectors, Hangul fillers, the blank Braille pattern, tags). The database's
`images_prompt_is_blank(text)`, its `prompt_must_not_be_blank` and
`negative_prompt_must_not_be_blank` constraints and the claim queries use the same class,
verbatim (a test holds them together). A prompt is sent without its blank edges, so
999 spaces and a letter reach the API as the letter, and a prompt with nothing else is
never sent at all.
"""

from __future__ import annotations

import regex

from listener.errors import BlankPrompt

MAX_PROMPT = 999
MAX_NEGATIVE_PROMPT = 1000

# Escapes that both Python's `regex` and PostgreSQL's regular expressions read the same
# way. NUL is left out: PostgreSQL text cannot hold it.
BLANK_CLASS = (
    r"\u0001-\u0020\u007F-\u00A0\u00AD\u034F\u061C\u115F-\u1160\u1680\u17B4-\u17B5"
    r"\u180B-\u180F\u2000-\u200F\u2028-\u202F\u205F-\u206F\u2800\u3000\u3164"
    r"\uFE00-\uFE0F\uFEFF\uFFA0\uFFF0-\uFFF8\U0001BCA0-\U0001BCA3\U0001D173-\U0001D17A"
    r"\U000E0000-\U000E0FFF"
)

_GRAPHEME = regex.compile(r"\X")
_NOT_BLANK = regex.compile(f"[^{BLANK_CLASS}\\x00]")
_BLANK_EDGES = regex.compile(f"^[{BLANK_CLASS}\\x00]+|[{BLANK_CLASS}\\x00]+$")


def is_blank(text: str) -> bool:
    """True when the text shows nothing: only white space and invisible characters."""
    return _NOT_BLANK.search(text) is None


def strip_blank(text: str) -> str:
    """The text without its leading and trailing blank characters."""
    return _BLANK_EDGES.sub("", text)


def cut_graphemes(text: str, limit: int) -> str:
    """The longest prefix of whole grapheme clusters that is at most `limit` characters
    (code points) long."""
    if len(text) <= limit:
        return text
    end = 0
    for cluster in _GRAPHEME.finditer(text, 0, limit + 64):
        if cluster.end() > limit:
            break
        end = cluster.end()
    # One cluster longer than the limit (a letter under hundreds of combining marks):
    # whole code points are the best that can be kept.
    return text[: end or limit]


def truncate_prompt(text: str, limit: int = MAX_PROMPT) -> str:
    """The query as sent: blank edges removed, then cut to `limit`. Raises BlankPrompt
    when nothing is left, so a run of white space is never paid for."""
    cut = strip_blank(cut_graphemes(strip_blank(text), limit))
    if not cut:
        raise BlankPrompt()
    return cut


def cap_negative_prompt(text: str, limit: int = MAX_NEGATIVE_PROMPT) -> str:
    """The negative prompt as sent; empty (so left out of the request) when blank."""
    return strip_blank(cut_graphemes(strip_blank(text), limit))
