"""The emulator's ASGI application: the Fusion Brain API plus a control endpoint.

API (as docs/fusionbrain-api.md summarises it), every path under key/api/v1/:

    GET  pipelines                      one ACTIVE TEXT2IMAGE pipeline (Kandinsky 3.1)
    GET  pipeline/{id}/availability     {"status": "ACTIVE"} or {"pipeline_status": busy}
    POST pipeline/run                   multipart: pipeline_id + params (application/json)
    GET  pipeline/status/{uuid}         INITIAL -> PROCESSING -> DONE | FAIL | CANCEL

Control, under /_emulator/: config (GET, POST), faults (GET, POST), reset (POST), stats
(GET). It answers only a request that carries the control token given at start-up
(`Authorization: Bearer <token>`), and a POST only with `Content-Type: application/json`
(a web page cannot send either without the browser asking first); without a token the
control endpoint is off. It never shows the API key or secret.

Order of work for an API request: pending fault (next-N), random error/malformed
answers, credentials, then the endpoint itself. A delay (configured or injected) is
spent before answering; for run it is spent after the run is recorded, so that a client
that gives up meanwhile has still spent its quota (the "outcome unknown" case), while
for the other endpoints a client that gives up during the delay changes nothing.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import logging
import re
import socket
import struct
import time
import uuid as uuidlib
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import trio
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from listener.providers.emulator_kit import ConfigInvalid
from listener.providers.emulator_kit.answers import (
    Answer,
    Receive,
    Send,
    send_answer,
    wait_unless_gone,
)
from listener.providers.fusionbrain.emulator.images import ImageCache
from listener.providers.fusionbrain.emulator.state import (
    BODY_FAULTS,
    CANCEL,
    CANCEL_DESCRIPTION,
    CENSORED,
    DONE,
    FAIL,
    FAIL_DESCRIPTION,
    MALFORMED_BODY,
    STATUS_FAULTS,
    EmulatorState,
    Fault,
    Generation,
)

log = logging.getLogger("listener.emulator")


API_PREFIX = "/key/api/v1/"
PIPELINE_ID = "a5e3b1c0-7f2d-4c69-9b8e-3d1f0e2a4b6c"
PIPELINE = {
    "id": PIPELINE_ID,
    "name": "Kandinsky",
    "nameEn": "Kandinsky",
    "description": "Kandinsky 3.1 (emulated)",
    "descriptionEn": "Kandinsky 3.1 (emulated)",
    "tags": [],
    "version": 3.1,
    "status": "ACTIVE",
    "type": "TEXT2IMAGE",
    "createdDate": "2025-04-01T00:00:00.000+00:00",
    "lastModified": "2025-04-01T00:00:00.000+00:00",
}
STYLES = ("KANDINSKY", "UHD", "ANIME", "DEFAULT")
MAX_PROMPT = 1000
MAX_SIDE = 1024
MAX_BODY = 1 << 20
# Generated bodies (oversized, endless) go out in pieces of this size.
CHUNK = 64 * 1024
FILLER = b"A" * CHUNK
# An endless body ends anyway after this long, so a forgotten client cannot keep it going.
ENDLESS_SECONDS = 600.0
DEEP_LEVELS = 100_000
# What a text with control characters looks like: a forged log line, a terminal escape,
# a bell, a NUL and a lone surrogate (escaped in the JSON).
CONTROL_TEXT = (
    "bad prompt\n2030/01/01 00:00:00 Image ID 999 ready (ReadyToPublish)\r\n"
    "\x1b[31mred\x1b[0m \x07bell \x00nul \ud800lone \u202eevil"
)
HTML_PAGE = b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>"
REASONS = {
    200: "OK",
    201: "Created",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    **{int(code): reason for code, (_, reason) in STATUS_FAULTS.items()},
}

_ROUTES: tuple[tuple[str, str, re.Pattern[str]], ...] = (
    ("pipelines", "GET", re.compile(r"pipelines")),
    ("availability", "GET", re.compile(r"pipeline/(?P<id>[^/]+)/availability")),
    ("run", "POST", re.compile(r"pipeline/run")),
    ("status", "GET", re.compile(r"pipeline/status/(?P<uuid>[^/]+)")),
)


def spring_error(status: int, message: str, path: str) -> Answer:
    """An error body in the Spring Boot shape the real service uses."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds")
    return Answer.json(
        status,
        {
            "timestamp": now,
            "status": status,
            "error": REASONS.get(status, "Error"),
            "message": message,
            "path": path,
        },
    )


