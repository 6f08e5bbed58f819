"""Serving the GigaChat emulator on the shared server (listener.providers.emulator_kit.
serving: hypercorn's trio server on a socket bound there, so port 0 works, the URL is
exact, and the app gets each connection's server-side socket for the `drop` and `lost`
faults, which close a connection without answering).
"""

from __future__ import annotations

import trio

from listener.providers.emulator_kit.serving import Connections, serve_app
from listener.providers.gigachat.emulator.app import GigaChatEmulatorApp
from listener.providers.gigachat.emulator.state import GigaChatEmulatorConfig, GigaChatState


async def serve(
    config: GigaChatEmulatorConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    control_token: str | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; `task_status.started(url)` once listening. The token
    service is at URL + api/v2/oauth, the API at URL + api/v1."""
    state = GigaChatState(config or GigaChatEmulatorConfig())

    def make_app(connections: Connections) -> GigaChatEmulatorApp:
        return GigaChatEmulatorApp(state, connections, control_token=control_token)

    await serve_app(make_app, host=host, port=port, task_status=task_status)
