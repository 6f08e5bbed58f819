"""Fusion Brain's own settings: the seed's FUSION_BRAIN_* variables, unchanged, and the
knobs of its HTTP client. Read from the environment and `.env` like every setting
(listener.config holds the ones every provider shares)."""

from __future__ import annotations

import math

from pydantic import Field, HttpUrl, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from listener.config import header_safe, is_loopback_host, is_placeholder


class FusionBrainSettings(BaseSettings):
    """FUSION_BRAIN_API_KEY / FUSION_BRAIN_SECRET_KEY / FUSION_BRAIN_URL, API_TIMEOUT,
    API_RESULT_TIMEOUT, ALLOW_INSECURE_API_URL."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
        case_sensitive=False,
    )

    # -- the seed's ---------------------------------------------------------------------
    fusion_brain_api_key: SecretStr | None = None
    fusion_brain_secret_key: SecretStr | None = None
    fusion_brain_url: HttpUrl = HttpUrl("https://api-key.fusionbrain.ai/")

    # -- its client ---------------------------------------------------------------------
    # Whole-request deadline of one call (a run, a status check's headers).
    api_timeout: float = Field(30, gt=0)
    # Whole-request deadline of a status read, which may carry a result handed out once.
    api_result_timeout: float = Field(120, gt=0)
    # http:// to a host other than this machine sends the API key in clear: refused
    # unless this says the network in between is trusted.
    allow_insecure_api_url: bool = False

    _placeholders: tuple[str, ...] = PrivateAttr(default=())

    @field_validator("api_timeout", "api_result_timeout")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number of seconds")
        return value

    @field_validator("fusion_brain_api_key", "fusion_brain_secret_key")
    @classmethod
    def _header_safe(cls, value: SecretStr | None) -> SecretStr | None:
        return header_safe(value)

    @model_validator(mode="after")
    def _placeholders_are_unset(self) -> FusionBrainSettings:
        """`.env.example`'s "your-api-key-here" is "no key", never sent to the API."""
        found = []
        for field in ("fusion_brain_api_key", "fusion_brain_secret_key"):
            if is_placeholder(getattr(self, field)):
                object.__setattr__(self, field, None)
                found.append(field.upper())
        self._placeholders = tuple(found)
        return self

    @model_validator(mode="after")
    def _safe_url(self) -> FusionBrainSettings:
        """No credentials in the API's URL (they would be logged and sent to the API), no
        API key in clear to another machine."""
        url = self.fusion_brain_url
        if url.username or url.password:
            raise ValueError(
                "FUSION_BRAIN_URL: must not contain user:password (the API is authenticated "
                "by FUSION_BRAIN_API_KEY and FUSION_BRAIN_SECRET_KEY)"
            )
        insecure = url.scheme != "https" and not is_loopback_host(url.host or "")
        if insecure and not self.allow_insecure_api_url:
            raise ValueError(
                f"FUSION_BRAIN_URL: {url.scheme}:// to {url.host} would send the API key "
                "in clear: use https://, or set ALLOW_INSECURE_API_URL=true if the "
                "network in between is trusted"
            )
        return self

    # -- derived ------------------------------------------------------------------------

    @property
    def configured(self) -> bool:
        return self.fusion_brain_api_key is not None

    @property
    def placeholders_ignored(self) -> tuple[str, ...]:
        return self._placeholders

    def secrets(self) -> list[str]:
        return [
            s.get_secret_value()
            for s in (self.fusion_brain_api_key, self.fusion_brain_secret_key)
            if s is not None
        ]

    def account(self) -> list[str]:
        """The API's URL and both keys (the shared budget's account, hashed)."""
        return [str(self.fusion_brain_url), *self.secrets()]

    def shown_hosts(self) -> list[str]:
        return [self.fusion_brain_url.host] if self.fusion_brain_url.host else []
