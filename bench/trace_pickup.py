"""Where a pickup's milliseconds go: the listener with timestamps at each step.

Not part of `make bench` (it wraps the listener's internals, so it is a tool to read the
path with, not a measurement to compare across versions). It runs one listener whose
notification handler, claim, database hand-off and API run call are wrapped to record
`time.time()` (and the row's task, the request's exchange and its first socket write),
inserts single rows 20 ms apart as the pickup benchmark does, and prints
the percentiles of each step between the INSERT's commit and the emulator receiving the
run request.

    .venv/bin/python bench/trace_pickup.py [ROWS]
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h


def listener_main() -> int:
    """`python -m listener`, wrapped: the steps go to TRACE_FILE when it stops."""
    import atexit
    import threading

    import trio

    from listener import notify, service, store
    from listener.cli import main
    from listener.db import Database
    from listener.providers.fusionbrain import client

    steps: list[list] = []
    atexit.register(lambda: Path(os.environ["TRACE_FILE"]).write_text(json.dumps(steps)))

    on_event = service._StreamEvents._translate

    def traced_on_event(self, event):
        if (
            isinstance(event, notify.Notification)
            and event.channel == "images_wakeup"
            and event.payload == "ReadyToGenerate"  # not the row's own move to Generate
        ):
            steps.append(["notify", time.time()])
        return on_event(self, event)

    claim_ready = store.PgStore.claim_ready

    async def traced_claim_ready(self, limit, **kw):
        t0 = time.time()
        claimed = await claim_ready(self, limit, **kw)
        steps.append(["claim", t0, time.time(), [r.prompt for r in claimed]])
        return claimed

    run = Database.run

    async def traced_run(self, fn, *args, **kw):
        def in_thread(conn, *a):
            steps.append(["thread", time.time(), threading.get_ident()])
            try:
                return fn(conn, *a)
            finally:
                steps.append(["thread_done", time.time(), threading.get_ident()])

        return await run(self, in_thread, *args, **kw)

    api_run = client.FusionBrainClient.run

    async def traced_api_run(self, request):
        steps.append(["run", time.time(), request.prompt])
        return await api_run(self, request)

    from listener.engine import runs

    submit = runs.Runs.submit

    async def traced_submit(self, row, own):
        steps.append(["task", time.time(), row.prompt])
        return await submit(self, row, own)

    exchange = client.exchange

    async def traced_exchange(transport, request, **kw):
        steps.append(["exchange", time.time()])
        return await exchange(transport, request, **kw)

    send_all = trio.SocketStream.send_all

    async def traced_send_all(self, data):
        steps.append(["send", time.time()])
        return await send_all(self, data)

    runs.Runs.submit = traced_submit
    client.exchange = traced_exchange
    trio.SocketStream.send_all = traced_send_all
    service._StreamEvents._translate = traced_on_event
    store.PgStore.claim_ready = traced_claim_ready
    Database.run = traced_run
    client.FusionBrainClient.run = traced_api_run
    sys.argv[0] = "listener"
    return main([])


def drive(n: int) -> None:
    trace = h.WORK / "trace.json"
    commits: dict[str, float] = {}
    with h.wrapped_listener("trace", __file__, TRACE_FILE=str(trace)) as (url, emu, _proc):
        with psycopg.connect(url, autocommit=True) as c:
            for i in range(5):  # warm-up: connections, pipeline id, prepared plans
                c.execute("INSERT INTO images (prompt) VALUES (%s)", (f"warm-up {i}",))
                time.sleep(0.05)
            time.sleep(0.5)
            start = time.monotonic()
            for i in range(n):
                time.sleep(max(0.0, start + i * 0.02 - time.monotonic()))
                prompt = f"trace {i}"
                c.execute("INSERT INTO images (prompt) VALUES (%s) RETURNING id", (prompt,))
                commits[prompt] = time.time()
        time.sleep(1)
        arrivals = emu.arrivals()
    report(json.loads(trace.read_text()), commits, arrivals)


def report(steps: list[list], commits: dict[str, float], arrivals: dict[str, float]) -> None:
    notified = [s[1] for s in steps if s[0] == "notify"][-len(commits) :]
    claims = {s[3][0]: s for s in steps if s[0] == "claim" and len(s[3]) == 1}
    runs = {s[2]: s[1] for s in steps if s[0] == "run"}
    threads, entered = [], {}
    for step in steps:
        if step[0] == "thread":
            entered[step[2]] = step[1]
        elif step[0] == "thread_done":
            threads.append((entered.pop(step[2]), step[1]))
    tasks = {s[2]: s[1] for s in steps if s[0] == "task"}
    # The first exchange and socket write after each run call (rows come 20 ms apart: one
    # run request at a time)
    exchanged: dict[str, float] = {}
    sent: dict[str, float] = {}
    current = None
    for step in steps:
        if step[0] == "run":
            current = step[2]
        elif step[0] == "exchange" and current is not None:
            exchanged.setdefault(current, step[1])
        elif step[0] == "send" and current in exchanged:
            sent.setdefault(current, step[1])
    parts: dict[str, list[float]] = {}

    def add(name: str, seconds: float) -> None:
        parts.setdefault(name, []).append(1000 * seconds)

    for (prompt, committed), wake in zip(commits.items(), notified, strict=False):
        if prompt not in claims or prompt not in runs or prompt not in arrivals:
            continue
        _, c0, c1, _ = claims[prompt]
        add("commit -> notification read", wake - committed)
        add("notification -> claim starts", c0 - wake)
        inside = next((t for t in threads if c0 <= t[0] <= c1), None)
        if inside is None:  # the claim connection: no thread (listener/pgtrio.py)
            add("claim: on the claim connection (one round trip, no thread)", c1 - c0)
        else:  # a claim through the pool's worker thread (before the claim connection)
            t_in, t_out = inside
            add("claim: hand-off to a worker thread", t_in - c0)
            add("claim: in the thread (pool, UPDATE round trip)", t_out - t_in)
            add("claim: hand-off back to trio", c1 - t_out)
        add("claim -> run call", runs[prompt] - c1)
        if prompt in tasks and prompt in sent:
            add("  claim -> the row's task (Runs.submit)", tasks[prompt] - c1)
            add("  the row's task -> run call", runs[prompt] - tasks[prompt])
            add("  run call -> exchange (request built)", exchanged[prompt] - runs[prompt])
            add("  exchange -> first socket write", sent[prompt] - exchanged[prompt])
            add("  first socket write -> emulator", arrivals[prompt] - sent[prompt])
        add("run call -> emulator receives it", arrivals[prompt] - runs[prompt])
        add("total: commit -> emulator receives run", arrivals[prompt] - committed)
    print(f"{len(parts.get('total: commit -> emulator receives run', []))} rows traced (ms)")
    for name, values in parts.items():
        values.sort()
        p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
        print(f"  {name:50s} p50 {statistics.median(values):6.3f}   p99 {p99:6.3f}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--listener"]:
        sys.exit(listener_main())
    drive(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
