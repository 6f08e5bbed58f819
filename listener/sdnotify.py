"""systemd's readiness protocol, without a library: one datagram per state to the socket
named by $NOTIFY_SOCKET (a path, or `@name` for the abstract namespace).

READY=1 once the engine is serving, STOPPING=1 when a stop begins, WATCHDOG=1 every half
of $WATCHDOG_USEC while the event loop and the engine's loops run (a frozen loop misses
its pings and systemd restarts the service). Not under systemd: every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket

import trio

log = logging.getLogger("listener")


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        if path.startswith("@"):
            self.address = b"\0" + path[1:].encode()
        elif path.startswith("/"):
            self.address = path
        self.watchdog: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog = int(usec) / 1e6

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *states: str) -> bool:
        """Send `states` (e.g. "READY=1", "STATUS=..."); False when not under systemd or
        the socket refused (never raises: readiness reports must not stop the service)."""
        if self.address is None:
            return False
        message = "\n".join(states).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)  # a full socket is a warning, never a frozen loop
                sock.connect(self.address)
                sock.sendall(message)
        except OSError as exc:
            log.warning("Could not notify systemd (%s): %s", states[0], exc.strerror or exc)
            return False
        return True

    async def serve_watchdog(
        self, alive, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Ping every half of the watchdog period while `alive()` says the engine runs."""
        task_status.started()
        if self.watchdog is None or self.address is None:
            return
        while True:
            if alive():
                self.send("WATCHDOG=1")
            await trio.sleep(self.watchdog / 2)
