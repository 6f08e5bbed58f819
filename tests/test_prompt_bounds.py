"""Prompts bounded where they enter the database and where the listener reads them
(0016_prompt_bounds): a waiting row holds at most 100,000 characters of prompt and
10,000 of negative prompt; the claims read a 2,000-character piece taken after the
leading blanks, so the listener never holds more of a row, "999 spaces and a letter"
still reaches the API as the letter, and a prompt the database accepted is never blank
to the listener."""

from __future__ import annotations

import time

import psycopg
import pytest

from listener.prompt import (
    MAX_STORED_NEGATIVE_PROMPT,
    MAX_STORED_PROMPT,
    READ,
    is_blank,
)
from listener.sqlfiles import migrations, queries
from tests.fixtures.listener import rows
from tests.helpers import clean_env, run_listener

PARAMS = {
    "worker": "w",
    "lease": 30,
    "limit": 100,
    "held": [],  # the rows live tasks of this process hold (Leases)
    # the claims' provider rule and style words (0018): what PgStore passes
    "provider": "fusionbrain",
    "legacy": "fusionbrain",
    "default_style": "ANIME",
    # no shared budget (the slots a claim takes in the same statement: test_flow_slots)
    "account": None,
    "mine": [],
    "bind": False,
}


def insert(conn, prompt: str, negative: str | None = None) -> int:
    return conn.execute(
        "INSERT INTO images (prompt, negative_prompt) VALUES (%s, %s) RETURNING id",
        (prompt, negative),
    ).fetchone()[0]


def head(conn, text: str | None, n: int = READ) -> str | None:
    return conn.execute("SELECT images_prompt_head(%s, %s)", (text, n)).fetchone()[0]


# -- the length rules ---------------------------------------------------------------------


@pytest.mark.parametrize("char", ["x", "漢", "👍"], ids=["1 byte", "3 bytes", "4 bytes"])
def test_a_prompt_of_100000_characters_is_accepted_and_one_more_refused(conn, char) -> None:
    insert(conn, char * MAX_STORED_PROMPT)
    with pytest.raises(psycopg.errors.CheckViolation) as info:
        insert(conn, char * (MAX_STORED_PROMPT + 1))
    assert "prompt_must_be_at_most_100000_characters" in str(info.value)
    insert(conn, "p", char * MAX_STORED_NEGATIVE_PROMPT)
    with pytest.raises(psycopg.errors.CheckViolation) as info:
        insert(conn, "p", char * (MAX_STORED_NEGATIVE_PROMPT + 1))
    assert "negative_prompt_must_be_at_most_10000_characters" in str(info.value)
    # through the operator's function too, naming the rule
    with pytest.raises(psycopg.errors.CheckViolation) as info:
        conn.execute("SELECT images_enqueue(%s)", (char * (MAX_STORED_PROMPT + 1),))
    assert "prompt_must_be_at_most_100000_characters" in str(info.value)


def test_a_finished_row_is_not_refused_for_its_length(conn) -> None:
    """Like the other rules, the length applies where it matters: to waiting rows."""
    conn.execute(
        "INSERT INTO images (prompt, status, uuid, base64) "
        "VALUES (repeat('x', 200000), 'ReadyToPublish', 'u', 'aGk=')"
    )
    conn.execute("UPDATE images SET status = 'Failed'")
    with pytest.raises(psycopg.errors.CheckViolation) as info:  # a retry is a waiting row
        conn.execute("SELECT images_retry(id) FROM images")
    assert "prompt_must_be_at_most_100000_characters" in str(info.value)


def test_a_hundred_megabytes_is_refused_before_any_pattern_reads_it(conn) -> None:
    started = time.perf_counter()
    with pytest.raises(psycopg.errors.CheckViolation) as info:
        conn.execute("INSERT INTO images (prompt) SELECT repeat(' ', 100 * 1024 * 1024) || 'x'")
    assert "prompt_must_be_at_most_100000_characters" in str(info.value)
    assert time.perf_counter() - started < 30


