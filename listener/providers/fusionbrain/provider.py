"""Fusion Brain (Kandinsky) as an engine `Provider`. The HTTP protocol, its answers and
their faults live in `client`; this module only translates its values into the
engine's, and opens it from its settings (`open_provider`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

from listener.engine.ports import Outcome, Pending, Ready, Refused, Request, Submitted, Traits
from listener.errors import (
    ApiCredentials,
    ApiError,
    ApiNotFound,
    ApiOutcomeUnknown,
    ApiPermanent,
    ConfigError,
)
from listener.providers.fusionbrain.client import FusionBrainClient
from listener.providers.fusionbrain.models import GenerationRequest
from listener.providers.fusionbrain.spec import SPEC
from listener.sanitize import clean

if TYPE_CHECKING:
    from listener.providers.fusionbrain.settings import FusionBrainSettings
    from listener.providers.registry import Connection

MAX_HANDLE = 128

# What the API accepts per side (its "Limits"), and what it draws when a row says nothing.
MIN_SIDE = 64
MAX_SIDE = 1024
DEFAULT_SIDE = 1024
DEFAULT_STYLE = "DEFAULT"

TRAITS = SPEC.traits  # call_timeout: API_TIMEOUT, a run call's whole-request deadline


# The key service looks retired: since about May 2026 its key page and key API answer
# 404, and users are pointed to GigaChat, where Kandinsky now draws.
RETIRED = (
    "the Fusion Brain key API answers 404: the key service looks retired (since about May 2026)"
)
ALTERNATIVE = (
    "GigaChat draws with Kandinsky now: set GIGACHAT_CREDENTIALS (and IMAGE_PROVIDER="
    "gigachat), see the README's Providers section"
)


class FusionBrainProvider:
    """submit = POST run, outcome = one status check, probe = the pipeline's availability.

    A 404 on the key API itself (the pipelines list, the run endpoint) is not a refusal
    of one row: the service is gone or the key's API moved. It is reported as refused
    credentials, so nothing fails, generation pauses, and one line a minute names the
    likely cause and the alternative. A 404 on one generation's status is asked about
    once more through the pipelines list: only when that answers does the row fail."""

    name = "fusionbrain"
    title = "Fusion Brain API"
    credentials_help = f"check FUSION_BRAIN_API_KEY and FUSION_BRAIN_SECRET_KEY; {ALTERNATIVE}"

    def __init__(self, client: FusionBrainClient, traits: Traits = TRAITS) -> None:
        self.client = client
        self.traits = traits

    async def submit(self, request: Request) -> Submitted | Refused:
        width = request.width or DEFAULT_SIDE
        height = request.height or DEFAULT_SIDE
        if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
            return Refused(
                f"size {width}x{height} is outside what the Fusion Brain API draws "
                f"({MIN_SIDE}..{MAX_SIDE} per side)"
            )
        try:
            accepted = await self.client.run(
                GenerationRequest(
                    prompt=request.prompt,
                    width=width,
                    height=height,
                    style=request.style or DEFAULT_STYLE,
                    negative_prompt=request.negative_prompt or "",
                )
            )
        except ApiPermanent as exc:
            raise _retired(exc) from exc
        handle = accepted.uuid
        if not (0 < len(handle) <= MAX_HANDLE and handle.isprintable()):
            # It may have been accepted, but this uuid cannot be followed or stored.
            raise ApiOutcomeUnknown(f"run: answer with an unusable uuid: {clean(handle, limit=80)}")
        return Submitted(handle=handle, check_after=accepted.status_time)

    async def outcome(self, handle: str) -> Outcome:
        try:
            status = await self.client.status(handle)
        except ApiNotFound:
            await self.probe()  # the whole key API gone: ApiCredentials, nothing fails
            raise
        if not status.final:
            return Pending()
        if status.state == "DONE" and status.censored:
            return Refused("censored", censored=True)
        if status.state != "DONE":
            detail = status.error_description or "no description"
            return Refused(f"generation {status.state}: {detail}")
        if not status.files:
            return Refused("the API reported DONE without an image")
        return Ready(status.files[0])

    async def probe(self) -> None:
        try:
            await self.client.availability()
        except ApiPermanent as exc:
            raise _retired(exc) from exc


def _retired(exc: ApiPermanent) -> ApiError:
    """A 404 from the key API itself: the key service, not the request, is gone."""
    if exc.status_code == 404 and not isinstance(exc, ApiNotFound):
        return ApiCredentials(RETIRED)
    return exc


@asynccontextmanager
async def open_provider(
    settings: FusionBrainSettings, connection: Connection
) -> AsyncIterator[FusionBrainProvider]:
    """The provider for the process's lifetime: its own settings, or the emulator."""
    if connection.emulator_url is not None:
        url, key, secret = connection.emulator_url, "emulator", "emulator"
    else:
        if settings.fusion_brain_api_key is None or settings.fusion_brain_secret_key is None:
            missing = "API_KEY" if settings.fusion_brain_api_key is None else "SECRET_KEY"
            raise ConfigError(
                f"configuration error: FUSION_BRAIN_{missing} is not set "
                "(the API needs both the key and the secret)"
            )
        url = str(settings.fusion_brain_url)
        key = settings.fusion_brain_api_key.get_secret_value()
        secret = settings.fusion_brain_secret_key.get_secret_value()
    async with FusionBrainClient(
        url,
        key,
        secret,
        timeout=settings.api_timeout,
        result_timeout=settings.api_result_timeout,
        max_response_bytes=connection.max_response_bytes,
        retry_after_max=connection.retry_after_max,
        max_connections=connection.concurrency,
    ) as client:
        traits = replace(TRAITS, call_timeout=settings.api_timeout)
        yield FusionBrainProvider(client, traits)
