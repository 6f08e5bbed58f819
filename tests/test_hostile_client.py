"""The client against a hostile API: the emulator's fault knobs over real HTTP on
loopback. Whatever the API sends, the client answers with one of its typed outcomes, in
bounded time and memory, with a short, sanitized message that never holds a secret."""

from __future__ import annotations

import base64
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import stamina
import trio

from listener.errors import (
    ApiError,
    ApiMalformed,
    ApiOutcomeUnknown,
    ApiPermanent,
    ApiTransient,
    InvalidImage,
)
from listener.images import validate_image
from listener.providers.fusionbrain.client import FusionBrainClient
from listener.providers.fusionbrain.models import GenerationRequest
from listener.sanitize import LIMIT

REQUEST = GenerationRequest("a hostile fox", 64, 64, "DEFAULT")
MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def no_backoff() -> Iterator[None]:
    with stamina.set_testing(True, attempts=3, cap=True):
        yield


def make_client(emulator, **kwargs) -> FusionBrainClient:
    options = {"timeout": 5.0} | kwargs
    return FusionBrainClient(emulator.url, emulator.api_key, emulator.secret_key, **options)


@pytest.fixture
async def api(emulator) -> AsyncIterator[FusionBrainClient]:
    async with make_client(emulator) as client:
        await client.pipeline_id()
        yield client


def assert_safe(error: ApiError, emulator) -> None:
    """A message fit for a log line and a column: one bounded line, no secret."""
    text = error.message
    assert len(text) <= LIMIT
    assert emulator.api_key not in text and emulator.secret_key not in text
    for char in ("\n", "\r", "\x1b", "\x00", "\x07", "\ud800", "\u202e"):
        assert char not in text, repr(char)


async def uuid_of_a_run(api: FusionBrainClient) -> str:
    return (await api.run(REQUEST)).uuid


# -- wrong shapes ------------------------------------------------------------------------------


async def test_wrong_types_on_every_endpoint_are_malformed_answers(emulator) -> None:
    async with make_client(emulator) as api:
        emulator.fault("pipelines", "wrong_types")
        with pytest.raises(ApiMalformed) as pipelines:
            await api.pipeline_id()
        assert "malformed answer" in pipelines.value.message
        pid = await api.pipeline_id()
        assert pid

        emulator.fault("availability", "wrong_types")
        with pytest.raises(ApiMalformed):
            await api.availability()

        emulator.fault("run", "wrong_types")
        with pytest.raises(ApiOutcomeUnknown) as run:
            await api.run(REQUEST)
        assert "malformed answer" in run.value.message
        assert_safe(run.value, emulator)

        uuid = await uuid_of_a_run(api)
        emulator.fault("status", "wrong_types")
        with pytest.raises(ApiMalformed) as status:
            await api.status(uuid)
        assert "files" in status.value.message
        assert (await api.status(uuid)).state == "DONE", "the fault did not eat the result"


async def test_deep_nesting_is_refused_before_parsing(api, emulator) -> None:
    emulator.fault("status", "deep", count=3)
    with pytest.raises(ApiMalformed, match="nested deeper than 64"):
        await api.status("any")
    emulator.fault("run", "deep")
    with pytest.raises(ApiOutcomeUnknown, match="nested deeper than 64"):
        await api.run(REQUEST)


@pytest.mark.parametrize(("censored", "expected"), [(False, False), (True, True)])
async def test_censored_as_a_string_reads_as_what_it_says(
    api, emulator, censored, expected
) -> None:
    if censored:
        emulator.fault("run", "censor")
    uuid = await uuid_of_a_run(api)
    emulator.fault("status", "censored_string")
    status = await api.status(uuid)
    assert (status.state, status.censored) == ("DONE", expected)
    assert len(status.files) == (0 if censored else 1)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("image_empty", "empty"),
        ("image_html", "not a PNG or JPEG"),
        ("image_huge", "too many pixels"),
        ("image_wrong_size", "32x64 where 64x64 was asked for"),
    ],
)
async def test_invalid_images_reach_the_caller_who_refuses_them(
    api, emulator, kind, reason
) -> None:
    emulator.fault("run", kind)
    status = await api.status(await uuid_of_a_run(api))
    assert status.state == "DONE"
    (file,) = status.files
    with pytest.raises(InvalidImage, match=reason):
        validate_image(file, expected_size=(64, 64))


