"""The claim's cost with the priority order, before/after, by EXPLAIN ANALYZE on 100k rows.

    python bench/claim_order.py [--rows 100000] [--repeats 30]

One fresh migrated database; `rows` waiting rows inserted in one statement (priority 0,
and 1% of them priority 5 when --mixed), ANALYZE; then each claim statement, inside a
transaction rolled back (so every repetition sees the same table), `EXPLAIN (ANALYZE,
BUFFERS)` with LIMIT 8 (and, last, what the second index costs an INSERT of 10,000
rows): "before" is the oldest-first claim (claim_ready_oldest: the
ORDER BY of the claim before this change, on the index images_ready_to_generate_idx),
"after" the priority claim (claim_ready: images_ready_priority_idx). Prints the plans'
first lines and the median execution time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h

h.TEMPLATE = f"bench_order_template_{os.getpid()}"


def measure(url: str, name: str, repeats: int) -> tuple[float, str]:
    sys.path.insert(0, str(h.REPO))
    from listener.sqlfiles import queries

    query = queries()[name]
    params = {
        "worker": "bench",
        "lease": 30.0,
        "limit": 8,
        "held": [],
        "account": None,
        "mine": [],
        "bind": False,
        "provider": "fusionbrain",
        "default_style": "DEFAULT",
    }
    times, plan = [], ""
    with psycopg.connect(url) as c:
        for i in range(repeats):
            rows = c.execute("EXPLAIN (ANALYZE, BUFFERS) " + query, params).fetchall()
            c.rollback()
            text = "\n".join(r[0] for r in rows)
            times.append(float(text.rsplit("Execution Time: ", 1)[1].split(" ")[0]))
            if i == 0:
                plan = text
    return statistics.median(times), plan


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    h.WORK.mkdir(parents=True, exist_ok=True)
    h.make_template()
    name = f"bench_order_{os.getpid()}"
    try:
        for mixed in (False, True):
            url = h.fresh_db(name)
            with psycopg.connect(url, autocommit=True) as c:
                c.execute(
                    "INSERT INTO images (prompt, priority, not_before) "
                    "SELECT 'p' || g, CASE WHEN %s AND g %% 100 = 0 THEN 5 ELSE 0 END, "
                    "now() - make_interval(secs => %s - g) FROM generate_series(1, %s) g",
                    (mixed, args.rows, args.rows),
                )
                c.execute("ANALYZE images")
            label = "1% priority 5" if mixed else "all priority 0"
            for query in ("claim_ready_oldest", "claim_ready"):
                ms, plan = measure(url, query, args.repeats)
                head = "\n".join(
                    line for line in plan.splitlines() if "Index" in line or "Sort" in line
                )
                print(f"{label:15} {query:20} median {ms:.3f} ms\n{head}\n", flush=True)
            h.drop_db(name)
        # what the second partial index costs a writer: INSERT of 10,000 rows into a
        # table with it and one without it, alternately (the machine is shared: noise),
        # each in a transaction rolled back; median of 9
        url = h.fresh_db(name)
        other = h.fresh_db(name + "_noidx")
        h.execute(other, "DROP INDEX images_ready_priority_idx")
        times: dict[str, list[float]] = {"with images_ready_priority_idx": [], "without it": []}
        insert = "INSERT INTO images (prompt) SELECT 'p' || g FROM generate_series(1, 10000) g"
        with psycopg.connect(url) as a, psycopg.connect(other) as b:
            for _ in range(9):
                for label, c in zip(times, (a, b), strict=True):
                    t = time.perf_counter()
                    c.execute(insert)
                    times[label].append((time.perf_counter() - t) * 1000)
                    c.rollback()
        for label, values in times.items():
            print(f"INSERT of 10,000 rows {label}: median {statistics.median(values):.1f} ms")
        h.drop_db(name + "_noidx")
        h.drop_db(name)
    finally:
        h.drop_db(name)
        h.drop_db(h.TEMPLATE)
    return 0


if __name__ == "__main__":
    os.chdir(h.REPO)
    sys.exit(main())
