"""Prompt preparation: cut at 999 characters, never inside a character or grapheme."""

from __future__ import annotations

import unicodedata

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from listener.errors import BlankPrompt
from listener.prompt import (
    MAX_PROMPT,
    cap_negative_prompt,
    cut_graphemes,
    is_blank,
    strip_blank,
    truncate_prompt,
)
from listener.providers.fusionbrain.models import GenerationRequest

CLUSTERS = st.sampled_from(
    [
        "a",
        "é",
        "e\u0301",  # e + combining acute
        "👍🏽",  # thumbs up + skin tone
        "👨‍👩‍👧‍👦",  # family joined by ZWJ
        "🇫🇷",  # regional indicators
        "क्षि",
        "漢",
        " ",
        "a\u0308\u0301",
    ]
)


def graphemes(text: str) -> list[str]:
    return regex.findall(r"\X", text)


@settings(max_examples=200, deadline=None)
@given(st.lists(CLUSTERS, min_size=0, max_size=1200))
def test_truncation_keeps_whole_graphemes(parts: list[str]) -> None:
    text = "".join(parts)
    cut = cut_graphemes(text, MAX_PROMPT)
    assert len(cut) <= MAX_PROMPT
    assert text.startswith(cut)
    # Whole clusters only: the cut's clusters are the text's first clusters.
    assert graphemes(cut) == graphemes(text)[: len(graphemes(cut))]
    if len(text) <= MAX_PROMPT:
        assert cut == text
    else:
        # Nothing more could have been kept: the next cluster would not fit.
        following = graphemes(text)[len(graphemes(cut))]
        assert len(cut) + len(following) > MAX_PROMPT


@given(st.text(max_size=3000))
def test_truncation_of_any_text_is_a_part_within_the_limit(text: str) -> None:
    if is_blank(text):
        with pytest.raises(BlankPrompt):
            truncate_prompt(text)
        return
    cut = truncate_prompt(text)
    assert strip_blank(text).startswith(cut)
    assert 1 <= len(cut) <= MAX_PROMPT
    assert not is_blank(cut) and cut == strip_blank(cut)


def test_emoji_with_modifier_across_the_limit_is_dropped_whole() -> None:
    text = "x" * 998 + "👍🏽" + "tail"
    assert truncate_prompt(text) == "x" * 998


def test_combining_mark_at_the_limit_stays_with_its_letter() -> None:
    text = "x" * 998 + "e\u0301" + "more"
    cut = truncate_prompt(text)
    assert cut == "x" * 998
    assert unicodedata.combining(cut[-1]) == 0


def test_a_single_enormous_cluster_is_cut_by_code_points() -> None:
    text = "a" + "\u0301" * 2000
    assert truncate_prompt(text) == text[:MAX_PROMPT]


def test_long_prompt_of_100000_characters() -> None:
    assert truncate_prompt("word " * 20000) == ("word " * 200)[:MAX_PROMPT]


def test_negative_prompt_capped_at_1000() -> None:
    assert len(cap_negative_prompt("n" * 5000)) == 1000
    assert cap_negative_prompt("short") == "short"


def test_request_params_follow_the_api_shape() -> None:
    params = GenerationRequest("p" * 1500, 512, 768, "UHD", "bad").params()
    assert params == {
        "type": "GENERATE",
        "numImages": 1,
        "width": 512,
        "height": 768,
        "style": "UHD",
        "negativePromptDecoder": "bad",
        "generateParams": {"query": "p" * 999},
    }
    assert "negativePromptDecoder" not in GenerationRequest("p", 64, 64, "ANIME").params()
