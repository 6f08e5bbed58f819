"""listener.sanitize and the log filter: outside text becomes one bounded, safe line, and
a secret is redacted in every form it was configured in."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from listener.logs import RedactSecrets
from listener.sanitize import LIMIT, MARKER, clean, register_secrets, secret_forms

KEY = "key-with-newline-1234"


@pytest.fixture(autouse=True)
def registered() -> Iterator[None]:
    register_secrets([KEY + "\n", " sec ret 5678 "])
    yield
    register_secrets([])


def test_controls_are_escaped_into_one_line() -> None:
    text = "a\nb\r\x1b[31m\x07\x00\ud800\u202e\u2028\x85z"
    assert clean(text) == "a\\nb\\r\\x1b[31m\\x07\\x00\\ud800\\u202e\\u2028\\x85z"


def test_length_is_capped_with_a_marker_even_for_50_mb() -> None:
    out = clean("x" * 50_000_000)
    assert len(out) == LIMIT and out.endswith(MARKER)
    assert clean("short") == "short"


@pytest.mark.parametrize(
    "text",
    [
        f"the key {KEY} here",
        f"the key {KEY}\n here",
        f'{{"echo": "{KEY}\\n"}}',
        "the secret sec ret 5678 here",
        "X-Key: Key anything-unknown-9",
        '{"x-secret": "Secret anything-unknown-9"}',
        "'X-Key': 'Key anything-unknown-9'",
    ],
)
def test_secrets_and_header_shaped_values_are_redacted(text: str) -> None:
    out = clean(text)
    assert KEY not in out and "sec ret 5678" not in out and "anything-unknown-9" not in out
    assert "***" in out


def test_secret_forms_include_stripped_and_json_escaped() -> None:
    forms = secret_forms(["abc\n"])
    assert {"abc\n", "abc", "abc\\n"} <= set(forms)
    assert forms == sorted(forms, key=len, reverse=True)


def test_the_log_filter_redacts_every_form() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactSecrets([KEY + "\n"]))
    logger = logging.getLogger("test.sanitize")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("stripped %s, raw %r, header X-Secret: Secret zzz-1", KEY, KEY + "\n")
    finally:
        logger.removeHandler(handler)
    written = stream.getvalue()
    assert KEY not in written and "zzz-1" not in written
    assert written.count("***") == 3