class Refused(Exception):
    """A request the API answers with an error (status, message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Part:
    headers: dict[str, str] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)

    @property
    def name(self) -> str | None:
        _, options = parse_options_header(self.headers.get("content-disposition", ""))
        name = options.get(b"name")
        return name.decode("utf-8", "replace") if name is not None else None


def parse_multipart(content_type: str, body: bytes) -> dict[str, Part]:
    """The parts of a multipart/form-data body by name (415 or 400 when it is not one)."""
    ctype, options = parse_options_header(content_type)
    if ctype != b"multipart/form-data":
        raise Refused(415, f"Content-Type '{content_type}' is not supported")
    boundary = options.get(b"boundary")
    if not boundary:
        raise Refused(400, "Failed to parse multipart servlet request: no boundary")
    parts: list[Part] = []
    current = Part()
    header_field = bytearray()
    header_value = bytearray()
    ended = False

    def on_part_begin() -> None:
        nonlocal current
        current = Part()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        name = header_field.decode("latin-1").strip().lower()
        current.headers[name] = header_value.decode("utf-8", "replace").strip()
        header_field.clear()
        header_value.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        current.data.extend(data[start:end])

    def on_part_end() -> None:
        parts.append(current)

    def on_end() -> None:
        nonlocal ended
        ended = True

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_end": on_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise Refused(400, f"Failed to parse multipart servlet request: {exc}") from exc
    if not ended:
        raise Refused(400, "Failed to parse multipart servlet request: unexpected end")
    return {p.name: p for p in parts if p.name is not None}


@dataclass(frozen=True)
class RunParams:
    prompt: str
    width: int
    height: int
    style: str
    negative_prompt: str


def validate_params(raw: bytes) -> RunParams:
    """The run's params as the service checks them (400 with a message otherwise)."""
    try:
        params = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused(400, f"JSON parse error: {exc}") from exc
    if not isinstance(params, dict):
        raise Refused(400, "params must be a JSON object")
    if params.get("type", "GENERATE") != "GENERATE":
        raise Refused(400, "type must be GENERATE")
    num = params.get("numImages", 1)
    if num != 1 or isinstance(num, bool):
        raise Refused(400, "numImages must be 1")
    sides = {}
    for name in ("width", "height"):
        value = params.get(name, MAX_SIDE)
        if not isinstance(value, int) or isinstance(value, bool):
            raise Refused(400, f"{name} must be an integer")
        if not 1 <= value <= MAX_SIDE:
            raise Refused(400, f"{name} must be between 1 and {MAX_SIDE}, not {value}")
        sides[name] = value
    style = params.get("style", "DEFAULT")
    if style is None:
        style = "DEFAULT"
    if style not in STYLES:
        raise Refused(400, f"Unknown style: {style}")
    generate = params.get("generateParams")
    query = generate.get("query") if isinstance(generate, dict) else None
    if not isinstance(query, str) or not 1 <= len(query) <= MAX_PROMPT:
        raise Refused(400, f"generateParams.query must be 1 to {MAX_PROMPT} characters")
    negative = params.get("negativePromptDecoder") or ""
    if not isinstance(negative, str) or len(negative) > MAX_PROMPT:
        raise Refused(400, f"negativePromptDecoder must be at most {MAX_PROMPT} characters")
    return RunParams(query, sides["width"], sides["height"], style, negative)


