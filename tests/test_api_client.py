"""The client's reading of every answer shape the API notes list, through httpx's
MockTransport (the wire itself is covered against the emulator in test_api_loopback)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import stamina

from listener.edge import json_shape_problem
from listener.errors import (
    ApiBusy,
    ApiCredentials,
    ApiMalformed,
    ApiNotFound,
    ApiNotTaken,
    ApiOutcomeUnknown,
    ApiPermanent,
    ApiTransient,
    ConfigError,
)
from listener.providers.fusionbrain.client import (
    FusionBrainClient,
    choose_pipeline,
    json_depth_exceeds,
    multipart,
    parse_json,
    parse_retry_after,
    parse_status,
)
from listener.providers.fusionbrain.models import GenerationRequest

KEY, SECRET = "the-key-123", "the-secret-456"
PIPELINES = [{"id": "pipe-1", "name": "Kandinsky", "version": 3.1, "status": "ACTIVE",
              "type": "TEXT2IMAGE"}]  # fmt: skip
REQUEST = GenerationRequest("a red fox", 512, 512, "ANIME", "blurry")


@pytest.fixture(autouse=True)
def no_backoff() -> Iterator[None]:
    with stamina.set_testing(True, attempts=3, cap=True):
        yield


Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    def __init__(self, run: Handler | None = None, status: Handler | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self._run = run
        self._status = status

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path.endswith("/pipelines"):
            return httpx.Response(200, json=PIPELINES)
        if path.endswith("/pipeline/run") and self._run:
            return self._run(request)
        if "/pipeline/status/" in path and self._status:
            return self._status(request)
        if path.endswith("/availability"):
            return httpx.Response(200, json={"status": "ACTIVE"})
        return httpx.Response(404, json={"message": "no such path"})

    def count(self, suffix: str) -> int:
        return sum(1 for r in self.requests if suffix in r.url.path)


def client(handler: Handler) -> FusionBrainClient:
    return FusionBrainClient(
        "http://api.test", KEY, SECRET, timeout=5, transport=httpx.MockTransport(handler)
    )


def spring(status: int, message: str) -> httpx.Response:
    return httpx.Response(
        status,
        json={"timestamp": "2025-01-01T00:00:00", "status": status, "error": "Bad Request",
              "message": message, "path": "/key/api/v1/pipeline/run"},
    )  # fmt: skip


# -- pipelines ---------------------------------------------------------------------------


def test_pipeline_id_may_be_named_uuid() -> None:
    assert choose_pipeline([{"uuid": "u-1", "status": "ACTIVE", "type": "TEXT2IMAGE"}]) == "u-1"


def test_newest_active_text2image_pipeline_is_chosen() -> None:
    body = [
        {"id": "old", "version": 3.0, "status": "ACTIVE", "type": "TEXT2IMAGE"},
        {"id": "newest-disabled", "version": 3.2, "status": "DISABLED_MANUALLY",
         "type": "TEXT2IMAGE"},
        {"id": "new", "version": "3.1", "status": "ACTIVE", "type": "TEXT2IMAGE"},
        {"id": "other", "version": 9, "status": "ACTIVE", "type": "IMAGE2IMAGE"},
    ]  # fmt: skip
    assert choose_pipeline(body) == "new"


def test_only_disabled_pipelines_mean_busy() -> None:
    with pytest.raises(ApiBusy) as info:
        choose_pipeline([{"id": "p", "status": "DISABLED_BY_QUEUE", "type": "TEXT2IMAGE"}])
    assert info.value.state == "DISABLED_BY_QUEUE"


async def test_pipeline_is_cached_and_looked_up_again_after_busy() -> None:
    answers = iter([{"uuid": "g-1", "status_time": 3}, {"model_status": "DISABLED_BY_QUEUE"},
                    {"uuid": "g-2", "status_time": 3}])  # fmt: skip
    rec = Recorder(run=lambda r: httpx.Response(201, json=next(answers)))
    async with client(rec) as api:
        assert (await api.run(REQUEST)).uuid == "g-1"
        with pytest.raises(ApiBusy):
            await api.run(REQUEST)
        assert (await api.run(REQUEST)).uuid == "g-2"
    assert rec.count("/pipelines") == 2


# -- run ---------------------------------------------------------------------------------


async def test_run_sends_multipart_with_json_params_and_credentials() -> None:
    rec = Recorder(run=lambda r: httpx.Response(201, json={"uuid": "g-1", "status": "INITIAL",
                                                          "status_time": 17}))  # fmt: skip
    async with client(rec) as api:
        accepted = await api.run(REQUEST)
    assert (accepted.uuid, accepted.status_time) == ("g-1", 17)
    run = next(r for r in rec.requests if r.url.path.endswith("/pipeline/run"))
    assert run.url.path == "/key/api/v1/pipeline/run"
    assert run.headers["X-Key"] == f"Key {KEY}"
    assert run.headers["X-Secret"] == f"Secret {SECRET}"
    assert run.headers["Content-Type"].startswith("multipart/form-data")
    body = run.read().decode()
    assert 'name="pipeline_id"\r\n\r\npipe-1' in body
    _, _, rest = body.partition('name="params"')
    assert rest.lstrip().startswith("Content-Type: application/json")
    params = json.loads(rest.split("\r\n\r\n", 1)[1].split("\r\n--", 1)[0])
    assert params == REQUEST.params()


def test_the_multipart_body_is_the_one_httpx_would_build() -> None:
    """Built in one piece (one write on the wire), byte for byte what httpx's `files=`
    encoding makes, but for the boundary (random in both, never the same twice)."""
    params = json.dumps({"query": "a fox\r\n--not-a-boundary ü"})
    content_type, body = multipart(
        ("pipeline_id", None, "pipe-1"), ("params", "application/json", params)
    )
    boundary = content_type.removeprefix("multipart/form-data; boundary=")
    theirs = httpx.Request(
        "POST",
        "http://api/",
        files={"pipeline_id": (None, "pipe-1"), "params": (None, params, "application/json")},
    )
    their_boundary = theirs.headers["Content-Type"].rpartition("boundary=")[2]
    assert body == theirs.read().replace(their_boundary.encode(), boundary.encode())
    assert len(boundary) == 32 and boundary != multipart(("a", None, "b"))[0][-32:]


@pytest.mark.parametrize("key", ["model_status", "pipeline_status"])
@pytest.mark.parametrize("state", ["DISABLED_BY_QUEUE", "DISABLED_MANUALLY"])
async def test_busy_in_a_2xx_body_either_form(key: str, state: str) -> None:
    rec = Recorder(run=lambda r: httpx.Response(200, json={key: state}))
    async with client(rec) as api:
        with pytest.raises(ApiBusy) as info:
            await api.run(REQUEST)
    assert info.value.state == state


@pytest.mark.parametrize(
    ("response", "error", "fragment"),
    [
        (spring(400, "query is too long"), ApiPermanent, "query is too long"),
        (httpx.Response(415, text="Unsupported Media Type"), ApiPermanent, "415"),
        (httpx.Response(401, json={"message": "Unauthorized"}), ApiCredentials, "401"),
        (httpx.Response(403, text="Forbidden"), ApiCredentials, "403"),
        # Sent, then a server error: it may have been carried out (docs/api-answers.md).
        (httpx.Response(500, json={"error": "Internal Server Error"}), ApiOutcomeUnknown, "500"),
        (httpx.Response(502, text="<html>bad gateway</html>"), ApiOutcomeUnknown, "502"),
        (httpx.Response(503, text="<html>down</html>"), ApiOutcomeUnknown, "503"),
        (httpx.Response(504, text="Gateway Time-out"), ApiOutcomeUnknown, "504"),
        # The API says it did not take the run: free, not counted.
        (httpx.Response(408, text="Request Timeout"), ApiNotTaken, "408"),
        (httpx.Response(425, text="Too Early"), ApiNotTaken, "425"),
        (httpx.Response(429, text="Too Many Requests"), ApiNotTaken, "429"),
        (httpx.Response(404, text="Not Found"), ApiPermanent, "404"),
        (httpx.Response(422, text="Unprocessable"), ApiPermanent, "422"),
        (
            httpx.Response(302, headers={"Location": "https://elsewhere.example/"}),
            ApiPermanent,
            "redirected to https://elsewhere.example/",
        ),
        (httpx.Response(201, text="<html>oops</html>"), ApiOutcomeUnknown, "not JSON"),
        (httpx.Response(201, json={"status": "INITIAL"}), ApiOutcomeUnknown, "malformed answer"),
        (httpx.Response(201, json=["unexpected"]), ApiOutcomeUnknown, "malformed answer"),
    ],
)
async def test_run_outcomes(response: httpx.Response, error: type, fragment: str) -> None:
    rec = Recorder(run=lambda r: response)
    async with client(rec) as api:
        with pytest.raises(error) as info:
            await api.run(REQUEST)
    assert type(info.value) is error
    assert fragment in info.value.message
    assert rec.count("/pipeline/run") == 1, "a run is never repeated after an answer"


async def test_429_is_busy_and_carries_retry_after() -> None:
    rec = Recorder(run=lambda r: httpx.Response(429, headers={"Retry-After": "7"}))
    async with client(rec) as api:
        with pytest.raises(ApiNotTaken) as info:
            await api.run(REQUEST)
    assert info.value.retry_after == 7


async def test_run_is_repeated_only_when_it_never_left() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    rec = Recorder(run=refuse)
    async with client(rec) as api:
        with pytest.raises(ApiTransient) as info:
            await api.run(REQUEST)
    assert not isinstance(info.value, ApiOutcomeUnknown)
    assert rec.count("/pipeline/run") == 3


@pytest.mark.parametrize(
    "exc", [httpx.ReadTimeout("timed out"), httpx.RemoteProtocolError("server hung up")]
)
async def test_run_without_an_answer_is_outcome_unknown_and_not_repeated(exc) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise exc

    rec = Recorder(run=fail)
    async with client(rec) as api:
        with pytest.raises(ApiOutcomeUnknown):
            await api.run(REQUEST)
    assert rec.count("/pipeline/run") == 1


# -- status ------------------------------------------------------------------------------


def test_status_shapes() -> None:
    pending = parse_status("g", {"uuid": "g", "status": "INITIAL", "result": None})
    assert (pending.state, pending.final, pending.files) == ("INITIAL", False, ())
    done = parse_status(
        "g",
        {"uuid": "g", "status": "DONE", "result": {"files": ["aGk="], "censored": False},
         "generationTime": 12},
    )  # fmt: skip
    assert (done.final, done.files, done.censored, done.generation_time) == (
        True, ("aGk=",), False, 12)  # fmt: skip
    censored = parse_status("g", {"status": "DONE", "result": {"files": [], "censored": True}})
    assert censored.censored
    failed = parse_status("g", {"status": "FAIL", "errorDescription": "model crashed"})
    assert (failed.final, failed.error_description) == (True, "model crashed")
    assert parse_status("g", {"status": "CANCEL"}).final
    old = parse_status("g", {"status": "DONE", "images": ["aGk="], "censored": True})
    assert (old.files, old.censored) == (("aGk=",), True)


@pytest.mark.parametrize("body", [[], {"uuid": "g"}, "text"])
def test_status_without_a_state_is_transient(body) -> None:
    with pytest.raises(ApiTransient):
        parse_status("g", body)


async def test_status_404_is_not_found() -> None:
    rec = Recorder(status=lambda r: httpx.Response(404, json={"message": "not found"}))
    async with client(rec) as api:
        with pytest.raises(ApiNotFound):
            await api.status("g-1")


async def test_status_reads_are_retried_on_transient_errors() -> None:
    answers = iter([httpx.Response(502, text="bad gateway"), httpx.Response(200, text="{"),
                    httpx.Response(200, json={"uuid": "g", "status": "PROCESSING"})])  # fmt: skip
    rec = Recorder(status=lambda r: next(answers))
    async with client(rec) as api:
        status = await api.status("g")
    assert status.state == "PROCESSING"
    assert rec.count("/pipeline/status/") == 3


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
async def test_a_redirect_on_a_status_check_is_transient_with_a_clear_reason(code: int) -> None:
    """Not followed (the credentials would go along), not retried here (the same answer
    would come back), and not a refusal: the next check asks again."""
    location = "https://login.example/" + "a" * 5000
    moved = httpx.Response(code, headers={"Location": location})
    rec = Recorder(status=lambda r: moved)
    async with client(rec) as api:
        with pytest.raises(ApiTransient) as info:
            await api.status("g")
    assert type(info.value) is ApiTransient
    message = info.value.message
    assert f"status: HTTP {code}: redirected to https://login.example/" in message, message
    assert "redirects are not followed" in message and "FUSION_BRAIN_URL" in message
    assert len(message) < 600, "the Location is cut"
    assert rec.count("/pipeline/status/") == 1


async def test_status_gives_up_after_its_attempts() -> None:
    rec = Recorder(status=lambda r: httpx.Response(500, text="boom"))
    async with client(rec) as api:
        with pytest.raises(ApiTransient):
            await api.status("g")
    assert rec.count("/pipeline/status/") == 3


@pytest.mark.parametrize("key", ["status", "pipeline_status"])
async def test_availability_either_key(key: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/availability"):
            return httpx.Response(200, json={key: "DISABLED_BY_QUEUE"})
        return httpx.Response(200, json=PIPELINES)

    async with client(handler) as api:
        assert await api.availability() == "DISABLED_BY_QUEUE"


async def test_no_error_message_shows_the_credentials() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"refused {request.url}", request=request)

    async with client(handler) as api:
        with pytest.raises(ApiTransient) as info:
            await api.run(REQUEST)
    assert KEY not in str(info.value) and SECRET not in str(info.value)


# -- strict shapes (issue 12) ----------------------------------------------------------------


def test_censored_as_a_string_is_read_as_what_it_spells() -> None:
    body = {"status": "DONE", "result": {"files": ["aGk="], "censored": "false"}}
    assert parse_status("g", body).censored is False
    body["result"]["censored"] = "TRUE"
    assert parse_status("g", body).censored is True
    assert parse_status("g", {"status": "DONE", "images": [], "censored": "true"}).censored
    assert (
        parse_status("g", {"status": "DONE", "result": {"files": [], "censored": None}}).censored
        is False
    )


@pytest.mark.parametrize(
    "body",
    [
        {"status": "DONE", "result": {"files": 5}},
        {"status": "DONE", "result": {"files": [5]}},
        {"status": "DONE", "result": {"files": "aGk="}},
        {"status": "DONE", "result": {"files": [], "censored": "maybe"}},
        {"status": "DONE", "result": {"files": [], "censored": 1}},
        {"status": "DONE", "result": "done"},
        {"status": "DONE", "images": {"a": 1}},
        {"status": 3},
        {"status": "DONE\n2030/01/01 forged"},
        {"status": "DONE", "errorDescription": ["x"]},
    ],
)
def test_wrong_types_in_a_status_are_a_malformed_answer(body) -> None:
    with pytest.raises(ApiMalformed) as info:
        parse_status("g", body)
    assert "malformed answer" in info.value.message
    assert "\n" not in info.value.message


def test_an_informational_generation_time_of_a_wrong_type_does_not_cost_the_image() -> None:
    status = parse_status("g", {"status": "DONE", "result": {"files": ["aGk="]},
                                "generationTime": "12"})  # fmt: skip
    assert (status.files, status.generation_time) == (("aGk=",), None)


def test_unreadable_pipeline_entries_are_skipped() -> None:
    body = [{"id": ["x"], "status": "ACTIVE", "type": "TEXT2IMAGE"}, "junk",
            {"id": "good", "status": "ACTIVE", "type": "TEXT2IMAGE", "version": "nan"}]  # fmt: skip
    assert choose_pipeline(body) == "good"
    with pytest.raises(ApiMalformed):
        choose_pipeline([{"id": ["x"]}])
    with pytest.raises(ApiMalformed):
        choose_pipeline({"id": "a"})


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"[" * 65 + b"]" * 65, "nested deeper than 64"),
        (b'{"uuid": NaN}', "not JSON"),
        (b'{"uuid": Infinity}', "not JSON"),
        (b"\xff\xfe garbage", "not JSON"),
    ],
)
def test_bodies_refused_before_or_while_parsing(body: bytes, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_json(body)


def test_too_many_containers_are_refused_before_parsing() -> None:
    """A body of a million tiny arrays costs seconds to parse and is nobody's answer."""
    body = b"[" + b"[]," * 1_000_000 + b"[]]"
    with pytest.raises(ValueError, match="more than 10000 arrays and objects"):
        parse_json(body)
    body = b"[" + b'"[[]]",' * 1_000_000 + b'""]'
    assert len(parse_json(body)) == 1_000_001, "brackets in strings are not containers"


