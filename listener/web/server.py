"""hypercorn's trio HTTP server on a socket we bind ourselves (so port 0 works and the
URL printed is exact), as in the emulator: each accepted connection goes to hypercorn's
trio `TCPServer`, which speaks HTTP/1.1 to the Starlette app."""

from __future__ import annotations

import logging
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.utils import wrap_app

from listener.errors import ConfigError
from listener.tcp import bind, url_for

log = logging.getLogger("listener.web")

BACKLOG = 128

__all__ = ["serve_http", "url_for"]


async def serve_http(
    app: Any, host: str, port: int, *, task_status: trio.TaskStatus[tuple[str, int]]
) -> None:
    """Serve `app` until cancelled; `task_status.started((host, port))` once listening."""
    config = HypercornConfig()
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.keep_alive_timeout = 30
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)

    async def handle(stream: trio.SocketStream) -> None:
        await TCPServer(wrapped, config, context, {}, stream).run()  # type: ignore[arg-type]

    try:
        sock = await bind(host, port, backlog=BACKLOG)
    except OSError as exc:
        raise ConfigError(
            f"configuration error: HTTP_ADDRESS: cannot listen on {host}:{port}: "
            f"{exc.strerror or exc}"
        ) from None
    bound = sock.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, [trio.SocketListener(sock)])
        task_status.started((host, bound))
