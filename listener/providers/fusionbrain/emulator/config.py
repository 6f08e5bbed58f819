"""What the emulator does: timings, credentials, busy mode and random faults.

One `EmulatorConfig` is given at start-up; the control endpoint (`POST /_emulator/config`)
replaces fields of it while the emulator runs, and `POST /_emulator/reset` restores it.
The credentials are the exception: set at start-up only, never shown by the control
endpoint (`credentials_checked` says whether there are any).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from listener.providers.emulator_kit import ConfigInvalid

BUSY_KEYS = ("model_status", "pipeline_status")
"""The two body keys the real service uses for "busy" on run (seen and documented)."""

# The statuses `error_after_run` may answer: a server or gateway failing after the run
# was taken (and charged for).
AFTER_RUN_ERRORS = (500, 502, 503, 504)
RATE_FIELDS = ("fail_rate", "cancel_rate", "error_rate", "malformed_rate")
SECONDS_FIELDS = ("generation_time", "result_ttl", "delay")
PRIVATE_FIELDS = ("api_key", "secret_key")


@dataclass(frozen=True)
class EmulatorConfig:
    """The emulator's behaviour. Every field can be changed at run time."""

    # Credentials; None accepts any key (and any secret), the way a trial should.
    api_key: str | None = None
    secret_key: str | None = None
    # Seconds from the run to its final answer; 0 means DONE at the first status call.
    generation_time: float = 3.0
    # The `status_time` the run answer advertises (seconds before polling makes sense).
    status_time: int = 2
    # Seconds an unfetched final answer is kept after the generation ends (real: 5-8 min).
    result_ttl: float = 360.0
    # When set, every run answers 200 {busy: busy_value} and is not accepted, and the
    # availability endpoint answers {"pipeline_status": busy_value}.
    busy: str | None = None
    busy_value: str = "DISABLED_BY_QUEUE"
    # Fractions (0..1) decided by a random.Random(seed).
    fail_rate: float = 0.0  # accepted generations that end FAIL
    cancel_rate: float = 0.0  # accepted generations that end CANCEL
    error_rate: float = 0.0  # API requests answered 500
    malformed_rate: float = 0.0  # API requests answered 200 with a body that is not JSON
    # Seconds added before answering every API request.
    delay: float = 0.0
    # When set (500, 502, 503 or 504), every run is taken (recorded and counted in the
    # statistics: it costs quota) and then answered with this status, as a gateway that
    # timed out or a server that failed after starting the generation would.
    error_after_run: int | None = None
    # A prompt containing one of these words (case-insensitive) ends DONE, censored.
    censor_words: list[str] = field(default_factory=list)
    # Answer 401 to every API request, whatever the credentials.
    wrong_credentials: bool = False
    # Answer 404 to every key-API request, as the retired key service does (since about
    # May 2026 its key page and API answer 404).
    retired: bool = False
    # Seed of the random faults; None seeds from the system.
    seed: int | None = None
    # The account's true limits (flow control benchmarks and tests): at most
    # `max_concurrent` generations in progress (run accepted, generation_time not yet
    # over; None: no limit; 0: a storm, every run refused), at most `start_rate` runs
    # accepted per second (0: no limit).
    # A run beyond either is refused: `over_limit` "429" (Too Many Requests, Retry-After 1)
    # or "busy" (200 {"model_status": "DISABLED_BY_QUEUE"}).
    max_concurrent: int | None = None
    start_rate: float = 0.0
    over_limit: str = "429"

    def __post_init__(self) -> None:
        words = self.censor_words
        if isinstance(words, str) or not all(isinstance(w, str) for w in words):
            raise ConfigInvalid("censor_words must be a list of strings")
        object.__setattr__(self, "censor_words", [w for w in words if w])
        for name in ("api_key", "secret_key"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ConfigInvalid(f"{name} must be a string or null")
        for name in (*RATE_FIELDS, *SECONDS_FIELDS):
            value = _number(name, getattr(self, name))
            if name in RATE_FIELDS and not 0 <= value <= 1:
                raise ConfigInvalid(f"{name} must be between 0 and 1, not {value}")
            if value < 0:
                raise ConfigInvalid(f"{name} must not be negative, not {value}")
            object.__setattr__(self, name, float(value))
        if not _is_int(self.status_time) or self.status_time < 0:
            raise ConfigInvalid(f"status_time must be a non-negative integer: {self.status_time!r}")
        if self.error_after_run is not None and (
            not _is_int(self.error_after_run) or self.error_after_run not in AFTER_RUN_ERRORS
        ):
            raise ConfigInvalid(
                "error_after_run must be null or one of " + ", ".join(map(str, AFTER_RUN_ERRORS))
            )
        if self.busy not in (None, *BUSY_KEYS):
            raise ConfigInvalid(f"busy must be one of {', '.join(BUSY_KEYS)} or null")
        if not isinstance(self.busy_value, str) or not self.busy_value:
            raise ConfigInvalid("busy_value must be a non-empty string")
        for flag in ("wrong_credentials", "retired"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigInvalid(f"{flag} must be true or false")
        if self.max_concurrent is not None and (
            not _is_int(self.max_concurrent) or self.max_concurrent < 0
        ):
            raise ConfigInvalid("max_concurrent must be a non-negative integer or null")
        rate = _number("start_rate", self.start_rate)
        if rate < 0:
            raise ConfigInvalid(f"start_rate must not be negative, not {rate}")
        object.__setattr__(self, "start_rate", float(rate))
        if self.over_limit not in ("429", "busy"):
            raise ConfigInvalid('over_limit must be "429" or "busy"')
        if self.seed is not None and not _is_int(self.seed):
            raise ConfigInvalid("seed must be an integer or null")

    def to_json(self) -> dict[str, Any]:
        """The configuration as the control endpoint shows it: never the credentials."""
        data = dataclasses.asdict(self)
        for name in PRIVATE_FIELDS:
            del data[name]
        data["credentials_checked"] = self.api_key is not None or self.secret_key is not None
        data["censor_words"] = list(self.censor_words)
        return data

    def updated(self, changes: dict[str, Any]) -> EmulatorConfig:
        """A copy with `changes` applied; unknown fields and bad values raise ConfigInvalid."""
        if not isinstance(changes, dict):
            raise ConfigInvalid("expected a JSON object of fields")
        private = sorted(set(changes) & set(PRIVATE_FIELDS))
        if private:
            raise ConfigInvalid(
                f"{', '.join(private)}: set at start-up only "
                "(--api-key/--secret-key or EMULATOR_API_KEY/EMULATOR_SECRET_KEY)"
            )
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigInvalid(f"unknown field(s): {', '.join(unknown)}")
        try:
            return dataclasses.replace(self, **changes)
        except TypeError as exc:  # e.g. a list where a number belongs
            raise ConfigInvalid(str(exc)) from exc


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigInvalid(f"{name} must be a finite number, not {value!r}")
    return float(value)