@pytest.mark.parametrize(
    "text",
    [
        r'["\\", [[[]]]]',  # an escaped backslash ends before the quote that closes
        r'["\"[[[[[", [[[]]]]',  # an escaped quote does not close the string
        r'["\\\"[[[[", [[[]]]]',
        r'{"a": {"b": "}}}}}}"}, "c": [[[]]]}',
        r'[[""], [["", ""]], [["]", "["]]]',
    ],
)
def test_depth_agrees_with_the_parsed_value(text: str) -> None:
    def depth(value) -> int:
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            return 1 + max((depth(v) for v in value), default=0)
        return 0

    real = depth(json.loads(text))
    assert json_depth_exceeds(text.encode(), real - 1)
    assert not json_depth_exceeds(text.encode(), real)


@pytest.mark.parametrize(
    "body",
    [
        b"[" + b'"[[[[",' * 2_000_000 + b'""]',
        b"[" + (b"[" * 63 + b"]" * 63 + b",") * 100_000 + b"[]]",
        b'["' + b'\\\\\\"[' * 2_000_000 + b'"]',
        b"[" * 8_000_000 + b"]" * 8_000_000,
    ],
    ids=["brackets in strings", "64 deep, wide", "escapes", "16 MB deep"],
)
def test_the_shape_check_of_a_hostile_16_mb_body_costs_no_python_walk(body: bytes) -> None:
    """Generous bound: the Python walk this replaced took 2 to 2.5 s on such bodies."""
    started = time.process_time()
    json_shape_problem(body)
    assert time.process_time() - started < 1.5


