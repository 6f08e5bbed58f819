"""The drain benchmark: N waiting rows through a provider that allows K generations at
once, each taking T seconds; the ideal drain time is ceil(N/K) x T.

    python bench/drain.py                    # N=200, K=4, T=2: about 12 minutes
    python bench/drain.py --n 60 --quick     # a short check of the harness
    python bench/drain.py --write            # also rewrite the drain part of RESULTS.md

The emulator gets the account's true limits (`max_concurrent` = K, `start_rate`,
`over_limit` = 429, generation_time = T, status_time = 1, like the real API's hint). Each
setup runs on a fresh database with the emulator's statistics reset; the listeners are
started first, then the N rows are inserted in one statement, and the drain time is from
that commit to the last `generation_finished_at` (the database's clock for both).

Setups: the listener with 1 and 3 processes, PROVIDER_CONCURRENCY = K (the budget known)
and unset (the provider's default, 8: the adaptation must find K); procrastinate with 1
and 3 workers at concurrency K each (what a user would set per worker), retrying a 429
after 1 s with its RetryStrategy. Every process checks the status every 0.05 s at most
(DEFAULT_CHECK_INTERVAL, BENCH_CHECK_INTERVAL), as in the other benchmarks.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h
import run as r
from harness import Emulator, Process

START, END = "<!-- bench:drain:start -->", "<!-- bench:drain:end -->"
RESULTS_MD = h.REPO / "bench" / "RESULTS.md"
RESULTS_JSON = h.WORK / "drain.json"
# Names of our own: other worktrees' benchmarks may run on the same server.
h.TEMPLATE = f"bench_drain_template_{os.getpid()}"
r.PC_TEMPLATE = f"bench_drain_template_pc_{os.getpid()}"


def insert(url: str, n: int) -> float:
    """N rows in one statement; returns the commit's time on the database's clock."""
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(
            "INSERT INTO images (prompt) SELECT 'drain ' || g FROM generate_series(1, %s) g", (n,)
        )
        return c.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()[0]


def defer_all(url: str) -> None:
    app = r.pc_client(url)
    with app.open(), psycopg.connect(url, autocommit=True) as c:
        for image_id, prompt in c.execute("SELECT id, prompt FROM images ORDER BY id"):
            app.tasks["generate"].defer(image_id=image_id, prompt=prompt)


def one(
    kind: str, processes: int, k: int, t: float, n: int, emu: Emulator, *, limit: str | None
) -> dict:
    name = f"bench_drain_{os.getpid()}"
    url = r.pc_fresh_db(name) if kind == "procrastinate" else h.fresh_db(name)
    emu.control.reset()
    emu.control.configure(
        generation_time=t, status_time=1, max_concurrent=k, over_limit="429", start_rate=0
    )
    procs: list[Process] = []
    try:
        for i in range(processes):
            if kind == "procrastinate":
                env = {"BENCH_RETRY_429": "1"}
                p = h.start_procrastinate(f"drain-pc-{i}", url, emu, concurrency=k, **env)
                p.wait_for("Starting worker")
            else:
                knobs = {"PROVIDER_CONCURRENCY": limit} if limit else {}
                p = r.ready_listener(f"drain-{i}", url, emu, **knobs)
            procs.append(p)
        t0 = time.time()
        start = insert(url, n)
        if kind == "procrastinate":
            defer_all(url)  # one job per row: part of its drain time
        done_sql = "SELECT count(*) FROM images WHERE status IN ('ReadyToPublish', 'Failed')"
        finished = h.wait_rows(url, done_sql, n, timeout=ceil_ideal(n, k, t) * 4 + 60)
        wall = time.time() - t0
        last = h.scalar(
            url, "SELECT extract(epoch FROM max(generation_finished_at))::float8 FROM images"
        )
        failed = h.scalar(url, "SELECT count(*) FROM images WHERE status = 'Failed'")
        stats = emu.control.stats()
        # "once adapted": the second half of the drain, by the time the runs arrived
        mid = (start + last) / 2 if last else math.inf
        late_runs = sum(1 for x in stats["runs"] if x["arrived_at"] >= mid)
        late_refused = sum(1 for at in stats["refused_at"] if at >= mid)
        out = {
            "kind": kind,
            "processes": processes,
            "limit": limit or ("per worker" if kind == "procrastinate" else "unset"),
            "n": n,
            "finished": finished,
            "failed": failed,
            "drain": (last - start) if last else None,
            "wall": wall,
            "ideal": ceil_ideal(n, k, t),
            "status_per_image": stats["status_calls"] / n,
            "run_requests": stats["run_requests"],
            "runs_total": stats["runs_total"],
            "refused": stats["runs_refused"],
            "refused_late": late_refused,
            "runs_late": late_runs + late_refused,
            "most_running": stats["most_running"],
        }
        if kind == "listener":
            out["effective"] = h.scalar(url, "SELECT effective FROM listener_limits")
            out["max_attempts"] = h.scalar(url, "SELECT max(attempts) FROM images")
        else:
            out["max_attempts"] = h.scalar(url, "SELECT max(attempts) FROM procrastinate_jobs")
        return out
    finally:
        for p in procs:
            p.stop()
        h.drop_db(name)


def ceil_ideal(n: int, k: int, t: float) -> float:
    return math.ceil(n / k) * t


def table(rows: list[dict], k: int, t: float, n: int) -> str:
    head = (
        f"N = {n} rows, true limit K = {k} generations at once, T = {t:g} s each: ideal "
        f"drain ceil(N/K) x T = {ceil_ideal(n, k, t):g} s.\n\n"
        "| setup | processes | drain s | vs ideal | most at once | refused / runs sent "
        "| refused, 2nd half | status checks / image | failed | max attempts |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for x in rows:
        setup = (
            f"listener, PROVIDER_CONCURRENCY={x['limit']}"
            if x["kind"] == "listener"
            else f"procrastinate, concurrency={k} per worker"
        )
        drain = x["drain"]
        share = x["refused"] / x["run_requests"] if x["run_requests"] else 0.0
        late = x["refused_late"] / x["runs_late"] if x["runs_late"] else 0.0
        lines.append(
            f"| {setup} | {x['processes']} | {drain:.1f} | {drain / x['ideal']:.2f} "
            f"| {x['most_running']} | {x['refused']} / {x['run_requests']} ({share:.1%}) "
            f"| {x['refused_late']} / {x['runs_late']} ({late:.1%}) "
            f"| {x['status_per_image']:.2f} | {x['failed']} | {x['max_attempts']} |"
            if drain is not None
            else f"| {setup} | {x['processes']} | did not finish ({x['finished']}/{x['n']}) "
            f"| | {x['most_running']} | {x['refused']} / {x['run_requests']} | | "
            f"{x['status_per_image']:.2f} | {x['failed']} | {x['max_attempts']} |"
        )
    return head + "\n".join(lines) + "\n"


def write(text: str) -> None:
    md = RESULTS_MD.read_text()
    if START in md and END in md:
        before, rest = md.split(START, 1)
        _, after = rest.split(END, 1)
        md = before + START + "\n" + text + END + after
    else:
        md = md.rstrip() + "\n\n## Drain at the provider's limit\n\n" + START + "\n" + text + END
        md += "\n"
    RESULTS_MD.write_text(md)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--t", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true", help="listener setups only")
    parser.add_argument("--write", action="store_true", help="rewrite RESULTS.md's drain part")
    args = parser.parse_args()
    h.WORK.mkdir(parents=True, exist_ok=True)
    fingerprint = h.snapshot_code()
    meta = h.machine()  # names the commit now: HEAD may move while the run goes on
    print(f"machine: {meta}", flush=True)
    h.make_template()
    setups = [
        ("listener", 1, str(args.k)),
        ("listener", 3, str(args.k)),
        ("listener", 1, None),
        ("listener", 3, None),
    ]
    if not args.quick:
        r.make_pc_template()
        setups += [("procrastinate", 1, None), ("procrastinate", 3, None)]
    emu = Emulator()
    results = []
    try:
        for kind, procs, limit in setups:
            print(f"== {kind} x{procs} limit={limit} (load {h.loadavg()})", flush=True)
            res = one(kind, procs, args.k, args.t, args.n, emu, limit=limit)
            res["load"] = h.loadavg()
            print(json.dumps(res), flush=True)
            results.append(res)
    finally:
        emu.close()
        h.drop_db(h.TEMPLATE)
        h.drop_db(r.PC_TEMPLATE)
    text = table(results, args.k, args.t, args.n)
    text += (
        f"\nMeasured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on "
        f"{meta.get('cpu', '?')} ({meta.get('cores', '?')} cores, shared), code "
        f"{meta.get('code', '?')}; loads: {', '.join(x['load'] for x in results)}.\n"
    )
    if h.code_fingerprint(h.CODE) != fingerprint:
        text += "\nWARNING: the code snapshot changed during the run.\n"
    print(text)
    RESULTS_JSON.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    if args.write:
        write(text)
    return 0


if __name__ == "__main__":
    os.chdir(h.REPO)
    sys.exit(main())
