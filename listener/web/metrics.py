"""Prometheus metrics, with the official client, on a registry of the process's own.

Counts and latencies come from the engine's two seams (`observed`): every row claimed,
every call to the provider and every final write passes through them, so the engine
itself carries no metrics code and pays nothing when the server is off. Gauges are read
when scraped: the engine's budget, leases and pauses, the database pools, and the queue
depth from one cheap query (the partial indexes of the waiting statuses), cached
QUEUE_CACHE seconds.

Names follow Prometheus conventions: one prefix, base units (`_seconds`), counters end
in `_total`, label values are from small fixed sets (README, "Metrics").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "fusionbrain_listener_"
QUEUE_CACHE = 5.0

# _created series double the output for nothing a dashboard uses.
disable_created_metrics()

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
)  # fmt: skip
API_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
END_TO_END_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
CHECK_BUCKETS = (1, 2, 3, 5, 8, 13, 21, 34, 55)

# Reasons a row ends Failed, as bounded label values: the first prefix that matches the
# engine's reason text (listener/engine/runs.py, follow.py) names its class.
REASON_CLASSES: tuple[tuple[str, str], ...] = (
    ("censored", "censored"),
    ("timeout", "timeout"),
    ("invalid image", "invalid_image"),
    ("gave up:", "unknown_outcome"),  # "gave up: N run(s) sent without a usable answer"
    ("gave up after", "attempts"),
    ("blank prompt", "blank_prompt"),
    ("the api no longer knows", "expired"),
    ("api refused", "refused"),
    ("status check refused", "refused"),
    ("generation ", "refused"),  # "generation FAIL: ..." from the provider
    ("the api reported done without", "refused"),
    ("cancelled by operator", "cancelled"),
)
REASONS = sorted({c for _, c in REASON_CLASSES} | {"other"})


def reason_class(reason: str | None, *, censored: bool = False) -> str:
    if censored:
        return "censored"
    text = (reason or "").lower()
    for prefix, name in REASON_CLASSES:
        if text.startswith(prefix):
            return name
    return "other"


class Metrics:
    """The counters and histograms the seams feed, and the gauges read at scrape time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.claimed = Counter(
            PREFIX + "rows_claimed",
            "Rows this process claimed: kind=ready (to submit) or adopted (a generation "
            "left by another listener, to follow).",
            ["provider", "kind"],
            registry=r,
        )
        self.submitted = Counter(
            PREFIX + "rows_submitted",
            "Rows the provider accepted (paid for from then on).",
            ["provider"],
            registry=r,
        )
        self.finished = Counter(
            PREFIX + "rows_finished",
            "Rows this process wrote to a final status; reason is the failure's class "
            "(none for ReadyToPublish).",
            ["provider", "status", "reason"],
            registry=r,
        )
        self.api_requests = Counter(
            PREFIX + "api_requests",
            "Calls to the provider by endpoint (submit, outcome, probe) and outcome.",
            ["provider", "endpoint", "outcome"],
            registry=r,
        )
        self.api_latency = Histogram(
            PREFIX + "api_request_duration_seconds",
            "Duration of calls to the provider.",
            ["provider", "endpoint"],
            buckets=API_BUCKETS,
            registry=r,
        )
        self.pickup = Histogram(
            PREFIX + "pickup_latency_seconds",
            "From the moment a row was due (committed, or its retry time) to its run call.",
            ["provider"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end = Histogram(
            PREFIX + "end_to_end_latency_seconds",
            "From a row's commit to its final status, for rows this process picked up.",
            ["provider", "status"],
            buckets=END_TO_END_BUCKETS,
            registry=r,
        )
        self.status_checks = Histogram(
            PREFIX + "status_checks_per_image",
            "Outcome calls made for one generation until its final answer.",
            ["provider"],
            buckets=CHECK_BUCKETS,
            registry=r,
        )
        self._gauges = _Gauges()
        r.register(self._gauges)

    def start_at_zero(self, provider: str) -> None:
        """Every counter series that can appear, present from the start at 0, so a rate
        or an alert works before the first event."""
        for kind in ("ready", "adopted"):
            self.claimed.labels(provider, kind)
        self.submitted.labels(provider)
        self.finished.labels(provider, "ReadyToPublish", "none")
        for reason in REASONS:
            self.finished.labels(provider, "Failed", reason)

    def read_gauges(self, reader: Callable[[], Iterable[Metric]]) -> None:
        """What the gauges show at each scrape (the service's state, read then)."""
        self._gauges.reader = reader


class _Gauges(Collector):
    def __init__(self) -> None:
        self.reader: Callable[[], Iterable[Metric]] | None = None

    def collect(self) -> Iterable[Metric]:
        return list(self.reader()) if self.reader is not None else []

    def describe(self) -> Iterable[Metric]:
        return []


def gauge(name: str, doc: str, labels: list[str], samples: Iterable[tuple[list[str], float]]):
    family = GaugeMetricFamily(PREFIX + name, doc, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family


def counter(name: str, doc: str, labels: list[str], samples: Iterable[tuple[list[str], float]]):
    """A counter read from the engine's own tallies at each scrape (`name` without
    `_total`: the family adds it)."""
    family = CounterMetricFamily(PREFIX + name, doc, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family


class Cached:
    """A value refreshed at most every `seconds` (the queue-depth query)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.value: Any = None
        self.at = -float("inf")

    def stale(self) -> bool:
        return time.monotonic() - self.at >= self.seconds

    def set(self, value: Any) -> None:
        self.value, self.at = value, time.monotonic()
