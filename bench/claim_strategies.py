"""The generator's two possible shapes (DESIGN.md, "Generator"), measured side by side.

* lease (what the listener does): claim with a short autocommit UPDATE that records a
  lease, call the API with no transaction open, then write the uuid in a second, short
  transaction fenced on the lease;
* hold: BEGIN, SELECT ... FOR UPDATE SKIP LOCKED, call the API inside the transaction,
  write the uuid, COMMIT.

Both run with the same machinery (8 threads, the API_CONCURRENCY default, each with its
own psycopg connection and httpx client, against the emulator on loopback and one fresh
database), so the difference is the transaction's shape alone. For each, with the run
answer immediate and delayed by 100 ms (the real API takes longer): rows per second;
database time per row (the statements' round trips, client side); and, sampled from
pg_stat_activity every 5 ms, how many of the workers' connections sat `idle in
transaction` (holding row locks, a transaction id and the vacuum horizon) while the API
answered. Writes bench/CLAIM_STRATEGIES.md.

    .venv/bin/python bench/claim_strategies.py [--rows N] [--reps N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h

WORKERS = 8
OUT = h.REPO / "bench" / "CLAIM_STRATEGIES.md"
APP = "claim-strategy"

HOLD_CLAIM = """
SELECT id, prompt FROM images
WHERE status = 'ReadyToGenerate' AND not_before <= now()
  AND (locked_until IS NULL OR locked_until < now())
ORDER BY not_before, id
LIMIT 1
FOR UPDATE SKIP LOCKED
"""
HOLD_RECORD = """
UPDATE images SET status = 'Generate', uuid = %(uuid)s, generated_by = %(worker)s,
    generation_started_at = now()
