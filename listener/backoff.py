"""Retries that cost nothing until something fails.

A stamina retry loop builds tenacity's machinery (a retrying object, its state, the
hooks' context) for every call, including the great majority whose first try succeeds:
on the listener's hot path (two API calls and two durable writes per row) that was about
5% of its CPU. `first_then_retry` runs the first try bare and brings stamina in only
after a failure it would retry, replaying that failure as stamina's first attempt: the
same attempts, the same waits (the first backoff included), the same hooks and testing
mode (`stamina.set_testing`) as a stamina loop from the start.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


def _retried(on: Any, exc: Exception) -> bool:
    """Whether stamina's `on` (an exception type, a tuple of them, or a predicate) takes
    `exc` for a retry."""
    if isinstance(on, type | tuple):
        return isinstance(exc, on)
    return bool(on(exc))


async def first_then_retry(call: Callable[[], Awaitable[T]], *, on: Any, **options: Any) -> T:
    """`await call()`, retried as `stamina.retry_context(on=on, **options)` would retry
    it; stamina is entered (and imported) only once a try failed with what `on` takes."""
    try:
        return await call()
    except Exception as exc:
        if not _retried(on, exc):
            raise
        failed: Exception | None = exc
    import stamina

    async for attempt in stamina.retry_context(on=on, **options):
        with attempt:
            if failed is not None:
                first, failed = failed, None
                raise first
            return await call()
    raise AssertionError("unreachable")  # pragma: no cover
