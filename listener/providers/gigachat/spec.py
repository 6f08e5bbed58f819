"""GigaChat as the registry knows it (listener.providers.registry)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from listener.engine.ports import Traits
from listener.errors import ApiCredentials, ApiError, ListenerError
from listener.providers.gigachat.settings import DEFAULT_TIMEOUT, GigaChatSettings
from listener.providers.registry import Connection, Spec
from listener.sanitize import clean

if TYPE_CHECKING:
    # Imported when a provider is opened or checked: `listener status` and the emulator
    # never need the HTTP client.
    from listener.providers.gigachat.client import GigaChatClient
    from listener.providers.gigachat.provider import GigaChatProvider

log = logging.getLogger("listener.gigachat")

# What the built-in emulator accepts (it checks nothing unless told to): base64 of
# "emulator:emulator", the shape of a real Authorization Key.
EMULATOR_CREDENTIALS = "ZW11bGF0b3I6ZW11bGF0b3I="
AUTH_PATH = "api/v2/oauth"
API_PATH = "api/v1"

VARIABLES = (
    "GIGACHAT_CREDENTIALS",
    "GIGACHAT_SCOPE",
    "GIGACHAT_AUTH_URL",
    "GIGACHAT_BASE_URL",
    "GIGACHAT_MODEL",
    "GIGACHAT_CA_BUNDLE_FILE",
    "GIGACHAT_VERIFY_SSL_CERTS",
    "GIGACHAT_TIMEOUT",
    "GIGACHAT_PROMPT_TEMPLATE",
)


NAME = "gigachat"
TITLE = "GigaChat API"
# Added to GIGACHAT_TIMEOUT for what precedes a draw (a token fetch).
CALL_MARGIN = 10.0


def traits(timeout: float = DEFAULT_TIMEOUT) -> Traits:
    return Traits(
        honours_size=False,
        default_concurrency=1,  # individual accounts get one stream; a second is a 429
        unknown_outcome_resends=0,  # a lost reply may have been drawn and paid for
        call_timeout=timeout + CALL_MARGIN,
        slot="call",
    )


def client_for(settings: GigaChatSettings, connection: Connection) -> GigaChatClient:
    from listener.providers.gigachat.client import GigaChatClient
    from listener.providers.gigachat.edge import tls_context

    if connection.emulator_url is not None:
        base = connection.emulator_url.rstrip("/") + "/"
        auth_url, base_url, key = base + AUTH_PATH, base + API_PATH, EMULATOR_CREDENTIALS
    else:
        if settings.gigachat_credentials is None:
            raise ListenerError("GIGACHAT_CREDENTIALS is not set")
        auth_url, base_url = settings.auth, settings.base
        key = settings.gigachat_credentials.get_secret_value()
    return GigaChatClient(
        auth_url=auth_url,
        base_url=base_url,
        credentials=key,
        scope=settings.gigachat_scope,
        model=settings.gigachat_model,
        timeout=settings.gigachat_timeout,
        concurrency=connection.concurrency,
        max_response_bytes=connection.max_response_bytes,
        retry_after_max=connection.retry_after_max,
        verify=tls_context(settings.gigachat_ca_bundle_file, settings.gigachat_verify_ssl_certs),
    )


@asynccontextmanager
async def open_provider(
    settings: GigaChatSettings, connection: Connection
) -> AsyncIterator[GigaChatProvider]:
    from listener.providers.gigachat.provider import GigaChatProvider

    for line in settings.warnings():
        log.warning("%s", line)
    async with client_for(settings, connection) as client:
        yield GigaChatProvider(client, prompt_template=settings.gigachat_prompt_template)


async def check(settings: GigaChatSettings, connection: Connection) -> Sequence[str]:
    """A token, the models list, the balance where shown; never a draw. Lines to show;
    a ListenerError with one line naming the step when something is wrong."""
    lines = [f"{line} (warning)" for line in settings.warnings()]
    async with client_for(settings, connection) as client:
        host = settings.gigachat_auth_url.host if connection.emulator_url is None else "emulator"
        try:
            token = await client.tokens.get()
        except ApiError as exc:
            raise ListenerError(_failed(f"token service {host}", exc)) from None
        left = client.tokens.valid_for(token)
        lines.append(
            f"token: granted for scope {settings.gigachat_scope}, valid for {left / 60:.0f} min"
        )
        api = settings.gigachat_base_url.host if connection.emulator_url is None else "emulator"
        try:
            models = await client.models()
        except ApiError as exc:
            raise ListenerError(_failed(f"API {api} (models)", exc)) from None
        ids = [m.id for m in models.data]
        shown = ", ".join(clean(i, limit=40) for i in ids[:12]) or "none"
        lines.append(f"models: {len(ids)} listed ({shown})")
        if settings.gigachat_model in ids:
            lines.append(f"GIGACHAT_MODEL {settings.gigachat_model}: listed")
        else:
            lines.append(
                f"GIGACHAT_MODEL {settings.gigachat_model}: NOT listed by this host (drawing will "
                "probably answer 404 No such model)"
            )
        try:
            balance = await client.balance()
        except ApiError as exc:
            lines.append(f"balance: not read ({exc.message})")
        else:
            if balance is None:
                lines.append("balance: not shown for this account (pay-as-you-go)")
            else:
                parts = [f"{clean(b.usage, limit=40)} {b.value:g}" for b in balance.balance[:12]]
                lines.append(f"balance: {', '.join(parts) or 'empty'}")
    return lines


def _failed(step: str, exc: ApiError) -> str:
    """One line: the step, what kind of trouble it is, and the details."""
    message = exc.message.removeprefix("GigaChat token service: ")
    if "not trusted" in message:
        kind = "CA not trusted"
    elif isinstance(exc, ApiCredentials):
        kind = "refused"
    elif "cannot connect" in message:
        kind = "host unreachable"
    else:
        kind = "failed"
    return f"{step}: {kind}: {message}"


SPEC = Spec(
    name=NAME,
    title=TITLE,
    settings_class=GigaChatSettings,
    traits=traits(),
    configured=lambda s: s.configured,
    open=open_provider,
    emulator="listener.providers.gigachat.emulator.server:serve",
    check=check,
    secrets=lambda s: s.secrets(),
    account=lambda s: s.account(),
    shown_hosts=lambda s: s.shown_hosts(),
    variables=VARIABLES,
)
