"""Subcommands. Each module exposes `register(subparsers, common)`; its parser sets
`handler` (a function taking the parsed args, returning an exit code)."""

from __future__ import annotations

from listener.commands import (
    cancel,
    embedded,
    emulator,
    enqueue,
    export,
    migrate,
    provider,
    psql,
    regenerate,
    requeue,
    retry,
    roles,
    run,
    status,
    watch,
)

# run is first: it is also the default command and owns the seed's top-level flags.
COMMANDS = (
    run,
    migrate,
    emulator,
    enqueue,
    status,
    export,
    retry,
    regenerate,
    requeue,
    cancel,
    watch,
    psql,
    embedded,
    roles,
    provider,
)
