"""The GigaChat emulator's ASGI application: token service and API under one port.

    POST /api/v2/oauth                     a token (Basic key, RqUID, scope=...)
    POST /api/v1/chat/completions          a draw: the reply carries <img src="ID" .../>
    GET  /api/v1/files/{id}/content        the drawn JPEG
    GET  /api/v1/models, /api/v1/balance   the cheap checks

Control, under /_emulator/ (with the control token, as every emulator's):
config (GET, POST), faults (GET, POST), reset, stats, expire (every token issued so far
expires) and revoke (every token issued so far is forgotten).

Fault order for an API request: pending fault (next-N), the random error rate, the
token, the stream limit (429 beyond `streams` calls at once), then the endpoint. A draw
is recorded (paid) the moment it starts; the `lost` fault drops the connection after
drawing, so the client never sees the file id of a draw it paid for. `in_flight` counts
a call from its arrival until its answer is ready (before it is sent), so a client that
waits for one answer before its next call is never seen overlapping.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import json
import logging
import re
import socket
from typing import Any
from urllib.parse import parse_qsl, unquote

import trio

from listener.providers.emulator_kit import ConfigInvalid
from listener.providers.emulator_kit.answers import (
    Answer,
    Receive,
    Send,
    send_answer,
    wait_unless_gone,
)
from listener.providers.gigachat.emulator.images import JpegCache
from listener.providers.gigachat.emulator.state import (
    BLACKLIST_TEXT,
    MODELS,
    NO_IMAGE_TEXT,
    SCOPES,
    Fault,
    GigaChatState,
)

log = logging.getLogger("listener.emulator")

TOKEN_PATH = "/api/v2/oauth"  # noqa: S105 - a path
API_PREFIX = "/api/v1/"
MAX_BODY = 1 << 20
_RQUID = re.compile(r"[0-9a-fA-F-]{36}")
_FILE = re.compile(r"files/(?P<id>[^/]+)/content")


def api_error(status: int, message: str) -> Answer:
    """The API host's error shape."""
    return Answer.json(status, {"status": status, "message": message})


def token_error(status: int, code: int, message: str) -> Answer:
    """The token service's error shape."""
    return Answer.json(status, {"code": code, "message": message})


