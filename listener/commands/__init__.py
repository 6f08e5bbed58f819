"""Subcommands. Each module exposes `register(subparsers, common)`; its parser sets
`handler` (a function taking the parsed args, returning an exit code).

The modules are imported only when the command line needs them (listener.cli): the
service, which runs for months, never loads what the other commands import (the
emulator, the operator's queries, the export's file handling)."""

from __future__ import annotations

import importlib
from types import ModuleType

# run is first: it is also the default command and owns the seed's top-level flags.
NAMES = (
    "run",
    "migrate",
    "emulator",
    "enqueue",
    "status",
    "export",
    "retry",
    "regenerate",
    "requeue",
    "cancel",
    "watch",
    "psql",
    "embedded",
    "roles",
    "provider",
)


def load(name: str) -> ModuleType:
    """The module of the subcommand `name`."""
    return importlib.import_module(f"listener.commands.{name}")


def __getattr__(name: str) -> tuple[ModuleType, ...]:
    """`COMMANDS`: every subcommand's module, in order (imports them all)."""
    if name == "COMMANDS":
        return tuple(load(command) for command in NAMES)
    raise AttributeError(name)
