"""Blank means "shows nothing" (issue 14): every Unicode white space and invisible
character, the same in Python and in the database. A blank prompt is refused at INSERT;
a prompt that is blank once cut (999 spaces then a letter) is sent without its blank
edges, so the API never receives a paid run of white space."""

from __future__ import annotations

import re

import psycopg
import pytest

from listener.errors import ApiPermanent, BlankPrompt
from listener.objects import OBJECTS
from listener.prompt import BLANK_CLASS, is_blank, truncate_prompt
from listener.providers.fusionbrain.models import GenerationRequest
from listener.sqlfiles import migrations, queries
from tests.fixtures.listener import rows, wait_until

BLANKS = {
    "non-breaking spaces": "\u00a0\u202f\u2007",
    "zero-width space and joiners": "\u200b\u200c\u200d\u2060",
    "byte order mark": "\ufeff",
    "ideographic space": "\u3000",
    "bidi marks": "\u200e\u200f\u202a\u061c",
    "soft hyphen, Hangul filler, braille blank": "\u00ad\u3164\u2800",
    "variation selector and tag": "\ufe0f\U000e0020",
    "ascii white space": " \t\r\n\x0b\x0c",
    "interlinear annotation marks": "\ufff9\ufffa\ufffb",
    "Egyptian hieroglyph format controls and blank signs": "\U00013430\U0001343f\U00013441",
    "musical null notehead": "\U0001d159",
    "noncharacters": "\ufffe\uffff\ufdd0\U0010ffff",
    "empty": "",
}
NOT_BLANK = [
    "a",
    "\u00a0a\u200b",
    ".",
    "👍",
    "\u0301",
    "漢",
    "\ufffc",
    "\ufffd",
    "\U00013443",
    "\u0600",
]


@pytest.mark.parametrize("text", BLANKS.values(), ids=BLANKS.keys())
def test_blank_prompts_are_refused_at_insert(conn, text) -> None:
    assert is_blank(text)
    with pytest.raises(psycopg.errors.CheckViolation) as info:
        conn.execute("INSERT INTO images (prompt) VALUES (%s)", (text,))
    assert "prompt_must_not_be_blank" in str(info.value)
    with pytest.raises(psycopg.errors.CheckViolation) as info:
        conn.execute("SELECT images_enqueue('x', negative_prompt => %s)", (text or " ",))
    assert "negative_prompt_must_not_be_blank" in str(info.value)


@pytest.mark.parametrize("text", NOT_BLANK)
def test_prompts_that_show_something_are_accepted(conn, text) -> None:
    assert not is_blank(text)
    conn.execute("INSERT INTO images (prompt) VALUES (%s)", (text,))


def test_python_and_the_database_agree_on_every_code_point(conn) -> None:
    """images_prompt_is_blank(chr(n)) == is_blank(chr(n)) for all of Unicode."""
    (blank_in_db,) = conn.execute(
        "SELECT array_agg(cp) FROM generate_series(1, 1114111) AS cp "
        "WHERE (cp < 55296 OR cp > 57343) AND images_prompt_is_blank(chr(cp))"
    ).fetchone()
    blank_in_python = [
        cp for cp in range(1, 0x110000) if not 0xD800 <= cp <= 0xDFFF and is_blank(chr(cp))
    ]
    assert sorted(blank_in_db) == blank_in_python
    assert len(blank_in_python) > 4000  # the tags block is there


def test_one_definition_of_blank_everywhere(conn) -> None:
    """The class is written out in the constraints and the claims (a function with a
    fixed search_path is not inlined): every copy is the Python one, verbatim, and the
    newest migration that defines it (0016) holds every copy the database uses."""
    klass = f"[^{BLANK_CLASS}]"
    copy = re.compile(r"\[\^\\u0001-[^\]]*\]")
    (bounds,) = [m.sql for m in migrations() if m.name == "0016_prompt_bounds"]
    # the function (2), images_prompt_head (2), two constraints (2 each)
    assert copy.findall(bounds) == [klass] * 8
    for name in ("prompt_must_not_be_blank", "negative_prompt_must_not_be_blank"):
        (definition,) = conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = 'images'::regclass AND conname = %s",
            (name,),
        ).fetchone()
        assert copy.findall(definition) == [klass] * 2, definition
    for function in ("images_prompt_is_blank", "images_prompt_head"):
        (source,) = conn.execute(
            "SELECT prosrc FROM pg_proc WHERE proname = %s", (function,)
        ).fetchone()
        assert copy.findall(source) == [klass] * 2
    assert copy.findall(queries()["claim_ready_checked"]) == [klass] * 4
    assert copy.findall(queries()["next_ready_at"]) == [klass] * 4
    assert copy.findall(queries()["claim_ready"]) == []  # the fast claim has no predicates
    # the functions are on the listener's list, so `listener migrate` gives them a fixed
    # search_path for whatever schema it runs in (tests/test_ours_only.py checks that)
    names = {o.name for o in OBJECTS}
    assert {"images_prompt_is_blank(text)", "images_prompt_head(text, integer)"} <= names


def test_999_spaces_then_a_letter_is_sent_as_the_letter() -> None:
    params = GenerationRequest(" " * 999 + "a", 64, 64, "ANIME").params()
    assert params["generateParams"] == {"query": "a"}
    zero_width = GenerationRequest("\u200b" * 998 + "fox\u00a0", 64, 64, "ANIME").params()
    assert zero_width["generateParams"] == {"query": "fox"}
    assert truncate_prompt("x" + " " * 998 + "y") == "x"  # blank tail of the cut dropped


@pytest.mark.parametrize("text", BLANKS.values(), ids=BLANKS.keys())
def test_a_blank_prompt_is_never_sent(text) -> None:
    with pytest.raises(BlankPrompt) as info:
        GenerationRequest(text, 64, 64, "ANIME").params()
    assert isinstance(info.value, ApiPermanent)  # the row fails; it is not retried
    assert "negativePromptDecoder" not in GenerationRequest("a", 64, 64, "ANIME", text).params()


async def test_the_api_receives_the_letter_not_the_spaces(
    start_listener, database_url, emulator
) -> None:
    await start_listener()
    (image_id,) = rows(
        database_url,
        "INSERT INTO images (prompt) VALUES (%s) RETURNING id",
        (" " * 999 + "a\u00a0",),
    )[0]

    def finished():
        return rows(
            database_url,
            "SELECT status FROM images WHERE id = %s AND status IN ('ReadyToPublish', 'Failed')",
            (image_id,),
        )

    assert await wait_until(finished, seconds=60, what="the row to finish") == [("ReadyToPublish",)]
    assert emulator.stats()["runs_by_prompt"] == {"a": 1}
