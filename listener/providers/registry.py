"""Which image providers exist, and which one this process runs.

Adding a provider is one package under `listener/providers/<name>/` (client, answer
models, settings, provider, emulator) whose `spec` module defines `SPEC`, and one line
in `PROVIDERS` below. Nothing else in the listener names a provider: the engine sees a
`Provider` (listener.engine.ports), the commands see a `Spec`.

Specs are imported on first use, so a listener running one provider never imports
another's client (nor any emulator).

Selection (`choose`): IMAGE_PROVIDER when set; otherwise the first provider in
`PROVIDERS` order whose credentials are set; otherwise the default (`fusionbrain`),
which `make run` then serves from the built-in emulator, as before.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from listener.errors import ConfigError

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings

    from listener.engine.ports import Provider, Traits

# name -> "module:attribute" of its Spec. Order matters only for the automatic choice.
PROVIDERS: dict[str, str] = {
    "fusionbrain": "listener.providers.fusionbrain.spec:SPEC",
    "gigachat": "listener.providers.gigachat.spec:SPEC",
}
DEFAULT = "fusionbrain"
# The seed's provider: a Generate row that names no provider was accepted by it (written
# by a listener older than migration 0018, or by the seed service).
LEGACY = "fusionbrain"

# Also the CHECK of images.provider (sql/migrations/0018_providers.sql): a provider
# name is lower-case ASCII letters and digits, at most 32 characters.
NAME_RULE = "^[a-z][a-z0-9]{0,31}$"


@dataclass(frozen=True)
class Connection:
    """What every provider's client is built from besides its own settings."""

    # API_CONCURRENCY in effect (for sizing a connection pool). The engine holds one of
    # these slots around every submit / outcome / probe: a provider takes none itself.
    concurrency: int
    max_response_bytes: int  # MAX_RESPONSE_BYTES: a 2xx answer larger than this is refused
    retry_after_max: float  # a provider's Retry-After is capped at this (RETRY_BACKOFF_MAX)
    # The built-in emulator's base URL when the provider runs on it (no credentials set):
    # the provider talks to it with placeholder credentials.
    emulator_url: str | None = None


@dataclass(frozen=True)
class Spec:
    """One provider, as the rest of the listener knows it."""

    name: str  # the registry key, stored in rows (images.provider)
    title: str  # "Fusion Brain API": for log lines and `listener status`
    settings_class: type[BaseSettings]  # reads its own environment variables and .env
    traits: Traits
    # Its credentials are set (IMAGE_PROVIDER unset: the first configured one is chosen).
    configured: Callable[[Any], bool]
    # The Provider, open for the process's lifetime: open(settings, connection).
    open: Callable[[Any, Connection], AbstractAsyncContextManager[Provider]]
    # "module:function" of its emulator: async serve(config=None, *, task_status) that
    # reports its base URL through task_status. Imported only when used.
    emulator: str
    # `listener provider check`: a token and the models, never a draw. Returns the lines
    # to show; raises a ListenerError with one clear line for what went wrong.
    check: Callable[[Any, Connection], Awaitable[Sequence[str]]] | None = None
    # The secrets of its settings, for the log redaction filter.
    secrets: Callable[[Any], list[str]] = field(default=lambda settings: [])
    # What tells its accounts apart: its API's URL and its credentials, hashed into the
    # shared budget's account id (listener.engine.flow.account_id), never stored.
    account: Callable[[Any], list[str]] = field(default=lambda settings: [])
    # Hosts its log lines show as they are (its API's host).
    shown_hosts: Callable[[Any], list[str]] = field(default=lambda settings: [])
    # Its environment variables, for the start-up line and the docs.
    variables: tuple[str, ...] = ()

    def load_settings(self, env_file: Any = ".env") -> Any:
        """Its settings from the environment and `.env` (ConfigError naming the variable)."""
        from pydantic import ValidationError

        from listener.config import format_validation_error

        try:
            return self.settings_class(_env_file=env_file)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc)) from None
        except OSError as exc:
            raise ConfigError(
                f"configuration error: cannot read {env_file}: {exc.strerror}"
            ) from None

    def load_emulator(self) -> Callable[..., Awaitable[None]]:
        module, _, attr = self.emulator.partition(":")
        serve: Callable[..., Awaitable[None]] = getattr(importlib.import_module(module), attr)
        return serve


def names() -> list[str]:
    return list(PROVIDERS)


def available() -> list[str]:
    """Registered providers whose package is installed (a registry line may lead its
    package by a merge)."""
    found = []
    for name in PROVIDERS:
        try:
            spec(name)
        except ProviderMissing:
            continue
        found.append(name)
    return found


_loaded: dict[str, Spec] = {}


class ProviderMissing(ConfigError):
    """A registry line whose package is not installed (yet)."""


def spec(name: str) -> Spec:
    """The provider called `name`; ConfigError for a name nobody registered."""
    if name in _loaded:
        return _loaded[name]
    where = PROVIDERS.get(name)
    if where is None:
        raise ConfigError(
            f"configuration error: IMAGE_PROVIDER: {name[:40]!r} is not a provider "
            f"(known: {', '.join(PROVIDERS)})"
        )
    module, _, attr = where.partition(":")
    try:
        imported = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module.startswith(exc.name):
            raise  # a dependency of the provider is missing: say which, loudly
        raise ProviderMissing(
            f"configuration error: IMAGE_PROVIDER: provider {name!r} is registered but its "
            f"package ({module}) is not installed"
        ) from None
    found = getattr(imported, attr)
    if not isinstance(found, Spec) or found.name != name:
        raise TypeError(f"{where} is not the Spec of {name!r}")
    _loaded[name] = found
    return found


@dataclass(frozen=True)
class Choice:
    spec: Spec
    settings: Any  # the spec's settings, loaded
    why: str  # "IMAGE_PROVIDER=gigachat", "only GIGACHAT_CREDENTIALS is set", ...

    @property
    def configured(self) -> bool:
        return self.spec.configured(self.settings)


def choose(requested: str | None, env_file: Any = ".env") -> Choice:
    """The provider this process runs: IMAGE_PROVIDER when set, else the first one whose
    credentials are set, else the default (on the emulator when `make run` asks)."""
    if requested:
        chosen = spec(requested)
        return Choice(chosen, chosen.load_settings(env_file), f"IMAGE_PROVIDER={requested}")
    for name in available():
        candidate = spec(name)
        settings = candidate.load_settings(env_file)
        if candidate.configured(settings):
            why = (
                "its credentials are set"
                if name == DEFAULT
                else "IMAGE_PROVIDER is unset and only its credentials are set"
            )
            return Choice(candidate, settings, why)
    default = spec(DEFAULT)
    return Choice(default, default.load_settings(env_file), "the default")