STATUS_MESSAGES = {
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Permission denied",
    404: "Not Found",
    408: "Request Timeout",
    425: "Too Early",
    413: "Request Entity Too Large",
    422: "Invalid params",
    429: "Too many requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class GigaChatEmulatorApp:
    def __init__(
        self,
        state: GigaChatState,
        connections: dict[tuple[Any, ...], Any] | None = None,
        *,
        control_token: str | None = None,
    ) -> None:
        self.state = state
        self.connections = connections if connections is not None else {}
        self.control_token = control_token
        self.images = JpegCache()

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        body = await _read_body(receive)
        if body is None:
            answer: Answer | None = api_error(413, "Request Entity Too Large")
        elif path.startswith("/_emulator/"):
            answer = self._control(scope, method, path.removeprefix("/_emulator/"), body)
        elif path == TOKEN_PATH:
            answer = await self._token_endpoint(scope, receive, method, body)
        elif path.startswith(API_PREFIX):
            answer = await self._api(scope, receive, method, path.removeprefix(API_PREFIX), body)
        else:
            answer = api_error(404, "Not Found")
        if answer is None:
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug("emulator: %s %s -> %d", method, path, answer.status)
        await send_answer(send, answer, receive)

    # -- token service -------------------------------------------------------------------

    async def _token_endpoint(
        self, scope: dict[str, Any], receive: Receive, method: str, body: bytes
    ) -> Answer | None:
        state = self.state
        stats = state.stats
        stats.token_requests += 1
        if method != "POST":
            return token_error(405, 405, "Method Not Allowed")
        fault = state.take_fault("token")
        early = await self._fault_answer(fault, scope, receive)
        if early is not False:
            return early  # type: ignore[return-value]
        if state.token_rate_exceeded():
            return token_error(429, 429, "Too Many Requests")
        headers = _headers(scope)
        rquid = headers.get("rquid", "")
        if not _RQUID.fullmatch(rquid):
            return token_error(400, 3, "RqUID is missing or not 36 hex digits and dashes")
        stats.rquids.add(rquid)
        auth = headers.get("authorization", "")
        kind, _, key = auth.partition(" ")
        if kind != "Basic" or not _decodes(key.strip()):
            return token_error(401, 4, "Can't decode 'Authorization' header")
        config = state.config
        if config.credentials is not None and not hmac.compare_digest(
            key.strip().encode(), config.credentials.encode()
        ):
            return token_error(401, 6, "credentials doesn't match db data")
        form = dict(parse_qsl(body.decode("latin-1")))
        wanted = form.get("scope", "")
        if not wanted:
            return token_error(400, 5, "scope is empty")
        if wanted not in SCOPES:
            return token_error(400, 1, "scope data format invalid")
        if config.scope is not None and wanted != config.scope:
            return token_error(400, 7, "scope from db not fully includes consumed scope")
        token, expires_at = state.issue_token()
        return Answer.json(200, {"access_token": token, "expires_at": int(expires_at)})

    # -- API -----------------------------------------------------------------------------

    async def _api(
        self, scope: dict[str, Any], receive: Receive, method: str, route: str, body: bytes
    ) -> Answer | None:
        state = self.state
        stats = state.stats
        stats.requests_total += 1
        match = _FILE.fullmatch(route)
        endpoint = {
            "chat/completions": "chat",
            "models": "models",
            "balance": "balance",
        }.get(route.rstrip("/"), "download" if match else "")
        if not endpoint:
            return api_error(404, "Not Found")
        if method != ("POST" if endpoint == "chat" else "GET"):
            return api_error(405, "Method Not Allowed")
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        done = False
        try:
            answer = await self._api_call(scope, receive, endpoint, match, body)
            done = True
            return answer
        finally:
            stats.in_flight -= 1
            if not done:
                log.debug("emulator: %s call ended without an answer", endpoint)

    async def _api_call(
        self,
        scope: dict[str, Any],
        receive: Receive,
        endpoint: str,
        match: re.Match[str] | None,
        body: bytes,
    ) -> Answer | None:
        state = self.state
        stats = state.stats
        if endpoint == "chat":
            stats.chat_requests += 1
        fault = state.take_fault(endpoint)
        early = await self._fault_answer(fault, scope, receive)
        if early is not False:
            return early  # type: ignore[return-value]
        if state.chance(state.config.error_rate):
            return api_error(500, "Internal Server Error")
        refused = self._authorised(scope)
        if refused is not None:
            return refused
        streams = state.config.streams
        if streams is not None and stats.in_flight > streams:
            stats.rejected_busy += 1
            return api_error(429, "Too many requests")
        if endpoint == "models":
            data = [
                {"id": m, "object": "model", "owned_by": "salutedevices", "type": "chat"}
                for m in MODELS
            ]
            return Answer.json(200, {"object": "list", "data": data})
        if endpoint == "balance":
            if state.config.balance is None:
                return api_error(403, "Permission denied")
            entries = [{"usage": k, "value": v} for k, v in state.config.balance.items()]
            return Answer.json(200, {"balance": entries})
        if endpoint == "download":
            assert match is not None
            return await self._download(unquote(match["id"]))
        return await self._draw(scope, receive, body, fault)

    def _authorised(self, scope: dict[str, Any]) -> Answer | None:
        auth = _headers(scope).get("authorization", "")
        kind, _, token = auth.partition(" ")
        found = self.state.token_state(token.strip()) if kind == "Bearer" else "unknown"
        if found == "ok":
            return None
        self.state.stats.unauthorized += 1
        return api_error(401, "Token has expired" if found == "expired" else "Unauthorized")

    async def _draw(
        self, scope: dict[str, Any], receive: Receive, body: bytes, fault: Fault | None
    ) -> Answer | None:
        state = self.state
        try:
            request = json.loads(body)
        except ValueError:
            return api_error(400, "Invalid JSON")
        if not isinstance(request, dict):
            return api_error(422, "Invalid params: the body must be an object")
        model = request.get("model")
        if model not in MODELS:
            return api_error(404, "No such model")
        messages = request.get("messages")
        if not isinstance(messages, list) or not messages:
            return api_error(422, "Invalid params: messages")
        for i, message in enumerate(messages):
            if not (
                isinstance(message, dict)
                and message.get("role") in ("system", "user", "assistant")
                and isinstance(message.get("content"), str)
            ):
                return api_error(422, f"Invalid params: messages[{i}]")
            if message["role"] == "system" and i != 0:
                return api_error(422, "system message must be the first message")
        prompt = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        if state.config.quota_exhausted:
            return api_error(402, "Payment Required")
        draws = request.get("function_call") == "auto" and not request.get("functions")
        kind = fault.kind if fault is not None else None
        lowered = prompt.casefold()
        words = state.config.blacklist_words
        if kind == "blacklist" or any(w.casefold() in lowered for w in words):
            return _completion(BLACKLIST_TEXT, "blacklist")
        if (
            not draws
            or kind == "no_image"
            or any(w.casefold() in lowered for w in state.config.no_image_words)
        ):
            return _completion(NO_IMAGE_TEXT.format(prompt=prompt[:200]), "stop")
        request_id = _headers(scope).get("x-request-id")
        system = messages[0]["content"] if messages[0]["role"] == "system" else None
        file_id = state.record_draw(prompt, request_id, system)  # paid from here on
        if state.config.draw_time > 0:
            await trio.sleep(state.config.draw_time)  # drawn even if the client left
        if kind == "lost":
            self._drop(scope)
            return None
        shown = "bad id/../x" if kind == "bad_file_id" else file_id
        text = f'Готово! <img src="{shown}" fuse="true"/> Вот что получилось.'
        return _completion(text, "stop")

    async def _download(self, file_id: str) -> Answer:
        state = self.state
        found = state.file(file_id)
        if found is None:
            return api_error(404, f"File {file_id[:64]} not found")
        state.stats.downloads += 1
        data = await self.images.get(found.prompt, state.config.image_size)
        return Answer(200, data, content_type=b"image/jpg")

    async def _fault_answer(
        self, fault: Fault | None, scope: dict[str, Any], receive: Receive
    ) -> Answer | bool | None:
        """The answer a fault imposes: an Answer, None (dropped / client gone), or False
        for "no fault here, carry on" (draw faults are applied by the draw itself)."""
        if fault is None:
            return False
        if fault.kind == "delay":
            if not await wait_unless_gone(receive, fault.seconds):
                return None
            return False
        if fault.kind == "drop":
            self._drop(scope)
            return None
        if fault.kind == "echo_headers":  # a hostile or careless server: quotes secrets
            seen = json.dumps(_headers(scope))
            return Answer.json(400, {"status": 400, "code": 4, "message": f"Bad request {seen}"})
        if fault.kind == "malformed":
            return Answer(200, b"<html>oops</html>", content_type=b"text/html")
        if fault.kind.isdigit():
            status = int(fault.kind)
            answer = api_error(status, STATUS_MESSAGES.get(status, "Error"))
            if status == 429:
                answer.headers.append((b"retry-after", b"1"))
            return answer
        return False

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
        if self.control_token is None:
            return api_error(404, "The control endpoint is off")
        headers = _headers(scope)
        given = headers.get("authorization", "").encode("latin-1")
        if not hmac.compare_digest(given, f"Bearer {self.control_token}".encode("latin-1")):
            return api_error(401, "The control endpoint needs its token")
        if method == "POST" and not headers.get("content-type", "").startswith("application/json"):
            return api_error(415, "The control endpoint takes application/json")
        try:
            data = json.loads(body) if body.strip() else {}
        except ValueError:
            return api_error(400, "body is not JSON")
        try:
            if (method, what) == ("GET", "config"):
                return Answer.json(200, state.config.to_json())
            if (method, what) == ("POST", "config"):
                return Answer.json(200, state.update_config(data).to_json())
            if (method, what) == ("GET", "faults"):
                return Answer.json(200, [f.to_json() for f in state.faults])
            if (method, what) == ("POST", "faults"):
                state.faults.append(Fault.parse(data))
                return Answer.json(200, [f.to_json() for f in state.faults])
            if (method, what) == ("POST", "reset"):
                state.reset()
                return Answer.json(200, state.config.to_json())
            if (method, what) == ("GET", "stats"):
                return Answer.json(200, state.stats.to_json())
            if (method, what) == ("POST", "expire"):
                return Answer.json(200, {"expired": state.expire_tokens()})
            if (method, what) == ("POST", "revoke"):
                return Answer.json(200, {"revoked": state.revoke_tokens()})
        except ConfigInvalid as exc:
            return api_error(400, str(exc))
        return api_error(404, f"No control endpoint {method} {what}")


def _completion(content: str, finish_reason: str) -> Answer:
    return Answer.json(
        200,
        {
            "choices": [
                {
                    "message": {"role": "assistant", "content": content},
                    "index": 0,
                    "finish_reason": finish_reason,
                }
            ],
            "created": 1796026200,
            "model": "GigaChat-2:2.0.28.2",
            "object": "chat.completion",
            "usage": {"prompt_tokens": 18, "completion_tokens": 68, "total_tokens": 86},
        },
    )


async def _read_body(receive: Receive) -> bytes | None:
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


def _headers(scope: dict[str, Any]) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _decodes(key: str) -> bool:
    try:
        return bool(key) and bool(base64.b64decode(key, validate=True))
    except (binascii.Error, ValueError):
        return False