WHERE id = %(id)s
"""


def api_run(http: httpx.Client, pipeline: str, prompt: str) -> str:
    from listener.providers.fusionbrain.models import GenerationRequest

    request = GenerationRequest(
        prompt=prompt, width=64, height=64, style="ANIME", negative_prompt=""
    )
    params = json.dumps(request.params())
    r = http.post(
        "key/api/v1/pipeline/run",
        files={"pipeline_id": (None, pipeline), "params": (None, params, "application/json")},
    )
    r.raise_for_status()
    return r.json()["uuid"]


class Worker(threading.Thread):
    def __init__(self, n: int, url: str, api: str, pipeline: str, strategy: str) -> None:
        super().__init__(name=f"{strategy}-{n}")
        self.url, self.api, self.pipeline, self.strategy = url, api, pipeline, strategy
        self.worker = f"bench:{n}"
        self.db_seconds = 0.0
        self.rows = 0

    def run(self) -> None:
        from listener.sqlfiles import queries

        q = queries()
        headers = {"X-Key": "Key bench", "X-Secret": "Secret bench"}
        with (
            psycopg.connect(self.url, application_name=APP) as conn,
            httpx.Client(base_url=self.api, headers=headers, timeout=30) as http,
        ):
            while True:
                if self.strategy == "lease":
                    t0 = time.perf_counter()
                    conn.autocommit = True
                    claimed = conn.execute(
                        q["claim_ready"],
                        {
                            "worker": self.worker,
                            "lease": 30,
                            "limit": 1,
                            "held": [],
                            "account": None,
                            "mine": [],
                            "bind": False,
                            "provider": "fusionbrain",
                            "default_style": "DEFAULT",
                        },
                    ).fetchall()
                    conn.autocommit = False
                    self.db_seconds += time.perf_counter() - t0
                    claimed = [r for r in claimed if r[0] is not None]  # none: one NULL row
                    if not claimed:
                        return
                    image_id, prompt = claimed[0][0], claimed[0][1]
                    uuid = api_run(http, self.pipeline, prompt)
                    t0 = time.perf_counter()
                    with conn.transaction():
                        n = conn.execute(
                            q["record_accepted"],
                            {
                                "id": image_id,
                                "uuid": uuid,
                                "worker": self.worker,
                                "keep": True,
                                "lease": 30,
                            },
                        ).rowcount
                    self.db_seconds += time.perf_counter() - t0
                else:
                    t0 = time.perf_counter()
                    with conn.transaction():
                        found = conn.execute(HOLD_CLAIM).fetchall()
                        self.db_seconds += time.perf_counter() - t0
                        if not found:
                            return
                        image_id, prompt = found[0]
                        uuid = api_run(http, self.pipeline, prompt)
                        t0 = time.perf_counter()
                        n = conn.execute(
                            HOLD_RECORD, {"id": image_id, "uuid": uuid, "worker": self.worker}
                        ).rowcount
                    self.db_seconds += time.perf_counter() - t0
                assert n == 1, f"row {image_id} not recorded"
                self.rows += 1


def sample_idle_in_transaction(url: str, stop: threading.Event, out: list[int]) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        while not stop.is_set():
            out.append(
                c.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                    "AND state = 'idle in transaction'",
                    (APP,),
                ).fetchone()[0]
            )
            time.sleep(0.005)


def measure(emu: h.Emulator, strategy: str, delay: float, rows: int) -> dict:
    from listener.providers.fusionbrain.client import choose_pipeline

    url = h.fresh_db("bench_strategy")
    try:
        h.execute(
            url,
            "INSERT INTO images (prompt) SELECT 'strategy ' || i FROM generate_series(1, %s) i",
            (rows,),
        )
        emu.control.reset()
        emu.control.configure(delay=delay)
        with httpx.Client(base_url=emu.url) as http:
            listed = http.get(
                "key/api/v1/pipelines", headers={"X-Key": "Key b", "X-Secret": "Secret b"}
            )
            pipeline = choose_pipeline(listed.json())
        workers = [Worker(i, url, emu.url, pipeline, strategy) for i in range(WORKERS)]
        stop, samples = threading.Event(), []
        sampler = threading.Thread(target=sample_idle_in_transaction, args=(url, stop, samples))
        sampler.start()
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        seconds = time.perf_counter() - t0
        stop.set()
        sampler.join()
        done = sum(w.rows for w in workers)
        runs = emu.control.stats()["runs_total"]
        if done != rows or runs != rows:
            raise RuntimeError(f"{strategy}: {rows} rows, {done} recorded, {runs} runs")
        return {
            "rate": rows / seconds,
            "db_ms": 1000 * sum(w.db_seconds for w in workers) / rows,
            "idle_in_tx_mean": statistics.fmean(samples) if samples else 0.0,
            "idle_in_tx_max": max(samples, default=0),
        }
    finally:
        emu.control.configure(delay=0)
        h.drop_db("bench_strategy")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    h.snapshot_code()
    h.make_template()

    emu = h.Emulator()
    results: dict[tuple[str, float], list[dict]] = {}
    try:
        for rep in range(args.reps):
            for delay in (0.0, 0.1):
                rows = args.rows if delay == 0 else max(80, args.rows // 5)
                for strategy in ("lease", "hold"):
                    out = measure(emu, strategy, delay, rows)
                    results.setdefault((strategy, delay), []).append(out | {"rows": rows})
                    print(
                        f"rep {rep} {strategy:5s} delay {delay:.1f}s: {out['rate']:.0f} rows/s, "
                        f"db {out['db_ms']:.2f} ms/row, idle in transaction mean "
                        f"{out['idle_in_tx_mean']:.2f} max {out['idle_in_tx_max']}",
                        flush=True,
                    )
    finally:
        emu.close()
        h.drop_db(h.TEMPLATE)
    OUT.write_text(report(results, args))
    print(f"wrote {OUT.relative_to(h.REPO)}")
    return 0


def report(results: dict[tuple[str, float], list[dict]], args) -> str:
    meta = h.machine()

    def cell(values: list[float], fmt: str) -> str:
        low, mid, high = (
            format(v, fmt) for v in (min(values), statistics.median(values), max(values))
        )
        return f"{mid} ({low}..{high})"

    lines = [
        "# Claim strategies: lease (ours) and hold, measured",
        "",
        f"Generated by `python bench/claim_strategies.py` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {args.reps} repetitions, "
        f"medians (min..max). Machine: {meta['cores']} cores, PostgreSQL "
        f"{meta['postgresql']}, Python {meta['python']}. Code: {meta['code']}. How it is "
        "measured: the docstring of `bench/claim_strategies.py`.",
        "",
        f"{WORKERS} workers, each a thread with its own connection; `delay` is the time the "
        "emulator waits before answering the run request.",
        "",
        "| strategy | run answer after | rows | rows/s | database time per row (ms) "
        "| connections idle in transaction, mean | max |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (strategy, delay), outs in results.items():
        lines.append(
            f"| {strategy} | {delay * 1000:.0f} ms | {outs[0]['rows']} "
            f"| {cell([o['rate'] for o in outs], '.0f')} "
            f"| {cell([o['db_ms'] for o in outs], '.2f')} "
            f"| {cell([o['idle_in_tx_mean'] for o in outs], '.2f')} "
            f"| {max(o['idle_in_tx_max'] for o in outs)} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
