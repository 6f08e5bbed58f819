"""The Fusion Brain emulator's control client: the shared one, as it is.

control = EmulatorControl("http://127.0.0.1:8089/", token="...")  # the token it printed
control.configure(generation_time=0.5, fail_rate=0.1)
control.fault("run", "503", count=2)
control.stats()["runs_total"]
"""

from __future__ import annotations

from listener.providers.emulator_kit.control import TOKEN_ENV, EmulatorControl

__all__ = ["TOKEN_ENV", "EmulatorControl"]
