"""Measure the emulator's own ceiling: concurrent run + status round trips for a while.

    python -m listener.providers.fusionbrain.emulator.bench \
        [--seconds 5] [--concurrency 32] [--size 64]
        [--client httpx|raw] [--url http://127.0.0.1:8089/]

Without --url it starts `listener emulator --port 0 --generation-time 0` itself (and
stops it). Each worker repeats: POST run (a size x size image), GET status until the
final answer. The client runs in this process, so on a small machine it competes with
the emulator for the CPU. `--client httpx` (default) is what a Python service would use;
`--client raw` writes pre-encoded HTTP/1.1 requests on plain trio sockets, the cheapest
client possible, so that the figure shows the emulator's own ceiling.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from functools import partial

import httpx
import trio

API = "key/api/v1/"
HEADERS = {"X-Key": "Key bench", "X-Secret": "Secret bench"}


async def _worker(
    client: httpx.AsyncClient, pipeline: str, size: int, until: float, counts: dict[str, int]
) -> None:
    files: dict[str, tuple[str | None, str] | tuple[str | None, str, str]] = {
        "pipeline_id": (None, pipeline),
        "params": (None, _params(size), "application/json"),
    }
    while time.monotonic() < until:
        answer = await client.post(API + "pipeline/run", files=files)
        counts["requests"] += 1
        answer.raise_for_status()
        uuid = answer.json()["uuid"]
        while True:
            answer = await client.get(f"{API}pipeline/status/{uuid}")
            counts["requests"] += 1
            answer.raise_for_status()
            if answer.json()["status"] in ("DONE", "FAIL", "CANCEL"):
                counts["runs"] += 1
                break


def _params(size: int) -> str:
    return json.dumps(
        {
            "type": "GENERATE",
            "numImages": 1,
            "width": size,
            "height": size,
            "style": "DEFAULT",
            "generateParams": {"query": f"benchmark {size}"},
        }
    )


_LENGTH = re.compile(rb"content-length: *(\d+)", re.IGNORECASE)


async def _read_response(stream: trio.SocketStream, buffer: bytes) -> tuple[bytes, bytes]:
    """(body, what was read beyond it) of one HTTP/1.1 response with a Content-Length."""
    while b"\r\n\r\n" not in buffer:
        buffer += await stream.receive_some(65536)
    head, rest = buffer.split(b"\r\n\r\n", 1)
    found = _LENGTH.search(head)
    if not head.startswith(b"HTTP/1.1 20") or found is None:
        raise RuntimeError(f"unexpected answer: {head[:200]!r}")
    length = int(found.group(1))
    while len(rest) < length:
        rest += await stream.receive_some(65536)
    return rest[:length], rest[length:]


async def _raw_worker(
    host: str, port: int, pipeline: str, size: int, until: float, counts: dict[str, int]
) -> None:
    boundary = "benchboundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="pipeline_id"\r\n\r\n'
        f'{pipeline}\r\n--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n'
        f"Content-Type: application/json\r\n\r\n{_params(size)}\r\n--{boundary}--\r\n"
    ).encode()
    auth = f"X-Key: {HEADERS['X-Key']}\r\nX-Secret: {HEADERS['X-Secret']}\r\n"
    run = (
        f"POST /{API}pipeline/run HTTP/1.1\r\nHost: {host}\r\n{auth}"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    stream = await trio.open_tcp_stream(host, port)
    buffer = b""
    async with stream:
        while time.monotonic() < until:
            await stream.send_all(run)
            counts["requests"] += 1
            answer, buffer = await _read_response(stream, buffer)
            uuid = json.loads(answer)["uuid"]
            while True:
                ask = f"GET /{API}pipeline/status/{uuid} HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n"
                await stream.send_all(ask.encode())
                counts["requests"] += 1
                answer, buffer = await _read_response(stream, buffer)
                if json.loads(answer)["status"] in ("DONE", "FAIL", "CANCEL"):
                    counts["runs"] += 1
                    break


async def measure(
    url: str, seconds: float, concurrency: int, size: int, client_kind: str = "httpx"
) -> dict[str, float]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url, headers=HEADERS, limits=limits, timeout=30
    ) as client:
        pipeline = (await client.get(API + "pipelines")).json()[0]["id"]
        counts = {"requests": 0, "runs": 0}
        started = time.monotonic()
        host, port = client.base_url.host, client.base_url.port or 80
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                if client_kind == "raw":
                    nursery.start_soon(
                        _raw_worker, host, port, pipeline, size, started + seconds, counts
                    )
                else:
                    nursery.start_soon(_worker, client, pipeline, size, started + seconds, counts)
        elapsed = time.monotonic() - started
    return {
        "seconds": round(elapsed, 2),
        "requests": counts["requests"],
        "runs": counts["runs"],
        "requests_per_second": round(counts["requests"] / elapsed),
        "runs_per_second": round(counts["runs"] / elapsed),
    }


def _start_emulator() -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "listener", "emulator", "--port", "0", "--generation-time", "0"],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line.startswith("Emulator listening on "):
        proc.kill()
        raise SystemExit(f"the emulator did not start: {line!r}")
    return proc, line.split()[-1]


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m listener.providers.fusionbrain.emulator.bench")
    parser.add_argument("--url", help="an emulator already running (default: start one)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--client", choices=("httpx", "raw"), default="httpx")
    args = parser.parse_args(argv)
    proc = None
    url = args.url
    if url is None:
        proc, url = _start_emulator()
    cpu_before = _cpu_seconds(proc.pid) if proc is not None else None
    try:
        result = trio.run(
            partial(measure, url, args.seconds, args.concurrency, args.size, args.client)
        )
        cpu_after = _cpu_seconds(proc.pid) if proc is not None else None
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
    if cpu_before is not None and cpu_after is not None and result["requests"]:
        # The emulator's own CPU per request: its ceiling on one core, whatever the client.
        per_request = (cpu_after - cpu_before) / result["requests"]
        result["emulator_cpu_ms_per_request"] = round(per_request * 1000, 2)
    shown = {"url": url, "client": args.client, "concurrency": args.concurrency, "size": args.size}
    print(json.dumps({**shown, **result}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
