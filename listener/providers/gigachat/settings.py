"""GigaChat's settings, under the official SDK's variable names so existing settings
carry over: GIGACHAT_CREDENTIALS, GIGACHAT_SCOPE, GIGACHAT_AUTH_URL, GIGACHAT_BASE_URL,
GIGACHAT_MODEL, GIGACHAT_CA_BUNDLE_FILE, GIGACHAT_VERIFY_SSL_CERTS, GIGACHAT_TIMEOUT;
plus GIGACHAT_PROMPT_TEMPLATE, ours: how a row's prompt becomes a request to draw.

The credentials are the "Authorization Key" Sber's cabinet shows (already base64 of
`client_id:client_secret`): sent unchanged after `Basic `, never logged.
"""

from __future__ import annotations

import ipaddress
import math
import re
from pathlib import Path

from pydantic import Field, HttpUrl, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

AUTH_URL = "https://ngw.devices.sberbank.ru:9443/api/v2/oauth"
BASE_URL = "https://gigachat.devices.sberbank.ru/api/v1"
SCOPES = ("GIGACHAT_API_PERS", "GIGACHAT_API_B2B", "GIGACHAT_API_CORP")
DEFAULT_TIMEOUT = 120.0
# Below this a draw (10-40 s, slower under load) may be cut after it was paid for.
SHORT_TIMEOUT = 60.0
PROMPT_TEMPLATE = "Нарисуй: {prompt}"
MAX_TEMPLATE = 500

_KEY = re.compile(r"[A-Za-z0-9+/=_.:-]+")
_SCOPE = re.compile(r"[A-Z0-9_]{1,64}")


class GigaChatSettings(BaseSettings):
    """What the GigaChat provider can be told, from the environment or `.env`."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
        case_sensitive=False,
    )

    gigachat_credentials: SecretStr | None = None
    gigachat_scope: str = SCOPES[0]
    gigachat_auth_url: HttpUrl = HttpUrl(AUTH_URL)
    gigachat_base_url: HttpUrl = HttpUrl(BASE_URL)
    gigachat_model: str = Field(
        "GigaChat-2", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._:-]+$"
    )
    gigachat_ca_bundle_file: Path | None = None
    gigachat_verify_ssl_certs: bool = True
    gigachat_timeout: float = Field(DEFAULT_TIMEOUT, gt=0, le=3600)
    gigachat_prompt_template: str = PROMPT_TEMPLATE
    # The shared variable: http:// to another machine sends the key or token in clear.
    allow_insecure_api_url: bool = False

    @field_validator("gigachat_credentials")
    @classmethod
    def _key_shape(cls, value: SecretStr | None) -> SecretStr | None:
        """The key as the cabinet shows it: base64 text. Surrounding whitespace (a file's
        newline) and a pasted `Basic ` prefix are removed; anything else an HTTP header
        cannot carry is refused without echoing it."""
        if value is None:
            return None
        text = value.get_secret_value().strip()
        if text[:6].lower() == "basic ":
            text = text[6:].strip()
        if not text:
            raise ValueError("is blank")
        if not _KEY.fullmatch(text):
            raise ValueError(
                "must be the Authorization Key as Sber's cabinet shows it (base64 text: "
                "letters, digits, + / =), without spaces or other characters"
            )
        return SecretStr(text)

    @field_validator("gigachat_scope")
    @classmethod
    def _scope_word(cls, value: str) -> str:
        value = value.strip().upper()
        if not _SCOPE.fullmatch(value):
            raise ValueError(f"must be one of {', '.join(SCOPES)}")
        return value

    @field_validator("gigachat_timeout")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number of seconds")
        return value

    @field_validator("gigachat_prompt_template")
    @classmethod
    def _template(cls, value: str) -> str:
        if value.count("{prompt}") != 1 or len(value) > MAX_TEMPLATE:
            raise ValueError(
                f"must contain {{prompt}} exactly once and be at most {MAX_TEMPLATE} "
                "characters (e.g. 'Нарисуй: {prompt}')"
            )
        return value

    @field_validator("gigachat_ca_bundle_file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a readable file (the CA certificate, PEM)")
        return value

    @model_validator(mode="after")
    def _safe_urls(self) -> GigaChatSettings:
        urls = (
            ("GIGACHAT_AUTH_URL", self.gigachat_auth_url),
            ("GIGACHAT_BASE_URL", self.gigachat_base_url),
        )
        for name, url in urls:
            if url.username or url.password:
                raise ValueError(f"{name}: must not contain user:password")
            if url.query or url.fragment:
                raise ValueError(f"{name}: must not contain a query or fragment")
            insecure = url.scheme != "https" and not _loopback(url.host or "")
            if insecure and not self.allow_insecure_api_url:
                raise ValueError(
                    f"{name}: {url.scheme}:// to {url.host} would send the key or token in "
                    "clear: use https://, or set ALLOW_INSECURE_API_URL=true if the network "
                    "in between is trusted"
                )
        return self

    # -- derived -------------------------------------------------------------------------

    @property
    def configured(self) -> bool:
        return self.gigachat_credentials is not None

    @property
    def auth(self) -> str:
        return str(self.gigachat_auth_url)

    @property
    def base(self) -> str:
        """The API base, ending in a slash (both `.../api/v1` and `api.giga.chat/v1`)."""
        text = str(self.gigachat_base_url)
        return text if text.endswith("/") else text + "/"

    def warnings(self) -> list[str]:
        """Accepted but worth a line at start-up."""
        found = []
        if self.gigachat_timeout < SHORT_TIMEOUT:
            found.append(
                f"GIGACHAT_TIMEOUT={self.gigachat_timeout:g}s is under {SHORT_TIMEOUT:g}s: a "
                "draw takes 10-40 s and longer under load; draws cut by it may have been paid "
                "for and are not repeated"
            )
        if self.gigachat_scope not in SCOPES:
            found.append(
                f"GIGACHAT_SCOPE={self.gigachat_scope} is none of {', '.join(SCOPES)}: the token "
                "service will probably refuse it"
            )
        if not self.gigachat_verify_ssl_certs:
            found.append(
                "GIGACHAT_VERIFY_SSL_CERTS=false: TLS certificates are not checked (for "
                "development only); set GIGACHAT_CA_BUNDLE_FILE to the Russian Trusted Root CA "
                "instead"
            )
        return found

    def secrets(self) -> list[str]:
        return (
            [self.gigachat_credentials.get_secret_value()]
            if self.gigachat_credentials is not None
            else []
        )

    def account(self) -> list[str]:
        """The API's base URL and the credentials (the shared budget's account, hashed)."""
        return [self.base, *self.secrets()]

    def shown_hosts(self) -> list[str]:
        return [h for h in (self.gigachat_auth_url.host, self.gigachat_base_url.host) if h]


def _loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