class EmulatorApp:
    """The ASGI callable. `connections` maps a client (host, port) to the server-side
    socket, so that the `drop` fault can close a connection without answering.
    `control_token` enables the control endpoint for requests that carry it."""

    def __init__(
        self,
        state: EmulatorState,
        connections: dict[tuple[str, int], Any] | None = None,
        *,
        control_token: str | None = None,
    ) -> None:
        self.state = state
        self.connections = connections if connections is not None else {}
        self.images = ImageCache()
        self.control_token = control_token

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        arrived_at = time.time()
        path: str = scope["path"]
        method: str = scope["method"]
        body = await self._read_body(scope, receive)
        if body is None:
            answer: Answer | None = spring_error(413, "Request body too large", path)
        elif path.startswith("/_emulator/"):
            answer = self._control(scope, method, path.removeprefix("/_emulator/"), body)
        elif path.startswith(API_PREFIX):
            answer = await self._api(scope, receive, method, path, body, arrived_at)
        else:
            answer = spring_error(404, "No static resource " + path.lstrip("/"), path)
        if answer is None:  # dropped, or the client left during a delay
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug("emulator: %s %s -> %d", method, path, answer.status)
        await send_answer(send, answer, receive)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    @staticmethod
    async def _read_body(scope: dict[str, Any], receive: Receive) -> bytes | None:
        chunks = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b""
            chunks.extend(message.get("body", b""))
            if len(chunks) > MAX_BODY:
                return None
            if not message.get("more_body", False):
                return bytes(chunks)

    # -- the API -------------------------------------------------------------------------

    async def _api(
        self,
        scope: dict[str, Any],
        receive: Receive,
        method: str,
        path: str,
        body: bytes,
        arrived_at: float,
    ) -> Answer | None:
        state = self.state
        state.stats.requests_total += 1
        if state.config.retired:
            return spring_error(404, "Not Found", path)
        route = path.removeprefix(API_PREFIX).rstrip("/")
        found = _route(route)
        if found is None:
            return spring_error(404, "No static resource " + path.lstrip("/"), path)
        endpoint, wanted, match = found
        if method != wanted:
            return spring_error(405, f"Request method '{method}' is not supported", path)
        if endpoint == "run":
            state.stats.run_requests += 1
        elif endpoint == "status":
            state.stats.status_calls += 1

        fault = state.take_fault(endpoint)
        if fault is not None and fault.kind == "drop":
            self._drop(scope)
            return None
        config = state.config
        delay = config.delay + (fault.seconds if fault is not None and fault.kind == "delay" else 0)
        answer = self._faulty_answer(fault, scope, endpoint, path)
        if endpoint == "run":
            if answer is None:
                answer = self._run(scope, path, body, arrived_at)
                taken = config.error_after_run
                if fault is not None and fault.kind == "taken":
                    taken = int(fault.seconds)
                if taken is not None and answer.status == 201:
                    # Taken and charged for; the client hears only that something failed.
                    answer = spring_error(taken, f"Emulated fault {taken} after the run", path)
            if delay > 0:
                await wait_unless_gone(receive, delay)
            return _paced(answer, fault)
        if delay > 0 and not await wait_unless_gone(receive, delay):
            return None
        if answer is not None:
            return _paced(answer, fault)
        refused = self._check_credentials(scope, path)
        if refused is not None:
            return refused
        if endpoint == "pipelines":
            wanted_type = _query(scope).get("type")
            listed = [] if wanted_type not in (None, "TEXT2IMAGE") else [PIPELINE]
            return _paced(Answer.json(200, listed), fault)
        if endpoint == "availability":
            if match["id"] != PIPELINE_ID:
                return spring_error(404, f"Pipeline {match['id']} not found", path)
            if state.config.busy is not None:
                return Answer.json(200, {"pipeline_status": state.config.busy_value})
            return _paced(Answer.json(200, {"status": "ACTIVE"}), fault)
        censored_string = fault is not None and fault.kind == "censored_string"
        answer = await self._status(match["uuid"], path, censored_string=censored_string)
        return _paced(answer, fault)

    def _faulty_answer(
        self, fault: Fault | None, scope: dict[str, Any], endpoint: str, path: str
    ) -> Answer | None:
        """The answer an injected fault or a random error rate imposes, if any."""
        state = self.state
        kind = fault.kind if fault is not None else None
        if kind is None or kind in ("delay", "drip", "slow", "censored_string", "taken"):
            if state.chance(state.config.error_rate):
                kind = "500"
            elif state.chance(state.config.malformed_rate):
                kind = "malformed"
            else:
                return None
        assert kind is not None
        if kind == "malformed":
            return Answer(200, MALFORMED_BODY, content_type=b"text/html")
        if kind in BODY_FAULTS:
            return Answer.json(200, BODY_FAULTS[kind])
        hostile = _hostile_answer(kind, fault, scope, endpoint, path)
        if hostile is not None:
            return hostile
        status = int(kind)
        answer = spring_error(status, f"Emulated fault {status}", path)
        if status == 429:
            answer.headers.append((b"retry-after", b"1"))
        return answer

    def _check_credentials(self, scope: dict[str, Any], path: str) -> Answer | None:
        config = self.state.config
        if config.wrong_credentials:
            return spring_error(401, "Unauthorized", path)
        headers = _headers(scope)
        if config.api_key is not None and headers.get("x-key") != f"Key {config.api_key}":
            return spring_error(401, "Unauthorized", path)
        if (
            config.secret_key is not None
            and headers.get("x-secret") != f"Secret {config.secret_key}"
        ):
            return spring_error(401, "Unauthorized", path)
        return None

    def _run(self, scope: dict[str, Any], path: str, body: bytes, arrived_at: float) -> Answer:
        refused = self._check_credentials(scope, path)
        if refused is not None:
            return refused
        state = self.state
        try:
            parts = parse_multipart(_headers(scope).get("content-type", ""), body)
            pipeline = parts.get("pipeline_id")
            if pipeline is None:
                raise Refused(400, "Required part 'pipeline_id' is not present.")
            if pipeline.data.decode("utf-8", "replace").strip() != PIPELINE_ID:
                raise Refused(400, "Unknown pipeline_id")
            raw = parts.get("params")
            if raw is None:
                raise Refused(400, "Required part 'params' is not present.")
            ctype, _ = parse_options_header(raw.headers.get("content-type", ""))
            if ctype != b"application/json":
                shown = raw.headers.get("content-type", "application/octet-stream")
                raise Refused(415, f"Content-Type '{shown}' is not supported")
            params = validate_params(bytes(raw.data))
        except Refused as exc:
            return spring_error(exc.status, exc.message, path)
        config = state.config
        if config.busy is not None:
            return Answer.json(200, {config.busy: config.busy_value})
        now = time.monotonic()
        if state.over_limit(now):
            state.stats.runs_refused += 1
            state.stats.refused_at.append(arrived_at)
            if config.over_limit == "busy":
                return Answer.json(200, {"model_status": "DISABLED_BY_QUEUE"})
            answer = spring_error(429, "Too Many Requests", path)
            answer.headers.append((b"retry-after", b"1"))
            return answer
        outcome = DONE
        fault = state.take_fault("run", outcome=True)
        if fault is not None:
            outcome = {"fail": FAIL, "cancel": CANCEL, "censor": CENSORED}.get(
                fault.kind, fault.kind
            )
        elif _censored(params.prompt, config.censor_words):
            outcome = CENSORED
        elif state.chance(config.fail_rate):
            outcome = FAIL
        elif state.chance(config.cancel_rate):
            outcome = CANCEL
        generation = Generation(
            uuid=str(uuidlib.uuid4()),
            prompt=params.prompt,
            width=params.width,
            height=params.height,
            style=params.style,
            negative_prompt=params.negative_prompt,
            started=now,
            duration=config.generation_time,
            outcome=outcome,
        )
        state.record_run(generation, arrived_at)
        state.started(now)
        return Answer.json(
            201, {"uuid": generation.uuid, "status": "INITIAL", "status_time": config.status_time}
        )

    async def _status(self, uuid: str, path: str, *, censored_string: bool = False) -> Answer:
        state = self.state
        generation = state.generations.get(uuid)
        now = time.monotonic()
        if generation is not None and generation.expired(now, state.config.result_ttl):
            del state.generations[uuid]
            generation = None
        if generation is None:
            return spring_error(404, f"Generation {uuid} not found", path)
        phase = generation.phase(now)
        if phase != "final":
            return Answer.json(
                200, {"uuid": uuid, "status": phase, "errorDescription": None, "result": None}
            )
        # A final answer is handed out once: forget it before any await.
        del state.generations[uuid]
        state.stats.results_fetched += 1
        seconds = round(generation.duration)
        if generation.outcome in (FAIL, CANCEL):
            return Answer.json(
                200,
                {
                    "uuid": uuid,
                    "status": generation.outcome,
                    "errorDescription": FAIL_DESCRIPTION
                    if generation.outcome == FAIL
                    else CANCEL_DESCRIPTION,
                    "result": None,
                    "generationTime": seconds,
                },
            )
        censored = generation.outcome == CENSORED
        files = [] if censored else [await self._file(generation)]
        return Answer.json(
            200,
            {
                "uuid": uuid,
                "status": "DONE",
                "errorDescription": None,
                "result": {
                    "files": files,
                    # The censored_string fault sends the flag as the strings "true"/"false".
                    "censored": str(censored).lower() if censored_string else censored,
                },
                "generationTime": seconds,
            },
        )

    async def _file(self, generation: Generation) -> str:
        """The base64 file of a DONE generation: its image, or a bad one (image_* faults)."""
        g = generation
        if g.outcome == "image_empty":
            return ""
        if g.outcome == "image_html":
            return base64.b64encode(HTML_PAGE).decode()
        if g.outcome == "image_huge":
            return base64.b64encode(png_header(50_000, 50_000)).decode()
        if g.outcome == "image_wrong_size":
            width = g.width // 2 if g.width > 1 else 2
            return await self.images.get(g.prompt, width, g.height, g.style)
        return await self.images.get(g.prompt, g.width, g.height, g.style)

    def _drop(self, scope: dict[str, Any]) -> None:
        client = scope.get("client")
        sock = self.connections.get(tuple(client)) if client else None
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    # -- control -------------------------------------------------------------------------

    def _control(self, scope: dict[str, Any], method: str, what: str, body: bytes) -> Answer:
        state = self.state
        path = "/_emulator/" + what
        if self.control_token is None:
            return spring_error(404, "The control endpoint is off", path)
        headers = _headers(scope)
        given = headers.get("authorization", "")
        expected = f"Bearer {self.control_token}"
        if not hmac.compare_digest(given.encode("latin-1"), expected.encode("latin-1")):
            return spring_error(401, "The control endpoint needs its token", path)
        if method == "POST":
            ctype, _ = parse_options_header(headers.get("content-type", ""))
            if ctype != b"application/json":
                return spring_error(415, "The control endpoint takes application/json", path)
        try:
            data = json.loads(body) if body.strip() else {}
        except ValueError:
            return spring_error(400, "body is not JSON", path)
        try:
            if (method, what) == ("GET", "config"):
                return Answer.json(200, state.config.to_json())
            if (method, what) == ("POST", "config"):
                return Answer.json(200, state.update_config(data).to_json())
            if (method, what) == ("GET", "faults"):
                return Answer.json(200, [f.to_json() for f in state.faults])
            if (method, what) == ("POST", "faults"):
                fault = Fault.parse(data)
                state.add_fault(fault)
                return Answer.json(200, [f.to_json() for f in state.faults])
            if (method, what) == ("POST", "reset"):
                state.reset()
                self.images.clear()
                return Answer.json(200, state.config.to_json())
            if (method, what) == ("GET", "stats"):
                return Answer.json(200, state.stats.to_json())
        except ConfigInvalid as exc:
            return spring_error(400, str(exc), path)
        if what in ("config", "faults", "reset", "stats"):
            return spring_error(405, f"Request method '{method}' is not supported", path)
        return spring_error(404, f"No control endpoint {what}", path)


