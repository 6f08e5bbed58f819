"""Fusion Brain in the provider registry (listener.providers.registry)."""

from __future__ import annotations

from typing import Any

# The traits live with the provider; importing them here would import the HTTP client,
# which `listener status` and the emulator never need.
from listener.engine.ports import Traits
from listener.providers.fusionbrain.settings import FusionBrainSettings
from listener.providers.registry import Spec


def _open(settings: Any, connection: Any) -> Any:
    from listener.providers.fusionbrain.provider import open_provider

    return open_provider(settings, connection)


async def _check(settings: Any, connection: Any) -> list[str]:
    """`listener provider check`: the pipelines list and the pipeline's availability
    (both free, both authenticated); never a run."""
    from listener.errors import ApiError, ListenerError
    from listener.providers.fusionbrain.provider import open_provider

    host = settings.fusion_brain_url.host if connection.emulator_url is None else "emulator"
    async with open_provider(settings, connection) as provider:
        try:
            await provider.probe()
            pipeline = await provider.client.pipeline_id()
            state = await provider.client.availability()
        except ApiError as exc:
            raise ListenerError(f"API {host}: {exc.message}") from None
    return [f"key accepted; TEXT2IMAGE pipeline {pipeline}", f"pipeline availability: {state}"]


SPEC = Spec(
    name="fusionbrain",
    title="Fusion Brain API",
    settings_class=FusionBrainSettings,
    traits=Traits(
        honours_size=True,
        default_concurrency=8,
        unknown_outcome_resends=1,
        call_timeout=30.0,
        # Its queue limits generations in progress: a shared slot is held from the run
        # call to the final status (docs/flow-control.md).
        slot="generation",
    ),
    configured=lambda s: s.configured,
    open=_open,
    emulator="listener.providers.fusionbrain.emulator.server:serve_emulator",
    check=_check,
    secrets=lambda s: s.secrets(),
    account=lambda s: s.account(),
    shown_hosts=lambda s: s.shown_hosts(),
    variables=("FUSION_BRAIN_API_KEY", "FUSION_BRAIN_SECRET_KEY", "FUSION_BRAIN_URL"),
)
