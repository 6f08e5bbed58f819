"""The emulator's memory: configuration, pending faults, generations and statistics.

Everything here is plain synchronous code run on the emulator's one trio thread, so no
locks are needed: a request handler never awaits between reading and changing state.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

from listener.emulator.config import ConfigInvalid, EmulatorConfig

ENDPOINTS = ("run", "status", "pipelines", "availability", "any")
STATUS_FAULTS = {
    "500": (500, "Internal Server Error"),
    "502": (502, "Bad Gateway"),
    "503": (503, "Service Unavailable"),
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
OUTCOME_FAULTS = ("fail", "cancel", "censor")
FAULT_KINDS = (*STATUS_FAULTS, "malformed", *BODY_FAULTS, "drop", "delay:<seconds>")

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
    seconds: float = 0.0  # for delay:<seconds>

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
        if not isinstance(kind, str):
            raise ConfigInvalid(f"kind must be one of {', '.join((*FAULT_KINDS, *OUTCOME_FAULTS))}")
        seconds = 0.0
        if kind.startswith("delay:"):
            try:
                seconds = float(kind.removeprefix("delay:"))
            except ValueError:
                seconds = -1.0
            if not 0 <= seconds < 3600:
                raise ConfigInvalid("delay:<seconds> needs a number of seconds (0 to 3600)")
            kind = "delay"
        elif kind in OUTCOME_FAULTS:
            if endpoint != "run":
                raise ConfigInvalid(f"kind {kind} applies to endpoint run only")
        elif (
            kind not in STATUS_FAULTS
            and kind not in BODY_FAULTS
            and kind
            not in (
                "malformed",
                "drop",
            )
        ):
            raise ConfigInvalid(f"kind must be one of {', '.join((*FAULT_KINDS, *OUTCOME_FAULTS))}")
        return cls(endpoint, kind, count, seconds)

    def to_json(self) -> dict[str, Any]:
        kind = f"delay:{self.seconds:g}" if self.kind == "delay" else self.kind
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
    outcome: str  # DONE, FAIL, CANCEL or CENSORED

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

    def to_json(self) -> dict[str, Any]:
        return {
            "runs_total": self.runs_total,
            "runs_by_prompt": self.runs_by_prompt,
            "runs": self.runs,
            "run_requests": self.run_requests,
            "status_calls": self.status_calls,
            "results_fetched": self.results_fetched,
            "requests_total": self.requests_total,
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

    def expire(self, now: float | None = None) -> int:
        """Forget unfetched results older than result_ttl; returns how many."""
        now = time.monotonic() if now is None else now
        ttl = self.config.result_ttl
        gone = [u for u, g in self.generations.items() if g.expired(now, ttl)]
        for uuid in gone:
            del self.generations[uuid]
        return len(gone)
