"""A small synchronous client of an emulator's control endpoint (/_emulator/: config,
faults, reset, stats, as both emulators serve it), for tests and benchmarks.

control = EmulatorControl("http://127.0.0.1:8089/", token="...")  # the token it printed
control.configure(generation_time=0.5, fail_rate=0.1)
control.fault("run", "503", count=2)
control.stats()["runs_total"]
"""

from __future__ import annotations

import os
from typing import Any

import httpx

TOKEN_ENV = "EMULATOR_CONTROL_TOKEN"  # noqa: S105 - a variable name


class EmulatorControl:
    """`token`: the one the emulator printed at start (default: $EMULATOR_CONTROL_TOKEN,
    which also chooses the emulator's token when set before it starts)."""

    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 10.0) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        token = token if token is not None else os.environ.get(TOKEN_ENV, "")
        self._client = httpx.Client(
            base_url=self.base_url + "_emulator/",
            timeout=timeout,
            headers={"Authorization": f"Bearer {token}"},
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> EmulatorControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, what: str, body: Any = None) -> Any:
        if method == "POST" and body is None:
            body = {}  # a POST always says application/json
        response = self._client.request(method, what, json=body)
        if response.status_code != 200:
            raise ValueError(f"emulator refused {method} {what}: {response.text}")
        return response.json()

    def config(self) -> dict[str, Any]:
        """The configuration in force."""
        return self._call("GET", "config")

    def configure(self, **fields: Any) -> dict[str, Any]:
        """Change some configuration fields now; returns the whole new configuration."""
        return self._call("POST", "config", fields)

    def fault(self, endpoint: str, kind: str, count: int = 1) -> list[dict[str, Any]]:
        """The next `count` requests to `endpoint` (the emulator's names: Fusion Brain's
        run, status, pipelines, availability; GigaChat's token, chat, download, ...; or
        any) get fault `kind`; returns the faults still pending."""
        return self._call("POST", "faults", {"endpoint": endpoint, "kind": kind, "count": count})

    def faults(self) -> list[dict[str, Any]]:
        """The faults still pending."""
        return self._call("GET", "faults")

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "stats")

    def reset(self) -> dict[str, Any]:
        """Forget statistics, faults and generations; restore the start configuration."""
        return self._call("POST", "reset")
