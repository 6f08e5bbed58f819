"""The emulator's memory: configuration, pending faults, generations and statistics.

Everything here is plain synchronous code run on the emulator's one trio thread, so no
locks are needed: a request handler never awaits between reading and changing state.
"""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from listener.providers.fusionbrain.emulator.config import (
    AFTER_RUN_ERRORS,
    ConfigInvalid,
    EmulatorConfig,
)

ENDPOINTS = ("run", "status", "pipelines", "availability", "any")
STATUS_FAULTS = {
    "500": (500, "Internal Server Error"),
    "502": (502, "Bad Gateway"),
    "503": (503, "Service Unavailable"),
    "504": (504, "Gateway Timeout"),
    "429": (429, "Too Many Requests"),
    "400": (400, "Bad Request"),
    "401": (401, "Unauthorized"),
    "404": (404, "Not Found"),
}
BODY_FAULTS = {
    "busy_model": {"model_status": "DISABLED_BY_QUEUE"},
    "busy_pipeline": {"pipeline_status": "DISABLED_BY_QUEUE"},
    "busy_manual": {"model_status": "DISABLED_MANUALLY"},
}
MALFORMED_BODY = b"<html>oops</html>"
# Faults that decide how an accepted generation ends: run only, consumed on acceptance.
# The image_* ones end DONE with a file that is not a usable image.
IMAGE_FAULTS = ("image_empty", "image_html", "image_huge", "image_wrong_size")
OUTCOME_FAULTS = ("fail", "cancel", "censor", *IMAGE_FAULTS)
# Faults of a hostile API (docs/emulator.md, "Faults for the next N requests").
HOSTILE_FAULTS = (
    "endless",
    "wrong_types",
    "deep",
    "echo_headers",
    "control_chars",
    "censored_string",
)
# Faults with a parameter: kind:<value>. The value's range, and what it means.
PARAMETER_FAULTS = {
    "delay": (0.0, 3600.0),  # seconds before the answer
    "drip": (1.0, 1e9),  # the answer sent at this many bytes per second
    "slow": (0.0, 3600.0),  # the answer spread over this many seconds
    "oversized": (1.0, 4e9),  # a 2xx answer of this many bytes, streamed without a length
    "huge_error": (1.0, 4e9),  # a 400 whose message is this many bytes, streamed
}
FAULT_KINDS = (
    *STATUS_FAULTS,
    "malformed",
    *BODY_FAULTS,
    "drop",
    *HOSTILE_FAULTS,
    *(f"{name}:<number>" for name in PARAMETER_FAULTS),
    "retry_after:<text>",
    "taken:<500|502|503|504>",
)

# Final outcomes of a generation. CENSORED is DONE with censored true and no files.
DONE, FAIL, CANCEL, CENSORED = "DONE", "FAIL", "CANCEL", "CENSORED"
FAIL_DESCRIPTION = "emulated failure"
CANCEL_DESCRIPTION = "emulated cancellation"
# Share of the generation time answered INITIAL before PROCESSING.
INITIAL_SHARE = 0.2


@dataclass
class Fault:
    """`remaining` more requests to `endpoint` get `kind`."""

    endpoint: str
    kind: str
    remaining: int
    seconds: float = 0.0  # the number of a kind:<number> fault (named for delay)
    text: str = ""  # the value of retry_after:<text>

    @classmethod
    def parse(cls, data: Any) -> Fault:
        if not isinstance(data, dict):
            raise ConfigInvalid("expected a JSON object {endpoint, kind, count}")
        endpoint, kind = data.get("endpoint", "any"), data.get("kind")
        count = data.get("count", 1)
        if endpoint not in ENDPOINTS:
            raise ConfigInvalid(f"endpoint must be one of {', '.join(ENDPOINTS)}")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ConfigInvalid("count must be a positive integer")
        known = ", ".join((*FAULT_KINDS, *OUTCOME_FAULTS))
        if not isinstance(kind, str):
            raise ConfigInvalid(f"kind must be one of {known}")
        name, colon, value = kind.partition(":")
        if name == "taken" and colon:
            if endpoint != "run":
                raise ConfigInvalid("kind taken:<status> applies to endpoint run only")
            if value not in {str(code) for code in AFTER_RUN_ERRORS}:
                raise ConfigInvalid(
                    "taken:<status> needs one of " + ", ".join(map(str, AFTER_RUN_ERRORS))
                )
            return cls(endpoint, name, count, seconds=float(value))
        if name == "retry_after" and colon:
            if len(value) > 200 or not (value.isascii() and value.isprintable()):
                raise ConfigInvalid("retry_after:<text> takes up to 200 printable ASCII characters")
            return cls(endpoint, name, count, text=value)
        if name in PARAMETER_FAULTS and colon:
            low, high = PARAMETER_FAULTS[name]
            try:
                number = float(value)
            except ValueError:
                number = -1.0
            if not low <= number <= high:
                raise ConfigInvalid(f"{name}:<number> needs a number from {low:g} to {high:g}")
            return cls(endpoint, name, count, seconds=number)
        if kind in OUTCOME_FAULTS:
            if endpoint != "run":
                raise ConfigInvalid(f"kind {kind} applies to endpoint run only")
        elif kind == "censored_string":
            if endpoint != "status":
                raise ConfigInvalid("kind censored_string applies to endpoint status only")
        elif (
            kind not in STATUS_FAULTS
            and kind not in BODY_FAULTS
            and kind not in HOSTILE_FAULTS
            and kind not in ("malformed", "drop")
        ):
            raise ConfigInvalid(f"kind must be one of {known}")
        return cls(endpoint, kind, count)

    def to_json(self) -> dict[str, Any]:
        if self.kind in PARAMETER_FAULTS:
            kind = f"{self.kind}:{self.seconds:g}"
        elif self.kind == "taken":
            kind = f"taken:{int(self.seconds)}"
        elif self.kind == "retry_after":
            kind = f"retry_after:{self.text}"
        else:
            kind = self.kind
        return {"endpoint": self.endpoint, "kind": kind, "count": self.remaining}


