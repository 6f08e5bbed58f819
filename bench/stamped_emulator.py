"""The emulator, stamping each request at the first byte of its request line.

`listener emulator` stamps a run's `arrived_at` when hypercorn hands the parsed request
to the app: after the request line and headers were read and parsed, and after a task
switch. The compare section (issue 23) measures pickup up to the first byte the API
receives, so this script serves the same `EmulatorApp` on the same hypercorn server with
one difference: each accepted connection's stream is wrapped, and the time.time() at
which the first bytes of a request came out of the socket becomes that request's
`arrived_at` (in `GET /_emulator/stats` as before). HTTP/1.1 clients send a connection's
next request only after the whole answer came back, so a connection is "between
requests" from the moment the app sends an answer's last part until bytes arrive again.

    python bench/stamped_emulator.py [--port 0]     # env: EMULATOR_CONTROL_TOKEN

The same options as `listener emulator --generation-time 0 --status-time 0` (what the
benchmark runs); prints `Emulator listening on URL` like it. Lives in bench/ because it
is a measuring instrument, not a feature of the emulator.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.utils import wrap_app

from listener.providers.fusionbrain.emulator.app import EmulatorApp
from listener.providers.fusionbrain.emulator.config import EmulatorConfig
from listener.providers.fusionbrain.emulator.state import EmulatorState
from listener.tcp import bind, url_for

FIRST_BYTE = "bench.first_byte"  # the scope key the app reads the stamp from


class StampingStream:
    """A trio SocketStream that remembers when a request's first bytes were received.
    Everything else is the wrapped stream's (hypercorn's TCPServer finds no
    do_handshake on it, so it treats it as plain TCP, as before)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self.socket = stream.socket
        self.first_byte: float | None = None
        self.in_request = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self._stream.receive_some(max_bytes)
        if data and not self.in_request and self.first_byte is None:
            self.first_byte = time.time()
        return data

    def take(self) -> float | None:
        """The app starts on a request: its stamp, and no stamping until it answered."""
        stamp, self.first_byte, self.in_request = self.first_byte, None, True
        return stamp

    def answered(self) -> None:
        self.in_request = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class StampedApp(EmulatorApp):
    """EmulatorApp with `arrived_at` taken from the connection's first-byte stamp."""

    def __init__(self, *args: Any, streams: dict[tuple[Any, ...], StampingStream], **kw: Any):
        super().__init__(*args, **kw)
        self.streams = streams
        self.stamped = self.unstamped = self.used = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        stream = self.streams.get(tuple(scope.get("client") or ()))
        if scope["type"] != "http" or stream is None:
            await super().__call__(scope, receive, send)
            return
        scope[FIRST_BYTE] = stamp = stream.take()
        if stamp is None:
            self.unstamped += 1
        else:
            self.stamped += 1

        async def send_and_mark(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                stream.answered()  # before the client can have the answer and send again
            await send(message)

        try:
            await super().__call__(scope, receive, send_and_mark)
        finally:
            stream.answered()

    async def _api(
        self,
        scope: dict[str, Any],
        receive: Any,
        method: str,
        path: str,
        body: bytes,
        arrived_at: float,
    ) -> Any:
        stamp = scope.get(FIRST_BYTE)
        self.used += stamp is not None
        return await super()._api(
            scope, receive, method, path, body, arrived_at if stamp is None else stamp
        )


async def serve(port: int, token: str | None) -> None:
    state = EmulatorState(EmulatorConfig(generation_time=0.0, status_time=0))
    connections: dict[tuple[Any, ...], Any] = {}
    streams: dict[tuple[Any, ...], StampingStream] = {}
    app = StampedApp(state, connections, control_token=token, streams=streams)
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
        stamping = StampingStream(stream)
        connections[peer] = stream.socket
        streams[peer] = stamping
        try:
            await TCPServer(wrapped, hconfig, context, {}, stamping).run()  # type: ignore[arg-type]
        finally:
            connections.pop(peer, None)
            streams.pop(peer, None)

    sock = await bind("127.0.0.1", port, backlog=1024)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, handle, [trio.SocketListener(sock)])
            print(f"Emulator listening on {url_for('127.0.0.1', sock.getsockname()[1])}")
            sys.stdout.flush()

            async def expire() -> None:
                while True:
                    await trio.sleep(1.0)
                    state.expire()

            nursery.start_soon(expire)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    # For the benchmark's log: a request without a stamp kept the app's own arrived_at.
    print(
        f"requests stamped at their first byte: {app.stamped}, without: {app.unstamped}; "
        f"API requests that took their stamp as arrived_at: {app.used}",
        file=sys.stderr,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    trio.run(serve, args.port, os.environ.get("EMULATOR_CONTROL_TOKEN") or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
