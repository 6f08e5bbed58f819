"""GigaChat (Kandinsky drawing through Sber's chat API) as an image provider.

settings (GIGACHAT_* variables) -> client (token, draw, download over the hardened edge)
-> provider (the engine's Provider) -> spec (the registry's entry); emulator/ serves a
local stand-in of both hosts. The protocol as the code relies on it: docs/gigachat-api.md.
"""
