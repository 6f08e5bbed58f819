"""The Fusion Brain API client: one long-lived httpx.AsyncClient, typed outcomes.

Every answer becomes an `Accepted`/`GenerationStatus` value or one of the ApiError
outcomes in listener.errors, so the workflows decide on types, never on HTTP details.
HTTP statuses are classified once, in `listener.edge.classify`; docs/api-answers.md is the
table of what each class means, with its evidence:

    ApiCredentials        401, 403: no row is touched, generation pauses
    ApiBusy               a 2xx run/availability answer saying DISABLED_*: back off
    ApiPermanent          400, 415, other 4xx (with the server's message); a 3xx on run
      ApiNotFound         404 on a status: the result was fetched or expired
    ApiTransient          connection errors, timeouts, 5xx on a read, a 3xx on a read
      ApiNotTaken         408, 425, 429: the API says it did not take the request (free)
      ApiMalformed        a 2xx answer that is not the JSON shape expected, larger than
                          MAX_RESPONSE_BYTES, or not of a sane shape (listener.edge)
      ApiOutcomeUnknown   run only: the request may have been carried out (no complete
                          answer in time, connection lost, a 5xx, a 2xx we cannot read)

The API is not trusted. Bodies are read as they stream and abandoned past their cap (an
error body far sooner than an answer); every request has a whole-request deadline, not
only httpx's per-read timeout, so a body dripped one byte a second ends on time; a
status read, which may carry a result the API hands out only once, has a longer deadline
of its own. Answers are parsed into the strict models of its `models` module. Every
message built from API text goes through `listener.sanitize.clean` (and the client's own
credentials are redacted from it), so it is one bounded, safe line wherever it lands.

Idempotent reads are retried here (stamina, jittered backoff, entered only after a
failed try: listener.backoff), except after a deadline,
an oversized answer or a redirect: a server that behaves so would make every attempt
cost as much, or answer the same. A run is repeated only when it certainly never reached
the server (no connection could be made): each accepted run costs the user quota, so an
unknown outcome is reported to the caller, which counts it.
"""

from __future__ import annotations

import json
import logging
import math
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
import pydantic
import trio

from listener.backoff import first_then_retry
from listener.edge import (
    EXCERPT,
    MAX_JSON_DEPTH,
    RETRY_AFTER_MAX,
    Answer,
    Late,
    TooLarge,
    classify,
    excerpt,
    exchange,
    json_depth_exceeds,
    parse_json,
    parse_json_async,
    parse_retry_after,
)
from listener.errors import (
    ApiBusy,
    ApiCredentials,
    ApiError,
    ApiMalformed,
    ApiNotFound,
    ApiNotTaken,
    ApiOutcomeUnknown,
    ApiPermanent,
    ApiTransient,
    ConfigError,
)
from listener.providers.fusionbrain.models import (
    Accepted,
    AvailabilityAnswer,
    GenerationRequest,
    GenerationStatus,
    PipelineEntry,
    RunAnswer,
    StatusAnswer,
)
from listener.sanitize import clean, redact, secret_forms

log = logging.getLogger("listener.api")

T = TypeVar("T")

PREFIX = "key/api/v1/"
READ_ATTEMPTS = 3
CONNECT_ATTEMPTS = 3
RETRY_WAIT_INITIAL = 0.2
RETRY_WAIT_MAX = 2.0
# A 1024 x 1024 image is at most ~3 MB as PNG, ~4 MB in base64; 16 MiB leaves room.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
# An error body is read only for its message.
MAX_ERROR_BYTES = 64 * 1024
# Seconds a status read may take in all: a result is handed out once, so a slow but
# honest transfer of it must be allowed to finish.
RESULT_TIMEOUT = 120.0
RUN_PATH = "pipeline/run"
# Errors raised before a single byte of the request can have been sent.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]+")


@dataclass
class _Reply:
    status_code: int
    headers: httpx.Headers
    body: bytearray
    reason: str


