"""The benchmarks of issue 6: pickup latency, throughput, procrastinate side by side, scale,
memory, NOTIFY cost and a profile. Re-runnable: every run makes its own databases
(bench_*) on the local server and its own emulator, and rewrites the generated part of
bench/RESULTS.md (between the markers; the hand-written analysis below them is kept).

    python bench/run.py                 # everything, 3 repetitions (about 12 minutes)
    python bench/run.py --quick         # small counts, 1 repetition: checks the harness
    python bench/run.py --only pickup,throughput --reps 5
    python bench/run.py --no-write      # print the table only
    (RESULTS.md is rewritten by a full run only, unless --write is given)

Names for --only: pickup, throughput, baseline, imports, scale, notify, profile, pooler, web,
compare.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h
from harness import DoneListener, Emulator, Process

ALL = (
    "pickup", "throughput", "baseline", "imports", "scale", "notify", "profile", "pooler", "web",
    "compare",
)  # fmt: skip
RESULTS_MD = h.REPO / "bench" / "RESULTS.md"
RESULTS_JSON = h.WORK / "results.json"
START, END = "<!-- bench:results:start -->", "<!-- bench:results:end -->"


def done_sql(first_id: int) -> str:
    """Finished rows from first_id on (the scale section's history is not counted)."""
    return (
        "SELECT count(*) FROM images WHERE status IN ('ReadyToPublish', 'Failed') "
        f"AND id >= {int(first_id)}"
    )


# Named after this process, as is the template (main): another checkout's benchmark run
# on the same server (several share this machine) then never drops this run's templates.
PC_TEMPLATE = f"bench_template_pc_{os.getpid()}"


class Results:
    def __init__(self) -> None:
        self.metrics: dict[str, dict] = {}
        self.extra: dict[str, object] = {}
        self.loads: list[str] = []
        self.checks: list[str] = []  # counts that show each repetition did the whole job
        self.notes: list[str] = []

    def add(self, key: str, section: str, label: str, unit: str, value: float | None) -> None:
        m = self.metrics.setdefault(
            key, {"section": section, "label": label, "unit": unit, "values": []}
        )
        if value is not None and not math.isnan(value):
            m["values"].append(value)

    def summary(self, key: str) -> dict[str, float] | None:
        m = self.metrics.get(key)
        return h.summary(m["values"]) if m and m["values"] else None


# -- one measurement each ----------------------------------------------------------------------


def ready_listener(name: str, url: str, emu: Emulator, size: int = 64, **knobs: str) -> Process:
    p = h.start_listener(name, url, emu, size, **knobs)
    p.wait_for("Listener ready")
    return p


def ready_procrastinate(name: str, url: str, emu: Emulator, size: int = 64) -> Process:
    p = h.start_procrastinate(name, url, emu, size)
    p.wait_for("Starting worker")
    return p


def pc_client(url: str):
    import procrastinate
    from procrastinate_app import make_app

    return make_app(procrastinate.SyncPsycopgConnector(conninfo=url, min_size=1, max_size=2))


def pc_fresh_db(name: str) -> str:
    """Our schema (the same images table and triggers) plus procrastinate's."""
    h.drop_db(name)
    h.execute(h.SERVER, f'CREATE DATABASE "{name}" TEMPLATE "{PC_TEMPLATE}"')
    return h.db_url(name)


def make_pc_template() -> None:
    url = h.fresh_db(PC_TEMPLATE)
    app = pc_client(url)
    with app.open():
        app.schema_manager.apply_schema()


def warm_up(url: str, emu: Emulator, kind: str) -> None:
    """Three rows through the whole path first (connections, pipeline id, imports)."""
    with psycopg.connect(url, autocommit=True) as c:
        ids = [
            c.execute(
                "INSERT INTO images (prompt, status) VALUES (%s, 'ReadyToGenerate') RETURNING id",
                (f"warm-up {i}",),
            ).fetchone()[0]
            for i in range(3)
        ]
    if kind == "procrastinate":
        app = pc_client(url)
        with app.open():
            for i in ids:
                app.tasks["generate"].defer(image_id=i, prompt=f"warm-up {ids.index(i)}")
    h.wait_rows(url, done_sql(min(ids)), 3, timeout=30, every=0.05)
    # only the warm-up rows: the scale section's finished history stays
    h.execute(url, "DELETE FROM images WHERE id = ANY(%s)", (ids,))
    emu.control.reset()


def pickup(url: str, emu: Emulator, n: int, gap: float, kind: str, tag: str) -> dict:
    """n single-row inserts (or defers), gap seconds apart, into an idle service."""
    warm_up(url, emu, kind)
    done = DoneListener(url)
    commits: dict[str, tuple[int, float]] = {}
    prompts = [f"pickup {tag} {i}" for i in range(n)]
    with psycopg.connect(url, autocommit=True) as c:
        if kind == "ours":
            start = time.monotonic()
            for i, prompt in enumerate(prompts):
                _sleep_until(start + i * gap)
                row = c.execute(
                    "INSERT INTO images (prompt, status) VALUES (%s, 'ReadyToGenerate') "
                    "RETURNING id",
                    (prompt,),
                ).fetchone()
                commits[prompt] = (row[0], time.time())
        else:
            # The rows exist first (nothing claims them there); each job's defer is timed.
            ids = [
                r[0]
                for r in c.execute(
                    "INSERT INTO images (prompt) SELECT unnest(%s::text[]) RETURNING id",
                    (prompts,),
                ).fetchall()
            ]
            app = pc_client(url)
            with app.open():
                task = app.tasks["generate"]
                start = time.monotonic()
                for i, (image_id, prompt) in enumerate(zip(ids, prompts, strict=True)):
                    _sleep_until(start + i * gap)
                    task.defer(image_id=image_id, prompt=prompt)
                    commits[prompt] = (image_id, time.time())
    first_id = min(i for i, _ in commits.values())
    finished = h.wait_rows(url, done_sql(first_id), n, timeout=60 + n * 0.2, every=0.1)
    time.sleep(0.3)  # the last notifications
    done.close()
    arrivals = emu.arrivals()
    to_run = [1000 * (arrivals[p] - t) for p, (_, t) in commits.items() if p in arrivals]
    to_done = [1000 * (done.stamps[i] - t) for i, t in commits.values() if i in done.stamps]
    return {
        "to_run": to_run,
        "to_done": to_done,
        "finished": finished,
        "missing_runs": n - len(to_run),
        "missing_done": n - len(to_done),
    }


def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def insert_bulk(url: str, n: int, prompts: int = 64) -> list[int]:
    """n rows in one statement; `prompts` distinct prompts so the emulator's image cache
    (256 entries) serves every image after the first few."""
    with psycopg.connect(url, autocommit=True) as c:
        return [
            r[0]
            for r in c.execute(
                "INSERT INTO images (prompt, status) "
                "SELECT 'throughput ' || (g %% %s), 'ReadyToGenerate' "
                "FROM generate_series(1, %s) AS g RETURNING id",
                (prompts, n),
            ).fetchall()
        ]


def throughput(
    url: str,
    emu: Emulator,
    n: int,
    size: int,
    processes: int,
    kind: str,
    tag: str,
    spawn: Callable[[str], Process] | None = None,
) -> dict:
    """n rows inserted in one statement (and for procrastinate n jobs deferred in one
    batch), then the service started (`spawn(name)` for each process, else a listener or
    a procrastinate worker as `kind` says); rate from the first run request to the last
    ReadyToPublish. CPU is the process trees' (the service's processes and any child)."""
    ids = insert_bulk(url, n)
    if kind == "procrastinate":
        app = pc_client(url)
        with app.open():
            app.tasks["generate"].batch_defer(
                *({"image_id": i, "prompt": f"throughput {k % 64}"} for k, i in enumerate(ids, 1))
            )
    emu.control.reset()
    dbname = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    spawned = time.time()
    if spawn is not None:
        procs = [spawn(f"{tag}-{k}") for k in range(processes)]
    elif kind == "ours":
        procs = [h.start_listener(f"{tag}-{k}", url, emu, size) for k in range(processes)]
    else:
        procs = [h.start_procrastinate(f"{tag}-{k}", url, emu, size) for k in range(processes)]
    try:
        # CPU is counted from the first run request on (start-up and imports left out)
        deadline = time.monotonic() + 60
        while not emu.control.stats()["runs_total"] and time.monotonic() < deadline:
            time.sleep(0.01)
        cpu0 = [p.tree_cpu_seconds() or 0.0 for p in procs]
        emu0 = emu.tree_cpu_seconds() or 0.0
        backends0 = h.backends_cpu(h.backend_pids(dbname))
        busy0, total0 = h.machine_cpu()
        finished = h.wait_rows(url, done_sql(min(ids)), n, timeout=120 + n / 10, every=0.25)
        busy1, total1 = h.machine_cpu()
        rss = [p.peak_rss_mb() for p in procs]
        cpu = [(p.tree_cpu_seconds() or 0.0) - c0 for p, c0 in zip(procs, cpu0, strict=True)]
        emu_cpu = (emu.tree_cpu_seconds() or 0.0) - emu0
        backends1 = h.backends_cpu(h.backend_pids(dbname))
    finally:
        for p in procs:
            p.stop()
    log_lines = sum(p.log.count("\n") for p in procs)
    pg_cpu = sum(c - backends0.get(pid, 0.0) for pid, c in backends1.items())
    runs = emu.control.stats()["runs"]
    first = min(r["arrived_at"] for r in runs)
    with psycopg.connect(url, autocommit=True) as c:
        last, failed, generates = c.execute(
            "SELECT extract(epoch FROM max(generation_finished_at))::float8, "
            "count(*) FILTER (WHERE status = 'Failed'), count(*) FILTER (WHERE status = 'Generate')"
            " FROM images WHERE id >= %s",
            (min(ids),),
        ).fetchone()
    return {
        "rate": n / (last - first),
        "seconds": last - first,
        "startup": first - spawned,
        "finished": finished,
        "failed": failed,
        "left_in_generate": generates,
        "duplicate_runs": len(runs) - n,
        "rss_mb": rss,
        "log_lines": log_lines,  # what the processes logged, start and stop included
        "cpu_s": cpu,
        "emulator_cpu_s": emu_cpu,
        "postgres_cpu_s": pg_cpu,
        "machine_busy": (busy1 - busy0) / (total1 - total0),
        # CPU of everything else on the machine meanwhile: the bench client, PostgreSQL's
        # background processes, and any other work
        "rest_cpu_s": (busy1 - busy0) - sum(cpu) - emu_cpu - pg_cpu,
    }


CLAIM_EXPLAIN = "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) "


def claim_cost(url: str, repeats: int = 30) -> dict:
    """claim_ready (limit 8, the API_CONCURRENCY) on the waiting rows, each call in a
    transaction that is rolled back: the server's planning + execution time (EXPLAIN
    ANALYZE), the client's round trip of the plain query, and one plan in text."""
    from listener.sqlfiles import queries

    query = queries()["claim_ready"]
    # no shared slots (account NULL): the claim statement alone
    params = {
        "worker": "bench",
        "lease": 30,
        "limit": 8,
        "held": [],
        "account": None,
        "mine": [],
        "bind": False,
        "provider": "fusionbrain",
        "default_style": "DEFAULT",
    }
    server: list[float] = []
    client: list[float] = []
    with psycopg.connect(url) as c:
        c.execute("SELECT 1")  # the transaction is open: BEGIN is not in the timings
        for _ in range(repeats):
            plan = c.execute(CLAIM_EXPLAIN + query, params).fetchone()[0][0]
            server.append(plan["Execution Time"] + plan["Planning Time"])
            c.rollback()
            c.execute("SELECT 1")
            t0 = time.perf_counter()
            rows = [r for r in c.execute(query, params).fetchall() if r[0] is not None]
            client.append(1000 * (time.perf_counter() - t0))
            assert len(rows) == 8, f"claim_ready returned {len(rows)} rows"
            c.rollback()
            c.execute("SELECT 1")
        plan_text = "\n".join(
            r[0] for r in c.execute("EXPLAIN (ANALYZE, BUFFERS) " + query, params).fetchall()
        )
        c.rollback()
    return {"server": server, "client": client, "plan": plan_text}


# -- the sections ------------------------------------------------------------------------------

WHO = {"ours": "ours", "procrastinate": "procrastinate"}


def run_pickup(res: Results, emu: Emulator, args, kind: str = "ours") -> None:
    n = 40 if args.quick else 300
    who = WHO[kind]
    for rep in range(args.reps):
        name = f"bench_pickup_{who}"
        url = h.fresh_db(name) if kind == "ours" else pc_fresh_db(name)
        proc = (
            ready_listener(f"listener-pickup-{rep}", url, emu)
            if kind == "ours"
            else ready_procrastinate(f"procrastinate-pickup-{rep}", url, emu)
        )
        time.sleep(0.5)
        res.add(
            f"rss_idle_{who}",
            "5. memory",
            "RSS when started and idle (before any row)",
            "MB",
            proc.rss_mb(),
        )
        try:
            out = pickup(url, emu, n, 0.02, kind, f"{who}{rep}")
        finally:
            proc.stop()
        h.drop_db(name)
        for p in (50, 95, 99):
            res.add(
                f"pickup_run_p{p}_{who}",
                "1. pickup",
                f"commit -> emulator received run, p{p} ({n} rows, 20 ms apart)",
                "ms",
                h.percentile(out["to_run"], p),
            )
        for p in (50, 95, 99):
            res.add(
                f"pickup_done_p{p}_{who}",
                "1. pickup",
                f"commit -> ReadyToPublish (images_done notification), p{p}",
                "ms",
                h.percentile(out["to_done"], p),
            )
        res.add(
            f"pickup_max_{who}",
            "1. pickup",
            "commit -> emulator received run, max",
            "ms",
            max(out["to_run"], default=None),
        )
        res.checks.append(
            f"pickup {who} rep {rep}: {n} rows, {out['finished']} finished, "
            f"{out['missing_runs']} without a run, {out['missing_done']} without a notification"
        )
        print(
            f"  pickup {who} rep {rep}: p50 {h.percentile(out['to_run'], 50):.2f} ms "
            f"p99 {h.percentile(out['to_run'], 99):.2f} ms, to ReadyToPublish p50 "
            f"{h.percentile(out['to_done'], 50):.2f} ms (load {h.loadavg()})",
            flush=True,
        )


TP_CONFIGS = [(64, 1), (64, 2), (1024, 1), (1024, 2)]
# procrastinate: the same, less 1024x1024 with 2 workers (keeps the full run under ~20 min)
TP_CONFIGS_BASELINE = [(64, 1), (64, 2), (1024, 1)]


def run_throughput(res: Results, emu: Emulator, args, kind: str = "ours") -> None:
    n = 500 if args.quick else 5000
    who = WHO[kind]
    name = "bench_throughput" if kind == "ours" else "bench_throughput_pc"
    for rep in range(args.reps):
        for size, procs in TP_CONFIGS if kind == "ours" else TP_CONFIGS_BASELINE:
            url = h.fresh_db(name) if kind == "ours" else pc_fresh_db(name)
            prefix = "listener" if kind == "ours" else "procrastinate"
            out = throughput(url, emu, n, size, procs, kind, f"{prefix}-tp-{size}-{procs}p-{rep}")
            h.drop_db(name)
            pixels = "small 64x64" if size == 64 else "1024x1024 PNG"
            what = "1 process" if procs == 1 else f"{procs} processes"
            res.add(
                f"tp_{size}_{procs}_{who}",
                "2. throughput",
                f"{n} rows, {pixels}, {what}: first run -> last ReadyToPublish",
                "rows/s",
                out["rate"],
            )
            cpu_row = {
                "service": 1000 * sum(out["cpu_s"]) / n,
                "emulator": 1000 * out["emulator_cpu_s"] / n,
                "postgres": 1000 * out["postgres_cpu_s"] / n,
            }
            total_row = sum(cpu_row.values())
            res.add(
                f"tpcpu_rest_{size}_{procs}_{who}",
                "2b. CPU per row",
                f"{pixels}, {what}: the rest of the machine meanwhile (bench client, "
                "PostgreSQL background processes, any other work)",
                "ms",
                1000 * out["rest_cpu_s"] / n,
            )
            for part, ms in [*cpu_row.items(), ("total", total_row)]:
                res.add(
                    f"tpcpu_{part}_{size}_{procs}_{who}",
                    "2b. CPU per row",
                    f"{pixels}, {what}: "
                    + {
                        "service": "listener / worker processes",
                        "emulator": "emulator",
                        "postgres": "PostgreSQL backends of the database",
                        "total": "all three",
                    }[part],
                    "ms",
                    ms,
                )
            res.add(
                f"tpcpu_ceiling_{size}_{procs}_{who}",
                "2b. CPU per row",
                f"{pixels}, {what}: ceiling = {os.cpu_count()} cores / CPU per row (all three)",
                "rows/s",
                1000 * (os.cpu_count() or 1) / total_row,
            )
            res.add(
                f"tpcpu_ceiling0_{size}_{procs}_{who}",
                "2b. CPU per row",
                f"{pixels}, {what}: ceiling if the service itself used no CPU = "
                f"{os.cpu_count()} cores / (emulator + PostgreSQL)",
                "rows/s",
                1000 * (os.cpu_count() or 1) / (cpu_row["emulator"] + cpu_row["postgres"]),
            )
            res.add(
                f"tpcpu_busy_{size}_{procs}_{who}",
                "2b. CPU per row",
                f"{pixels}, {what}: machine busy during the run (all cores, all processes)",
                "%",
                100 * out["machine_busy"],
            )
            if procs == 1:
                res.add(
                    f"rss_{size}_{who}",
                    "5. memory",
                    f"peak RSS during throughput, {pixels}, 1 process",
                    "MB",
                    out["rss_mb"][0],
                )
            else:
                res.add(
                    f"rss_{size}_2p_{who}",
                    "5. memory",
                    f"peak RSS during throughput, {pixels}, largest of 2 processes",
                    "MB",
                    max((r for r in out["rss_mb"] if r), default=None),
                )
            res.extra.setdefault(f"throughput_{who}_raw", []).append(
                {"size": size, "processes": procs, "n": n} | out
            )
            res.checks.append(
                f"throughput {who} {size}px {procs}p rep {rep}: {out['finished']}/{n} finished, "
                f"{out['failed']} Failed, {out['left_in_generate']} left in Generate, "
                f"{out['duplicate_runs']} duplicate runs, first run {out['startup']:.2f} s "
                "after the processes were spawned"
            )
            print(
                f"  throughput {who} {pixels}, {what} rep {rep}: {out['rate']:.0f} rows/s, "
                f"RSS {[round(r or 0, 1) for r in out['rss_mb']]} MB, failed {out['failed']}, "
                f"dup runs {out['duplicate_runs']} (load {h.loadavg()})",
                flush=True,
            )


def run_baseline(res: Results, emu: Emulator, args) -> None:
    make_pc_template()
    try:
        run_pickup(res, emu, args, kind="procrastinate")
        run_throughput(res, emu, args, kind="procrastinate")
    finally:
        h.drop_db(PC_TEMPLATE)


def probe_fresh(script: str, modules: Iterable[str]) -> list[str]:
    """What `script` prints (split on blanks), run in a fresh interpreter with `modules`
    as its arguments: a probe of what imports cost, untouched by this process's own."""
    return subprocess.run(
        [h.PYTHON, "-c", script, *modules],
        env=h.clean_env(),
        cwd=h.WORK,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()


IMPORT_PROBE = """
import importlib, sys
for m in sys.argv[1:]:
    importlib.import_module(m)
rss = next(l for l in open("/proc/self/status") if l.startswith("VmRSS:")).split()[1]
print(int(rss) / 1024, int("hypercorn" in sys.modules), int("PIL.Image" in sys.modules))
"""
# What `listener` (the run command) needs to serve: every module the service runs on.
CORE_MODULES = [
    "listener.config",
    "listener.logs",
    "listener.db",
    "listener.store",
    "listener.notify",
    "listener.providers.fusionbrain.client",
    "listener.engine",
    "listener.providers.fusionbrain",
    "listener.service",
    "listener.migrate",
]


def run_imports(res: Results, emu: Emulator, args) -> None:
    """RSS of a fresh interpreter after imports only, adding one library at a time: what
    the service's libraries cost, what its own modules add, and what `python -m listener`
    (listener.cli, which loads every subcommand) adds on top."""
    steps = [
        ("python, nothing imported", []),
        ("+ trio", ["trio"]),
        ("+ psycopg, psycopg_pool", ["psycopg", "psycopg_pool"]),
        ("+ httpx", ["httpx"]),
        ("+ pydantic, pydantic_settings, stamina", ["pydantic", "pydantic_settings", "stamina"]),
        ("+ the service's own modules (config, db, store, notify, engine, ...)", CORE_MODULES),
        ("+ listener.cli, what `python -m listener` imports", ["listener.cli"]),
    ]
    for _rep in range(max(args.reps, 3)):
        modules: list[str] = []
        for k, (label, more) in enumerate(steps):
            modules += more
            out = probe_fresh(IMPORT_PROBE, modules)
            res.add(
                f"rss_import_{k}", "5. memory", f"RSS after imports: {label}", "MB", float(out[0])
            )
            res.extra[f"imports_{k}_loads_hypercorn_pil"] = out[1:]


def run_scale(res: Results, emu: Emulator, args) -> None:
    scales = (10_000, 100_000) if args.quick else (10_000, 1_000_000)
    n_pickup, n_tp = (30, 300) if args.quick else (100, 2000)
    for scale in scales:
        label = f"{scale:,} finished"
        url = h.fresh_db("bench_scale")
        t0 = time.monotonic()
        with psycopg.connect(url, autocommit=True) as c:
            c.execute(
                "INSERT INTO images (prompt, status, base64, uuid, attempts, "
                "generation_started_at, generation_finished_at) "
                "SELECT 'finished ' || g, 'ReadyToPublish', 'aGk=', gen_random_uuid()::text, 1, "
                "now(), now() FROM generate_series(1, %s) AS g",
                (scale,),
            )
            c.execute("VACUUM ANALYZE images")
            seed_max = c.execute("SELECT max(id) FROM images").fetchone()[0]
        print(f"  scale {label}: seeded in {time.monotonic() - t0:.1f}s", flush=True)

        def cleanup(url: str = url, seed_max: int = seed_max) -> None:
            with psycopg.connect(url, autocommit=True) as c:
                c.execute("DELETE FROM images WHERE id > %s", (seed_max,))
                c.execute("VACUUM ANALYZE images")

        key = f"{scale // 1000}k"
        for rep in range(args.reps):
            proc = ready_listener(f"listener-scale-{key}-{rep}", url, emu)
            time.sleep(0.5)
            try:
                out = pickup(url, emu, n_pickup, 0.02, "ours", f"scale{key}{rep}")
            finally:
                proc.stop()
            cleanup()
            pickup_p50 = h.percentile(out["to_run"], 50)
            for p in (50, 99):
                res.add(
                    f"scale_pickup_p{p}_{key}",
                    "4. scale",
                    f"{label}: commit -> emulator received run, p{p} ({n_pickup} rows)",
                    "ms",
                    h.percentile(out["to_run"], p),
                )
            res.checks.append(
                f"scale {key} pickup rep {rep}: {n_pickup} rows, {out['finished']} finished, "
                f"{out['missing_runs']} without a run"
            )
            insert_bulk(url, n_tp)
            claims = {}
            for stats in ("stale", "analyzed"):
                if stats == "analyzed":
                    h.execute(url, "ANALYZE images")
                claims[stats] = cost = claim_cost(url)
                how = (
                    "statistics as left by the bulk INSERT" if stats == "stale" else "after ANALYZE"
                )
                res.add(
                    f"scale_claim_{stats}_{key}",
                    "4. scale",
                    f"{label}: claim_ready, 8 of {n_tp} waiting, {how}: server time "
                    "(EXPLAIN ANALYZE planning + execution)",
                    "ms",
                    statistics.median(cost["server"]),
                )
                res.add(
                    f"scale_claim_client_{stats}_{key}",
                    "4. scale",
                    f"{label}: claim_ready, 8 of {n_tp} waiting, {how}: client round trip",
                    "ms",
                    statistics.median(cost["client"]),
                )
                res.extra[f"plan_{stats}_{key}"] = cost["plan"]
            times = claims["stale"]["server"]
            h.execute(url, "DELETE FROM images WHERE id > %s", (seed_max,))
            out = throughput(url, emu, n_tp, 64, 1, "ours", f"listener-scale-tp-{key}-{rep}")
            cleanup()
            res.add(
                f"scale_tp_{key}",
                "4. scale",
                f"{label}: throughput, {n_tp} rows inserted at once, 1 listener",
                "rows/s",
                out["rate"],
            )
            res.checks.append(
                f"scale {key} throughput rep {rep}: {out['finished']}/{n_tp} finished, "
                f"{out['failed']} Failed, {out['duplicate_runs']} duplicate runs"
            )
            print(
                f"  scale {label} rep {rep}: pickup p50 {pickup_p50:.2f} ms, claim "
                f"{statistics.median(times):.3f} ms, {out['rate']:.0f} rows/s "
                f"(load {h.loadavg()})",
                flush=True,
            )
        h.drop_db("bench_scale")


def run_notify(res: Results, emu: Emulator, args) -> None:
    n = 10_000
    url = h.fresh_db("bench_notify")
    triggers = "images_wakeup_after_insert, images_wakeup_after_update, images_announce_done"
    # LISTENers on both channels, as in production (a NOTIFY nobody listens to is cheaper)
    listening = DoneListener(url)
    wakeups = DoneListener(url, "images_wakeup")
    reps = max(args.reps, 5)
    with psycopg.connect(url, autocommit=True) as c:
        for _rep in range(reps):
            for on in (True, False):
                c.execute("TRUNCATE images")
                for t in triggers.split(", "):
                    c.execute(f"ALTER TABLE images {'ENABLE' if on else 'DISABLE'} TRIGGER {t}")
                t0 = time.perf_counter()
                c.execute(
                    "INSERT INTO images (prompt, status) SELECT 'row ' || g, 'ReadyToGenerate' "
                    "FROM generate_series(1, %s) AS g",
                    (n,),
                )
                t1 = time.perf_counter()
                c.execute(
                    "UPDATE images SET status = 'ReadyToPublish', base64 = 'aGk=', "
                    "uuid = 'u' || id, generation_finished_at = now()"
                )
                t2 = time.perf_counter()
                which = "with" if on else "without"
                res.add(
                    f"notify_insert_{which}",
                    "6. NOTIFY cost",
                    f"INSERT {n:,} rows, one statement, {which} notify triggers",
                    "ms",
                    1000 * (t1 - t0),
                )
                res.add(
                    f"notify_update_{which}",
                    "6. NOTIFY cost",
                    f"UPDATE {n:,} rows to ReadyToPublish, {which} notify triggers",
                    "ms",
                    1000 * (t2 - t1),
                )
    time.sleep(1.0)
    res.notes.append(
        f"NOTIFY: over {reps} INSERTs of {n:,} rows with the triggers, the images_wakeup "
        f"LISTENer received {wakeups.count} notification(s); over {reps} UPDATEs of {n:,} rows "
        f"to ReadyToPublish, the images_done LISTENer received {listening.count} "
        "(one per row, by design: the payload is the row id)."
    )
    listening.close()
    wakeups.close()
    h.drop_db("bench_notify")


POOLER_SETUPS = (
    # key, label, where the listener's DATABASE_URL goes, settings ({direct}: the
    # database's own URL, straight to PostgreSQL)
    ("direct", "direct to PostgreSQL (DB_PREPARED_STATEMENTS=auto)", "direct", {}),
    (
        "direct_noprep",
        "direct, DB_PREPARED_STATEMENTS=off",
        "direct",
        {"DB_PREPARED_STATEMENTS": "off"},
    ),
    (
        "listen_url",
        "PgBouncer + LISTEN_DATABASE_URL (direct)",
        "pooler",
        {"LISTEN_DATABASE_URL": "{direct}"},
    ),
    ("poll", "PgBouncer only: polling, POLL_INTERVAL=1", "pooler", {}),
)


def _pgbouncer_module():
    """tests/fixtures/pgbouncer.py, loaded by path (the tests package needs pytest)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_pgbouncer", h.REPO / "tests" / "fixtures" / "pgbouncer.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_pooler(res: Results, emu: Emulator, args) -> None:
    """Issue 15: pickup latency behind PgBouncer 1.18 in transaction mode, in the three
    setups of the README, next to the direct path (with and without server-side prepared
    statements). The client inserts straight into PostgreSQL in every setup; only the
    listener's connections change."""
    pgb = _pgbouncer_module()
    if pgb.find_pgbouncer() is None:
        res.notes.append("pooler: section skipped, " + pgb.SKIP_REASON)
        print("  " + pgb.SKIP_REASON, flush=True)
        return
    n = 30 if args.quick else 100
    gap = 0.05
    bouncer = pgb.PgBouncer(h.SERVER, pool_size=8)
    try:
        for rep in range(args.reps):
            for key, label, route, settings in POOLER_SETUPS:
                name = f"bench_pooler_{key}"
                url = h.fresh_db(name)
                knobs = {k: v.replace("{direct}", url) for k, v in settings.items()}
                target = bouncer.url_for(url) if route == "pooler" else url
                proc = ready_listener(f"listener-pooler-{key}-{rep}", target, emu, **knobs)
                time.sleep(0.5)
                try:
                    out = pickup(url, emu, n, gap, "ours", f"{key}{rep}")
                finally:
                    proc.stop()
                deaf = "LISTEN self-test failed" in proc.log
                prepared_errors = proc.log.count('prepared statement "')
                h.drop_db(name)
                for p in (50, 95):
                    res.add(
                        f"pooler_{key}_p{p}",
                        "7. pooler",
                        f"{label}: commit -> emulator received run, p{p} "
                        f"({n} rows, {gap * 1000:.0f} ms apart)",
                        "ms",
                        h.percentile(out["to_run"], p),
                    )
                res.add(
                    f"pooler_{key}_max",
                    "7. pooler",
                    f"{label}: commit -> emulator received run, max",
                    "ms",
                    max(out["to_run"], default=None),
                )
                res.checks.append(
                    f"pooler {key} rep {rep}: {n} rows, {out['finished']} finished, "
                    f"{out['missing_runs']} without a run; LISTEN self-test "
                    f"{'failed (polling)' if deaf else 'passed'}; "
                    f"{prepared_errors} prepared-statement error(s) in the log"
                )
                print(
                    f"  pooler {key} rep {rep}: p50 {h.percentile(out['to_run'], 50):.2f} ms "
                    f"p95 {h.percentile(out['to_run'], 95):.2f} ms, "
                    f"{'polling' if deaf else 'listening'}, {prepared_errors} prepared errors "
                    f"(load {h.loadavg()})",
                    flush=True,
                )
    finally:
        bouncer.close()


WEB = "8. HTTP server"


def run_web(res: Results, emu: Emulator, args) -> None:
    """What --http costs the pickup path while nobody looks (the same pickup run with the
    server off and on, alternated), and the gallery's answer times on 100,000 rows."""
    n = 40 if args.quick else 300
    for rep in range(args.reps):
        for variant, knobs in (("off", {}), ("on", {"HTTP_ADDRESS": "127.0.0.1:0"})):
            name = f"bench_web_{variant}"
            url = h.fresh_db(name)
            proc = ready_listener(f"listener-web-{variant}-{rep}", url, emu, **knobs)
            time.sleep(0.5)
            res.add(
                f"web_rss_idle_{variant}", WEB, f"RSS idle, --http {variant}", "MB", proc.rss_mb()
            )
            try:
                cpu = proc.cpu_seconds() or 0.0
                out = pickup(url, emu, n, 0.02, "ours", f"web{variant}{rep}")
                cpu = (proc.cpu_seconds() or 0.0) - cpu
            finally:
                proc.stop()
            h.drop_db(name)
            # CPU time is what the server could add to each row; it is also the figure that
            # a loaded machine (other processes on the cores) disturbs least.
            res.add(
                f"web_cpu_per_row_{variant}",
                WEB,
                f"listener CPU per row (3 warm-up rows included), --http {variant}",
                "ms",
                1000 * cpu / (n + 3),
            )
            for p in (50, 95, 99):
                res.add(
                    f"web_pickup_p{p}_{variant}",
                    WEB,
                    f"commit -> run, p{p}, --http {variant} (nobody looking; {n} rows)",
                    "ms",
                    h.percentile(out["to_run"], p),
                )
            res.checks.append(
                f"web pickup --http {variant} rep {rep}: {n} rows, {out['finished']} finished"
            )
            print(
                f"  pickup --http {variant} rep {rep}: p50 "
                f"{h.percentile(out['to_run'], 50):.2f} ms, p99 "
                f"{h.percentile(out['to_run'], 99):.2f} ms, CPU {1000 * cpu / (n + 3):.2f} "
                f"ms/row (load {h.loadavg()})",
                flush=True,
            )
    wrap = seam_cost()
    res.add("web_seam_cost", WEB, "metrics at the seams, CPU per row (in-process)", "us", wrap)
    print(f"  metrics at the seams: {wrap:.1f} us per row", flush=True)
    run_gallery(res, emu, 10_000 if args.quick else 100_000)


def seam_cost(rows: int = 20_000) -> float:
    """Microseconds the observed seams add to one row's path (claim, submit, one outcome,
    finalise), measured in-process against do-nothing seams: the load on the machine
    disturbs this far less than a latency."""
    import trio

    from listener.engine.ports import Claimed, Ready, ReadyRow, Submitted
    from listener.web.metrics import Metrics
    from listener.web.observed import ObservedProvider, ObservedStore, Tracker

    class Store:
        async def claim_ready(self, limit):
            return [ReadyRow(id=limit, prompt="p", waited=0.001, age=0.001)]

        async def claim_generating(self, limit):
            return Claimed([], None)

        async def finalise(self, id_, handle, image):
            return None

    class Provider:
        name = "fake"

        async def submit(self, request):
            return Submitted("h")

        async def outcome(self, handle):
            return Ready("x")

    class Request:
        def __init__(self, row_id):
            self.row_id = row_id

    async def path(store, provider) -> float:
        began = time.process_time()
        for i in range(rows):
            await store.claim_ready(i)
            await provider.submit(Request(i))
            await provider.outcome(f"h{i}")
            await store.finalise(i, "h", "x")
        return time.process_time() - began

    async def both() -> float:
        plain = await path(Store(), Provider())
        m, t = Metrics(), Tracker()
        observed = await path(
            ObservedStore(Store(), m, "fake", t), ObservedProvider(Provider(), m, t)
        )
        return 1e6 * (observed - plain) / rows

    return statistics.median(trio.run(both) for _ in range(3))


def run_gallery(res: Results, emu: Emulator, total: int) -> None:
    import re

    import httpx

    name = "bench_web_gallery"
    url = h.fresh_db(name)
    # A small real PNG as every finished row's image; 1% Failed with a reason.
    png = (
        "iVBORw0KGgoAAAANSUhEUgAAAEAAAABACAIAAAAlC+aJAAAAY0lEQVR4nO3PQQ3AIADAQEANcpCNrIngcVnSU9DOe/b4"
        "s6UDXjWgNaA1oDWgNaA1oDWgNaA1oDWgNaA1oDWgNaA1oDWgNaA1oDWgNaA1oDWgNaA1oDWgNaA1oDWgNaA1oDWg"
        "fZKYAcC/rzn4AAAAAElFTkSuQmCC"
    )
    h.execute(
        url,
        "INSERT INTO images (prompt, status, base64, last_error, generation_started_at, "
        "generation_finished_at) "
        "SELECT 'prompt number ' || g || CASE WHEN g %% 7 = 0 THEN ' red fox' ELSE '' END, "
        "CASE WHEN g %% 100 = 0 THEN 'Failed' ELSE 'ReadyToPublish' END, "
        "CASE WHEN g %% 100 = 0 THEN NULL ELSE %s END, "
        "CASE WHEN g %% 100 = 0 THEN 'generation FAIL: emulated' END, now(), now() "
        "FROM generate_series(1, %s) g",
        (png, total),
    )
    h.execute(url, "VACUUM ANALYZE images")
    proc = ready_listener("listener-web-gallery", url, emu, HTTP_ADDRESS="127.0.0.1:0")
    base = re.search(r"HTTP server at (http://\S+/)", proc.log).group(1)
    pages = {
        "first page": "",
        "page at the middle (keyset)": f"?before={total // 2}",
        "failed only": "?status=failed",
        "prompt search (latest 10,000 rows)": "?q=red+fox",
        "search without a match": "?q=no+such+prompt",
    }
    try:
        with httpx.Client(timeout=30, trust_env=False) as client:
            for label, query in pages.items():
                times = []
                for _ in range(25):
                    t0 = time.perf_counter()
                    r = client.get(base + query)
                    times.append(1000 * (time.perf_counter() - t0))
                    assert r.status_code == 200, r.text[:200]
                res.add(
                    f"web_gallery_{label}",
                    WEB,
                    f"gallery {label}, {total:,} rows: answer time, median of 25",
                    "ms",
                    statistics.median(times),
                )
                print(f"  gallery {label}: {statistics.median(times):.1f} ms", flush=True)
            ids = re.findall(r"/thumb/(\d+)\?v=(\d+)", client.get(base).text)
            cold, warm = [], []
            for id_, v in ids[:20]:
                t0 = time.perf_counter()
                client.get(f"{base}thumb/{id_}?v={v}")
                cold.append(1000 * (time.perf_counter() - t0))
                t0 = time.perf_counter()
                client.get(f"{base}thumb/{id_}?v={v}")
                warm.append(1000 * (time.perf_counter() - t0))
            res.add(
                "web_thumb_cold", WEB, "thumbnail, first request", "ms", statistics.median(cold)
            )
            res.add("web_thumb_warm", WEB, "thumbnail, cached", "ms", statistics.median(warm))
            print(
                f"  thumbnail: first {statistics.median(cold):.1f} ms, cached "
                f"{statistics.median(warm):.1f} ms ({len(cold)} images)",
                flush=True,
            )
    finally:
        proc.stop()
        h.drop_db(name)


# -- compare: issue 23's side-by-side run ---------------------------------------------------------

CMP = "9. compare"
# The systems, in the order each repetition runs them (pickup and throughput); "http" is
# the listener with its HTTP server on, run under load for its peak RSS; "floor" only
# imports the design card's packages (issue 23's floor: psycopg, trio, httpx, pydantic,
# pytest, pytest-trio); "runtime" only the four a running listener needs of them.
CMP_NAMES = {
    "listener": "listener",
    "http": "listener --http",
    "procrastinate": "procrastinate",
    "plain": "plain loop",
    "floor": "floor",
    "runtime": "runtime floor",
}
CMP_READY = {
    "listener": "Listener ready",
    "http": "Listener ready",
    "procrastinate": "Starting worker",
    "plain": "plain loop ready",
}
# argv: the modules to import; prints VmHWM (MB) after them, then after BaseModel too.
FLOOR_PROBE = """
import importlib, sys
def peak():
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024
for name in sys.argv[1:]:
    importlib.import_module(name)
first = peak()
from pydantic import BaseModel
print(first, peak())
"""
# issue 23's floor: the design card's packages (DESIGN.md, "packages")
FLOOR_MODULES = ("psycopg", "trio", "httpx", "pydantic", "pytest", "pytest_trio")
RUNTIME_MODULES = ("psycopg", "trio", "httpx", "pydantic")
# (what, metric, ours, theirs, "le" or "ge", limit): issue 23's targets, on medians
CMP_TARGETS = [
    ("pickup p50 <= 1.1x the plain loop's", "pickup_p50", "listener", "plain", "le", 1.1),
    ("pickup p99 <= 2x the plain loop's", "pickup_p99", "listener", "plain", "le", 2.0),
    (
        "listener CPU per row (1 process) <= 0.7x procrastinate's",
        "cpu_service_1",
        "listener",
        "procrastinate",
        "le",
        0.7,
    ),
    (
        "listener CPU per row (1 process) <= 1.3x the plain loop's",
        "cpu_service_1",
        "listener",
        "plain",
        "le",
        1.3,
    ),
    ("rows/s, 1 process >= 1.5x procrastinate's", "tp_1", "listener", "procrastinate", "ge", 1.5),
    ("peak RSS under load <= 1.1x the floor", "rss_1", "listener", "floor", "le", 1.1),
    ("peak RSS under load, --http on <= 1.2x the floor", "rss_1", "http", "floor", "le", 1.2),
    # not issue 23's: the same two against the packages a running listener imports
    (
        "(reference) peak RSS under load / the runtime floor",
        "rss_1",
        "listener",
        "runtime",
        "le",
        None,
    ),
    ("(reference) --http on / the runtime floor", "rss_1", "http", "runtime", "le", None),
]


def cmp_spawn(system: str, url: str, emu: Emulator) -> Callable[[str], Process]:
    """How each system is started: the listener as `python -m listener` with the
    benchmark's settings (the same as every section; --http on for "http"),
    procrastinate with its loggers at WARNING, the plain loop."""

    def spawn(name: str) -> Process:
        if system == "listener":
            return h.start_listener(name, url, emu)
        if system == "http":
            return h.start_listener(name, url, emu, HTTP_ADDRESS="127.0.0.1:0")
        if system == "procrastinate":
            return h.start_procrastinate(name, url, emu, BENCH_PROCRASTINATE_QUIET="1")
        return h.start_plain_loop(name, url, emu)

    return spawn


def cmp_db(system: str) -> tuple[str, str]:
    name = f"bench_cmp_{system}_{os.getpid()}"
    return name, (pc_fresh_db(name) if system == "procrastinate" else h.fresh_db(name))


def cmp_pickup(res: Results, emu: Emulator, system: str, rep: int, n: int, gap: float) -> str:
    name, url = cmp_db(system)
    proc = cmp_spawn(system, url, emu)(f"cmp-pickup-{system}-{rep}")
    try:
        proc.wait_for(CMP_READY[system])
        time.sleep(0.5)
        kind = "procrastinate" if system == "procrastinate" else "ours"
        out = pickup(url, emu, n, gap, kind, f"cmp{system}{rep}")
    finally:
        proc.stop()
    h.drop_db(name)
    p50, p99 = h.percentile(out["to_run"], 50), h.percentile(out["to_run"], 99)
    what = f"({n} rows, {gap * 1000:.0f} ms apart)"
    res.add(
        f"cmp_pickup_p50_{system}",
        CMP,
        f"pickup p50: commit -> first byte of the run request {what}",
        "ms",
        p50,
    )
    res.add(f"cmp_pickup_p95_{system}", CMP, "pickup p95", "ms", h.percentile(out["to_run"], 95))
    res.add(f"cmp_pickup_p99_{system}", CMP, "pickup p99", "ms", p99)
    res.add(
        f"cmp_done_p50_{system}",
        CMP,
        "commit -> ReadyToPublish (images_done), p50",
        "ms",
        h.percentile(out["to_done"], 50),
    )
    res.extra.setdefault("compare_pickup_raw", []).append(
        {"system": system, "rep": rep, "to_run_ms": out["to_run"], "to_done_ms": out["to_done"]}
    )
    # A run request stamped before the client's commit stamp: the client (which stamps
    # when the commit has returned) was kept off the CPU meanwhile; a loaded machine.
    early = sum(1 for ms in out["to_run"] if ms < 0)
    res.checks.append(
        f"compare pickup {CMP_NAMES[system]} rep {rep + 1}: {n} rows, {out['finished']} finished, "
        f"{out['missing_runs']} without a run, {out['missing_done']} without a notification, "
        f"{early} run request(s) stamped before the client saw its commit"
    )
    return f"pickup {CMP_NAMES[system]} p50 {p50:.2f} p99 {p99:.2f} ms"


def cmp_throughput(res: Results, emu: Emulator, system: str, rep: int, n: int, procs: int) -> str:
    name, url = cmp_db(system)
    kind = "procrastinate" if system == "procrastinate" else "ours"
    spawn = cmp_spawn(system, url, emu)
    out = throughput(url, emu, n, 64, procs, kind, f"cmp-tp-{system}-{procs}p-{rep}", spawn)
    h.drop_db(name)
    p = procs
    what = "1 process" if p == 1 else f"{p} processes"
    res.add(
        f"cmp_tp_{p}_{system}",
        CMP,
        f"rows/s, {what} ({n} rows inserted first)",
        "rows/s",
        out["rate"],
    )
    for part, key, label in (
        ("service", "cpu_s", "listener / worker processes"),
        ("emulator", "emulator_cpu_s", "the API stand-in (emulator)"),
        ("postgres", "postgres_cpu_s", "PostgreSQL backends"),
        (
            "rest",
            "rest_cpu_s",
            "the rest of the machine (client, PostgreSQL's own processes, other work)",
        ),
    ):
        seconds = sum(out[key]) if part == "service" else out[key]
        res.add(
            f"cmp_cpu_{part}_{p}_{system}",
            CMP,
            f"CPU per row, {what}: {label}",
            "ms",
            1000 * seconds / n,
        )
    res.add(f"cmp_busy_{p}_{system}", CMP, f"machine busy, {what}", "%", 100 * out["machine_busy"])
    peak = max((r for r in out["rss_mb"] if r), default=None)
    res.add(
        f"cmp_rss_{p}_{system}",
        CMP,
        "peak RSS (VmHWM) of one process under load"
        if p == 1
        else f"peak RSS (VmHWM), largest of {p} processes",
        "MB",
        peak,
    )
    res.add(
        f"cmp_loglines_{p}_{system}", CMP, f"log lines written, {what}", "lines", out["log_lines"]
    )
    res.extra.setdefault("compare_raw", []).append(
        {"system": system, "processes": p, "n": n, "rep": rep} | out
    )
    res.checks.append(
        f"compare throughput {CMP_NAMES[system]} {what} rep {rep + 1}: {out['finished']}/{n} "
        f"finished, {out['failed']} Failed, {out['left_in_generate']} left in Generate, "
        f"{out['duplicate_runs']} duplicate runs, {out['log_lines']} log lines"
    )
    return f"{CMP_NAMES[system]} {what}: {out['rate']:.0f} rows/s, {peak or 0:.1f} MB"


def cmp_floor(res: Results) -> str:
    """The floors, each in a fresh process: issue 23's (the design card's packages) and
    the runtime one (without pytest and pytest-trio), the latter also with BaseModel."""

    def probe(modules: tuple[str, ...]) -> tuple[float, float]:
        out = probe_fresh(FLOOR_PROBE, modules)
        return float(out[0]), float(out[1])

    floor, _ = probe(FLOOR_MODULES)
    runtime, with_model = probe(RUNTIME_MODULES)
    label = "peak RSS (VmHWM) of one process under load"
    res.add("cmp_rss_1_floor", CMP, label, "MB", floor)
    res.add("cmp_rss_1_runtime", CMP, label, "MB", runtime)
    res.add(
        "cmp_floor_model_runtime",
        CMP,
        "floor process after also `from pydantic import BaseModel` (pydantic's lazy main "
        "module loaded)",
        "MB",
        with_model,
    )
    return f"floor {floor:.1f} MB, runtime floor {runtime:.1f} MB ({with_model:.1f} with BaseModel)"


# The throughput runs of a repetition, in order: (system, processes, which row count).
# The targets are judged on the 1-process runs, which get the full count; the 2-process
# runs (reported, no target) half of it, and the --http run, there for its peak RSS (a
# plateau reached within the first few hundred rows), a fifth: 5 repetitions stay near 12
# minutes at today's rates.
CMP_RUNS = [
    ("listener", 1, "full"),
    ("procrastinate", 1, "full"),
    ("plain", 1, "full"),
    ("http", 1, "fifth"),
    ("listener", 2, "half"),
    ("procrastinate", 2, "half"),
    ("plain", 2, "half"),
]


def cmp_counts(args) -> dict[str, int]:
    full = args.compare_rows or (200 if args.quick else 5000)
    return {"full": full, "half": max(full // 2, 100), "fifth": max(full // 5, 100)}


def run_compare(res: Results, _main_emu: Emulator, args) -> None:
    """Issue 23, item 4: the listener, procrastinate (configured for throughput) and a
    plain psycopg loop doing the same job, side by side, repetitions interleaved, against
    an emulator that stamps each request at its first byte."""
    n_pickup, gap = (40, 0.02) if args.quick else (250, 0.02)
    counts = cmp_counts(args)
    # at least 5 in a full run (single runs differ by 10-15% here); 2 with --quick
    reps = args.reps_given or (2 if args.quick else 5)
    if not args.quick:
        reps = max(reps, 5)
    make_pc_template()
    emu = Emulator(stamped=True)
    loads: list[str] = []
    try:
        for rep in range(reps):
            load = h.loadavg()
            loads.append(f"rep {rep + 1}: {load}")
            print(f"  compare rep {rep + 1}/{reps} (load {load})", flush=True)
            for system in ("listener", "procrastinate", "plain"):
                print("    " + cmp_pickup(res, emu, system, rep, n_pickup, gap), flush=True)
            for system, procs, n in CMP_RUNS:
                line = cmp_throughput(res, emu, system, rep, counts[n], procs)
                print("    " + line, flush=True)
            print("    " + cmp_floor(res), flush=True)
    finally:
        emu.close()
        h.drop_db(PC_TEMPLATE)
    loads.append(f"end: {h.loadavg()}")
    stamped = (h.WORK / "emulator-stamped.log").read_text(errors="replace").strip().splitlines()
    res.extra["compare"] = {
        "reps": reps,
        "loads": loads,
        "pickup_rows": n_pickup,
        "gap": gap,
        "rows": counts,
        "emulator": stamped[-1] if stamped else "?",
    }
    print(f"  {res.extra['compare']['emulator']}", flush=True)
    if "took their stamp as arrived_at: 0" in str(res.extra["compare"]["emulator"]):
        res.notes.insert(
            0,
            "WARNING: the compare section's emulator stamped no API request at its first "
            "byte (has EmulatorApp._api changed?): its pickup figures are stamped after the "
            "headers were parsed, as in the other sections.",
        )


def run_profile(res: Results, emu: Emulator, args) -> None:
    """py-spy on one listener while it works through a bulk insert (small images).

    --gil keeps only samples of the thread holding the GIL, i.e. Python running: a sampled
    thread waiting for PostgreSQL or a socket (GIL released) is not counted as CPU."""
    n = 500 if args.quick else 3000
    url = h.fresh_db("bench_profile")
    proc = ready_listener("listener-profile", url, emu)
    raw = h.WORK / "profile.txt"  # collapsed stacks: flamegraph.pl or speedscope open it
    rate = 250
    spy = subprocess.Popen(
        [
            *(str(Path(h.PYTHON).parent / "py-spy"), "record", "--pid", str(proc.pid)),
            *("--rate", str(rate), "--format", "raw", "-o", str(raw)),
            *("--nonblocking", "--threads", "--gil"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.0)
    cpu0 = proc.cpu_seconds() or 0.0
    t0 = time.monotonic()
    ids = insert_bulk(url, n)
    h.wait_rows(url, done_sql(min(ids)), n, timeout=120 + n / 10, every=0.25)
    wall = time.monotonic() - t0
    cpu = (proc.cpu_seconds() or 0.0) - cpu0
    spy.send_signal(signal.SIGINT)
    _, err = spy.communicate(timeout=30)
    proc.stop()
    h.drop_db("bench_profile")
    summary = summarise_profile(raw, n, cpu)
    summary |= {"wall_seconds": wall, "rate": rate, "py_spy_stderr": err.decode()[-500:]}
    res.extra["profile"] = summary


# Where a sample's CPU goes: the outermost frame (from the thread's root towards the leaf)
# that lies in one of these libraries names the work; what calls into no library is the
# listener's own code (its frame is the leaf) or trio's scheduler. py-spy prints paths
# relative to site-packages or to the repository.
CATEGORIES = [
    (
        "API requests: httpx, httpcore, h11 (and the trio socket calls beneath)",
        ("httpx/", "httpcore/", "h11/", "anyio/", "sniffio/"),
    ),
    (
        "database: psycopg, psycopg_pool (queries, pool, result parsing)",
        ("psycopg/", "psycopg_pool/", "psycopg_binary/"),
    ),
    ("logging: log records, formatting, the stderr write", ("logging/",)),
    ("retry wrappers: stamina, tenacity", ("stamina/", "tenacity/")),
    ("pydantic", ("pydantic/", "pydantic_core/")),
]
OWN = "the listener's own code (listener/)"
TRIO = "trio: scheduler, thread hand-off to the pool's workers, epoll"
OTHER = "other (stdlib, interpreter start-up)"


def _path(frame: str) -> str:
    """The file of a frame, relative to site-packages or to the code snapshot."""
    path = frame.rpartition(" (")[2].rstrip(")") if frame.endswith(")") else frame
    for root in ("site-packages/", ".work/code/"):
        path = path.rpartition(root)[2]
    return path.removeprefix("code/")


def _category(frames: list[str]) -> str:
    paths = [_path(f) for f in frames]
    for path in paths:
        for name, prefixes in CATEGORIES:
            if path.startswith(prefixes):
                return name
    if paths and paths[-1].startswith("listener/"):
        return OWN
    if any(p.startswith("trio/") for p in paths):
        return TRIO
    return OTHER


def summarise_profile(path: Path, rows: int, cpu: float) -> dict:
    """Collapsed stacks (py-spy raw): each sample counted once, in the category of its
    outermost library frame; plus self time per function."""
    if not path.exists():
        return {"error": "py-spy wrote no profile (ptrace not permitted?)"}
    self_time: Counter[str] = Counter()
    by_category: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if not f.startswith(("thread ", "process "))]
        if not frames:
            continue
        k = int(count)
        total += k
        self_time[_short(frames[-1])] += k
        by_category[_category(frames)] += k
    names = [name for name, _ in CATEGORIES] + [OWN, TRIO, OTHER]
    per_row = 1000 * cpu / rows
    return {
        "samples": total,
        "rows": rows,
        "cpu_seconds": cpu,
        "cpu_ms_per_row": per_row,
        "categories": [
            (name, 100 * by_category[name] / total, per_row * by_category[name] / total)
            for name in sorted(names, key=lambda x: -by_category[x])
        ]
        if total
        else [],
        "top_self": [(f, 100 * k / total) for f, k in self_time.most_common(20)] if total else [],
    }


def _short(frame: str) -> str:
    # "function (path/to/site-packages/pkg/mod.py:123)" -> "function (pkg/mod.py:123)"
    if "(" in frame and frame.endswith(")"):
        func = frame[:-1].partition(" (")[0]
        return f"{func} ({_path(frame)})"
    return frame


# -- report ------------------------------------------------------------------------------------

SECTIONS = [
    "1. pickup",
    "2. throughput",
    "2b. CPU per row",
    "4. scale",
    "5. memory",
    "6. NOTIFY cost",
    "7. pooler",
    WEB,
]


def _theirs(key: str) -> str | None:
    return key.removesuffix("_ours") + "_procrastinate" if key.endswith("_ours") else None


def _at_most(limit: float, unit: str):
    def check(v: float) -> str:
        if v <= limit:
            return f"<= {limit:g} {unit}: met"
        return f"<= {limit:g} {unit}: MISSED by {v - limit:.2f} {unit} ({v / limit:.1f}x)"

    return check


TARGETS = {
    "pickup_run_p50_ours": _at_most(2, "ms"),
    "pickup_run_p99_ours": _at_most(5, "ms"),
    "rss_64_ours": _at_most(60, "MB"),
    "rss_64_2p_ours": _at_most(60, "MB"),
}


def target(res: Results, key: str, ours: dict[str, float], theirs: dict | None) -> str:
    if key in TARGETS:
        return TARGETS[key](ours["median"])
    if key.startswith("tp_") and theirs:
        ratio = ours["median"] / theirs["median"]
        verdict = "met" if ratio >= 3 else f"MISSED: {ratio:.2f}x, {ratio / 3:.0%} of the target"
        return f">= 3x procrastinate: {verdict}"
    if key.startswith("scale_") and not key.endswith("_10k"):
        base = res.summary(key.rsplit("_", 1)[0] + "_10k")
        if not base:
            return ""
        change = 100 * (ours["median"] / base["median"] - 1)
        if key.startswith("scale_claim_"):
            verdict = "met" if abs(change) <= 20 else "MISSED"
            return f"within +-20% of 10k: {change:+.0f}%, {verdict}"
        return f"{change:+.0f}% vs 10k"
    return ""


def fmt(s: dict[str, float] | None, unit: str) -> str:
    if not s:
        return ""
    digits = 2 if unit == "ms" else (1 if unit == "MB" else 0)
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}..{s['max']:.{digits}f})"


def table(res: Results) -> str:
    lines = [
        "| section | measurement | unit | ours: median (min..max) | procrastinate: median "
        "(min..max) | ours / theirs | target |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = [
        (k, m)
        for k, m in res.metrics.items()
        if not k.endswith("_procrastinate") and not k.startswith("cmp_")
    ]
    if not rows:
        return ""
    rows.sort(key=lambda km: SECTIONS.index(km[1]["section"]))
    for key, m in rows:
        ours = res.summary(key)
        if not ours:
            continue
        theirs_key = _theirs(key)
        theirs = res.summary(theirs_key) if theirs_key else None
        ratio = f"{ours['median'] / theirs['median']:.2f}" if theirs else ""
        lines.append(
            f"| {m['section']} | {m['label']} | {m['unit']} | {fmt(ours, m['unit'])} | "
            f"{fmt(theirs, m['unit'])} | {ratio} | {target(res, key, ours, theirs)} |"
        )
    return "\n".join(lines)


# Which systems ran with 1 process and with 2
CMP_RAN = {p: tuple(system for system, procs, _ in CMP_RUNS if procs == p) for p in (1, 2)}
# The compare table's rows: (metric, shown for these systems)
CMP_ROWS = [
    ("pickup_p50", ("listener", "procrastinate", "plain")),
    ("pickup_p95", ("listener", "procrastinate", "plain")),
    ("pickup_p99", ("listener", "procrastinate", "plain")),
    ("done_p50", ("listener", "procrastinate", "plain")),
    ("tp_1", CMP_RAN[1]),
    ("tp_2", CMP_RAN[2]),
    *(
        (f"cpu_{part}_{p}", CMP_RAN[p])
        for p in (1, 2)
        for part in ("service", "emulator", "postgres", "rest")
    ),
    ("busy_1", CMP_RAN[1]),
    ("busy_2", CMP_RAN[2]),
    ("rss_1", (*CMP_RAN[1], "floor", "runtime")),
    ("rss_2", CMP_RAN[2]),
    ("floor_model", ("runtime",)),
    ("loglines_1", CMP_RAN[1]),
]


def _cmp(res: Results, metric: str, system: str) -> dict[str, float] | None:
    return res.summary(f"cmp_{metric}_{system}")


def _paired_ratios(res: Results, metric: str, ours: str, theirs: str) -> list[float]:
    """Per-repetition ratios (the repetitions are interleaved, so each pair ran at about
    the same time and load)."""
    a = res.metrics.get(f"cmp_{metric}_{ours}", {}).get("values", [])
    b = res.metrics.get(f"cmp_{metric}_{theirs}", {}).get("values", [])
    return [x / y for x, y in zip(a, b, strict=False) if y]


def compare_table(res: Results) -> list[str]:
    info = res.extra.get("compare")
    if not isinstance(info, dict):
        return []
    systems = list(CMP_NAMES)
    rows = info["rows"]
    out = [
        f"### Side by side (issue 23): {info['reps']} interleaved repetitions",
        "",
        "Each repetition runs, in this order: the pickup of the listener, procrastinate and "
        "the plain loop; their throughput with 1 process, and the listener's with --http "
        "on; their throughput with 2 processes; the floor. Medians of the repetitions "
        "(smallest..largest).",
        "",
        "* Pickup: commit -> the first byte of the run request, stamped by the emulator "
        "as it reads it (bench/stamped_emulator.py, the emulator with that stamp), "
        f"{info['pickup_rows']} rows {info['gap'] * 1000:.0f} ms apart into an idle service.",
        f"* Throughput: {rows['full']} rows inserted first with 1 process, {rows['half']} "
        f"with 2, {rows['fifth']} for the listener with --http (there for its peak RSS); "
        "rows/s from the first run request to the last ReadyToPublish. CPU per row from "
        "/proc (user + system of each process tree) over the same window.",
        "* The listener: `python -m listener` with the settings of every section, its "
        "logging as shipped. procrastinate: bench/procrastinate_app.py with logging at "
        "WARNING, as its users run it for throughput (no line per job). The plain loop: "
        "bench/plain_loop.py, the same job and writes in 8 threads of sync psycopg + httpx "
        "(no retries, no image validation, no log line per row). The floor (issue 23's): a "
        "Python process that imports the design card's packages (psycopg, trio, httpx, "
        "pydantic, pytest, pytest-trio) and nothing else; the runtime floor: one that "
        "imports only the first four, the ones a running listener needs.",
        "",
        "Load average (1, 5, 15 min) at the start of each repetition: "
        + "; ".join(info["loads"])
        + ".",
        "",
        "| measurement | unit | "
        + " | ".join(CMP_NAMES[s] for s in systems)
        + " | listener / procrastinate | listener / plain loop |",
        "| --- | --- | " + " | ".join("---" for _ in systems) + " | --- | --- |",
    ]
    for metric, shown in CMP_ROWS:
        label = unit = None
        cells = []
        for system in systems:
            m = res.metrics.get(f"cmp_{metric}_{system}")
            s = _cmp(res, metric, system) if system in shown else None
            if m and label is None:
                label, unit = m["label"], m["unit"]
            cells.append(fmt(s, unit or "") if s else "")
        if label is None:
            continue
        ratios = []
        for theirs in ("procrastinate", "plain"):
            a, b = _cmp(res, metric, "listener"), _cmp(res, metric, theirs)
            no_ratio = metric.startswith(("busy_", "loglines_")) or not (a and b and b["median"])
            ratios.append("" if no_ratio else f"{a['median'] / b['median']:.2f}")
        out.append(f"| {label} | {unit} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    out += [
        "",
        "Issue 23's targets, on the medians above (the per-repetition ratios in brackets):",
        "",
        "| target | listener | other | ratio (per repetition) | verdict |",
        "| --- | --- | --- | --- | --- |",
    ]
    for what, metric, ours, theirs, sense, limit in CMP_TARGETS:
        a, b = _cmp(res, metric, ours), _cmp(res, metric, theirs)
        if not a or not b or not b["median"]:
            out.append(f"| {what} | | | | not measured |")
            continue
        ratio = a["median"] / b["median"]
        met = limit is None or (ratio <= limit if sense == "le" else ratio >= limit)
        verdict = "for reference" if limit is None else "MET" if met else "MISSED"
        paired = _paired_ratios(res, metric, ours, theirs)
        spread = f" ({min(paired):.2f}..{max(paired):.2f})" if len(paired) > 1 else ""
        unit = res.metrics[f"cmp_{metric}_{ours}"]["unit"]
        out.append(
            f"| {what} | {fmt(a, unit)} | {CMP_NAMES[theirs]}: {fmt(b, unit)} | "
            f"{ratio:.2f}x{spread} | {verdict} |"
        )
    out += ["", f"Emulator: {info['emulator']}.", ""]
    return out


def report(res: Results, args, started: float, meta: dict[str, str]) -> str:
    command = " ".join(["python bench/run.py", *sys.argv[1:]])
    cmp = res.extra.get("compare")
    first_load = float(res.loads[0].split()[1]) if res.loads else 0.0
    out = [
        f"Generated by `{command}` on {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}: "
        f"{args.reps} repetition(s) of each measurement"
        + (f" ({cmp['reps']} of the compare section)" if isinstance(cmp, dict) else "")
        + f", {time.monotonic() - started:.0f} s in all. Medians, with the smallest and "
        "largest repetition in brackets; every figure below comes from this run.",
        "",
        f"Machine: {meta['cores']} cores ({meta['cpu']}), {meta['memory']} memory, "
        f"{meta['os']}; PostgreSQL {meta['postgresql']}; Python {meta['python']}; "
        f"{meta['packages']}. The client, the listener(s) or procrastinate worker(s), the "
        "emulator and PostgreSQL share these cores.",
        "",
        f"Code measured: {meta['code']}.",
        "",
        "Load average (1, 5, 15 min) at the start of each section: "
        + "; ".join(res.loads)
        + ". It counts the benchmark's own processes: a throughput run keeps both cores"
        " busy (see 'machine busy' and 'the rest of the machine' in 2b). "
        + (
            f"Before the first section the 1-minute load was {first_load:.2f}: other work"
            " was running, so the figures are noisier than on an idle machine."
            if first_load >= 1.0
            else f"Before the first section the 1-minute load was {first_load:.2f}."
        ),
        "",
        *(f"**{note}**\n" for note in res.notes if note.startswith("WARNING")),
        table(res),
        "",
        *compare_table(res),
    ]
    if res.notes:
        out += [*(f"* {note}" for note in res.notes if not note.startswith("WARNING")), ""]
    prof = res.extra.get("profile")
    if isinstance(prof, dict) and prof.get("categories"):
        out += [
            f"### Where the listener's CPU goes (py-spy --gil, {prof['samples']} samples at "
            f"{prof['rate']} Hz)",
            "",
            f"One listener working through {prof['rows']} small rows inserted at once: "
            f"{prof['cpu_seconds']:.2f} s of CPU (user + system, from /proc) in "
            f"{prof['wall_seconds']:.1f} s, {prof['cpu_ms_per_row']:.2f} ms of CPU per row. "
            "Each sample counts once, under the outermost library it is in; the ms per row "
            "split the measured CPU by those shares.",
            "",
            "| where | share of samples | CPU per row (ms) |",
            "| --- | --- | --- |",
            *(f"| {name} | {share:.1f}% | {ms:.2f} |" for name, share, ms in prof["categories"]),
            "",
            "Functions with the most self time:",
            "",
            "| function | self share |",
            "| --- | --- |",
            *(f"| `{f}` | {share:.1f}% |" for f, share in prof["top_self"][:12]),
            "",
        ]
    plans = [k for k in res.extra if k.startswith("plan_")]
    if plans:
        out += ["### EXPLAIN (ANALYZE, BUFFERS) of claim_ready (sql/queries.sql)", ""]
        for key in plans:
            _, stats, scale = key.split("_")
            how = "statistics as left by the bulk INSERT" if stats == "stale" else "after ANALYZE"
            out += [
                f"<details><summary>{scale} finished rows, {how}</summary>",
                "",
                "```",
                str(res.extra[key]),
                "```",
                "",
                "</details>",
                "",
            ]
    if res.checks:
        out += [
            "<details><summary>Sanity checks of each repetition</summary>",
            "",
            *(f"* {c}" for c in res.checks),
            "",
            "</details>",
            "",
        ]
    return "\n".join(out)


def write_results(text: str) -> None:
    block = f"{START}\n{text}\n{END}"
    if RESULTS_MD.exists():
        old = RESULTS_MD.read_text()
        if START in old and END in old:
            head, _, rest = old.partition(START)
            _, _, tail = rest.partition(END)
            RESULTS_MD.write_text(head + block + tail)
            return
    RESULTS_MD.write_text(
        "# Benchmark results\n\nThe part between the markers is written by `make bench`"
        " (bench/run.py); the analysis below it is kept.\n\n"
        f"{block}\n\n## Analysis\n\n(hand-written)\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, 1 repetition")
    parser.add_argument("--only", default=",".join(ALL), help=f"comma list of {ALL}")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 3)")
    parser.add_argument("--no-write", action="store_true", help="do not rewrite RESULTS.md")
    parser.add_argument(
        "--write",
        action="store_true",
        help="rewrite RESULTS.md even after a --quick or --only run (by default only a full"
        " run replaces the committed results)",
    )
    parser.add_argument(
        "--compare-rows",
        type=int,
        default=None,
        help="rows per throughput run of the compare section (default 5000, --quick 300)",
    )
    args = parser.parse_args()
    args.reps_given = args.reps
    args.reps = args.reps or (1 if args.quick else 3)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(ALL)
    if unknown:
        parser.error(f"unknown measurement(s): {', '.join(sorted(unknown))}")

    started = time.monotonic()
    h.TEMPLATE = f"bench_template_{os.getpid()}"
    h.WORK.mkdir(parents=True, exist_ok=True)
    fingerprint = h.snapshot_code()
    meta = h.machine()
    print(f"machine: {meta}", flush=True)
    h.make_template()
    emu = Emulator()
    res = Results()
    sections = {
        "pickup": lambda: run_pickup(res, emu, args),
        "throughput": lambda: run_throughput(res, emu, args),
        "baseline": lambda: run_baseline(res, emu, args),
        "imports": lambda: run_imports(res, emu, args),
        "scale": lambda: run_scale(res, emu, args),
        "notify": lambda: run_notify(res, emu, args),
        "profile": lambda: run_profile(res, emu, args),
        "pooler": lambda: run_pooler(res, emu, args),
        "web": lambda: run_web(res, emu, args),
        "compare": lambda: run_compare(res, emu, args),
    }
    try:
        for name in ALL:
            if name in chosen:
                res.loads.append(f"{name} {h.loadavg()}")
                t0 = time.monotonic()
                print(f"== {name} (load {h.loadavg()})", flush=True)
                sections[name]()
                print(f"   {name} took {time.monotonic() - t0:.0f}s", flush=True)
    finally:
        emu.close()
        h.drop_db(h.TEMPLATE)
    res.loads.append(f"end {h.loadavg()}")
    if h.code_fingerprint(h.CODE) != fingerprint:
        res.notes.insert(
            0,
            "WARNING: the snapshot of the code under bench/.work/code changed during the run"
            " (it should not): the figures may mix two versions. Run again.",
        )
    if h.code_fingerprint() != fingerprint:
        res.notes.append(
            "The working tree's listener/ or sql/ changed while this run was going on; the "
            "run measured the copy taken at its start (see 'Code measured')."
        )
    text = report(res, args, started, meta)
    print(text)
    RESULTS_JSON.write_text(
        json.dumps(
            {
                "meta": meta,
                "metrics": res.metrics,
                "extra": res.extra,
                "loads": res.loads,
                "checks": res.checks,
                "notes": res.notes,
            },
            indent=1,
        )
    )
    full = not args.quick and set(chosen) == set(ALL)
    if not args.no_write and (full or args.write):
        write_results(text)
        print(f"wrote {RESULTS_MD.relative_to(h.REPO)} and {RESULTS_JSON.relative_to(h.REPO)}")
    else:
        print(
            f"wrote {RESULTS_JSON.relative_to(h.REPO)}; {RESULTS_MD.relative_to(h.REPO)} left as"
            " it was (only a full run replaces it, or --write)"
        )
    return 0


if __name__ == "__main__":
    os.chdir(h.REPO)
    sys.exit(main())