@dataclass
class Generation:
    uuid: str
    prompt: str
    width: int
    height: int
    style: str
    negative_prompt: str
    started: float  # time.monotonic()
    duration: float  # seconds from the run to the final answer
    outcome: str  # DONE, FAIL, CANCEL, CENSORED or one of IMAGE_FAULTS

    def phase(self, now: float) -> str:
        """INITIAL, PROCESSING, or "final" once the generation has ended."""
        elapsed = now - self.started
        if elapsed >= self.duration:
            return "final"
        return "INITIAL" if elapsed < self.duration * INITIAL_SHARE else "PROCESSING"

    def expired(self, now: float, ttl: float) -> bool:
        return now >= self.started + self.duration + ttl


@dataclass
class Stats:
    runs_total: int = 0
    runs_by_prompt: dict[str, int] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    run_requests: int = 0
    status_calls: int = 0
    results_fetched: int = 0
    requests_total: int = 0
    # flow control: runs refused for the account's limits, and the most generations in
    # progress at once that the emulator ever had
    runs_refused: int = 0
    refused_at: list[float] = field(default_factory=list)  # time.time() of each refusal
    most_running: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "runs_total": self.runs_total,
            "runs_by_prompt": self.runs_by_prompt,
            "runs": self.runs,
            "run_requests": self.run_requests,
            "status_calls": self.status_calls,
            "results_fetched": self.results_fetched,
            "requests_total": self.requests_total,
            "runs_refused": self.runs_refused,
            "refused_at": self.refused_at,
            "most_running": self.most_running,
        }


class EmulatorState:
    def __init__(self, config: EmulatorConfig) -> None:
        self.start_config = config
        self.reset()

    def reset(self) -> None:
        self.config = self.start_config
        self.rng = random.Random(self.config.seed)
        self.faults: list[Fault] = []
        self.generations: dict[str, Generation] = {}
        self.stats = Stats()
        self._starts: deque[float] = deque()  # accepted runs of the last second

    def update_config(self, changes: dict[str, Any]) -> EmulatorConfig:
        """Apply a partial update at once; a new seed restarts the random faults."""
        self.config = self.config.updated(changes)
        if "seed" in changes:
            self.rng = random.Random(self.config.seed)
        return self.config

    def chance(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate

    def add_fault(self, fault: Fault) -> None:
        self.faults.append(fault)

    def take_fault(self, endpoint: str, *, outcome: bool = False) -> Fault | None:
        """The first pending fault for this endpoint (outcome faults or the others)."""
        for i, fault in enumerate(self.faults):
            if fault.endpoint not in (endpoint, "any"):
                continue
            if (fault.kind in OUTCOME_FAULTS) != outcome:
                continue
            fault.remaining -= 1
            if fault.remaining <= 0:
                del self.faults[i]
            return fault
        return None

    def record_run(self, generation: Generation, arrived_at: float) -> None:
        self.generations[generation.uuid] = generation
        stats = self.stats
        stats.runs_total += 1
        stats.runs_by_prompt[generation.prompt] = stats.runs_by_prompt.get(generation.prompt, 0) + 1
        stats.runs.append(
            {
                "uuid": generation.uuid,
                "prompt": generation.prompt,
                "width": generation.width,
                "height": generation.height,
                "style": generation.style,
                "negative_prompt": generation.negative_prompt,
                "arrived_at": arrived_at,
            }
        )

    def running(self, now: float) -> int:
        """Generations in progress: accepted, their generation time not over."""
        return sum(1 for g in self.generations.values() if now < g.started + g.duration)

    def over_limit(self, now: float) -> bool:
        """Would one more run exceed the account's limits (max_concurrent, start_rate)?"""
        config = self.config
        if config.max_concurrent is not None and self.running(now) >= config.max_concurrent:
            return True
        if config.start_rate > 0:
            recent = self._starts
            while recent and recent[0] <= now - 1.0:
                recent.popleft()
            if len(recent) >= config.start_rate:
                return True
        return False

    def started(self, now: float) -> None:
        self._starts.append(now)
        self.stats.most_running = max(self.stats.most_running, self.running(now))

    def expire(self, now: float | None = None) -> int:
        """Forget unfetched results older than result_ttl; returns how many."""
        now = time.monotonic() if now is None else now
        ttl = self.config.result_ttl
        gone = [u for u, g in self.generations.items() if g.expired(now, ttl)]
        for uuid in gone:
            del self.generations[uuid]
        return len(gone)
