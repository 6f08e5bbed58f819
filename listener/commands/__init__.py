"""Subcommands. Each module exposes `register(subparsers, common)`; its parser sets
`handler` (a function taking the parsed args, returning an exit code)."""

from __future__ import annotations

import importlib
from types import ModuleType

# run is first: it is also the default command and owns the seed's top-level flags.
_NAMES = (
    "run",
    "migrate",
    "emulator",
    "enqueue",
    "status",
    "export",
    "retry",
    "cancel",
    "watch",
    "psql",
)


def _load() -> list[ModuleType]:
    modules = []
    for name in _NAMES:
        try:
            modules.append(importlib.import_module(f"listener.commands.{name}"))
        except (
            ModuleNotFoundError
        ) as exc:  # pragma: no cover - only while a command is being written
            if exc.name != f"listener.commands.{name}":
                raise
    return modules


COMMANDS = _load()