class FusionBrainClient:
    """`async with FusionBrainClient(url, key, secret, timeout=30) as api: ...`

    `timeout` bounds every request as a whole (API_TIMEOUT); a status read may take up to
    `result_timeout` (API_RESULT_TIMEOUT) once its headers came within `timeout`. A 2xx
    body over `max_response_bytes` (MAX_RESPONSE_BYTES) is abandoned; a Retry-After is
    obeyed up to `retry_after_max` seconds (RETRY_BACKOFF_MAX). Surrounding whitespace of
    the key and secret (a newline from a file) is stripped."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        secret_key: str,
        *,
        timeout: float = 30.0,
        result_timeout: float = RESULT_TIMEOUT,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        retry_after_max: float = RETRY_AFTER_MAX,
        max_connections: int = 8,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not base_url.endswith("/"):
            base_url += "/"
        self._forms = secret_forms([api_key, secret_key])
        api_key, secret_key = api_key.strip(), secret_key.strip()
        for name, value in (("API key", api_key), ("secret key", secret_key)):
            if not _PRINTABLE_ASCII.fullmatch(value):
                # httpx would raise deep inside a request, its message quoting the value.
                raise ConfigError(
                    f"configuration error: the Fusion Brain {name} must be printable ASCII "
                    "without spaces (an HTTP header cannot carry it otherwise)"
                )
        self._timeout = timeout
        self._result_timeout = max(timeout, result_timeout)
        self._max_bytes = max_response_bytes
        self._retry_after_max = retry_after_max
        self._http = httpx.AsyncClient(
            base_url=base_url + PREFIX,
            headers={
                "X-Key": f"Key {api_key}",
                "X-Secret": f"Secret {secret_key}",
                # A compressed body could expand far past its cap in one chunk.
                "Accept-Encoding": "identity",
            },
            # Connecting and waiting for a pooled connection give up before the request's
            # own deadline: their errors say for sure that nothing was sent.
            timeout=httpx.Timeout(timeout, connect=min(0.8 * timeout, 10.0), pool=0.8 * timeout),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            transport=transport,
            follow_redirects=False,
        )
        # Each request is built here whole and handed to the pool's transport: the
        # client's per-request layers (auth and redirect flows, the cookie jar, URL
        # merging) do nothing this API needs and cost ~0.15 ms of CPU per request.
        self._base = base_url + PREFIX
        # The run's URL, parsed once: a parse is ~12 us of CPU on the pickup's path.
        self._run_url = httpx.URL(self._base + RUN_PATH)
        self._headers = self._http.headers
        self._extensions = {"timeout": self._http.timeout.as_dict()}
        self._pipeline_id: str | None = None
        self._pipeline_lock = trio.Lock()

    async def __aenter__(self) -> Self:
        await self._http.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with trio.CancelScope(shield=True):
            await self._http.__aexit__(exc_type, exc, tb)

    # -- operations ------------------------------------------------------------------------

    async def pipeline_id(self) -> str:
        """The newest ACTIVE TEXT2IMAGE pipeline, cached until it is reported disabled.
        Cached: returned without the lock (a trip through the scheduler on every run)."""
        if self._pipeline_id is not None:
            return self._pipeline_id
        async with self._pipeline_lock:
            if self._pipeline_id is None:
                body = await self._read("GET", "pipelines", params={"type": "TEXT2IMAGE"})
                self._pipeline_id = choose_pipeline(body)
                log.debug("Using pipeline %s", self._pipeline_id)
            return self._pipeline_id

    def forget_pipeline(self) -> None:
        self._pipeline_id = None

    async def availability(self) -> str:
        """`ACTIVE`, `DISABLED_BY_QUEUE` or `DISABLED_MANUALLY`."""
        pipeline = await self.pipeline_id()
        body = await self._read("GET", f"pipeline/{pipeline}/availability")
        answer = _validate(AvailabilityAnswer, body, "availability", ApiMalformed)
        state = answer.state
        if state is None:
            raise ApiMalformed(
                _say(f"availability: malformed answer: no status: {excerpt(body)}", self)
            )
        if state != "ACTIVE":
            self.forget_pipeline()
        return state

    async def run(self, request: GenerationRequest) -> Accepted:
        """Submit one generation. Raises ApiOutcomeUnknown when it may have been accepted."""
        pipeline = await self.pipeline_id()
        content_type, body = multipart(
            ("pipeline_id", None, pipeline),
            ("params", "application/json", json.dumps(request.params())),
        )

        async def send() -> _Reply:
            return await self._exchange("POST", RUN_PATH, content=body, content_type=content_type)

        try:
            reply = await _retry_not_sent(send)
        except NOT_SENT as exc:
            raise ApiTransient(_say(f"run: cannot reach the API: {_describe(exc)}", self)) from exc
        except httpx.HTTPError as exc:
            raise ApiOutcomeUnknown(
                _say(f"run: no answer from the API: {_describe(exc)}", self)
            ) from exc
        except Late as exc:
            raise ApiOutcomeUnknown(_say(f"run: {exc}", self)) from None
        except TooLarge as exc:
            raise ApiOutcomeUnknown(_say(f"run: malformed answer: {exc}", self)) from None
        self._raise_for_status(reply, "run", paid=True)
        try:
            body = await parse_json_async(reply.body)
        except ValueError as exc:
            raise ApiOutcomeUnknown(
                _say(f"run: malformed answer: HTTP {reply.status_code}, {exc}", self)
            ) from None
        answer = _validate(RunAnswer, body, "run", ApiOutcomeUnknown)
        if answer.uuid is not None:
            return Accepted(uuid=answer.uuid, status_time=answer.status_time or 0.0)
        state = answer.model_status or answer.pipeline_status
        if state is not None:
            self.forget_pipeline()
            raise ApiBusy(_say(f"pipeline is {state}", self), state=clean(state, limit=64))
        raise ApiOutcomeUnknown(_say(f"run: malformed answer: no uuid: {excerpt(body)}", self))

    async def status(self, uuid: str) -> GenerationStatus:
        body = await self._read(
            "GET",
            f"pipeline/status/{uuid}",
            not_found=ApiNotFound,
            deadline=self._result_timeout,
        )
        return parse_status(uuid, body)

    # -- plumbing --------------------------------------------------------------------------

    async def _exchange(
        self,
        method: str,
        path: str,
        *,
        deadline: float | None = None,
        params: dict[str, str] | None = None,
        content: bytes | None = None,
        content_type: str | None = None,
    ) -> _Reply:
        """One request: headers within `timeout`, the whole answer within `deadline`
        (default: `timeout`), the body read as it streams and cut at its cap."""
        total = self._timeout if deadline is None else deadline
        headers = self._headers
        if content_type is not None:
            headers = headers.copy()
            headers["Content-Type"] = content_type
        if path == RUN_PATH and params is None:
            url = self._run_url
        else:
            url = httpx.URL(self._base + path, params=params)
        request = httpx.Request(
            method, url, headers=headers, content=content, extensions=self._extensions
        )
        # The transport the client chose for this URL (a proxy's, from the environment).
        transport = self._http._transport_for_url(url)
        response, body = await exchange(
            transport,
            request,
            total=total,
            headers_within=self._timeout,
            cap=self._max_bytes,
            error_cap=MAX_ERROR_BYTES,
        )
        # The bytearray itself, not a copy: a result may be megabytes.
        return _Reply(response.status_code, response.headers, body, response.reason_phrase)

    async def _read(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        not_found: type[ApiPermanent] = ApiPermanent,
        deadline: float | None = None,
    ) -> Any:
        """An idempotent request, retried on transient failures; the parsed JSON body."""
        what = "status" if path.startswith("pipeline/status/") else path

        async def attempt() -> Any:
            try:
                reply = await self._exchange(method, path, params=params, deadline=deadline)
            except httpx.HTTPError as exc:
                raise ApiTransient(_say(f"{what}: {_describe(exc)}", self)) from exc
            except Late as exc:
                raise _no_retry(ApiTransient(_say(f"{what}: {exc}", self))) from None
            except TooLarge as exc:
                raise _no_retry(
                    ApiMalformed(_say(f"{what}: malformed answer: {exc}", self))
                ) from None
            self._raise_for_status(reply, what, not_found=not_found)
            try:
                return await parse_json_async(reply.body)
            except ValueError as exc:
                raise ApiMalformed(
                    _say(f"{what}: malformed answer: HTTP {reply.status_code}, {exc}", self)
                ) from None

        return await first_then_retry(
            attempt,
            on=_retry_here,
            attempts=READ_ATTEMPTS,
            wait_initial=RETRY_WAIT_INITIAL,
            wait_max=RETRY_WAIT_MAX,
            timeout=None,
        )

    def _raise_for_status(
        self,
        reply: _Reply,
        what: str,
        *,
        paid: bool = False,
        not_found: type[ApiPermanent] = ApiPermanent,
    ) -> None:
        """The error a non-2xx answer means (docs/api-answers.md). `paid`: the answer to a
        run, whose body was sent: an answer that does not say the run was refused or not
        taken leaves its outcome unknown."""
        code = reply.status_code
        kind = classify(code)
        if kind is Answer.OK:
            return
        retry_after = parse_retry_after(reply.headers.get("Retry-After"), cap=self._retry_after_max)
        if kind is Answer.REDIRECT:
            message = _say(f"{what}: HTTP {code}: {_redirect(reply)}", self)
            if paid:
                # Not an answer the API documents: a wrong FUSION_BRAIN_URL, or a proxy.
                raise ApiPermanent(message, status_code=code)
            raise _no_retry(ApiTransient(message, retry_after=retry_after))
        message = _say(f"{what}: HTTP {code}: {_server_message(reply)}", self)
        if kind is Answer.CREDENTIALS:
            raise ApiCredentials(message)
        if kind is Answer.NOT_TAKEN:
            raise ApiNotTaken(message, retry_after=retry_after, status_code=code)
        if kind is Answer.NOT_FOUND:
            raise (ApiPermanent if paid else not_found)(message, status_code=code)
        if kind is Answer.REFUSED:
            raise ApiPermanent(message, status_code=code)
        if paid:
            raise ApiOutcomeUnknown(message, retry_after=retry_after)
        raise ApiTransient(message, retry_after=retry_after)


def multipart(*parts: tuple[str, str | None, str]) -> tuple[str, bytes]:
    """(Content-Type, body) of a multipart/form-data body of (name, content type, text)
    parts, built in one piece (sent in one write, not one per part), byte for byte as
    httpx builds it: a random boundary, so no part's text can forge one."""
    boundary = secrets.token_hex(16)
    dash = f"--{boundary}\r\n".encode()
    body = bytearray()
    for name, kind, text in parts:
        body += dash
        body += f'Content-Disposition: form-data; name="{name}"\r\n'.encode()
        if kind is not None:
            body += f"Content-Type: {kind}\r\n".encode()
        body += b"\r\n"
        body += text.encode()
        body += b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", bytes(body)


