"""One OAuth access token per process, shared by every call.

GigaChat's API takes a bearer token that the token service hands out for 30 minutes
(`expires_at`, Unix milliseconds). The token service allows 10 requests a second, so a
token is never fetched per call: it is cached, refreshed single-flight (a `trio.Lock`:
one request goes out, concurrent callers wait for its result) when less than
REFRESH_MARGIN seconds of validity remain, and dropped after a 401 so that the call is
repeated once with a new one. Every request carries a new RqUID (Sber files its logs
under it).

Expiry is kept on trio's clock, converted once from the answer's wall-clock time, so a
wall clock that jumps later does not make a token look fresh.

Errors: 400/401 from the token service mean the key, the scope or their pairing is wrong:
`ApiCredentials` with the service's own words (never the key). 429, 5xx and network
errors are retried here a few times, then reported as `ApiBusy`: the token service being
down is not a failure of any row, and nothing was sent to the paid API.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from typing import TYPE_CHECKING

import stamina
import trio

from listener.errors import ApiBusy, ApiCredentials, ApiError, ApiMalformed, ApiTransient
from listener.providers.gigachat.models import TokenAnswer

if TYPE_CHECKING:
    from listener.providers.gigachat.edge import Edge, Reply

log = logging.getLogger("listener.gigachat")

# The SDK's margin: a token with less validity left is refreshed before use.
REFRESH_MARGIN = 60.0
TOKEN_ATTEMPTS = 3
TOKEN_WAIT_INITIAL = 0.5
TOKEN_WAIT_MAX = 5.0
# A token whose answer claims more than this is kept only this long (a clock gone wrong).
LONGEST_VALIDITY = 24 * 3600.0

# What the token service's codes mean for the user (its `message` is shown as well).
TOKEN_CODES = {
    1: "GIGACHAT_SCOPE is not a scope the token service knows",
    4: "GIGACHAT_CREDENTIALS cannot be decoded: paste the Authorization Key unchanged",
    5: "GIGACHAT_SCOPE is empty",
    6: "GIGACHAT_CREDENTIALS was refused: a wrong or reissued Authorization Key",
    7: "GIGACHAT_SCOPE does not match the key: each key belongs to one scope "
    "(GIGACHAT_API_PERS for individuals, GIGACHAT_API_B2B or GIGACHAT_API_CORP for businesses)",
}


class TokenSource:
    """`await tokens.get()` -> a bearer token valid for at least REFRESH_MARGIN seconds
    (when the service grants that long); `tokens.invalidate(token)` after a 401."""

    def __init__(self, edge: Edge, auth_url: str, credentials: str, scope: str) -> None:
        self._edge = edge
        self._auth_url = auth_url
        self._credentials = credentials
        self._scope = scope
        self._token: str | None = None
        self._expires = -math.inf  # trio clock
        self._lock = trio.Lock()
        self.fetched = 0  # tokens fetched by this process (for tests and the check)

    async def get(self) -> str:
        if self._fresh():
            assert self._token is not None
            return self._token
        async with self._lock:
            if not self._fresh():  # a task ahead of us may have fetched one meanwhile
                self._token, self._expires = await self._fetch()
            assert self._token is not None
            return self._token

    def invalidate(self, token: str) -> None:
        """Forget `token` (it was refused); a newer one fetched meanwhile is kept."""
        if self._token == token:
            self._token = None
            self._expires = -math.inf

    def valid_for(self, token: str) -> float:
        """Seconds `token` stays valid (0 once it is not the current one)."""
        if token != self._token:
            return 0.0
        return max(0.0, self._expires - trio.current_time())

    def _fresh(self) -> bool:
        return self._token is not None and trio.current_time() < self._expires - REFRESH_MARGIN

    async def _fetch(self) -> tuple[str, float]:
        try:
            async for attempt in stamina.retry_context(
                on=ApiTransient,
                attempts=TOKEN_ATTEMPTS,
                wait_initial=TOKEN_WAIT_INITIAL,
                wait_max=TOKEN_WAIT_MAX,
                timeout=None,
            ):
                with attempt:
                    return await self._fetch_once()
        except ApiTransient as exc:
            raise ApiBusy(
                f"GigaChat token service: {exc.message}", retry_after=exc.retry_after
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _fetch_once(self) -> tuple[str, float]:
        reply = await self._edge.send(
            "POST",
            self._auth_url,
            what="token",
            headers={
                "Authorization": f"Basic {self._credentials}",
                "RqUID": str(uuid.uuid4()),
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
            },
            content=f"scope={self._scope}".encode("ascii"),
        )
        code = reply.status_code
        if code in (400, 401, 403):
            raise ApiCredentials(self._edge.say(f"GigaChat token service: {_refusal(reply)}"))
        if 300 <= code < 400:
            raise ApiCredentials(
                self._edge.say(
                    f"GigaChat token service: HTTP {code}: redirects are not followed: check "
                    "GIGACHAT_AUTH_URL"
                )
            )
        if code in (408, 425, 429) or code >= 500:
            raise ApiTransient(
                self._edge.say(f"token: HTTP {code}: {reply.message()}"),
                retry_after=self._edge.retry_after(reply),
            )
        if code >= 300:
            raise ApiError(self._edge.say(f"token: HTTP {code}: {reply.message()}"))
        answer = await self._edge.parse(reply, TokenAnswer, "token", ApiMalformed)
        try:
            token, expires_at = answer.token()
        except ValueError as exc:
            raise ApiMalformed(f"token: malformed answer: {exc}") from None
        valid = min(expires_at - time.time(), LONGEST_VALIDITY)
        if valid <= 0:
            raise ApiMalformed("token: the token service handed out a token already expired")
        self.fetched += 1
        log.debug("GigaChat token fetched, valid for %.0fs", valid)
        return token, trio.current_time() + valid


def _refusal(reply: Reply) -> str:
    """The token service's refusal as one line: what to check, then its own words."""
    code, message = reply.error_fields()
    hint = TOKEN_CODES.get(code) if code is not None else None
    if hint is None:
        hint = (
            "the Authorization Key or the scope was refused; check GIGACHAT_CREDENTIALS "
            "and GIGACHAT_SCOPE"
        )
    where = f"HTTP {reply.status_code}" + (f", code {code}" if code is not None else "")
    return f"{hint} ({where}: {message})"
