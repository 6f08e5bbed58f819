"""A built-in emulator of GigaChat's image drawing: token service, chat draws with an
image tag, JPEG downloads, and the faults a client must survive (docs/emulator.md).

Imported only when used: hypercorn and Pillow stay out of a listener on the real API."""
