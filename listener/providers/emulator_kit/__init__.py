"""What every provider's emulator is built from, so no provider's emulator imports
another's: a provider package stays whole on its own.

    answers  the ASGI plumbing: Answer, send_answer (spread, streamed, stopped when the
             client leaves), wait_unless_gone
    serving  hypercorn's trio server on a socket bound here (port 0, exact URL, each
             connection's server-side socket for the faults that close it unanswered)
    control  EmulatorControl, the synchronous client of /_emulator/ for tests and tools

Imported only by the emulators (which are imported only when served or tested): the
listener's hot path never carries hypercorn or the emulators' modules.
"""

from __future__ import annotations


class ConfigInvalid(ValueError):
    """An emulator setting is out of range or of the wrong type."""
