"""The ASGI plumbing both emulators answer with: an Answer, and sending it (at once,
spread over time for the drip and slow faults, or streamed), stopped when the client
leaves; `wait_unless_gone` spends a delay unless the client hangs up meanwhile."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class Answer:
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    content_type: bytes = b"application/json"
    # A body made as it is sent, without a Content-Length (oversized, endless answers).
    stream: Callable[[], AsyncIterator[bytes]] | None = None
    # Seconds over which `body` is sent in small pieces (drip and slow faults).
    spread: float = 0.0

    @classmethod
    def json(cls, status: int, data: Any) -> Answer:
        return cls(status, json.dumps(data, ensure_ascii=False).encode())


async def wait_unless_gone(receive: Receive, seconds: float) -> bool:
    """Sleep; False if the client disconnected meanwhile (the body is read already)."""
    with trio.move_on_after(seconds):
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return False
    return True


async def send_answer(send: Send, answer: Answer, receive: Receive | None = None) -> None:
    """Send an answer: at once, spread over time, or streamed; a slow or streamed answer
    stops when the client goes away (`receive` reports the disconnect)."""
    headers = [(b"content-type", answer.content_type)]
    if answer.stream is None:
        headers.append((b"content-length", str(len(answer.body)).encode()))
    headers.extend(answer.headers)
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    if answer.stream is None and answer.spread <= 0:
        await send({"type": "http.response.body", "body": answer.body})
        return
    async with trio.open_nursery() as nursery:
        if receive is not None:
            nursery.start_soon(_cancel_when_gone, receive, nursery.cancel_scope)
        if answer.stream is not None:
            async for piece in answer.stream():
                await send({"type": "http.response.body", "body": piece, "more_body": True})
        else:
            await _send_spread(send, answer.body, answer.spread)
        await send({"type": "http.response.body", "body": b""})
        nursery.cancel_scope.cancel()


async def _send_spread(send: Send, body: bytes, seconds: float) -> None:
    pieces = max(1, min(len(body), int(seconds * 20)))
    size = -(-len(body) // pieces)
    pause = seconds / pieces
    for start in range(0, len(body), size):
        await send(
            {"type": "http.response.body", "body": body[start : start + size], "more_body": True}
        )
        await trio.sleep(pause)


async def _cancel_when_gone(receive: Receive, scope: trio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return
