"""Prompt preparation: the API takes 1 to 1000 characters of query (the seed cut at 999)
and up to 1000 of negative prompt. Cutting respects grapheme clusters, so an emoji with
a skin-tone modifier or a letter with its combining accent is kept whole or dropped whole,
never split into a broken character."""

from __future__ import annotations

import regex

MAX_PROMPT = 999
MAX_NEGATIVE_PROMPT = 1000

_GRAPHEME = regex.compile(r"\X")


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
    return cut_graphemes(text, limit)


def cap_negative_prompt(text: str, limit: int = MAX_NEGATIVE_PROMPT) -> str:
    return cut_graphemes(text, limit)
