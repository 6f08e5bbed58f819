"""GigaChat's HTTP edge: one httpx client for the token service and the API, hardened.

The rules every provider's edge follows, with the reading and parsing they share
(listener.edge): bodies read as they stream and abandoned past their cap (an
error body far sooner), a whole-request deadline besides httpx's per-read timeout,
strict models, every message built from outside text sanitized and stripped of the
credentials and tokens. One TLS context serves both hosts: the default roots plus
GIGACHAT_CA_BUNDLE_FILE (Sber's hosts chain to the Russian Trusted Root CA, which
certifi and most systems lack).

A certificate that cannot be verified is ApiCredentials (a configuration error naming
GIGACHAT_CA_BUNDLE_FILE), never retried. Other network errors are told apart by whether
the request can have reached the server: `call(..., paid=True)` (the draw) reports a
request that may have been received without a complete answer as ApiOutcomeUnknown, and
repeats only one that certainly was not sent.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import certifi
import httpx
import pydantic
import trio

from listener.backoff import first_then_retry
from listener.edge import (
    Late,
    TooLarge,
    excerpt,
    exchange,
    parse_json,
    parse_json_async,
    parse_retry_after,
)
from listener.errors import (
    ApiCredentials,
    ApiMalformed,
    ApiOutcomeUnknown,
    ApiTransient,
    ConfigError,
)
from listener.sanitize import clean, redact, secret_forms

log = logging.getLogger("listener.gigachat")

MAX_ERROR_BYTES = 64 * 1024
EXCERPT = 200
CONNECT_ATTEMPTS = 3
RETRY_WAIT_INITIAL = 0.2
RETRY_WAIT_MAX = 2.0
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class MalformedDraw(ApiOutcomeUnknown, ApiMalformed):
    """A draw answered with something we cannot read: it may have been drawn and paid
    for, so it is an unknown outcome (never repeated by itself), and a malformed answer."""


@dataclass
class Reply:
    status_code: int
    headers: httpx.Headers
    body: bytearray
    reason: str

    def error_fields(self) -> tuple[int | None, str]:
        """(code, message) of an error body: the token service's {code, message}, the
        API's {status, message}, or an excerpt of whatever else came (HTML, text)."""
        try:
            body = parse_json(self.body)
        except ValueError:
            return None, excerpt(self.body) or self.reason
        if isinstance(body, dict):
            code = body.get("code")
            message = body.get("message")
            number = code if isinstance(code, int) and not isinstance(code, bool) else None
            if isinstance(message, str) and message:
                return number, clean(message, limit=EXCERPT * 2)
            return number, excerpt(body)
        return None, excerpt(body)

    def message(self) -> str:
        return self.error_fields()[1]