def _say(text: str, client: FusionBrainClient) -> str:
    """A message for an exception: the client's credentials (in every form) and anything
    header-shaped redacted, controls escaped, length capped."""
    return clean(redact(text, client._forms))


def _no_retry(exc: ApiTransient) -> ApiTransient:
    exc.retry_here = False  # type: ignore[attr-defined]
    return exc


def _retry_here(exc: Exception) -> bool:
    return isinstance(exc, ApiTransient) and getattr(exc, "retry_here", True)


async def _retry_not_sent(send: Callable[[], Awaitable[T]]) -> T:
    return await first_then_retry(
        send,
        on=NOT_SENT,
        attempts=CONNECT_ATTEMPTS,
        wait_initial=RETRY_WAIT_INITIAL,
        wait_max=RETRY_WAIT_MAX,
        timeout=None,
    )


# -- parsing ---------------------------------------------------------------------------------


def _validate(
    model: type[pydantic.BaseModel], body: Any, what: str, error: type[ApiTransient]
) -> Any:
    try:
        return model.model_validate(body)
    except pydantic.ValidationError as exc:
        errors = exc.errors()
        where = ".".join(str(p) for p in errors[0]["loc"]) if errors else ""
        msg = errors[0]["msg"] if errors else "unexpected shape"
        message = clean(
            f"{what}: malformed answer: {where or 'the answer'}: {msg}: {excerpt(body)}"
        )
    # Raised outside the handler: the validation error, which holds the whole answer
    # (perhaps megabytes), is not kept alive as this exception's context.
    raise error(message)