def test_depth_is_counted_outside_strings_only() -> None:
    assert parse_json(json.dumps({"a": "[" * 1000}).encode()) == {"a": "[" * 1000}
    assert parse_json(b"[" * 64 + b"]" * 64) is not None
    assert json_depth_exceeds(json.dumps([{'\\"[': [[[]]]}]).encode(), 4)


async def test_a_declared_length_over_the_cap_is_not_read() -> None:
    class Huge(httpx.AsyncByteStream):
        async def __aiter__(self):
            raise AssertionError("the body was read")
            yield b""  # pragma: no cover

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/pipelines"):
            return httpx.Response(200, json=PIPELINES)
        return httpx.Response(200, headers={"Content-Length": str(10**9)}, stream=Huge())

    async with FusionBrainClient(
        "http://api.test", KEY, SECRET, transport=httpx.MockTransport(handler),
        max_response_bytes=1024 * 1024,
    ) as api:  # fmt: skip
        with pytest.raises(ApiMalformed, match="1000000000 bytes"):
            await api.status("g")
        with pytest.raises(ApiOutcomeUnknown, match="1000000000 bytes"):
            await api.run(REQUEST)


async def test_a_compressed_answer_is_refused_and_identity_asked_for() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=b"\x1f\x8b")

    async with client(handler) as api:
        with pytest.raises(ApiMalformed, match="gzip-compressed"):
            await api.pipeline_id()
    assert seen[0].headers["Accept-Encoding"] == "identity"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None), ("0", 0), ("12", 12), ("1.5", 1.5), ("31536000", 300),
        ("inf", None), ("-inf", None), ("nan", None), ("1e15", None), ("-1", None),
        ("12abc", None), ("", None), ("   ", None), ("1" * 70, None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0), ("Fri, 31 Dec 9999 23:59:59 GMT", 300),
        ("Thu, 01 Jan 1970 00:00:00", 0), ("Mon, 99 Foo 2020 99:99:99 GMT", None),
    ],
)  # fmt: skip
def test_retry_after_parsing(value, expected) -> None:
    assert parse_retry_after(value, cap=300) == expected


