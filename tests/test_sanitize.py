"""listener.sanitize and the log filter: outside text becomes one bounded, safe line, and
a secret is redacted in every form it was configured in."""

from __future__ import annotations

import base64
import io
import logging
import time
from collections.abc import Iterator

import pytest

from listener.logs import RedactSecrets
from listener.sanitize import (
    LIMIT,
    MARKER,
    WholeToken,
    clean,
    redact,
    register_secrets,
    secret_forms,
)

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


# -- transforms of a secret ---------------------------------------------------------------

API_KEY, API_SECRET = "Fb-Key-8f3a9b2c1d", "Fb-Secret-0a1b2c3d4e"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    "shown",
    [
        API_KEY.upper(),
        API_KEY.lower(),
        API_KEY.swapcase(),
        b64(API_KEY),
        b64(API_KEY).rstrip("="),
        b64(f"{API_KEY}:{API_SECRET}"),  # HTTP basic auth
        b64(f"{API_SECRET}:{API_KEY}"),
        base64.urlsafe_b64encode(f"{API_KEY}:{API_SECRET}".encode()).decode(),
        # inside a longer base64 text, at each of the three byte alignments
        b64(f"user:{API_SECRET}@host"),
        b64(f"xuser:{API_SECRET}@host"),
        b64(f"xxuser:{API_SECRET}@host"),
    ],
)
def test_case_folded_and_base64_forms_are_redacted(shown: str) -> None:
    register_secrets([API_KEY, API_SECRET])
    out = clean(f"Authorization: Basic {shown} (sent)")
    assert "***" in out, out
    for form in (API_KEY, API_SECRET):
        assert form.lower() not in out.lower()
        raw = form.encode()
        # no run of the secret's own base64 survives, at any alignment
        for offset in range(3):
            piece = base64.b64encode(bytes(offset) + raw).decode()[4:-4]
            assert piece not in out, (piece, out)


def test_a_base64_id_secret_key_is_redacted_decoded_too() -> None:
    """GigaChat's authorization key is base64 of client_id:client_secret."""
    client_id, client_secret = "0198c7a2-77de-7a1e-9a4b-2f1c3d4e5f60", "c1ient-s3cret-value"
    authorization_key = b64(f"{client_id}:{client_secret}")
    register_secrets([authorization_key])
    for text in (authorization_key, f"{client_id}:{client_secret}", client_secret,
                 client_secret.upper()):  # fmt: skip
        out = clean(f"the API said: {text}!")
        assert out == "the API said: ***!", out


def test_a_whole_token_secret_is_redacted_only_as_a_whole_token() -> None:
    password = WholeToken("longpass1")
    register_secrets([password])
    out = clean("longpass1.db.example user_longpass1 longpass1x :LONGPASS1@ (longpass1)")
    assert out == "***.db.example user_longpass1 longpass1x :***@ (***)", out


def test_short_base64_pieces_are_not_forms() -> None:
    """A 3-character secret's base64 would hit unrelated text: not a form."""
    forms = secret_forms(["abc"])
    assert all(len(form) >= 8 for form in forms if form not in ("abc",)), forms


def test_redaction_is_linear_on_hostile_text() -> None:
    register_secrets([API_KEY, API_SECRET, WholeToken("longpass1")])
    for text in (
        "x-key:" + " " * 1_000_000,
        'X-Secret: "' + " " * 1_000_000,
        "x-key " * 200_000,
        API_KEY[:-1] * 60_000,
        "longpass" * 125_000,
    ):
        started = time.process_time()
        redact(text)
        assert time.process_time() - started < 5, text[:40]
