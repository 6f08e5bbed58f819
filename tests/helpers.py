"""Helpers for tests that drive the listener the way a user does: as a process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Variables a developer's shell might carry that would change what a test sees.
CONFIG_PREFIXES = (
    "FUSION_BRAIN_", "DEFAULT_", "DB_", "DATABASE_URL", "PG", "LISTEN_DATABASE_URL",
    "POLL_INTERVAL", "UNKNOWN_OUTCOME_RESENDS", "EMULATOR_", "GIGACHAT_", "IMAGE_PROVIDER",
    "API_CONCURRENCY", "HTTP_", "NOTIFY_SOCKET", "WATCHDOG_",
)  # fmt: skip


def clean_env(**extra: str) -> dict[str, str]:
    """The current environment without any listener or libpq configuration."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(CONFIG_PREFIXES)}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def listener_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "listener", *args]


def run_listener(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `python -m listener ...` to completion (cwd without a .env unless given one)."""
    return subprocess.run(
        listener_cmd(*args),
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