# -- the head of a prompt -------------------------------------------------------------------


def test_the_head_starts_after_the_blanks_and_is_bounded(conn) -> None:
    assert head(conn, " " * 999 + "a") == "a"
    assert head(conn, "\u200b\u00a0\u3000fox\u00a0") == "fox\u00a0"
    assert head(conn, "a" + " " * 60000 + "b") == "a" + " " * (READ - 1)
    assert head(conn, "\u200b" * 5000 + "x" * 5000) == "x" * READ
    assert head(conn, " " * 99_999 + "x") == "x"  # the longest blank run a rule admits
    assert head(conn, "\u200b \u00a0") == ""  # blank: empty, never NULL
    assert head(conn, None) is None
    assert head(conn, " " * MAX_STORED_PROMPT + "x") == ""  # past what a rule admits


@pytest.mark.parametrize(
    "text",
    [
        "a" + " " * 1_000_000 + "b",
        "\u200b" * 1_000_000 + "b",
        "\U000e0020" * 1_000_000,
        "a" + "\u0301" * 1_000_000,
        "a " * 500_000,
    ],
    ids=["spaces", "zero-width", "tags", "combining", "alternating"],
)
def test_the_head_of_a_megabyte_of_hostile_text_is_quick(conn, text) -> None:
    started = time.perf_counter()
    piece = head(conn, text)
    assert time.perf_counter() - started < 5
    start = len(text) - len(text.lstrip(" \u200b\U000e0020"))
    assert piece == (text[start : start + READ] if start < MAX_STORED_PROMPT else "")


def test_the_head_agrees_with_python(conn) -> None:
    texts = ["", "a", " a ", "\ufff9\ufffa\ufffbx", "\U00013430\U0001d159y", "\ufffe\uffffz"]
    for text in texts:
        start = 0
        while start < len(text) and is_blank(text[start]):
            start += 1
        expected = text[start : start + READ]
        assert head(conn, text) == expected, text


def test_a_prompt_the_database_accepted_is_never_blank_to_the_listener(conn) -> None:
    """The longest blank run a rule lets in, of every kind, then a letter: the claim
    reads the letter."""
    for char in [" ", "\u200b", "\U000e0020", "\ufff9", "\U00013430", "\ufffe"]:
        insert(conn, char * (MAX_STORED_PROMPT - 1) + "x", char * 9_999 + "n")
    claimed = conn.execute(queries()["claim_ready"], PARAMS).fetchall()
    assert [(r[1], r[5]) for r in claimed] == [("x", "n")] * 6


def test_the_claims_read_a_bounded_piece(conn) -> None:
    long_id = insert(conn, "fox " * 25_000, "cat " * 2_500)
    conn.execute("INSERT INTO images (prompt, status, uuid) VALUES (%s, 'Generate', 'u')",
                 ("fox " * 25_000,))  # fmt: skip
    for name in ("claim_ready", "claim_ready_checked"):
        conn.execute("UPDATE images SET locked_by = NULL, locked_until = NULL")
        with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
            (row,) = cur.execute(queries()[name], PARAMS).fetchall()
        assert row["id"] == long_id
        assert row["prompt"] == ("fox " * 500) and row["negative_prompt"] == "cat " * 500
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        (row,) = cur.execute(queries()["claim_generating"], PARAMS).fetchall()
    assert "prompt" not in row  # following a generation needs no prompt


CLAIMS = ("claim_ready", "claim_ready_oldest", "claim_ready_checked")


def test_the_claims_call_the_head_with_what_python_reads() -> None:
    for name in CLAIMS:
        for column in ("prompt", "negative_prompt"):
            assert f"images_prompt_head(i.{column}, {READ}) END AS {column}" in queries()[name]
            assert f"left(i.{column}, {READ})" in queries()[name]