# -- size ----------------------------------------------------------------------------------------


async def measured(call) -> tuple[BaseException | None, float, int]:
    """Run `call`; the exception it raised, seconds taken, peak Python memory in bytes."""
    tracemalloc.start()
    started = time.monotonic()
    error = None
    try:
        await call()
    except ApiError as exc:
        error = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return error, time.monotonic() - started, peak


@pytest.mark.parametrize("endpoint", ["status", "run"])
async def test_an_oversized_answer_is_abandoned_as_it_streams(emulator, endpoint) -> None:
    async with make_client(emulator, max_response_bytes=2 * MIB) as api:
        await api.pipeline_id()
        emulator.fault(endpoint, "oversized:4000000000", count=3)  # 4 GB, never finished
        call = (lambda: api.status("x")) if endpoint == "status" else (lambda: api.run(REQUEST))
        error, seconds, peak = await measured(call)
    expected = ApiMalformed if endpoint == "status" else ApiOutcomeUnknown
    assert type(error) is expected
    assert "over 2097152 bytes" in error.message
    assert seconds < 10
    assert peak < 12 * MIB, peak
    assert_safe(error, emulator)


async def test_an_endless_answer_is_abandoned(emulator) -> None:
    async with make_client(emulator, max_response_bytes=MIB) as api:
        await api.pipeline_id()
        emulator.fault("status", "endless", count=3)
        error, seconds, peak = await measured(lambda: api.status("x"))
    assert isinstance(error, ApiMalformed)
    assert seconds < 10 and peak < 8 * MIB
    stats = emulator.stats()
    assert stats["status_calls"] == 1, "an oversized answer is not asked for again"


async def test_a_huge_error_message_is_cut(api, emulator) -> None:
    emulator.fault("run", "huge_error:50000000")
    error, seconds, peak = await measured(lambda: api.run(REQUEST))
    assert isinstance(error, ApiPermanent) and error.status_code == 400
    assert error.message.endswith("…[cut]")
    assert seconds < 10 and peak < 8 * MIB
    assert_safe(error, emulator)


# -- time ------------------------------------------------------------------------------------------


async def test_a_slow_drip_is_cut_by_the_whole_request_deadline(emulator) -> None:
    emulator.configure(generation_time=60)  # status answers stay PROCESSING (~90 bytes)
    async with make_client(emulator, timeout=0.5, result_timeout=1.0) as api:
        uuid = await uuid_of_a_run(api)
        emulator.fault("status", "drip:10", count=3)  # 10 bytes/s: ~9 s for the answer
        started = time.monotonic()
        with pytest.raises(ApiTransient, match="not complete within 1s"):
            await api.status(uuid)
        assert time.monotonic() - started < 3, "no retry after a deadline, no 9 s wait"
        emulator.fault("run", "drip:10")
        started = time.monotonic()
        with pytest.raises(ApiOutcomeUnknown, match=r"not complete within 0\.5s"):
            await api.run(REQUEST)
        assert time.monotonic() - started < 2


async def test_a_run_answered_late_is_outcome_unknown_within_the_timeout(emulator) -> None:
    async with make_client(emulator, timeout=0.5) as api:
        await api.pipeline_id()
        emulator.fault("run", "delay:3")
        started = time.monotonic()
        with pytest.raises(ApiOutcomeUnknown, match=r"no answer within 0\.5s"):
            await api.run(REQUEST)
        assert time.monotonic() - started < 2
    assert emulator.stats()["runs_total"] == 1


async def test_a_slow_but_honest_result_completes_under_the_result_deadline(emulator) -> None:
    async with make_client(emulator, timeout=0.5, result_timeout=15) as api:
        uuid = await uuid_of_a_run(api)
        emulator.fault("status", "slow:2")  # the DONE answer, image included, over 2 s
        started = time.monotonic()
        status = await api.status(uuid)
        assert time.monotonic() - started >= 1.5
    assert status.state == "DONE"
    validate_image(status.files[0], expected_size=(64, 64))


