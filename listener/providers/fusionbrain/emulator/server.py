"""Serving the emulator: hypercorn's trio HTTP server on a socket we bind ourselves.

We bind the listening socket ourselves (so port 0 works and the URL is exact) and hand
each accepted connection to hypercorn's trio `TCPServer`, which speaks HTTP/1.1 (and h2)
to our ASGI app. Owning the accept loop also gives the app the server-side socket of
each connection, which is what the `drop` fault needs to close a connection without
answering: plain ASGI has no way to do that.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.utils import wrap_app

from listener.providers.fusionbrain.emulator.app import EmulatorApp
from listener.providers.fusionbrain.emulator.config import EmulatorConfig
from listener.providers.fusionbrain.emulator.state import EmulatorState

log = logging.getLogger("listener.emulator")

BACKLOG = 1024
EXPIRY_EVERY = 1.0  # seconds between sweeps of expired results


def url_for(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


async def _bind(host: str, port: int) -> trio.socket.SocketType:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        # Lets a restarted emulator take its port back while old connections linger.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        await sock.bind((host, port))
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


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
    connections: dict[tuple[Any, ...], trio.socket.SocketType] = {}
    app = EmulatorApp(state, connections, control_token=control_token)
    hconfig = HypercornConfig()
    hconfig.accesslog = None
    # Through our logging setup (format, secret redaction) rather than hypercorn's own.
    hconfig.errorlog = logging.getLogger("hypercorn.error")
    # EmulatorApp is a plain ASGI callable; hypercorn's types name its own scope classes.
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
            # TCPServer takes a plain trio stream too (hypercorn's own trio worker does so).
            await TCPServer(wrapped, hconfig, context, {}, stream).run()  # type: ignore[arg-type]
        finally:
            connections.pop(peer, None)

    sock = await _bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    url = url_for(host, bound_port)
    listener = trio.SocketListener(sock)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_expire_forever, state)
        await nursery.start(trio.serve_listeners, handle, [listener])
        log.debug("Emulator bound to %s:%s", bound_host, bound_port)
        task_status.started(url)
