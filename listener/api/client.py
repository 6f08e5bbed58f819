"""The Fusion Brain API client: one long-lived httpx.AsyncClient, typed outcomes.

Every answer becomes an `Accepted`/`GenerationStatus` value or one of the ApiError
outcomes in listener.errors, so the workflows decide on types, never on HTTP details:

    ApiCredentials        401, 403: no row is touched, generation pauses
    ApiBusy               a 2xx run/availability answer saying DISABLED_*: back off
    ApiPermanent          400, 415, other 4xx (with the server's message)
      ApiNotFound         404 on a status: the result was fetched or expired
    ApiTransient          connection errors, timeouts, 5xx, 429, a body that is not
                          the JSON expected: retried with backoff
      ApiOutcomeUnknown   run only: the request may have reached the API (read
                          timeout, connection lost, garbled 2xx answer)

Idempotent reads are retried here (stamina, jittered backoff). A run is repeated only
when it certainly never reached the server (no connection could be made): each accepted
run costs the user quota, so an unknown outcome is reported to the caller.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
import stamina
import trio

from listener.api.models import Accepted, GenerationRequest, GenerationStatus
from listener.errors import (
    ApiBusy,
    ApiCredentials,
    ApiError,
    ApiNotFound,
    ApiOutcomeUnknown,
    ApiPermanent,
    ApiTransient,
)

log = logging.getLogger("listener.api")

T = TypeVar("T")

PREFIX = "key/api/v1/"
BUSY_KEYS = ("model_status", "pipeline_status")
READ_ATTEMPTS = 3
CONNECT_ATTEMPTS = 3
RETRY_WAIT_INITIAL = 0.2
RETRY_WAIT_MAX = 2.0
# Errors raised before a single byte of the request can have been sent.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class FusionBrainClient:
    """`async with FusionBrainClient(url, key, secret, timeout=30) as api: ...`"""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        secret_key: str,
        *,
        timeout: float = 30.0,
        max_connections: int = 8,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not base_url.endswith("/"):
            base_url += "/"
        self._http = httpx.AsyncClient(
            base_url=base_url + PREFIX,
            headers={"X-Key": f"Key {api_key}", "X-Secret": f"Secret {secret_key}"},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            transport=transport,
            follow_redirects=False,
        )
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
        """The newest ACTIVE TEXT2IMAGE pipeline, cached until it is reported disabled."""
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
        state = _field(body, "status", "pipeline_status", "model_status")
        if not isinstance(state, str):
            raise ApiTransient(f"availability answer without a status: {_excerpt(body)}")
        if state != "ACTIVE":
            self.forget_pipeline()
        return state

    async def run(self, request: GenerationRequest) -> Accepted:
        """Submit one generation. Raises ApiOutcomeUnknown when it may have been accepted."""
        pipeline = await self.pipeline_id()
        files = {
            "pipeline_id": (None, pipeline),
            "params": (None, json.dumps(request.params()), "application/json"),
        }

        async def send() -> httpx.Response:
            return await self._http.post("pipeline/run", files=files)

        try:
            response = await _retry_not_sent(send)
        except NOT_SENT as exc:
            raise ApiTransient(f"run: cannot reach the API: {_describe(exc)}") from exc
        except httpx.HTTPError as exc:
            raise ApiOutcomeUnknown(f"run: no answer from the API: {_describe(exc)}") from exc
        _raise_for_status(response, "run")
        try:
            body = response.json()
        except ValueError as exc:
            raise ApiOutcomeUnknown(
                f"run: HTTP {response.status_code} with a body that is not JSON: "
                f"{_excerpt(response.text)}"
            ) from exc
        uuid = body.get("uuid") if isinstance(body, dict) else None
        if isinstance(uuid, str) and uuid:
            status_time = body.get("status_time")
            if not isinstance(status_time, int | float) or status_time < 0:
                status_time = 0
            return Accepted(uuid=uuid, status_time=float(status_time))
        state = _field(body, *BUSY_KEYS)
        if isinstance(state, str):
            self.forget_pipeline()
            raise ApiBusy(f"pipeline is {state}", state=state)
        raise ApiOutcomeUnknown(f"run: answer without a uuid: {_excerpt(body)}")

    async def status(self, uuid: str) -> GenerationStatus:
        body = await self._read("GET", f"pipeline/status/{uuid}", not_found=ApiNotFound)
        return parse_status(uuid, body)

    # -- plumbing --------------------------------------------------------------------------

    async def _read(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        not_found: type[ApiPermanent] = ApiPermanent,
    ) -> Any:
        """An idempotent request, retried on transient failures; the parsed JSON body."""

        async def attempt() -> Any:
            try:
                response = await self._http.request(method, path, params=params)
            except httpx.HTTPError as exc:
                raise ApiTransient(f"{path}: {_describe(exc)}") from exc
            _raise_for_status(response, path, not_found=not_found)
            try:
                return response.json()
            except ValueError as exc:
                raise ApiTransient(
                    f"{path}: HTTP {response.status_code} with a body that is not JSON: "
                    f"{_excerpt(response.text)}"
                ) from exc

        async for retry in stamina.retry_context(
            on=ApiTransient,
            attempts=READ_ATTEMPTS,
            wait_initial=RETRY_WAIT_INITIAL,
            wait_max=RETRY_WAIT_MAX,
            timeout=None,
        ):
            with retry:
                return await attempt()
        raise AssertionError("unreachable")  # pragma: no cover


async def _retry_not_sent(send: Callable[[], Awaitable[T]]) -> T:
    async for retry in stamina.retry_context(
        on=NOT_SENT,
        attempts=CONNECT_ATTEMPTS,
        wait_initial=RETRY_WAIT_INITIAL,
        wait_max=RETRY_WAIT_MAX,
        timeout=None,
    ):
        with retry:
            return await send()
    raise AssertionError("unreachable")  # pragma: no cover


def _raise_for_status(
    response: httpx.Response, what: str, *, not_found: type[ApiPermanent] = ApiPermanent
) -> None:
    code = response.status_code
    if code < 300:
        return
    message = f"{what}: HTTP {code}: {_server_message(response)}"
    if code in (401, 403):
        raise ApiCredentials(message)
    if code == 404:
        raise not_found(message, status_code=code)
    if code in (408, 425, 429) or code >= 500:
        raise ApiTransient(message, retry_after=_retry_after(response))
    raise ApiPermanent(message, status_code=code)


def choose_pipeline(body: Any) -> str:
    """Pick the newest ACTIVE TEXT2IMAGE pipeline; the id may come as `id` or `uuid`."""
    if not isinstance(body, list):
        raise ApiTransient(f"pipelines: expected a list, got {_excerpt(body)}")
    candidates = [
        p
        for p in body
        if isinstance(p, dict)
        and p.get("type", "TEXT2IMAGE") == "TEXT2IMAGE"
        and isinstance(p.get("id") or p.get("uuid"), str | int)
    ]
    active = [p for p in candidates if p.get("status", "ACTIVE") == "ACTIVE"]
    if not active:
        if candidates:
            state = str(candidates[0].get("status"))
            raise ApiBusy(f"no active TEXT2IMAGE pipeline (pipeline is {state})", state=state)
        raise ApiBusy("the API lists no TEXT2IMAGE pipeline", state="NO_PIPELINE")
    newest = max(active, key=lambda p: _version(p.get("version")))
    return str(newest.get("id") or newest.get("uuid"))


def parse_status(uuid: str, body: Any) -> GenerationStatus:
    if not isinstance(body, dict):
        raise ApiTransient(f"status: expected an object, got {_excerpt(body)}")
    state = body.get("status")
    if not isinstance(state, str):
        raise ApiTransient(f"status: answer without a status: {_excerpt(body)}")
    result = body.get("result") if isinstance(body.get("result"), dict) else {}
    files = result.get("files")
    if files is None:
        files = body.get("images")  # the pre-2025 text2image API
    censored = result.get("censored", body.get("censored", False))
    generation_time = body.get("generationTime")
    return GenerationStatus(
        uuid=str(body.get("uuid") or uuid),
        state=state.upper(),
        error_description=body.get("errorDescription") or None,
        files=tuple(f for f in files or () if isinstance(f, str)),
        censored=bool(censored),
        generation_time=generation_time if isinstance(generation_time, int | float) else None,
    )


def _field(body: Any, *keys: str) -> Any:
    if isinstance(body, dict):
        for key in keys:
            if key in body:
                return body[key]
    return None


def _version(value: Any) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in str(value).split("."))
    except ValueError:
        return (0.0,)


def _server_message(response: httpx.Response) -> str:
    """The Spring Boot error body's message, else an excerpt of the body."""
    try:
        body = response.json()
    except ValueError:
        return _excerpt(response.text) or response.reason_phrase
    if isinstance(body, dict):
        for key in ("message", "error", "errorDescription"):
            if isinstance(body.get(key), str) and body[key]:
                return body[key]
    return _excerpt(body)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _excerpt(value: Any, limit: int = 200) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _describe(exc: httpx.HTTPError) -> str:
    """httpx's message names the URL only; headers (the credentials) never appear."""
    detail = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {detail}" if str(exc) else detail


__all__ = ["ApiError", "FusionBrainClient", "choose_pipeline", "parse_status"]
