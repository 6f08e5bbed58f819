"""A built-in emulator of the Fusion Brain API: real PNG images, timings and faults.

Used by `listener emulator`, by `make run` when no API key is configured, and by the
tests and benchmarks (see docs/emulator.md).

The server (hypercorn, Pillow) is imported on first use: the listener's CLI registers the
`emulator` command at every start, and a listener that talks to the real API should not
carry the emulator's ~10 MB of modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from listener.providers.fusionbrain.emulator.config import EmulatorConfig
    from listener.providers.fusionbrain.emulator.control import EmulatorControl
    from listener.providers.fusionbrain.emulator.server import serve_emulator

__all__ = ["EmulatorConfig", "EmulatorControl", "serve_emulator"]

_WHERE = {
    "EmulatorConfig": "listener.providers.fusionbrain.emulator.config",
    "EmulatorControl": "listener.providers.fusionbrain.emulator.control",
    "serve_emulator": "listener.providers.fusionbrain.emulator.server",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
