"""The service's configuration: one frozen, validated settings object.

Every variable of the seed's `.env` keeps its name and default, so an existing `.env`
loads unchanged (inline `# comments` included, python-dotenv strips them). New knobs
are documented in `.env.example` with the reason for their default. Secrets are
`SecretStr`, so no repr, log line or validation error can show them.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from pathlib import Path
from typing import Any, Literal

import psycopg.conninfo
from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from listener.errors import ConfigError
from listener.sanitize import MIN_TOKEN_SECRET, WholeToken

SEED_NEGATIVE_PROMPT = (
    "worst quality, normal quality, low quality, low res, blurry, text, watermark, logo, "
    "banner, extra digits, cropped, jpeg artifacts, signature, username, error, sketch "
    ",duplicate, ugly, monochrome, geometry, mutation, disgusting"
)

# The sides DEFAULT_IMAGE_WIDTH / DEFAULT_IMAGE_HEIGHT may take (the seed's limits, also
# the table's CHECK on a row's size; each provider checks a row's size when it submits
# it, and one that cannot honour sizes draws at its own).
MIN_SIDE = 64
MAX_SIDE = 1024

# Never echoed in a configuration error, whichever provider's settings they belong to.
SECRET_FIELDS = frozenset(
    {"fusion_brain_api_key", "fusion_brain_secret_key", "db_password", "database_url"}
) | {"listen_database_url", "gigachat_credentials", "gigachat_password"}

# The values `.env.example` (and the seed's) ships with: "your-api-key-here",
# "your-password-here", "your-database-name"... never a real key, password or name.
PLACEHOLDER = re.compile(r"your-[a-z0-9-]+", re.IGNORECASE)
PLACEHOLDER_HOSTS = frozenset({"localhost"})  # the example's DB_HOST


def is_placeholder(value: SecretStr | str | None) -> bool:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    return value is not None and PLACEHOLDER.fullmatch(value.strip()) is not None


SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]


class Settings(BaseSettings):
    """What every provider shares, from the environment or `.env`. Each provider's own
    settings (its key, URL, client knobs) live in its package (listener.providers.NAME
    .settings), with their variables' names unchanged."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
        case_sensitive=False,
    )

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
    db_max_open_conns: int = Field(25, ge=0)  # 0: no limit of ours (as in Go)
    db_max_idle_conns: int = Field(25, ge=0)
    db_conn_max_lifetime: float = Field(300, ge=0)

    # -- new ----------------------------------------------------------------------------
    database_url: SecretStr | None = None
    generator_sweep_interval: float = Field(300, gt=0)
    processor_sweep_interval: float = Field(600, gt=0)
    # Calls in flight to the provider per process (draws, status checks, downloads: one
    # limit). Unset: the provider's default (its Traits.default_concurrency).
    api_concurrency: int | None = Field(None, ge=1, le=64)
    # The provider account's limit, shared by every listener on the database using the
    # same credentials (docs/flow-control.md); unset: the provider's default.
    provider_concurrency: int | None = Field(None, ge=1, le=1000)
    max_in_flight: int = Field(100, ge=1)
    retry_max_attempts: int = Field(5, ge=1)
    retry_backoff_base: float = Field(2, gt=0)
    retry_backoff_max: float = Field(300, gt=0)
    lease_timeout: float = Field(30, ge=1)
    shutdown_grace: float = Field(5, ge=0)
    listen_keepalive: float = Field(30, gt=0)
    data_dir: Path = Path(".data")

    # -- engine -------------------------------------------------------------------------
    # Unset: the provider's default (its Traits.unknown_outcome_resends).
    unknown_outcome_resends: int | None = Field(None, ge=0, le=10)
    db_statement_timeout: float = Field(30, gt=0)
    db_max_idle_time: float = Field(30, gt=0)

    # -- .env.example placeholders ------------------------------------------------------
    # Not a setting: the variables whose .env.example placeholder was treated as unset,
    # so the log can say so (listener.commands.common.prepare).
    _placeholders: tuple[str, ...] = PrivateAttr(default=())

    # -- behind a connection pooler -----------------------------------------------------
    # The LISTEN connection's own address, straight to PostgreSQL, when DATABASE_URL goes
    # through a transaction-mode pooler (which cannot deliver notifications).
    listen_database_url: SecretStr | None = None
    # Seconds between looks for due rows when LISTEN is found deaf (its self-test failed).
    poll_interval: float = Field(1, gt=0, le=300)
    # Server-side prepared statements: auto = off when a transaction pooler is detected.
    db_prepared_statements: Literal["auto", "on", "off"] = "auto"

    # -- a misbehaving API ---------------------------------------------------------------
    # A 2xx answer larger than this is abandoned as it streams (a 1024 x 1024 image is
    # about 4 MB in base64).
    max_response_bytes: int = Field(16 * 1024 * 1024, ge=1024 * 1024, le=256 * 1024 * 1024)

    # -- providers ----------------------------------------------------------------------
    # Which image provider this process runs (listener.providers.registry). Unset: the
    # first registered provider whose credentials are set, else the registry's default.
    image_provider: str | None = None

    @field_validator("default_num_images")
    @classmethod
    def _one_image(cls, value: int) -> int:
        if value != 1:
            raise ValueError("a row is exactly 1 image (one request draws one)")
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
        "retry_backoff_base",
        "retry_backoff_max",
        "lease_timeout",
        "shutdown_grace",
        "listen_keepalive",
        "db_statement_timeout",
        "db_max_idle_time",
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

    @field_validator("listen_database_url")
    @classmethod
    def _listen_libpq_uri(cls, value: SecretStr | None) -> SecretStr | None:
        return cls._libpq_uri(value)

    @field_validator("poll_interval")
    @classmethod
    def _poll_finite(cls, value: float) -> float:
        return cls._finite(value)

    @field_validator("db_prepared_statements", mode="before")
    @classmethod
    def _prepared_word(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.db_max_open_conns == 1:
            raise ValueError(
                "DB_MAX_OPEN_CONNS: must be 0 (no limit) or at least 2 (one for the "
                "writes that must never wait, one for the rest)"
            )
        if self.db_max_open_conns and self.db_max_idle_conns > self.db_max_open_conns:
            # Go's database/sql lowers MaxIdleConns to MaxOpenConns silently; so do we.
            object.__setattr__(self, "db_max_idle_conns", self.db_max_open_conns)
        return self

    @model_validator(mode="after")
    def _placeholders_are_unset(self) -> Settings:
        """`.env.example` copied unchanged is "nothing configured": its placeholder
        database is not dialled (a provider's placeholder key: its own settings).

        DB_NAME and
        DB_PASSWORD both holding theirs, with the example's DB_HOST, is the example's
        database block left as it is: every DB_* is ignored (the embedded PostgreSQL).
        A placeholder DB_NAME beside a real host or password is a half-edited file: a
        configuration error naming it. A placeholder DB_PASSWORD alone counts as unset.
        """
        found: list[str] = []

        def unset(field: str) -> None:
            object.__setattr__(self, field, None)
            found.append(field.upper())

        name, password = is_placeholder(self.db_name), is_placeholder(self.db_password)
        if name and password and (self.db_host or "localhost") in PLACEHOLDER_HOSTS:
            unset("db_name")
            unset("db_password")
            if self.db_host is not None:
                unset("db_host")
        elif name:
            raise ConfigError(
                f"configuration error: DB_NAME: is the .env.example placeholder "
                f"{self.db_name!r}: set it to your database's name (or remove the DB_* "
                "lines to use the embedded PostgreSQL)"
            )
        elif password:
            unset("db_password")
        self._placeholders = tuple(found)
        return self

    @field_validator("database_url")
    @classmethod
    def _libpq_values(cls, value: SecretStr | None) -> SecretStr | None:
        """libpq parses any value and refuses it only when connecting, which start-up
        would retry for ever: a bad sslmode or port is a configuration error now."""
        if value is not None:
            params = psycopg.conninfo.conninfo_to_dict(value.get_secret_value())
            problem = conninfo_problem(params)
            if problem:
                raise ValueError(problem)
        return value

    @field_validator("db_host")
    @classmethod
    def _plain_host(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.strip() or any(c.isspace() or not c.isprintable() for c in value):
            raise ValueError("must be a host name, an IP address or a socket directory")
        if re.fullmatch(r"[^:/]+:\d+", value):
            raise ValueError("must not include a port: set DB_PORT")
        return value

    @field_validator("image_provider", mode="before")
    @classmethod
    def _provider_name(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().lower()
            if not re.fullmatch(r"[a-z][a-z0-9]{0,31}", value):
                raise ValueError("must be a provider's name, such as fusionbrain or gigachat")
        return value

    @model_validator(mode="after")
    def _safe_connections(self) -> Settings:
        """No malformed libpq variable (libpq would refuse it only when connecting)."""
        if self.database_configured:
            given = (
                psycopg.conninfo.conninfo_to_dict(self.database_url.get_secret_value())
                if self.database_url is not None
                else {"host": self.db_host, "port": self.db_port, "sslmode": self.db_ssl_mode}
            )
            for variable, key in _LIBPQ_ENVIRONMENT.items():
                if key not in given and os.environ.get(variable):
                    problem = conninfo_problem({key: os.environ[variable]})
                    if problem:
                        raise ValueError(f"{variable} (read by libpq): {problem}")
        return self

    # -- derived ------------------------------------------------------------------------

    @property
    def placeholders_ignored(self) -> tuple[str, ...]:
        """Variables that held a .env.example placeholder and were treated as unset."""
        return self._placeholders

    @property
    def database_configured(self) -> bool:
        """True when the user named a database; otherwise the embedded one is used."""
        return self.database_url is not None or self.db_host is not None

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
        found = [s.get_secret_value() for s in (self.db_password,) if s is not None]
        if self.database_url is not None:
            password = psycopg.conninfo.conninfo_to_dict(self.database_url.get_secret_value()).get(
                "password"
            )
            if password:
                found.append(str(password))
        found += self._listen_secrets()
        # A secret that is part of what the log shows anyway (the database user, say):
        # from MIN_TOKEN_SECRET characters it is masked where it stands as a whole token
        # (in `***@host` the name that equals it is masked too, but a user name that
        # merely contains it is shown); a shorter one is not masked at all, or every
        # connection line of a trust setup (user = password = "app") would be blanked.
        shown = [value.casefold() for value in self.shown_identifiers()]
        secrets: list[str] = []
        for secret in found:
            if not secret:
                continue
            if not any(secret.strip().casefold() in value for value in shown):
                secrets.append(secret)
            elif len(secret.strip()) >= MIN_TOKEN_SECRET:
                secrets.append(WholeToken(secret))
        return secrets

    def shown_identifiers(self) -> list[str]:
        """What log lines show as it is: the database's user, name, host and port
        (describe_conninfo); a provider adds its API's host (Spec.shown_hosts)."""
        if self.database_url is not None:
            params = psycopg.conninfo.conninfo_to_dict(self.database_url.get_secret_value())
            values = [params.get(k) for k in ("user", "dbname", "host", "port")]
        else:
            values = [self.db_user, self.db_name, self.db_host, str(self.db_port)]
        values += [os.environ.get("PGUSER")]
        return [str(v) for v in values if v]

    def _listen_secrets(self) -> list[str]:
        if self.listen_database_url is None:
            return []
        url = self.listen_database_url.get_secret_value()
        password = psycopg.conninfo.conninfo_to_dict(url).get("password")
        return [str(password)] if password else []

    def listen_conninfo(self) -> str | None:
        """LISTEN_DATABASE_URL (holds the password: never log it), or None: the LISTEN
        connection then uses `conninfo()` like everything else."""
        return self.listen_database_url.get_secret_value() if self.listen_database_url else None


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


_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")
_URL_CREDENTIALS = re.compile(r"//[^/@\s]*@")

# libpq options whose values it checks only when connecting (libpq's connectOptions2).
_LIBPQ_CHOICES: dict[str, tuple[str, ...]] = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "gssencmode": ("disable", "prefer", "require"),
    "channel_binding": ("disable", "prefer", "require"),
    "target_session_attrs": (
        "any", "read-write", "read-only", "primary", "standby", "prefer-standby",
    ),
    "load_balance_hosts": ("disable", "random"),
    "ssl_min_protocol_version": ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"),
    "ssl_max_protocol_version": ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"),
}  # fmt: skip
_LIBPQ_INTEGERS: dict[str, tuple[int, int]] = {
    "port": (1, 65535),
    "connect_timeout": (0, 2**31 - 1),
    "keepalives": (0, 2**31 - 1),
    "keepalives_idle": (0, 2**31 - 1),
    "keepalives_interval": (0, 2**31 - 1),
    "keepalives_count": (0, 2**31 - 1),
    "tcp_user_timeout": (0, 2**31 - 1),
}
# The environment variables libpq reads for an option the connection string leaves out.
_LIBPQ_ENVIRONMENT = {
    "PGPORT": "port",
    "PGSSLMODE": "sslmode",
    "PGCONNECT_TIMEOUT": "connect_timeout",
    "PGGSSENCMODE": "gssencmode",
    "PGCHANNELBINDING": "channel_binding",
    "PGTARGETSESSIONATTRS": "target_session_attrs",
    "PGLOADBALANCEHOSTS": "load_balance_hosts",
    "PGSSLMINPROTOCOLVERSION": "ssl_min_protocol_version",
    "PGSSLMAXPROTOCOLVERSION": "ssl_max_protocol_version",
}


def conninfo_problem(params: dict[str, Any]) -> str | None:
    """What libpq would refuse at connection time in these options, or None. Values are
    quoted short: they are options, never the password."""
    for key, allowed in _LIBPQ_CHOICES.items():
        value = params.get(key)
        if value is not None and str(value) not in allowed:
            return f"{key} {str(value)[:40]!r} is not one of {', '.join(allowed)}"
    for key, (low, high) in _LIBPQ_INTEGERS.items():
        value = params.get(key)
        if value is None:
            continue
        # a list of hosts has a list of ports; an empty entry means the default
        for item in str(value).split(",") if key == "port" else [str(value)]:
            item = item.strip()
            if key == "port" and not item:
                continue
            if not item.isdigit() or not low <= int(item) <= high:
                return f"{key} {item[:40]!r} is not a whole number from {low} to {high}"
    for item in str(params.get("hostaddr") or "").split(","):
        try:
            if item.strip():
                ipaddress.ip_address(item.strip())
        except ValueError:
            return f"hostaddr {item.strip()[:40]!r} is not an IP address"
    return None


def header_safe(value: SecretStr | None) -> SecretStr | None:
    """A key for an HTTP header: surrounding whitespace (a key read from a file ends in a
    newline) is stripped; what is left must be something a header can carry."""
    if value is None:
        return value
    text = value.get_secret_value().strip()
    if not text:
        raise ValueError("is blank")
    if not _VISIBLE_ASCII.fullmatch(text):
        raise ValueError(
            "must be the key as the API issued it: visible ASCII characters only, "
            "no spaces, accents or control characters (it travels in an HTTP header)"
        )
    return SecretStr(text)


def is_loopback_host(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _variable(loc: tuple[Any, ...]) -> str:
    return str(loc[0]).upper() if loc else "configuration"


def format_validation_error(exc: ValidationError) -> str:
    """One line naming every bad variable and what is wrong; secrets never echoed."""
    parts = []
    for err in exc.errors():
        name = _variable(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        text = f"{name}: {msg}" if err["loc"] else msg
        value = err.get("input")
        if (
            err["loc"]
            and str(err["loc"][0]) not in SECRET_FIELDS
            and isinstance(value, str | int | float)
            and len(str(value)) <= 80
        ):
            text += f" (got {_URL_CREDENTIALS.sub('//***@', str(value))!r})"
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