def choose_pipeline(body: Any) -> str:
    """Pick the newest ACTIVE TEXT2IMAGE pipeline; the id may come as `id` or `uuid`.
    Entries that do not fit the model are skipped (a pipeline we cannot read is not one
    we can use); an answer that is not a list is malformed."""
    if not isinstance(body, list):
        raise ApiMalformed(clean(f"pipelines: malformed answer: not a list: {excerpt(body)}"))
    candidates: list[PipelineEntry] = []
    for item in body:
        try:
            entry = PipelineEntry.model_validate(item)
        except pydantic.ValidationError:
            continue
        if entry.type == "TEXT2IMAGE" and entry.pipeline_id is not None:
            candidates.append(entry)
    active = [p for p in candidates if p.status == "ACTIVE"]
    if not active:
        if candidates:
            state = clean(candidates[0].status, limit=64)
            raise ApiBusy(f"no active TEXT2IMAGE pipeline (pipeline is {state})", state=state)
        if body:
            raise ApiMalformed(
                clean(f"pipelines: malformed answer: no usable pipeline: {excerpt(body)}")
            )
        raise ApiBusy("the API lists no TEXT2IMAGE pipeline", state="NO_PIPELINE")
    newest = max(active, key=lambda p: _version(p.version))
    return str(newest.pipeline_id)


