"""Fusion Brain (Kandinsky) as an engine `Provider`: submit = POST run, outcome = one
status check. The HTTP protocol, its answers and their faults live in
`listener.api.client`; this module only translates its values into the engine's."""

from __future__ import annotations

from listener.api.client import FusionBrainClient
from listener.api.models import GenerationRequest
from listener.engine.ports import Outcome, Pending, Ready, Refused, Submitted
from listener.errors import ApiOutcomeUnknown
from listener.sanitize import clean

MAX_HANDLE = 128


class FusionBrainProvider:
    name = "fusionbrain"
    honours_size = True

    def __init__(self, client: FusionBrainClient) -> None:
        self.client = client

    async def submit(self, request: GenerationRequest) -> Submitted:
        accepted = await self.client.run(request)
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