async def test_without_the_result_deadline_a_slow_result_would_be_lost(emulator) -> None:
    """Why status reads have their own deadline: the API hands a result out once."""
    async with make_client(emulator, timeout=0.5, result_timeout=0.5) as api:
        uuid = await uuid_of_a_run(api)
        emulator.fault("status", "slow:2")
        with pytest.raises(ApiTransient):
            await api.status(uuid)
        with pytest.raises(ApiPermanent, match="404"):
            await api.status(uuid)


# -- Retry-After ---------------------------------------------------------------------------------


def http_date(seconds: float) -> str:
    return format_datetime(datetime.now(UTC) + timedelta(seconds=seconds), usegmt=True)


@pytest.mark.parametrize(
    ("value", "low", "high"),
    [
        ("7", 7, 7),
        ("2.5", 2.5, 2.5),
        ("31536000", 30, 30),  # a year: capped at retry_after_max
        ("1e15", None, None),
        ("inf", None, None),
        ("nan", None, None),
        ("-5", None, None),
        ("soon", None, None),
        ("", None, None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0, 0),  # in the past: now
        ("__FUTURE__", 15, 20),
        ("Fri, 31 Dec 9999 23:59:59 GMT", 30, 30),
    ],
)
async def test_retry_after_within_reason(emulator, value, low, high) -> None:
    text = http_date(20) if value == "__FUTURE__" else value
    async with make_client(emulator, retry_after_max=30) as api:
        await api.pipeline_id()
        emulator.fault("run", f"retry_after:{text}")
        with pytest.raises(ApiTransient) as info:
            await api.run(REQUEST)
    assert not isinstance(info.value, ApiOutcomeUnknown)
    if low is None:
        assert info.value.retry_after is None
    else:
        assert low <= info.value.retry_after <= high


# -- text and secrets ------------------------------------------------------------------------------


async def test_control_characters_are_escaped(api, emulator) -> None:
    emulator.fault("run", "control_chars")
    with pytest.raises(ApiPermanent) as info:
        await api.run(REQUEST)
    assert_safe(info.value, emulator)
    assert "\\n2030/01/01 00:00:00 Image ID 999 ready" in info.value.message
    assert "\\x1b[31m" in info.value.message and "\\ud800" in info.value.message


@pytest.mark.parametrize("suffix", ["", "\n", " \r\n"])
async def test_echoed_headers_never_show_a_secret_in_any_form(emulator, suffix) -> None:
    async with FusionBrainClient(
        emulator.url, emulator.api_key + suffix, emulator.secret_key + suffix, timeout=5
    ) as api:
        await api.pipeline_id()  # the stripped key is accepted
        for endpoint, call in (
            ("run", lambda: api.run(REQUEST)),
            ("status", lambda: api.status("u")),
        ):
            emulator.fault(endpoint, "echo_headers")
            with pytest.raises(ApiPermanent) as info:
                await call()
            assert_safe(info.value, emulator)
            assert "x-key" in info.value.message.lower() and "***" in info.value.message


async def test_every_fault_message_is_safe(emulator) -> None:
    """One pass over every knob: each ends in a typed outcome with a safe message."""
    kinds = ["wrong_types", "deep", "oversized:20000000", "endless", "drip:50",
             "echo_headers", "control_chars", "huge_error:5000000", "retry_after:inf",
             "malformed", "drop", "500", "429"]  # fmt: skip
    async with make_client(emulator, timeout=1, result_timeout=1.5, max_response_bytes=MIB) as api:
        await api.pipeline_id()
        for kind in kinds:
            emulator.fault("run", kind)
            with trio.fail_after(10):
                with pytest.raises(ApiError) as info:
                    await api.run(REQUEST)
            assert_safe(info.value, emulator)
            assert isinstance(info.value, ApiTransient | ApiPermanent), kind


def test_base64_module_is_strict_about_what_the_api_sends() -> None:
    # The emulator's invalid files are still base64: only their content is wrong.
    assert base64.b64decode("", validate=True) == b""
