"""A built-in emulator of the Fusion Brain API: real PNG images, timings and faults.

Used by `listener emulator`, by `make run` when no API key is configured, and by the
tests and benchmarks (see docs/emulator.md).
"""

from listener.emulator.config import EmulatorConfig
from listener.emulator.control import EmulatorControl
from listener.emulator.server import serve_emulator

__all__ = ["EmulatorConfig", "EmulatorControl", "serve_emulator"]
