"""The registry's view of the test provider `fakepix`: settings of its own, traits, and
`configured` when its key is set."""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from listener.engine.ports import Traits
from listener.providers.registry import Spec


class FakePixSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    fakepix_key: SecretStr | None = None


def _open(settings: Any, connection: Any) -> Any:
    raise NotImplementedError("the test provider is never opened")


SPEC = Spec(
    name="fakepix",
    title="FakePix API",
    settings_class=FakePixSettings,
    traits=Traits(
        honours_size=False, default_concurrency=2, unknown_outcome_resends=0, call_timeout=60.0
    ),
    configured=lambda s: s.fakepix_key is not None,
    open=_open,
    emulator="tests.providers_fake.spec:_open",
    secrets=lambda s: [s.fakepix_key.get_secret_value()] if s.fakepix_key else [],
    variables=("FAKEPIX_KEY",),
)