# -- a hostile API ---------------------------------------------------------------------------


def _hostile_answer(
    kind: str, fault: Fault | None, scope: dict[str, Any], endpoint: str, path: str
) -> Answer | None:
    """The answer of a hostile fault (docs/emulator.md), None for the other kinds."""
    number = int(fault.seconds) if fault is not None else 0
    if kind == "oversized":
        head, tail = _big_shape(endpoint)
        return Answer(200, b"", stream=lambda: _sized(head, number, tail))
    if kind == "endless":
        head, _ = _big_shape(endpoint)
        return Answer(200, b"", stream=lambda: _endless(head))
    if kind == "huge_error":
        start = json.dumps({"status": 400, "error": "Bad Request", "path": path})[:-1]
        return Answer(
            400, b"", stream=lambda: _sized(start.encode() + b', "message": "', number, b'"}')
        )
    if kind == "wrong_types":
        return Answer.json(200, WRONG_TYPES[endpoint])
    if kind == "deep":
        return Answer(200, b"[" * DEEP_LEVELS + b"]" * DEEP_LEVELS)
    if kind == "echo_headers":
        seen = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        return spring_error(400, f"Bad request with headers {json.dumps(seen)}", path)
    if kind == "control_chars":
        data = {"status": 400, "error": "Bad Request", "message": CONTROL_TEXT, "path": path}
        return Answer(400, json.dumps(data, ensure_ascii=True).encode())  # surrogate escaped
    if kind == "retry_after":
        answer = spring_error(429, "Too Many Requests", path)
        answer.headers.append((b"retry-after", (fault.text if fault else "").encode("latin-1")))
        return answer
    return None


