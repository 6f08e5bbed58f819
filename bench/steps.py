"""Where a row's work goes through trio's scheduler and the pool's threads: counts per row.

Not part of `make bench` (it wraps the listener's internals: a tool to find a cut with,
not a measurement to compare across versions). One listener with the emulator works
through ROWS rows inserted at once; it counts, per row:

* each database call that went through a worker thread (`Database.run`), by its callers;
* each statement on the dedicated connections (`listener.pgtrio`, no thread);
* each task step (a pass of trio's scheduler resuming a task), by the place the task
  resumes at (its innermost frames), and the scheduler's waits for I/O (`epoll_wait`);

and the listener's CPU per row from /proc over the same window. docs/performance.md
("Cut in a later session") shows what it found.

    .venv/bin/python bench/steps.py [ROWS]
"""

from __future__ import annotations

import collections
import json
import os
import re
import sys
import time
import traceback
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h

# frames kept of where a task resumes (innermost last; trio's own traps left out)
WHERE_DEPTH = 5


def listener_main() -> int:
    """`python -m listener`, counted: the counts go to COUNT_FILE when it stops."""
    import atexit

    import trio

    from listener import pgtrio
    from listener.cli import main
    from listener.db import Database

    counts: collections.Counter[str] = collections.Counter()
    atexit.register(
        lambda: Path(os.environ["COUNT_FILE"]).write_text(json.dumps(counts.most_common()))
    )

    run = Database.run

    async def counted_run(self, fn, *args, **kw):
        callers = [f.name for f in traceback.extract_stack(limit=4)[:-1]]
        counts["thread: " + " < ".join(reversed(callers))] += 1
        return await run(self, fn, *args, **kw)

    fetch, execute = pgtrio.TrioConnection.fetch, pgtrio.TrioConnection.execute

    async def counted_fetch(self, *args, **kw):
        counts["statement on a dedicated connection"] += 1
        return await fetch(self, *args, **kw)

    async def counted_execute(self, *args, **kw):
        counts["statement on a dedicated connection"] += 1
        return await execute(self, *args, **kw)

    class Steps(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            counts["task step: " + re.sub(r"\d+", "N", task.name)[:60]] += 1
            if task.name.startswith("image"):
                counts["a row's task resumes at: " + resumes_at(task)] += 1

        def before_io_wait(self, timeout: float) -> None:
            counts["scheduler's wait for I/O (epoll_wait)"] += 1

    Database.run = counted_run
    pgtrio.TrioConnection.fetch = counted_fetch
    pgtrio.TrioConnection.execute = counted_execute
    trio_run = trio.run

    def run_counted(*args, **kw):
        kw.setdefault("instruments", []).append(Steps())
        return trio_run(*args, **kw)

    trio.run = run_counted
    sys.argv[0] = "listener"
    return main([])


def resumes_at(task) -> str:
    frames, coro = [], task.coro
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
        frame = frame or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        name = frame.f_code.co_filename.rsplit("/", 1)[-1]
        frames.append(f"{name}:{frame.f_lineno}:{frame.f_code.co_name}")
        coro = (
            getattr(coro, "cr_await", None)
            or getattr(coro, "ag_await", None)
            or getattr(coro, "gi_yieldfrom", None)
        )
    frames = [f for f in frames if not f.startswith("_traps.py")]
    return " > ".join(frames[-WHERE_DEPTH:])


def drive(n: int) -> None:
    out = h.WORK / "steps.json"
    with (
        h.wrapped_listener("steps", __file__, COUNT_FILE=str(out)) as (url, _emu, proc),
        psycopg.connect(url, autocommit=True) as c,
    ):
        cpu0, t0 = proc.tree_cpu_seconds(), time.monotonic()
        c.execute(
            "INSERT INTO images (prompt) SELECT 'steps ' || g FROM generate_series(1, %s) g",
            (n,),
        )
        waiting = "SELECT count(*) FROM images WHERE status <> 'ReadyToPublish'"
        while c.execute(waiting).fetchone()[0]:
            time.sleep(0.05)
        cpu1, t1 = proc.tree_cpu_seconds(), time.monotonic()
    cpu = f"{1000 * (cpu1 - cpu0) / n:.2f} ms" if cpu0 is not None and cpu1 is not None else "?"
    print(f"{n} rows, {n / (t1 - t0):.0f} rows/s, listener CPU per row {cpu} (counted: slower)")
    counted = json.loads(out.read_text())
    threads = sum(count for what, count in counted if what.startswith("thread: "))
    print(f"{threads / n:8.3f} per row  database calls through a worker thread, in all")
    for what, count in counted:
        if count / n >= 0.01:
            print(f"{count / n:8.3f} per row  {what}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--listener"]:
        sys.exit(listener_main())
    drive(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
