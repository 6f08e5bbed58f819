"""Listener processes with the HTTP server on, and a client for them."""

from __future__ import annotations

import re
from typing import Any

import httpx

from tests.fixtures.listener import ListenerProcess, wait_until

URL_LINE = re.compile(r"HTTP server at (http://\S+/)")


async def http_url(p: ListenerProcess) -> str:
    """The URL the listener printed (it binds port 0 in tests)."""
    await p.wait_for_log("HTTP server at ")
    match = URL_LINE.search(p.log)
    assert match, p.log
    return match.group(1)


def get(url: str, **kwargs: Any) -> httpx.Response:
    with httpx.Client(timeout=15, trust_env=False) as c:
        return c.get(url, **kwargs)


def post(url: str, **kwargs: Any) -> httpx.Response:
    with httpx.Client(timeout=15, trust_env=False) as c:
        return c.post(url, **kwargs)


async def wait_status(url: str, code: int, *, seconds: float = 30) -> httpx.Response:
    """Until GET url answers `code`; the last answer."""
    last: list[httpx.Response] = []

    def check() -> bool:
        try:
            last[:] = [get(url)]
        except httpx.HTTPError:
            return False
        return last[0].status_code == code

    await wait_until(check, seconds=seconds, every=0.2, what=f"{url} answering {code}")
    return last[0]
