"""The GigaChat emulator's configuration, faults, tokens, files and statistics.

Plain synchronous code on the emulator's one trio thread: a handler never awaits between
reading and changing state, so no locks are needed.
"""

from __future__ import annotations

import dataclasses
import math
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from listener.providers.emulator_kit import ConfigInvalid

ENDPOINTS = ("token", "chat", "download", "models", "balance", "any")
STATUS_FAULTS = (400, 401, 402, 403, 404, 408, 413, 422, 425, 429, 500, 502, 503, 504)
# Faults of the draw (chat only): how the model answers, or what happens to its reply.
DRAW_FAULTS = ("blacklist", "no_image", "lost", "bad_file_id")
PLAIN_FAULTS = ("malformed", "drop", "echo_headers", *DRAW_FAULTS)
SECONDS_FAULTS = ("delay",)
MODELS = ("GigaChat", "GigaChat-2", "GigaChat-2-Pro", "GigaChat-2-Max")
SCOPES = ("GIGACHAT_API_PERS", "GIGACHAT_API_B2B", "GIGACHAT_API_CORP")
PRIVATE_FIELDS = ("credentials",)
# Canned answers, as users have seen them.
BLACKLIST_TEXT = "Что-то в вашем вопросе меня смущает. Может, поговорим на другую тему?"
NO_IMAGE_TEXT = "Представьте себе: {prompt}. Это было бы красиво, но рисовать я сейчас не стану."
TOKEN_RATE = 10  # token requests per second before 429, as documented


