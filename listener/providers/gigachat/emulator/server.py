"""Serving the GigaChat emulator: hypercorn's trio server on a socket bound here.

As the Fusion Brain emulator's server (listener.providers.fusionbrain.emulator.server):
we own the accept loop, so port 0 works, the URL is exact, and the app gets each
connection's server-side socket (the `drop` and `lost` faults close a connection
without answering).
"""

from __future__ import annotations

import logging
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.utils import wrap_app

from listener.providers.fusionbrain.emulator.server import _bind, url_for
from listener.providers.gigachat.emulator.app import GigaChatEmulatorApp
from listener.providers.gigachat.emulator.state import GigaChatEmulatorConfig, GigaChatState

log = logging.getLogger("listener.emulator")


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
    connections: dict[tuple[Any, ...], trio.socket.SocketType] = {}
    app = GigaChatEmulatorApp(state, connections, control_token=control_token)
    hconfig = HypercornConfig()
    hconfig.accesslog = None
    hconfig.errorlog = logging.getLogger("hypercorn.error")
    wrapped = wrap_app(app, hconfig.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]
    context = WorkerContext(None)

    async def handle(stream: trio.SocketStream) -> None:
        try:
            peer = tuple(stream.socket.getpeername()[:2])
        except OSError:
            await stream.aclose()
            return
        connections[peer] = stream.socket
        try:
            await TCPServer(wrapped, hconfig, context, {}, stream).run()  # type: ignore[arg-type]
        finally:
            connections.pop(peer, None)

    sock = await _bind(host, port)
    url = url_for(host, sock.getsockname()[1])
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, [trio.SocketListener(sock)])
        task_status.started(url)