def parse_status(uuid: str, body: Any) -> GenerationStatus:
    """A status answer as a GenerationStatus; ApiMalformed when it is not one."""
    answer = _validate(StatusAnswer, body, "status", ApiMalformed)
    return answer.to_status(uuid)


def _version(value: Any) -> tuple[float, ...]:
    try:
        parts = tuple(float(part) for part in str(value).split("."))
    except ValueError:
        return (0.0,)
    return parts if all(math.isfinite(p) for p in parts) else (0.0,)


def _redirect(reply: _Reply) -> str:
    """What a redirect says, for a reason: where it points, and that it was not followed."""
    location = reply.headers.get("Location", "").strip()
    where = f" to {clean(location, limit=EXCERPT)}" if location else ""
    return (
        f"redirected{where} ({reply.reason or 'redirect'}); redirects are not followed: "
        "check FUSION_BRAIN_URL"
    )


def _server_message(reply: _Reply) -> str:
    """The Spring Boot error body's message, else an excerpt of the body."""
    try:
        body = parse_json(reply.body)
    except ValueError:
        return excerpt(reply.body) or reply.reason
    if isinstance(body, dict):
        for key in ("message", "error", "errorDescription"):
            if isinstance(body.get(key), str) and body[key]:
                return clean(body[key], limit=EXCERPT * 2)
    return excerpt(body)


def _describe(exc: httpx.HTTPError) -> str:
    """httpx's message names the URL only; headers (the credentials) never appear."""
    detail = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {detail}" if str(exc) else detail


__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_RESPONSE_BYTES",
    "RESULT_TIMEOUT",
    "ApiError",
    "FusionBrainClient",
    "choose_pipeline",
    "json_depth_exceeds",
    "parse_json",
    "parse_retry_after",
    "parse_status",
]