def tls_context(ca_bundle_file: Path | None, verify: bool) -> ssl.SSLContext | bool:
    """certifi's roots, the system's, plus the given CA file; False when verification is
    switched off (GIGACHAT_VERIFY_SSL_CERTS=false)."""
    if not verify:
        return False
    context = ssl.create_default_context(cafile=certifi.where())
    context.load_default_certs()
    if ca_bundle_file is not None:
        try:
            context.load_verify_locations(cafile=str(ca_bundle_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"configuration error: GIGACHAT_CA_BUNDLE_FILE: {ca_bundle_file} is not a "
                f"readable PEM certificate ({type(exc).__name__})"
            ) from None
    return context


class Edge:
    """`async with Edge(...) as edge: reply = await edge.call("GET", url, what=...)`"""

    def __init__(
        self,
        *,
        timeout: float,
        max_response_bytes: int,
        retry_after_max: float,
        verify: ssl.SSLContext | bool = True,
        secrets: list[str] | None = None,
        max_connections: int = 4,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.timeout = timeout
        self.max_bytes = max_response_bytes
        self.retry_after_max = retry_after_max
        self._secrets = list(secrets or [])
        self._tokens: list[str] = []
        self._forms = secret_forms(self._secrets)
        self._http = httpx.AsyncClient(
            headers={"Accept-Encoding": "identity"},
            timeout=httpx.Timeout(timeout, connect=min(0.8 * timeout, 10.0), pool=0.8 * timeout),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            verify=verify,
            transport=transport,
            follow_redirects=False,
        )
        self._extensions = {"timeout": self._http.timeout.as_dict()}

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

    def add_secret(self, value: str) -> None:
        """A token handed out at run time: never in a message either (the last few are
        kept: a message may be about the one just replaced)."""
        if value in self._tokens:
            return
        self._tokens = [*self._tokens[-3:], value]
        self._forms = secret_forms([*self._secrets, *self._tokens])

    def say(self, text: str) -> str:
        return clean(redact(text, self._forms))

    def retry_after(self, reply: Reply) -> float | None:
        return parse_retry_after(reply.headers.get("Retry-After"), cap=self.retry_after_max)

    # -- requests ------------------------------------------------------------------------

    async def call(
        self,
        method: str,
        url: str,
        *,
        what: str,
        headers: dict[str, str],
        content: bytes | None = None,
        deadline: float | None = None,
        paid: bool = False,
    ) -> Reply:
        """One request, repeated only when it certainly was not sent. Network trouble is
        ApiTransient, or, for a `paid` request that may have been received,
        ApiOutcomeUnknown; an oversized 2xx is ApiMalformed (MalformedDraw when paid)."""

        async def once() -> Reply:
            try:
                return await self._exchange(method, url, headers, content, deadline)
            except NOT_SENT as exc:
                if untrusted(exc):
                    # A configuration error, not a network one: no use repeating.
                    raise ApiCredentials(self.say(f"{what}: {describe(exc)}")) from exc
                raise
            except httpx.HTTPError as exc:
                kind = ApiOutcomeUnknown if paid else ApiTransient
                raise kind(self.say(f"{what}: no answer: {describe(exc)}")) from exc
            except Late as exc:
                kind = ApiOutcomeUnknown if paid else ApiTransient
                raise kind(self.say(f"{what}: {exc}")) from None
            except TooLarge as exc:
                kind = MalformedDraw if paid else ApiMalformed
                raise kind(self.say(f"{what}: malformed answer: {exc}")) from None

        return await first_then_retry(
            once,
            on=NOT_SENT,
            attempts=CONNECT_ATTEMPTS,
            wait_initial=RETRY_WAIT_INITIAL,
            wait_max=RETRY_WAIT_MAX,
            timeout=None,
        )

    async def send(self, method: str, url: str, **kwargs: Any) -> Reply:
        """`call`, with a request that was never sent reported as ApiTransient."""
        what = kwargs["what"]
        try:
            return await self.call(method, url, **kwargs)
        except NOT_SENT as exc:
            raise ApiTransient(self.say(f"{what}: cannot connect: {describe(exc)}")) from exc

    async def _exchange(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        content: bytes | None,
        deadline: float | None,
    ) -> Reply:
        total = self.timeout if deadline is None else deadline
        # Built whole and handed to the transport the client picks for the URL (a proxy's,
        # from the environment): the client's auth, redirect and cookie layers do nothing
        # here but cost CPU on every call.
        merged = self._http.headers.copy()
        merged.update(headers)
        target = httpx.URL(url)
        request = httpx.Request(
            method, target, headers=merged, content=content, extensions=self._extensions
        )
        transport = self._http._transport_for_url(target)
        response, body = await exchange(
            transport,
            request,
            total=total,
            headers_within=total,
            cap=self.max_bytes,
            error_cap=MAX_ERROR_BYTES,
        )
        return Reply(response.status_code, response.headers, body, response.reason_phrase)

    # -- parsing -------------------------------------------------------------------------

    async def parse(
        self,
        reply: Reply,
        model: type[pydantic.BaseModel],
        what: str,
        error: type[ApiTransient],
    ) -> Any:
        """The reply's JSON body as `model`; `error` (with a short excerpt) otherwise."""
        try:
            body = await parse_json_async(reply.body)
        except ValueError as exc:
            raise error(
                self.say(f"{what}: malformed answer: HTTP {reply.status_code}, {exc}")
            ) from None
        try:
            return model.model_validate(body)
        except pydantic.ValidationError as exc:
            errors = exc.errors()
            where = ".".join(str(p) for p in errors[0]["loc"]) if errors else ""
            msg = errors[0]["msg"] if errors else "unexpected shape"
            message = f"{what}: malformed answer: {where or 'the answer'}: {msg}: {excerpt(body)}"
        raise error(self.say(message))


def untrusted(exc: BaseException) -> bool:
    """The TLS certificate could not be verified (somewhere in the cause chain)."""
    cause: BaseException | None = exc
    for _ in range(10):
        if cause is None:
            return False
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def describe(exc: BaseException) -> str:
    """httpx's message (names the URL only, never headers), with the likely cause of a
    TLS failure spelled out: Sber's hosts need the Russian Trusted Root CA."""
    cause: BaseException | None = exc
    seen = 0
    while cause is not None and seen < 10:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (
                "the server's TLS certificate is not trusted "
                f"({clean(cause.verify_message or 'CERTIFICATE_VERIFY_FAILED', limit=80)}): "
                "set GIGACHAT_CA_BUNDLE_FILE to the Russian Trusted Root CA certificate "
                "(PEM, from gosuslugi.ru/crt)"
            )
        cause = cause.__cause__ or cause.__context__
        seen += 1
    detail = str(exc)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