@dataclass(frozen=True)
class GigaChatEmulatorConfig:
    """The emulator's behaviour; every field but the credentials can change at run time."""

    # The Authorization Key accepted (None: any well-formed key).
    credentials: str | None = None
    # The scope the key belongs to (None: any of the three).
    scope: str | None = None
    # Seconds a token is valid (real: 1800).
    token_ttl: float = 1800.0
    # Seconds one draw takes (real: 10-40).
    draw_time: float = 3.0
    # API calls served at once before 429 (individuals: 1, businesses: 10); null: no limit.
    streams: int | None = None
    # 402 Payment Required for every draw while true.
    quota_exhausted: bool = False
    # Prompts with one of these words: finish_reason blacklist / a text answer, no image.
    blacklist_words: list[str] = field(default_factory=list)
    no_image_words: list[str] = field(default_factory=list)
    # Side of the square JPEGs drawn (real: probably 1024).
    image_size: int = 1024
    # Seconds a drawn file can be downloaded.
    file_ttl: float = 3600.0
    # Share of API calls answered 500, decided by random.Random(seed).
    error_rate: float = 0.0
    seed: int | None = None
    # None: 403 Permission denied (pay-as-you-go); else the balance per model.
    balance: dict[str, float] | None = None

    def __post_init__(self) -> None:
        for name in ("blacklist_words", "no_image_words"):
            words = getattr(self, name)
            if isinstance(words, str) or not all(isinstance(w, str) for w in words):
                raise ConfigInvalid(f"{name} must be a list of strings")
            object.__setattr__(self, name, [w for w in words if w])
        for name in ("token_ttl", "draw_time", "file_ttl", "error_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigInvalid(f"{name} must be a number")
            if not math.isfinite(value) or value < 0:
                raise ConfigInvalid(f"{name} must be a finite number, 0 or more")
            object.__setattr__(self, name, float(value))
        if self.error_rate > 1:
            raise ConfigInvalid("error_rate must be between 0 and 1")
        if self.streams is not None and (not _is_int(self.streams) or self.streams < 1):
            raise ConfigInvalid("streams must be a positive integer or null")
        if not _is_int(self.image_size) or not 16 <= self.image_size <= 2048:
            raise ConfigInvalid("image_size must be an integer from 16 to 2048")
        if not isinstance(self.quota_exhausted, bool):
            raise ConfigInvalid("quota_exhausted must be true or false")
        if self.scope is not None and self.scope not in SCOPES:
            raise ConfigInvalid(f"scope must be one of {', '.join(SCOPES)} or null")
        if self.seed is not None and not _is_int(self.seed):
            raise ConfigInvalid("seed must be an integer or null")
        if self.balance is not None and not (
            isinstance(self.balance, dict)
            and all(
                isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
                for k, v in self.balance.items()
            )
        ):
            raise ConfigInvalid("balance must be an object of model name -> number, or null")

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for name in PRIVATE_FIELDS:
            del data[name]
        data["credentials_checked"] = self.credentials is not None
        return data

    def updated(self, changes: dict[str, Any]) -> GigaChatEmulatorConfig:
        if not isinstance(changes, dict):
            raise ConfigInvalid("expected a JSON object of fields")
        private = sorted(set(changes) & set(PRIVATE_FIELDS))
        if private:
            raise ConfigInvalid(f"{', '.join(private)}: set at start-up only")
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigInvalid(f"unknown field(s): {', '.join(unknown)}")
        try:
            return dataclasses.replace(self, **changes)
        except TypeError as exc:
            raise ConfigInvalid(str(exc)) from exc


@dataclass
class Fault:
    """`remaining` more requests to `endpoint` get `kind`."""

    endpoint: str
    kind: str
    remaining: int
    seconds: float = 0.0

    @classmethod
    def parse(cls, data: Any) -> Fault:
        if not isinstance(data, dict):
            raise ConfigInvalid("expected a JSON object {endpoint, kind, count}")
        endpoint, kind, count = data.get("endpoint", "any"), data.get("kind"), data.get("count", 1)
        if endpoint not in ENDPOINTS:
            raise ConfigInvalid(f"endpoint must be one of {', '.join(ENDPOINTS)}")
        if not _is_int(count) or count < 1:
            raise ConfigInvalid("count must be a positive integer")
        known = [*map(str, STATUS_FAULTS), *PLAIN_FAULTS, "delay:<seconds>"]
        if not isinstance(kind, str):
            raise ConfigInvalid(f"kind must be one of {', '.join(known)}")
        name, colon, value = kind.partition(":")
        if name in SECONDS_FAULTS and colon:
            try:
                seconds = float(value)
            except ValueError:
                seconds = -1.0
            if not 0 <= seconds <= 3600:
                raise ConfigInvalid(f"{name}:<seconds> needs a number from 0 to 3600")
            return cls(endpoint, name, count, seconds=seconds)
        if kind in DRAW_FAULTS and endpoint != "chat":
            raise ConfigInvalid(f"kind {kind} applies to endpoint chat only")
        if kind not in PLAIN_FAULTS and not (kind.isdigit() and int(kind) in STATUS_FAULTS):
            raise ConfigInvalid(f"kind must be one of {', '.join(known)}")
        return cls(endpoint, kind, count)

    def to_json(self) -> dict[str, Any]:
        kind = f"{self.kind}:{self.seconds:g}" if self.kind in SECONDS_FAULTS else self.kind
        return {"endpoint": self.endpoint, "kind": kind, "count": self.remaining}


@dataclass
class File:
    prompt: str
    created: float  # time.monotonic()
    ready_at: float


@dataclass
class Stats:
    token_requests: int = 0
    tokens_issued: int = 0
    rquids: set[str] = field(default_factory=set)
    chat_requests: int = 0
    draws_total: int = 0
    draws_by_prompt: dict[str, int] = field(default_factory=dict)
    request_ids: list[str] = field(default_factory=list)
    # The last draws: {"prompt", "system" (the system message or null), "request_id"}.
    draws: list[dict[str, Any]] = field(default_factory=list)
    downloads: int = 0
    rejected_busy: int = 0
    unauthorized: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    requests_total: int = 0

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["distinct_rquids"] = len(self.rquids)
        del data["rquids"]
        data["request_ids"] = self.request_ids[-200:]
        data["draws"] = self.draws[-200:]
        return data


class GigaChatState:
    def __init__(self, config: GigaChatEmulatorConfig) -> None:
        self.start_config = config
        self.reset()

    def reset(self) -> None:
        self.config = self.start_config
        self.rng = random.Random(self.config.seed)
        self.faults: list[Fault] = []
        self.tokens: dict[str, float] = {}  # token -> expiry (time.monotonic())
        self.files: dict[str, File] = {}
        self.token_times: list[float] = []
        self.stats = Stats()

    def update_config(self, changes: dict[str, Any]) -> GigaChatEmulatorConfig:
        self.config = self.config.updated(changes)
        if "seed" in changes:
            self.rng = random.Random(self.config.seed)
        return self.config

    def chance(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate

    def take_fault(self, endpoint: str) -> Fault | None:
        for i, fault in enumerate(self.faults):
            if fault.endpoint not in (endpoint, "any"):
                continue
            if fault.kind in DRAW_FAULTS and endpoint != "chat":
                continue
            fault.remaining -= 1
            if fault.remaining <= 0:
                del self.faults[i]
            return fault
        return None

    # -- tokens --------------------------------------------------------------------------

    def issue_token(self) -> tuple[str, float]:
        """A new token and its expiry as Unix milliseconds."""
        token = "emu." + secrets.token_urlsafe(24)
        ttl = self.config.token_ttl
        self.tokens[token] = time.monotonic() + ttl
        self.stats.tokens_issued += 1
        return token, (time.time() + ttl) * 1000

    def token_state(self, token: str) -> str:
        """ "ok", "expired" or "unknown"."""
        expiry = self.tokens.get(token)
        if expiry is None:
            return "unknown"
        return "ok" if time.monotonic() < expiry else "expired"

    def expire_tokens(self) -> int:
        """Every token issued so far expires now (as after 30 minutes)."""
        now = time.monotonic()
        for token in self.tokens:
            self.tokens[token] = min(self.tokens[token], now)
        return len(self.tokens)

    def revoke_tokens(self) -> int:
        """Every token issued so far becomes unknown (as after the key was reissued)."""
        count = len(self.tokens)
        self.tokens.clear()
        return count

    def token_rate_exceeded(self) -> bool:
        now = time.monotonic()
        self.token_times = [t for t in self.token_times if now - t < 1.0]
        self.token_times.append(now)
        return len(self.token_times) > TOKEN_RATE

    # -- draws ---------------------------------------------------------------------------

    def record_draw(self, prompt: str, request_id: str | None, system: str | None = None) -> str:
        file_id = secrets.token_hex(16)
        file_id = "-".join(
            (file_id[:8], file_id[8:12], file_id[12:16], file_id[16:20], file_id[20:])
        )
        now = time.monotonic()
        self.files[file_id] = File(prompt, now, now + self.config.draw_time)
        stats = self.stats
        stats.draws_total += 1
        stats.draws_by_prompt[prompt] = stats.draws_by_prompt.get(prompt, 0) + 1
        if request_id is not None:
            stats.request_ids.append(request_id[:200])
        stats.draws.append(
            {
                "prompt": prompt[:1000],
                "system": None if system is None else system[:2000],
                "request_id": None if request_id is None else request_id[:200],
            }
        )
        del stats.draws[:-1000]
        return file_id

    def file(self, file_id: str) -> File | None:
        found = self.files.get(file_id)
        if found is not None and time.monotonic() >= found.created + self.config.file_ttl:
            del self.files[file_id]
            return None
        return found


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
