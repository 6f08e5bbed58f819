"""A listening TCP socket bound by us, under trio: what the HTTP server and the emulators
share (both bind their own socket so that port 0 works and the URL they print is exact)."""

from __future__ import annotations

import socket

import trio


def url_for(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


async def bind(host: str, port: int, *, backlog: int) -> trio.socket.SocketType:
    """A socket listening on (host, port); SO_REUSEADDR lets a restarted server take its
    port back while old connections linger."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        await sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock
