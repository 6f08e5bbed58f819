"""Serving the Fusion Brain emulator on the shared server (listener.providers.
emulator_kit.serving: hypercorn's trio server on a socket bound there, so port 0 works,
the URL is exact, and the app gets each connection's server-side socket for the `drop`
fault), with a sweep of expired results beside it.
"""

from __future__ import annotations

from functools import partial

import trio

from listener.providers.emulator_kit.serving import Connections, serve_app
from listener.providers.fusionbrain.emulator.app import EmulatorApp
from listener.providers.fusionbrain.emulator.config import EmulatorConfig
from listener.providers.fusionbrain.emulator.state import EmulatorState

EXPIRY_EVERY = 1.0  # seconds between sweeps of expired results


async def _expire_forever(state: EmulatorState) -> None:
    while True:
        await trio.sleep(EXPIRY_EVERY)
        state.expire()


async def serve_emulator(
    config: EmulatorConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    control_token: str | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the emulated API until cancelled; `task_status.started(url)` once listening,
    with the real port in the URL (`http://127.0.0.1:PORT/`). The control endpoint
    answers requests carrying `control_token`; without one it is off."""
    state = EmulatorState(config or EmulatorConfig())

    def make_app(connections: Connections) -> EmulatorApp:
        return EmulatorApp(state, connections, control_token=control_token)

    await serve_app(
        make_app,
        host=host,
        port=port,
        background=[partial(_expire_forever, state)],
        task_status=task_status,
    )
