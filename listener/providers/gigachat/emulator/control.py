"""The control client of the GigaChat emulator: the shared one, plus tokens.

control = GigaChatControl(url, token=...)
control.configure(streams=1, draw_time=0.2); control.fault("chat", "lost")
control.expire_tokens(); control.revoke_tokens(); control.stats()["draws_by_prompt"]
"""

from __future__ import annotations

from listener.providers.emulator_kit.control import EmulatorControl


class GigaChatControl(EmulatorControl):
    def expire_tokens(self) -> int:
        """Every token issued so far expires now."""
        return int(self._call("POST", "expire")["expired"])

    def revoke_tokens(self) -> int:
        """Every token issued so far is forgotten (answered 401 Unauthorized)."""
        return int(self._call("POST", "revoke")["revoked"])
