"""The HTTP server's settings: their own class, read from the environment and `.env` like
the service's, and imported without the web libraries (`listener status --health` and the
service read them to decide whether the server is on at all).

Safety rules, checked here so that a bad combination stops the start with one line:
* loopback (127.0.0.1, ::1, localhost) by default; any other address needs
  HTTP_ALLOW_REMOTE=true and an HTTP_TOKEN (changes always need it there, reads too
  unless HTTP_PUBLIC=true);
* a wildcard address (0.0.0.0, ::) also needs HTTP_HOSTS, the names the page is reached
  by: every request's Host header must be one of them (no DNS rebinding).
"""

from __future__ import annotations

import ipaddress
from typing import Any

import psycopg.conninfo
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from listener.errors import ConfigError

DEFAULT_PORT = 8090
MIN_TOKEN = 16


def parse_address(text: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port`, `:port` (loopback) or a bare port; the port may be 0."""
    text = text.strip()
    if text.isdigit():
        return "127.0.0.1", int(text)
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError("an IPv6 address is written [::1]:8090")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError("must be host:port, e.g. 127.0.0.1:8090")
    host = host or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"port {port[:8]!r} is not a number from 0 to 65535")
    if any(c.isspace() or c in "/@?#" for c in host) or not host.isprintable():
        raise ValueError("the host must be a name or an IP address")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


class HttpSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
        case_sensitive=False,
    )

    # host:port to serve on; unset: no HTTP server. `--http` on the command line wins.
    http_address: str | None = None
    # A non-loopback address is refused unless this says so.
    http_allow_remote: bool = False
    # Needed for changes on a non-loopback address (and for reads unless HTTP_PUBLIC);
    # when set on loopback, it is required there too.
    http_token: SecretStr | None = None
    # Reads (gallery, images, /metrics) without the token on a non-loopback address.
    http_public: bool = False
    # The host names the server is reached by (comma-separated), besides its address.
    http_hosts: str = ""
    # The page's database login (operator rights for retry / cancel / enqueue); unset:
    # the listener's own connection.
    http_database_url: SecretStr | None = None
    # Thumbnails kept in memory, in MiB (LRU; part of the process's memory budget).
    http_thumbnail_cache_mb: int = Field(16, ge=1, le=1024)

    @field_validator("http_address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None:
            parse_address(value)
        return value

    @field_validator("http_token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return value
        text = value.get_secret_value().strip()
        if len(text) < MIN_TOKEN or not text.isascii() or not text.isprintable():
            raise ValueError(
                f"must be at least {MIN_TOKEN} printable ASCII characters "
                "(e.g. the output of: openssl rand -hex 24)"
            )
        return SecretStr(text)

    @field_validator("http_database_url")
    @classmethod
    def _libpq(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                psycopg.conninfo.conninfo_to_dict(value.get_secret_value())
            except psycopg.ProgrammingError:
                raise ValueError(
                    "is not a valid libpq connection string "
                    "(expected postgresql://user:password@host:port/dbname)"
                ) from None
        return value

    @model_validator(mode="after")
    def _safe(self) -> HttpSettings:
        if self.http_address is None:
            return self
        host, _ = parse_address(self.http_address)
        if is_loopback(host):
            return self
        if not self.http_allow_remote:
            raise ValueError(
                f"HTTP_ADDRESS: {host} is not a loopback address: the page would be "
                "reachable from other machines; set HTTP_ALLOW_REMOTE=true and an "
                "HTTP_TOKEN to allow it"
            )
        if self.http_token is None:
            raise ValueError(
                "HTTP_TOKEN: required when HTTP_ADDRESS is not a loopback address "
                "(changes, and reads unless HTTP_PUBLIC=true, need it)"
            )
        if is_wildcard(host) and not self.hosts:
            raise ValueError(
                f"HTTP_HOSTS: required when HTTP_ADDRESS is the wildcard {host}: the "
                "names the page is reached by (every request's Host must be one of them)"
            )
        return self

    # -- derived -----------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return self.http_address is not None

    @property
    def address(self) -> tuple[str, int]:
        assert self.http_address is not None
        return parse_address(self.http_address)

    @property
    def loopback(self) -> bool:
        return is_loopback(self.address[0])

    @property
    def hosts(self) -> list[str]:
        return [h.strip().lower() for h in self.http_hosts.split(",") if h.strip()]

    @property
    def token(self) -> str | None:
        return self.http_token.get_secret_value() if self.http_token else None

    @property
    def reads_need_token(self) -> bool:
        """Reads need the token wherever one is set, unless the page is declared public."""
        return self.token is not None and not self.http_public

    def secrets(self) -> list[str]:
        found = [self.token] if self.token else []
        if self.http_database_url is not None:
            url = self.http_database_url.get_secret_value()
            password = psycopg.conninfo.conninfo_to_dict(url).get("password")
            if password:
                found.append(str(password))
        return [s for s in found if s]


def load_http_settings(
    env_file: str | None = ".env", address: str | None = None, **overrides: Any
) -> HttpSettings:
    """Read HTTP_* from the environment and `.env`; `address` (the --http flag) wins."""
    if address is not None:
        overrides["http_address"] = address
    try:
        return HttpSettings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        # Never the value: HTTP_TOKEN and HTTP_DATABASE_URL are secrets.
        parts = []
        for err in exc.errors():
            name = str(err["loc"][0]).upper() if err["loc"] else ""
            msg = err["msg"].removeprefix("Value error, ")
            parts.append(f"{name}: {msg}" if name else msg)
        raise ConfigError("configuration error: " + "; ".join(parts)) from None
