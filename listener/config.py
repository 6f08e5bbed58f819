"""The service's configuration: one frozen, validated settings object.

Every variable of the seed's `.env` keeps its name and default, so an existing `.env`
loads unchanged (inline `# comments` included, python-dotenv strips them). New knobs
are documented in `.env.example` with the reason for their default. Secrets are
`SecretStr`, so no repr, log line or validation error can show them.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Literal

import psycopg.conninfo
from pydantic import (
    Field,
    HttpUrl,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from listener.errors import ConfigError

SEED_NEGATIVE_PROMPT = (
    "worst quality, normal quality, low quality, low res, blurry, text, watermark, logo, "
    "banner, extra digits, cropped, jpeg artifacts, signature, username, error, sketch "
    ",duplicate, ugly, monochrome, geometry, mutation, disgusting"
)

# What the Fusion Brain API accepts per side (fusionbrain-api.md, "Limits").
MIN_SIDE = 64
MAX_SIDE = 1024

SECRET_FIELDS = frozenset(
    {"fusion_brain_api_key", "fusion_brain_secret_key", "db_password", "database_url"}
)

SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]


class Settings(BaseSettings):
    """Everything the listener can be told, from the environment or `.env`."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
        case_sensitive=False,
    )

    # -- Fusion Brain API (seed) --------------------------------------------------------
    fusion_brain_api_key: SecretStr | None = None
    fusion_brain_secret_key: SecretStr | None = None

    # -- image generation defaults (seed) -----------------------------------------------
    default_image_width: int = Field(1024, ge=MIN_SIDE, le=MAX_SIDE)
    default_image_height: int = Field(1024, ge=MIN_SIDE, le=MAX_SIDE)
    default_num_images: int = 1
    default_style: str = "ANIME"
    default_negative_prompt: str = SEED_NEGATIVE_PROMPT
    default_generation_timeout: float = Field(300, gt=0)
    default_check_interval: float = Field(2, gt=0)
    default_max_attempts: int = Field(30, ge=1)

    # -- database (seed) ----------------------------------------------------------------
    db_host: str | None = None
    db_port: int = Field(5432, ge=1, le=65535)
    db_user: str | None = None
    db_password: SecretStr | None = None
    db_name: str | None = None
    db_ssl_mode: SslMode = "disable"
    db_max_open_conns: int = Field(25, ge=2)
    db_max_idle_conns: int = Field(25, ge=0)
    db_conn_max_lifetime: float = Field(300, ge=0)

    # -- new ----------------------------------------------------------------------------
    fusion_brain_url: HttpUrl = HttpUrl("https://api-key.fusionbrain.ai/")
    database_url: SecretStr | None = None
    generator_sweep_interval: float = Field(300, gt=0)
    processor_sweep_interval: float = Field(600, gt=0)
    api_concurrency: int = Field(8, ge=1, le=64)
    api_timeout: float = Field(30, gt=0)
    max_in_flight: int = Field(100, ge=1)
    retry_max_attempts: int = Field(5, ge=1)
    retry_backoff_base: float = Field(2, gt=0)
    retry_backoff_max: float = Field(300, gt=0)
    lease_timeout: float = Field(30, ge=1)
    shutdown_grace: float = Field(5, ge=0)
    listen_keepalive: float = Field(30, gt=0)
    data_dir: Path = Path(".data")

    # -- a misbehaving API (issue 12) ---------------------------------------------------
    # A 2xx answer larger than this is abandoned as it streams (a 1024 x 1024 image is
    # about 4 MB in base64).
    max_response_bytes: int = Field(16 * 1024 * 1024, ge=1024 * 1024, le=256 * 1024 * 1024)
    # Whole-request deadline of a status read, which may carry a result handed out once.
    api_result_timeout: float = Field(120, gt=0)

    @field_validator("default_num_images")
    @classmethod
    def _one_image(cls, value: int) -> int:
        if value != 1:
            raise ValueError("the Fusion Brain API generates exactly 1 image per request")
        return value

    @field_validator("default_style")
    @classmethod
    def _style_name(cls, value: str) -> str:
        value = value.strip().upper()
        if not value or not value.replace("_", "").isalnum():
            raise ValueError("must be a style name such as ANIME, UHD, KANDINSKY or DEFAULT")
        return value

    @field_validator(
        "default_generation_timeout",
        "default_check_interval",
        "db_conn_max_lifetime",
        "generator_sweep_interval",
        "processor_sweep_interval",
        "api_timeout",
        "retry_backoff_base",
        "retry_backoff_max",
        "lease_timeout",
        "shutdown_grace",
        "listen_keepalive",
    )
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number of seconds")
        return value

    @field_validator("database_url")
    @classmethod
    def _libpq_uri(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return value
        try:
            psycopg.conninfo.conninfo_to_dict(value.get_secret_value())
        except psycopg.ProgrammingError:
            # libpq's own message quotes the string, which may hold a password.
            raise ValueError(
                "is not a valid libpq connection string "
                "(expected postgresql://user:password@host:port/dbname)"
            ) from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.db_max_idle_conns > self.db_max_open_conns:
            # Go's database/sql lowers MaxIdleConns to MaxOpenConns silently; so do we.
            object.__setattr__(self, "db_max_idle_conns", self.db_max_open_conns)
        return self

    @field_validator("api_result_timeout")
    @classmethod
    def _finite_result_timeout(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number of seconds")
        return value

    @field_validator("fusion_brain_api_key", "fusion_brain_secret_key")
    @classmethod
    def _header_safe(cls, value: SecretStr | None) -> SecretStr | None:
        """Surrounding whitespace (a key read from a file ends in a newline) is stripped;
        what is left must be something an HTTP header can carry."""
        if value is None:
            return value
        text = value.get_secret_value().strip()
        if not text:
            raise ValueError("is blank")
        if not re.fullmatch(r"[\x21-\x7e]+", text):
            raise ValueError(
                "must be printable ASCII without spaces (it travels in an HTTP header)"
            )
        return SecretStr(text)

    # -- derived ------------------------------------------------------------------------

    @property
    def database_configured(self) -> bool:
        """True when the user named a database; otherwise the embedded one is used."""
        return self.database_url is not None or self.db_host is not None

    @property
    def api_configured(self) -> bool:
        return self.fusion_brain_api_key is not None

    def conninfo(self) -> str:
        """The libpq connection string. It holds the password: never log it."""
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        params: dict[str, Any] = {
            "host": self.db_host,
            "port": self.db_port,
            "user": self.db_user,
            "dbname": self.db_name,
            "sslmode": self.db_ssl_mode,
        }
        if self.db_password is not None:
            params["password"] = self.db_password.get_secret_value()
        return psycopg.conninfo.make_conninfo(**{k: v for k, v in params.items() if v is not None})

    def secrets(self) -> list[str]:
        """Every secret value, for the log redaction filter and the tests."""
        found = [
            s.get_secret_value()
            for s in (self.fusion_brain_api_key, self.fusion_brain_secret_key, self.db_password)
            if s is not None
        ]
        if self.database_url is not None:
            password = psycopg.conninfo.conninfo_to_dict(self.database_url.get_secret_value()).get(
                "password"
            )
            if password:
                found.append(str(password))
        return [s for s in found if s]


def describe_conninfo(conninfo: str) -> str:
    """A loggable description of a connection string: never the password."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "<unparsable connection string>"
    host = params.get("host") or "local socket"
    port = params.get("port") or "5432"
    user = params.get("user") or os.environ.get("PGUSER") or "(default user)"
    dbname = params.get("dbname") or user
    return f"{user}@{host}:{port}/{dbname}"


def _variable(loc: tuple[Any, ...]) -> str:
    return str(loc[0]).upper() if loc else "configuration"


def format_validation_error(exc: ValidationError) -> str:
    """One line naming every bad variable and what is wrong; secrets never echoed."""
    parts = []
    for err in exc.errors():
        name = _variable(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        text = f"{name}: {msg}"
        value = err.get("input")
        if (
            err["loc"]
            and str(err["loc"][0]) not in SECRET_FIELDS
            and isinstance(value, str | int | float)
            and len(str(value)) <= 80
        ):
            text += f" (got {value!r})"
        parts.append(text)
    return "configuration error: " + "; ".join(parts)


def load_settings(env_file: str | Path | None = ".env", **overrides: Any) -> Settings:
    """Read the environment and `.env`; raise ConfigError with one readable line."""
    try:
        return Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
    except OSError as exc:
        raise ConfigError(f"configuration error: cannot read {env_file}: {exc.strerror}") from None
