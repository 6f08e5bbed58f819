"""Reading GigaChat's answers: the image tag in free text (lenient, linear), the token's
two shapes and time units, and which file ids may be stored and put in a URL."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from listener.providers.gigachat.models import (
    MAX_CONTENT_SCAN,
    TokenAnswer,
    find_image,
    usable_file_id,
)

ID = "b28fbd4f-105a-43e0-ba5a-2faa80b1f43c"


@pytest.mark.parametrize(
    "content",
    [
        f'Готово! <img src="{ID}" fuse="true"/> Кот греется.',
        f"<img src='{ID}' fuse='true'/>",
        f'<IMG\n\tfuse="true"   SRC = "{ID}"  />',
        f'<img src="{ID}">',
        f'text <img alt="x"> then <img src="{ID}" fuse="true"/>',
        f'<imgx src="nope"> <img src={ID} />',
        f'<video cover="c" src="v" fuse="true"/> <img src="{ID}"/>',
    ],
)
def test_the_first_image_tag_is_found_whatever_its_spelling(content: str) -> None:
    assert find_image(content) == ID


@pytest.mark.parametrize(
    "content",
    [
        "",
        "Не люблю менять тему разговора, но вот сейчас тот самый случай.",
        '<img alt="no source">',
        '<img src="">',
        '<img src="unterminated',
        "<img",
        '<video src="v" fuse="true"/>',
    ],
)
def test_no_image_is_none(content: str) -> None:
    assert find_image(content) is None


def test_a_tag_beyond_the_scanned_length_is_not_looked_for() -> None:
    assert find_image("x" * MAX_CONTENT_SCAN + f'<img src="{ID}"/>') is None


@pytest.mark.parametrize(
    "hostile",
    [
        "<img " * 200_000,
        '<img src="' * 200_000,
        "<img a=" * 200_000,
        "<img " + "= " * 500_000 + ">",
        "<img" + "\t" * 1_000_000,
    ],
)
def test_hostile_text_is_read_in_linear_time(hostile: str) -> None:
    started = time.perf_counter()
    find_image(hostile)
    assert time.perf_counter() - started < 1.0


@given(st.text(max_size=300))
def test_any_text_gives_none_or_a_non_empty_value(text: str) -> None:
    found = find_image(text)
    assert found is None or (found and found == found.strip())


def test_token_answers_in_both_shapes_and_units() -> None:
    now = time.time()
    ms = TokenAnswer.model_validate({"access_token": "t", "expires_at": int((now + 1800) * 1000)})
    assert ms.token()[0] == "t" and 1790 < ms.valid_for(now) <= 1800
    seconds = TokenAnswer.model_validate({"tok": "u", "exp": int(now + 600)})
    assert seconds.token()[0] == "u" and 590 < seconds.valid_for(now) <= 600
    for bad in ({"access_token": "t"}, {"expires_at": 1}, {"access_token": "a b", "expires_at": 1}):
        with pytest.raises(ValueError, match=r"token|no access_token"):
            TokenAnswer.model_validate(bad).token()


@pytest.mark.parametrize(
    ("file_id", "ok"),
    [
        (ID, True),
        ("A" * 128, True),
        ("A" * 129, False),
        ("", False),
        ("../files/x", False),
        ("a b", False),
        ("a?b", False),
        ("..", False),
        ("кот", False),
    ],
)
def test_usable_file_ids(file_id: str, ok: bool) -> None:
    assert usable_file_id(file_id) is ok