@pytest.mark.parametrize("name", CLAIMS)
def test_the_claims_read_the_head_whatever_the_first_character(conn, name) -> None:
    """The claims take a text's first READ characters as they are when it starts with a
    printable ASCII character (it has no leading blank), and ask images_prompt_head
    otherwise: the piece is the head's either way, at both edges of that range, past
    READ, and for blanks and controls just outside it."""
    firsts = ["!", "~", "A", "0", " ", "\x7f", "\x01", "\u00a0", "é", "\u200b", "漢", "👍"]
    tails = ["x", "fox " * 800]  # short, and longer than READ
    for first in firsts:
        for tail in tails:
            insert(conn, first + tail, first + tail[:9_000])
    insert(conn, "no negative prompt")
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        claimed = cur.execute(queries()[name], PARAMS).fetchall()
        assert len(claimed) == len(firsts) * len(tails) + 1
        for row in claimed:
            stored = cur.execute(
                "SELECT prompt, negative_prompt FROM images WHERE id = %s", (row["id"],)
            ).fetchone()
            assert row["prompt"] == head(conn, stored["prompt"]), stored["prompt"][:3]
            assert row["negative_prompt"] == head(conn, stored["negative_prompt"])


# -- rows that break the length rules -------------------------------------------------------


def tamper(conn, constraint: str, statement: str) -> int:
    """A row written behind a rule's back (an operator who dropped the constraint): the
    rule comes back NOT VALID."""
    (definition,) = conn.execute(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = 'images'::regclass AND conname = %s",
        (constraint,),
    ).fetchone()
    conn.execute(f"ALTER TABLE images DROP CONSTRAINT {constraint}")
    (image_id,) = conn.execute(statement + " RETURNING id").fetchone()
    conn.execute(f"ALTER TABLE images ADD CONSTRAINT {constraint} {definition} NOT VALID")
    return image_id


def test_a_too_long_row_written_behind_the_rule_blocks_nobody(conn) -> None:
    good = insert(conn, "ok")
    long_prompt = tamper(
        conn,
        "prompt_must_be_at_most_100000_characters",
        "INSERT INTO images (prompt) SELECT repeat('w', 200000)",
    )
    long_negative = tamper(
        conn,
        "negative_prompt_must_be_at_most_10000_characters",
        "INSERT INTO images (prompt, negative_prompt) SELECT 'n', repeat('y', 10001)",
    )
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(queries()["claim_ready"], PARAMS)
    claimed = [r[0] for r in conn.execute(queries()["claim_ready_checked"], PARAMS)]
    assert claimed == [good]
    # the claimed row is held by its task: its lease is not a due time
    (at, _now) = conn.execute(queries()["next_ready_at"], {**PARAMS, "held": claimed}).fetchone()
    assert at is None
    assert dict(conn.execute("SELECT id, reason FROM images_blocked").fetchall()) == {
        long_prompt: "prompt over 100000 characters",
        long_negative: "negative prompt over 10000 characters",
    }


