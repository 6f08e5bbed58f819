"""Serving an emulator: hypercorn's trio HTTP server on a socket we bind ourselves.

We bind the listening socket ourselves (so port 0 works and the URL is exact) and hand
each accepted connection to hypercorn's trio `TCPServer`, which speaks HTTP/1.1 (and h2)
to the emulator's ASGI app. Owning the accept loop also gives the app the server-side
socket of each connection, which is what the faults that close a connection without
answering need (`drop`, GigaChat's `lost`): plain ASGI has no way to do that.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.utils import wrap_app

from listener.tcp import bind, url_for

log = logging.getLogger("listener.emulator")

BACKLOG = 1024

# A client (host, port) -> the server-side socket of its connection.
Connections = dict[tuple[Any, ...], trio.socket.SocketType]

__all__ = ["BACKLOG", "Connections", "serve_app"]


async def serve_app(
    make_app: Callable[[Connections], Any],
    *,
    host: str,
    port: int,
    background: Sequence[Callable[[], Awaitable[None]]] = (),
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the ASGI app `make_app(connections)` until cancelled, with the
    `background` tasks beside it; `task_status.started(url)` once listening, with the
    real port in the URL (`http://127.0.0.1:PORT/`)."""
    connections: Connections = {}
    app = make_app(connections)
    hconfig = HypercornConfig()
    hconfig.accesslog = None
    # Through our logging setup (format, secret redaction) rather than hypercorn's own.
    hconfig.errorlog = logging.getLogger("hypercorn.error")
    # The app is a plain ASGI callable; hypercorn's types name its own scope classes.
    wrapped = wrap_app(app, hconfig.wsgi_max_body_size, "asgi")
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

    sock = await bind(host, port, backlog=BACKLOG)
    bound_host, bound_port = sock.getsockname()[:2]
    url = url_for(host, bound_port)
    listener = trio.SocketListener(sock)
    async with trio.open_nursery() as nursery:
        for task in background:
            nursery.start_soon(task)
        await nursery.start(trio.serve_listeners, handle, [listener])
        log.debug("Emulator bound to %s:%s", bound_host, bound_port)
        task_status.started(url)
