"""The engine's seams, observed: a `Store` and a `Provider` that count what passes through
them into `Metrics` and otherwise delegate everything to the real ones.

Wrapping the seams (instead of calls spread through the engine) keeps the engine free of
metrics code: without --http the engine talks to the real store and provider directly
and pays nothing. Times are the process's monotonic clock; the only value from the
database is each claimed row's age (`ReadyRow.waited` / `age`, computed by the claim).
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from typing import Any

import trio

from listener import errors
from listener.engine.ports import Pending, Ready, Refused
from listener.errors import (
    ApiBusy,
    ApiCredentials,
    ApiError,
    ApiMalformed,
    ApiNotFound,
    ApiOutcomeUnknown,
    ApiPermanent,
    ApiTransient,
)
from listener.web.metrics import Metrics, reason_class

# Bounds of the per-row bookkeeping: rows in flight in one process are far fewer.
TRACKED_ROWS = 10_000
_TASK_ROW = re.compile(r"^image (\d+):")
# Paid quota used up: an error the provider seam adds (None where it does not exist yet).
_QUOTA: type[BaseException] | None = getattr(errors, "ApiQuotaExhausted", None)


class _Bounded(OrderedDict[Any, float]):
    def put(self, key: Any, value: float) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > TRACKED_ROWS:
            self.popitem(last=False)


def api_outcome(exc: BaseException | None) -> str:
    """A bounded label value for how a call ended."""
    if exc is None:
        return "ok"
    if isinstance(exc, trio.Cancelled):
        return "cancelled"
    for kind, name in (
        (ApiBusy, "busy"),
        (ApiCredentials, "credentials"),
        (_QUOTA, "quota"),
        (ApiOutcomeUnknown, "unknown"),
        (ApiMalformed, "malformed"),
        (ApiTransient, "transient"),
        (ApiNotFound, "not_found"),
        (ApiPermanent, "refused"),
        (ApiError, "error"),
    ):
        if kind is not None and isinstance(exc, kind):
            return name
    return "error"


class Tracker:
    """Per-row moments shared by the two wrappers: when each claimed row was due and
    committed, on the monotonic clock."""

    def __init__(self) -> None:
        self.due: _Bounded = _Bounded()
        self.committed: _Bounded = _Bounded()
        self.checks: OrderedDict[str, int] = OrderedDict()


class _Children:
    """A metric's labelled children, looked up once: `metric.labels(...)` builds a key and
    takes a lock on every call (a few microseconds, several times per row)."""

    def __init__(self) -> None:
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child


class ObservedStore(_Children):
    def __init__(self, store: Any, metrics: Metrics, provider: str, tracker: Tracker) -> None:
        super().__init__()
        self._store = store
        self._m = metrics
        self._provider = provider
        self._t = tracker

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def claim_ready(self, *args: Any, **kwargs: Any) -> Any:
        rows = await self._store.claim_ready(*args, **kwargs)
        if rows:
            now = time.monotonic()
            self._child(self._m.claimed, self._provider, "ready").inc(len(rows))
            for row in rows:
                waited = getattr(row, "waited", None)
                if waited is not None:
                    self._t.due.put(row.id, now - max(0.0, waited))
                age = getattr(row, "age", None)
                if age is not None:
                    self._t.committed.put(row.id, now - max(0.0, age))
        return rows

    async def claim_generating(self, *args: Any, **kwargs: Any) -> Any:
        claimed = await self._store.claim_generating(*args, **kwargs)
        if claimed.rows:
            self._child(self._m.claimed, self._provider, "adopted").inc(len(claimed.rows))
        return claimed

    async def finalise(self, id_: int, *args: Any, **kwargs: Any) -> Any:
        result = await self._store.finalise(id_, *args, **kwargs)
        self._finished(id_, "ReadyToPublish", "none")
        return result

    async def fail(self, id_: int, error: str, *args: Any, **kwargs: Any) -> Any:
        result = await self._store.fail(id_, error, *args, **kwargs)
        cls = reason_class(error, censored=bool(kwargs.get("censored")))
        self._finished(id_, "Failed", cls)
        return result

    async def retry_later(self, id_: int, *args: Any, **kwargs: Any) -> Any:
        self._forget(id_)
        return await self._store.retry_later(id_, *args, **kwargs)

    async def release(self, id_: int, *args: Any, **kwargs: Any) -> Any:
        self._forget(id_)
        return await self._store.release(id_, *args, **kwargs)

    def _forget(self, id_: int) -> None:
        self._t.due.pop(id_, None)
        self._t.committed.pop(id_, None)

    def _finished(self, id_: int, status: str, reason: str) -> None:
        self._child(self._m.finished, self._provider, status, reason).inc()
        self._t.due.pop(id_, None)
        committed = self._t.committed.pop(id_, None)
        if committed is not None:
            elapsed = time.monotonic() - committed
            self._child(self._m.end_to_end, self._provider, status).observe(elapsed)


class ObservedProvider(_Children):
    def __init__(self, provider: Any, metrics: Metrics, tracker: Tracker) -> None:
        super().__init__()
        self._provider = provider
        self._m = metrics
        self._t = tracker
        self.name: str = provider.name

    def __getattr__(self, name: str) -> Any:
        return getattr(self._provider, name)

    async def submit(self, request: Any) -> Any:
        row_id = _row_of(request)
        due = self._t.due.pop(row_id, None) if row_id is not None else None
        if due is not None:
            self._child(self._m.pickup, self.name).observe(time.monotonic() - due)
        result = await self._timed("submit", self._provider.submit(request))
        if not isinstance(result, Refused):
            self._child(self._m.submitted, self.name).inc()
        return result

    async def outcome(self, handle: str) -> Any:
        result = await self._timed("outcome", self._provider.outcome(handle))
        checks = self._t.checks
        checks[handle] = checks.pop(handle, 0) + 1
        while len(checks) > TRACKED_ROWS:
            checks.popitem(last=False)
        if isinstance(result, Ready | Refused):
            self._child(self._m.status_checks, self.name).observe(checks.pop(handle))
        elif not isinstance(result, Pending):
            checks.pop(handle, None)
        return result

    async def probe(self) -> Any:
        return await self._timed("probe", self._provider.probe())

    async def _timed(self, endpoint: str, call: Any) -> Any:
        began = time.monotonic()
        error: BaseException | None = None
        try:
            return await call
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._child(self._m.api_latency, self.name, endpoint).observe(time.monotonic() - began)
            self._child(self._m.api_requests, self.name, endpoint, api_outcome(error)).inc()


def _row_of(request: Any) -> int | None:
    """The row a request is for: the seam's `row_id`, else the row task's name
    ("image 42: submit", listener.engine.rows)."""
    row_id = getattr(request, "row_id", None)
    if isinstance(row_id, int):
        return row_id
    match = _TASK_ROW.match(trio.lowlevel.current_task().name)
    return int(match.group(1)) if match else None
