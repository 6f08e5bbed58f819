"""Fusion Brain (Kandinsky) as an engine `Provider`: submit = POST run, outcome = one
status check. The HTTP protocol, its answers and their faults live in
`listener.api.client`; this module only translates its values into the engine's."""

from __future__ import annotations

from listener.api.client import FusionBrainClient
from listener.api.models import GenerationRequest
from listener.engine.ports import Outcome, Pending, Ready, Refused, Request, Submitted, Traits
from listener.errors import ApiOutcomeUnknown
from listener.sanitize import clean

MAX_HANDLE = 128

# What the API accepts per side (its "Limits"), and what it draws when a row says nothing.
MIN_SIDE = 64
MAX_SIDE = 1024
DEFAULT_SIDE = 1024
DEFAULT_STYLE = "DEFAULT"

TRAITS = Traits(
    honours_size=True,
    default_concurrency=8,
    unknown_outcome_resends=1,
    call_timeout=30.0,  # API_TIMEOUT's default: a run call's whole-request deadline
    # Its queue limits generations in progress: a shared slot is held from the run call
    # to the final status (docs/flow-control.md).
    slot="generation",
)


class FusionBrainProvider:
    name = "fusionbrain"
    title = "Fusion Brain API"
    credentials_help = "check FUSION_BRAIN_API_KEY and FUSION_BRAIN_SECRET_KEY"

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
        accepted = await self.client.run(
            GenerationRequest(
                prompt=request.prompt,
                width=width,
                height=height,
                style=request.style or DEFAULT_STYLE,
                negative_prompt=request.negative_prompt or "",
            )
        )
        handle = accepted.uuid
        if not (0 < len(handle) <= MAX_HANDLE and handle.isprintable()):
            # It may have been accepted, but this uuid cannot be followed or stored.
            raise ApiOutcomeUnknown(f"run: answer with an unusable uuid: {clean(handle, limit=80)}")
        return Submitted(handle=handle, check_after=accepted.status_time)

    async def outcome(self, handle: str) -> Outcome:
        status = await self.client.status(handle)
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
        await self.client.availability()