def test_a_key_that_no_header_can_carry_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="printable ASCII"):
        FusionBrainClient("http://api.test", "ключ", SECRET)
    with pytest.raises(ConfigError):
        FusionBrainClient("http://api.test", KEY, "two words")


async def test_a_key_with_a_trailing_newline_is_sent_stripped_and_never_shown() -> None:
    rec = Recorder(run=lambda r: httpx.Response(400, json={"message": f"bad {r.headers}"}))
    async with FusionBrainClient(
        "http://api.test", KEY + "\n", " " + SECRET + "\r\n", transport=httpx.MockTransport(rec)
    ) as api:
        with pytest.raises(ApiPermanent) as info:
            await api.run(REQUEST)
    assert rec.requests[0].headers["X-Key"] == f"Key {KEY}"
    assert KEY not in info.value.message and SECRET not in info.value.message


def test_ids_that_go_back_into_a_url_must_be_url_safe() -> None:
    assert choose_pipeline([{"id": "../../x", "type": "TEXT2IMAGE"},
                            {"id": "ok-1", "type": "TEXT2IMAGE"}]) == "ok-1"  # fmt: skip
    assert parse_status("asked", {"status": "DONE", "uuid": "../../x"}).uuid == "asked"


@pytest.mark.parametrize("uuid", ["../pipelines", "a/b", "x\ny", "", "u" * 129, 7])
async def test_a_run_uuid_that_is_not_url_safe_is_a_malformed_answer(uuid) -> None:
    rec = Recorder(run=lambda r: httpx.Response(201, json={"uuid": uuid, "status_time": 1}))
    async with client(rec) as api:
        with pytest.raises(ApiOutcomeUnknown, match="malformed answer"):
            await api.run(REQUEST)


def test_an_error_description_is_sanitized_where_it_enters() -> None:
    failed = parse_status("g", {"status": "FAIL", "errorDescription": "x\n2030/01/01 \x1b" * 500})
    assert "\n" not in failed.error_description and "\x1b" not in failed.error_description
    assert len(failed.error_description) <= 2000
