"""The GigaChat API client: the paid draw, the free download, and the cheap checks.

Every answer becomes a value of listener.providers.gigachat.models or one of the engine's
errors (listener.errors), so the provider decides on types, never on HTTP details:

    draw (POST chat/completions; paid: every call that reaches the model may be billed)
      200                      ChatAnswer (the provider reads the image tag)
      401                      the token is dropped, a new one fetched, the call repeated
                               once (a 401 is refused before any work); again: ApiCredentials
      403                      ApiCredentials
      404 (No such model)      ApiCredentials: a configuration error (GIGACHAT_MODEL,
                               GIGACHAT_BASE_URL), no row fails for it
      402                      ApiQuotaExhausted with the API's words
      408, 425, 429            ApiNotTaken (not drawn, free), honouring a capped Retry-After
      3xx, 400, 413, 422, other 4xx  ApiPermanent (redirects are not followed)
      5xx, timeout after sending, connection lost, unreadable 2xx
                               ApiOutcomeUnknown: the image may exist and be paid for
                               (listener.edge's classes, docs/api-answers.md)
    download (GET files/{id}/content; idempotent and free)
      200 with a JPEG          its bytes (checked: FF D8 FF)
      401 / 403                refreshed once / ApiCredentials
      404                      ApiNotFound (unknown, expired, or another key's file)
      408, 425, 429            ApiNotTaken; 5xx and network errors: ApiTransient
    models, balance: as the download, but 404 is ApiCredentials (GIGACHAT_BASE_URL leads
      nowhere); balance's 403 (pay-as-you-go accounts) is None.

Individual accounts get one stream, and a second call at once is answered 429: the
engine holds one place of API_CONCURRENCY around every submit, outcome and probe. A
client used on its own (`listener provider check`, tests) may pass a `limiter` that its
calls hold instead. The token service is another host and not counted.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self
from urllib.parse import quote

import httpx
import trio

from listener import __version__
from listener.edge import Answer, classify
from listener.errors import (
    ApiCredentials,
    ApiMalformed,
    ApiNotFound,
    ApiNotTaken,
    ApiOutcomeUnknown,
    ApiPermanent,
    ApiQuotaExhausted,
    ApiTransient,
)
from listener.providers.gigachat.edge import Edge, MalformedDraw, Reply
from listener.providers.gigachat.models import (
    BalanceAnswer,
    ChatAnswer,
    ModelsAnswer,
)
from listener.providers.gigachat.token import TokenSource

log = logging.getLogger("listener.gigachat")

JPEG_MAGIC = b"\xff\xd8\xff"
# Seconds the cheap calls (token, models, balance) and one download may take in all.
SHORT_TIMEOUT = 30.0
DOWNLOAD_TIMEOUT = 60.0
USER_AGENT = f"fusionbrain-listener/{__version__}"


class GigaChatClient:
    """`async with GigaChatClient(...) as api: answer = await api.draw(messages, ...)`

    `timeout` bounds one draw as a whole (GIGACHAT_TIMEOUT); the other calls take at most
    SHORT_TIMEOUT / DOWNLOAD_TIMEOUT (or `timeout`, when shorter)."""

    def __init__(
        self,
        *,
        auth_url: str,
        base_url: str,
        credentials: str,
        scope: str,
        model: str,
        timeout: float,
        max_response_bytes: int,
        retry_after_max: float,
        verify: ssl.SSLContext | bool = True,
        concurrency: int = 1,
        limiter: trio.CapacityLimiter | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.model = model
        self.timeout = timeout
        self.limiter = limiter
        self.edge = Edge(
            timeout=timeout,
            max_response_bytes=max_response_bytes,
            retry_after_max=retry_after_max,
            verify=verify,
            secrets=[credentials],
            max_connections=concurrency + 1,
            transport=transport,
        )
        self.tokens = TokenSource(self.edge, auth_url, credentials, scope)

    async def __aenter__(self) -> Self:
        await self.edge.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.edge.__aexit__(exc_type, exc, tb)

    # -- operations ------------------------------------------------------------------------

    async def draw(self, messages: list[dict[str, str]], *, request_id: str) -> ChatAnswer:
        """The paid call. Raises ApiOutcomeUnknown when it may have drawn unseen."""
        body = json.dumps(
            {"model": self.model, "messages": messages, "function_call": "auto", "stream": False},
            ensure_ascii=False,
        ).encode()

        async def once(token: str) -> Reply:
            return await self.edge.send(
                "POST",
                self.base_url + "chat/completions",
                what="draw",
                headers=self._headers(token, "application/json", request_id=request_id),
                content=body,
                deadline=self.timeout,
                paid=True,
            )

        reply = await self._authorised(once, "draw")
        code = reply.status_code
        if code < 300:
            answer: ChatAnswer = await self.edge.parse(reply, ChatAnswer, "draw", MalformedDraw)
            return answer
        message = self.edge.say(f"draw: HTTP {code}: {reply.message()}")
        if code == 404:
            raise ApiCredentials(
                self.edge.say(
                    f"GigaChat API: {reply.message()} (HTTP 404): check GIGACHAT_MODEL "
                    f"({self.model}) and GIGACHAT_BASE_URL"
                )
            )
        self._raise_common(reply, message, paid=True)
        raise ApiPermanent(message, status_code=code)

    async def download(self, file_id: str) -> bytes:
        """The drawn file's bytes (a JPEG)."""
        url = f"{self.base_url}files/{quote(file_id, safe='')}/content"

        async def once(token: str) -> Reply:
            return await self.edge.send(
                "GET",
                url,
                what="download",
                headers=self._headers(token, "application/jpg"),
                deadline=min(self.timeout, DOWNLOAD_TIMEOUT),
            )

        reply = await self._authorised(once, "download")
        code = reply.status_code
        if code < 300:
            if not reply.body.startswith(JPEG_MAGIC):
                start = bytes(reply.body[:6]).hex(" ")
                raise ApiMalformed(
                    f"download: not a JPEG ({len(reply.body)} bytes starting {start or 'empty'})"
                )
            return bytes(reply.body)
        message = self.edge.say(f"download: HTTP {code}: {reply.message()}")
        if code == 404:
            raise ApiNotFound(message, status_code=code)
        self._raise_common(reply, message)
        raise ApiPermanent(message, status_code=code)

    async def models(self) -> ModelsAnswer:
        reply = await self._read("models")
        answer: ModelsAnswer = await self.edge.parse(reply, ModelsAnswer, "models", ApiMalformed)
        return answer

    async def balance(self) -> BalanceAnswer | None:
        """The prepaid balance; None for accounts that have none (403)."""
        try:
            reply = await self._read("balance", forbidden_ok=True)
        except ApiPermanent as exc:
            if exc.status_code == 403:
                return None
            raise
        answer: BalanceAnswer = await self.edge.parse(reply, BalanceAnswer, "balance", ApiMalformed)
        return answer

    # -- plumbing --------------------------------------------------------------------------

    def _headers(self, token: str, accept: str, *, request_id: str | None = None) -> dict[str, str]:
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": accept,
            "User-Agent": USER_AGENT,
        }
        if accept == "application/json":
            headers["Content-Type"] = "application/json"
        if request_id is not None:
            headers["X-Request-ID"] = request_id
        return headers

    async def _authorised(self, once: Callable[[str], Awaitable[Reply]], what: str) -> Reply:
        """One call with the shared token (holding a place of `limiter` when given); a
        401 drops the token and repeats the call once with a new one."""
        if self.limiter is None:
            return await self._with_token(once, what)
        async with self.limiter:
            return await self._with_token(once, what)

    async def _with_token(self, once: Callable[[str], Awaitable[Reply]], what: str) -> Reply:
        for repeat in (False, True):
            token = await self.tokens.get()
            self.edge.add_secret(token)
            reply = await once(token)
            if reply.status_code != 401:
                return reply
            self.tokens.invalidate(token)
            if repeat:
                raise ApiCredentials(
                    self.edge.say(
                        f"GigaChat API refused a new token ({what}: HTTP 401: "
                        f"{reply.message()}): check GIGACHAT_CREDENTIALS and GIGACHAT_SCOPE"
                    )
                )
            log.info("GigaChat API refused the token (%s): fetching a new one", what)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _read(self, path: str, *, forbidden_ok: bool = False) -> Reply:
        async def once(token: str) -> Reply:
            return await self.edge.send(
                "GET",
                self.base_url + path,
                what=path,
                headers=self._headers(token, "application/json"),
                deadline=min(self.timeout, SHORT_TIMEOUT),
            )

        reply = await self._authorised(once, path)
        code = reply.status_code
        if code < 300:
            return reply
        message = self.edge.say(f"{path}: HTTP {code}: {reply.message()}")
        if code == 403 and forbidden_ok:
            raise ApiPermanent(message, status_code=code)
        if code == 404:
            # The base URL leads nowhere (a missing or extra /api segment, say).
            raise ApiCredentials(f"{message}: check GIGACHAT_BASE_URL")
        self._raise_common(reply, message)
        raise ApiPermanent(message, status_code=code)

    def _raise_common(self, reply: Reply, message: str, *, paid: bool = False) -> None:
        """The answers every API call shares, by the class listener.edge gives them."""
        code = reply.status_code
        kind = classify(code)
        if kind is Answer.CREDENTIALS:
            raise ApiCredentials(
                self.edge.say(
                    f"GigaChat API refused the credentials (HTTP {code}: {reply.message()}): "
                    "check GIGACHAT_CREDENTIALS and GIGACHAT_SCOPE"
                )
            )
        if code == 402:
            raise ApiQuotaExhausted(
                self.edge.say(f"GigaChat: {reply.message()} (HTTP 402: the paid quota is used up)")
            )
        retry_after = self.edge.retry_after(reply)
        if kind is Answer.NOT_TAKEN:
            raise ApiNotTaken(message, retry_after=retry_after, status_code=code)
        if kind is Answer.REDIRECT:
            where = self.edge.say(reply.headers.get("location", "")[:200]) or "elsewhere"
            raise ApiPermanent(
                f"{message}: redirected to {where}; redirects are not followed: check "
                "GIGACHAT_BASE_URL",
                status_code=code,
            )
        if kind is Answer.SERVER_ERROR:
            # After a draw was sent, a server error does not say it was not carried out.
            raise (ApiOutcomeUnknown if paid else ApiTransient)(message, retry_after=retry_after)


__all__ = ["GigaChatClient"]
