"""Prompt preparation: cut at 999 characters, never inside a character or grapheme."""

from __future__ import annotations

import time
import unicodedata

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from listener.errors import BlankPrompt
from listener.prompt import (
    MAX_PROMPT,
    MAX_STORED_PROMPT,
    cap_negative_prompt,
    cut_graphemes,
    for_log,
    is_blank,
    sendable,
    strip_blank,
    truncate_prompt,
)
from listener.providers.fusionbrain.models import GenerationRequest
from listener.sanitize import clean

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


# -- linear time on hostile text (every function, 1 MB) -----------------------------------

MB = 1_000_000
ADVERSARIAL = {
    "spaces between letters": "a" + " " * MB + "b",
    "zero-width spaces between letters": "a" + "\u200b" * MB + "b",
    "tags between letters": "a" + "\U000e0020" * MB + "b",
    "mixed blanks between letters": "a" + "\u00a0\u200b\u3000\ufeff\u2060" * (MB // 5) + "b",
    "blanks only": "\u200b \u00a0" * (MB // 3),
    "blanks then a letter": " " * MB + "x",
    "a letter then blanks": "x" + "\u3000" * MB,
    "alternating blank and letter": "a " * (MB // 2),
    "one letter under combining marks": "a" + "\u0301" * MB,
    "combining marks only": "\u0308" * MB,
    "ZWJ chain": "👨" + "\u200d👩" * (MB // 3),
    "regional indicators": "🇫" * MB,
    "newlines and escapes": "\n\x1b[31m\r" * (MB // 3),
}
SECONDS = 2.0  # generous: the quadratic version needed minutes for a tenth of this


def timed(function, *args):
    started = time.perf_counter()
    result = function(*args)
    elapsed = time.perf_counter() - started
    assert elapsed < SECONDS, f"{function.__name__} took {elapsed:.1f}s"
    return result


def raising_blank(text: str) -> str | None:
    try:
        return truncate_prompt(text)
    except BlankPrompt:
        return None


@pytest.mark.parametrize("text", ADVERSARIAL.values(), ids=ADVERSARIAL.keys())
@pytest.mark.parametrize(
    "function",
    [
        is_blank,
        strip_blank,
        raising_blank,
        cap_negative_prompt,
        sendable,
        for_log,
        lambda text: cut_graphemes(text, MAX_PROMPT),
    ],
    ids=[
        "is_blank",
        "strip_blank",
        "truncate_prompt",
        "cap_negative_prompt",
        "sendable",
        "for_log",
        "cut_graphemes",
    ],
)
def test_every_function_is_linear_on_a_megabyte_of_hostile_text(function, text) -> None:
    timed(function, text)


def test_what_the_hostile_texts_become() -> None:
    """The fast answers are the right ones."""
    assert truncate_prompt(ADVERSARIAL["spaces between letters"]) == "a"
    assert (
        strip_blank(ADVERSARIAL["zero-width spaces between letters"])
        == (ADVERSARIAL["zero-width spaces between letters"])
    )
    assert truncate_prompt(ADVERSARIAL["blanks then a letter"]) == "x"
    assert truncate_prompt(ADVERSARIAL["a letter then blanks"]) == "x"
    assert strip_blank(ADVERSARIAL["a letter then blanks"]) == "x"
    assert (
        is_blank(ADVERSARIAL["blanks only"]) and raising_blank(ADVERSARIAL["blanks only"]) is None
    )
    assert cap_negative_prompt(ADVERSARIAL["blanks only"]) == ""
    assert truncate_prompt(ADVERSARIAL["alternating blank and letter"]) == ("a " * 500)[:MAX_PROMPT]
    assert truncate_prompt(ADVERSARIAL["one letter under combining marks"]) == (
        "a" + "\u0301" * (MAX_PROMPT - 1)
    )
    assert for_log(ADVERSARIAL["spaces between letters"]) == "a…"
    assert for_log("a\n2030/01/01 forged line") == "a 2030/01/01 forged line"
    assert for_log("x" * 100) == "x" * 79 + "…"
    assert for_log("short") == "short"
    line = for_log(ADVERSARIAL["newlines and escapes"])
    assert "\n" not in line and "\x1b" not in line and len(line) <= 80


def test_python_reads_blank_as_the_database_does_past_the_stored_limit() -> None:
    """A waiting row holds at most MAX_STORED_PROMPT characters; blank is decided on as
    many, here and in SQL (images_prompt_is_blank), so a longer text agrees too."""
    assert is_blank(" " * MAX_STORED_PROMPT + "x")
    assert not is_blank(" " * (MAX_STORED_PROMPT - 1) + "x")


@pytest.mark.parametrize(
    "text",
    [
        "x-key:" + " " * MB + ",",
        "X-Secret = '" + "\t" * MB,
        ("x-key:" + " " * 40 + ",") * (MB // 47),
    ],
    ids=["one header, a megabyte of spaces", "quote then tabs", "many headers"],
)
def test_the_log_line_cleaner_is_linear_on_header_shaped_text(text) -> None:
    """Every prompt on a log line goes through listener.sanitize.clean: its credential
    pattern had two unbounded repetitions sharing a run of spaces (1 s for 4 KB)."""
    timed(clean, text)
    # clean cuts at 4,256 characters first: the quadratic pattern took a second on them
    started = time.perf_counter()
    clean("x-key:" + " " * 4300 + ",")
    assert time.perf_counter() - started < 0.25