def test_legacy_rows_that_break_the_new_rules_are_made_explicit(make_database, tmp_path):
    """A database served by the previous release: waiting rows its rules let in (a prompt
    of 200,000 characters, one of interlinear annotation marks only) end as 0013's
    legacy rows do, reported; finished rows are left alone."""
    url = make_database(migrated=False)
    with psycopg.connect(url, autocommit=True) as c:
        from listener.migrate import _CREATE_TABLE

        c.execute(_CREATE_TABLE)
        for m in migrations():
            if m.name < "0016":
                c.execute(m.sql.encode())
                c.execute("INSERT INTO listener_migrations (name, checksum) VALUES (%s, %s)",
                          (m.name, m.checksum))  # fmt: skip

        def add(sql: str, *params) -> int:
            return c.execute(sql + " RETURNING id", params).fetchone()[0]

        ids = {
            "long": add("INSERT INTO images (prompt) SELECT repeat('z', 200000)"),
            "long_negative": add(
                "INSERT INTO images (prompt, negative_prompt) SELECT 'n', repeat('y', 20000)"
            ),
            "annotation": add("INSERT INTO images (prompt) VALUES (%s)", "\ufff9\ufffb"),
            "noncharacter_negative": add(
                "INSERT INTO images (prompt, negative_prompt) VALUES ('k', %s)", "\ufffe"
            ),
            "long_done": add(
                "INSERT INTO images (prompt, status, uuid, base64) "
                "SELECT repeat('d', 200000), 'ReadyToPublish', 'u', 'aGk='"
            ),
            "ordinary": add("INSERT INTO images (prompt) VALUES ('a fox')"),
        }
    result = run_listener("migrate", env=clean_env(DATABASE_URL=url), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stderr
    assert "1 row(s) in ReadyToGenerate with a prompt over 100000 characters" in out
    assert "1 row(s) in ReadyToGenerate with a blank prompt" in out

    def state(name: str) -> tuple:
        return rows(url, "SELECT status, last_error, negative_prompt FROM images "
                         "WHERE id = %s", (ids[name],))[0]  # fmt: skip

    assert state("long") == ("Failed", "prompt over 100000 characters (found when upgrading)", None)
    assert state("long_negative")[:2] == (
        "Failed",
        "negative prompt over 10000 characters (found when upgrading)",
    )
    assert state("annotation") == ("Failed", "blank prompt (found when upgrading)", None)
    assert state("noncharacter_negative") == ("ReadyToGenerate", None, None)
    assert state("long_done") == ("ReadyToPublish", None, None)
    assert state("ordinary") == ("ReadyToGenerate", None, None)
    report = dict(rows(url, "SELECT kind, ids FROM images_upgrade_report "
                            "WHERE migration = '0016_prompt_bounds'"))  # fmt: skip
    assert report == {
        "in ReadyToGenerate with a prompt over 100000 characters": [ids["long"]],
        "in ReadyToGenerate with a negative prompt over 10000 characters": [ids["long_negative"]],
        "in ReadyToGenerate with a blank prompt": [ids["annotation"]],
        "in ReadyToGenerate with a blank negative prompt": [ids["noncharacter_negative"]],
    }
    # every rule is valid: nothing was left behind
    assert rows(url, "SELECT conname FROM pg_constraint WHERE conrelid = 'images'::regclass "
                     "AND NOT convalidated AND conname LIKE '%%prompt%%'") == []  # fmt: skip


# -- a least-privilege listener across the upgrade ----------------------------------------


def test_a_listener_role_keeps_claiming_after_the_upgrade(make_database, login_as, tmp_path):
    """`listener roles` ran under the previous release (its roles.sql did not know
    images_prompt_head): after `listener migrate` images_listener can still claim. In a
    database where the roles exist (they are cluster-wide) but `listener roles` never ran,
    nothing is granted."""
    from tests.fixtures.roles import url_as
    from tests.test_ours_only import apply_released, make_roles_exist

    served, untouched = make_database(migrated=False), make_database(migrated=False)
    make_roles_exist(served)
    make_roles_exist(untouched)
    apply_released(served, with_roles=True)
    apply_released(untouched)
    for url in (served, untouched):
        result = run_listener("migrate", env=clean_env(DATABASE_URL=url), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    rows(served, "INSERT INTO images (prompt) VALUES ('   a fox')")
    user = psycopg.conninfo.conninfo_to_dict(login_as("images_listener"))["user"]
    with psycopg.connect(url_as(served, str(user)), autocommit=True) as c:
        claimed = c.execute(queries()["claim_ready"], PARAMS).fetchall()
    assert [r[1] for r in claimed] == ["a fox"]
    query = (
        "SELECT has_function_privilege('images_listener', "
        "'images_prompt_head(text, integer)', 'EXECUTE')"
    )
    assert rows(untouched, query) == [(False,)]
    assert rows(served, query) == [(True,)]