# Right keys, wrong types: what a changed or broken API might send.
WRONG_TYPES: dict[str, Any] = {
    "pipelines": {"id": PIPELINE_ID, "status": "ACTIVE", "type": "TEXT2IMAGE"},
    "availability": {"status": 1},
    "run": {"uuid": 12345, "status": "INITIAL", "status_time": "soon"},
    "status": {
        "uuid": "wrong-types",
        "status": "DONE",
        "errorDescription": None,
        "result": {"files": 5, "censored": "maybe"},
        "generationTime": "12",
    },
}


def _big_shape(endpoint: str) -> tuple[bytes, bytes]:
    """A valid-looking answer's start and end around one long string (the image)."""
    if endpoint == "status":
        return (
            b'{"uuid": "oversized", "status": "DONE", "errorDescription": null, '
            b'"result": {"files": ["',
            b'"], "censored": false}, "generationTime": 1}',
        )
    return b'{"uuid": "oversized", "status": "INITIAL", "status_time": 0, "padding": "', b'"}'


async def _sized(head: bytes, total: int, tail: bytes) -> AsyncIterator[bytes]:
    yield head
    left = max(0, total - len(head) - len(tail))
    while left > 0:
        piece = FILLER[: min(left, CHUNK)]
        left -= len(piece)
        yield piece
    yield tail


async def _endless(head: bytes) -> AsyncIterator[bytes]:
    yield head
    with trio.move_on_after(ENDLESS_SECONDS):
        while True:
            yield FILLER


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims these dimensions, with no pixels behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _paced(answer: Answer, fault: Fault | None) -> Answer:
    """Apply a drip (bytes per second) or slow (seconds) fault to a ready answer."""
    if fault is None or answer.stream is not None:
        return answer
    if fault.kind == "drip":
        answer.spread = len(answer.body) / fault.seconds
    elif fault.kind == "slow":
        answer.spread = fault.seconds
    return answer


def _route(route: str) -> tuple[str, str, re.Match[str]] | None:
    for endpoint, method, pattern in _ROUTES:
        match = pattern.fullmatch(route)
        if match:
            return endpoint, method, match
    return None


def _headers(scope: dict[str, Any]) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _query(scope: dict[str, Any]) -> dict[str, str]:
    return dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))


def _censored(prompt: str, words: list[str]) -> bool:
    lowered = prompt.casefold()
    return any(w.casefold() in lowered for w in words)
