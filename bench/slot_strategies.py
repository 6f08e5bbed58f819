"""Where the shared concurrency slots live: leased slot rows (the choice) against
session-level advisory locks, measured.

    python bench/slot_strategies.py [--repeats 500]

1. Cost: one take + one give-back, `repeats` times, one client, direct to PostgreSQL
   (and, for scale, one committed one-row UPDATE: the leased rows pay two commits):
   the leased rows' statements of sql/queries.sql (slots_take, slots_release) against
   `pg_try_advisory_lock(account, slot)` over the slots until one is free, then
   `pg_advisory_unlock`. Median and p95 in ms.
2. Behind PgBouncer in transaction mode (skipped without pgbouncer): two clients take and
   give back a slot in turn, each statement on its own (as a pooled connection does); how
   often a give-back finds its lock held by another server connection (the unlock
   returns false: the slot leaks until that server connection closes), and whether the
   leased rows ever hold more than the limit.
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
import run as r

h.TEMPLATE = f"bench_slots_template_{os.getpid()}"
ACCOUNT = "fusionbrain:" + "0" * 32
LIMIT = 4


def q(name: str) -> str:
    sys.path.insert(0, str(h.REPO))
    from listener.sqlfiles import queries

    return queries()[name]


def setup(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(
            "INSERT INTO listener_limits (account, provider, configured, effective) "
            "VALUES (%s, 'fusionbrain', %s, %s)",
            (ACCOUNT, LIMIT, LIMIT),
        )
        c.execute(q("slots_fill"), {"account": ACCOUNT})


def leased(c: psycopg.Connection, worker: str) -> bool:
    p = {"account": ACCOUNT, "worker": worker, "lease": 30.0, "n": 1}
    got = [row[0] for row in c.execute(q("slots_take"), p)]
    if got:
        c.execute(q("slots_release"), {**p, "slots": got})
    return bool(got)


def advisory(c: psycopg.Connection) -> bool:
    for slot in range(LIMIT):
        if c.execute("SELECT pg_try_advisory_lock(hashtext(%s), %s)", (ACCOUNT, slot)).fetchone()[
            0
        ]:
            c.execute("SELECT pg_advisory_unlock(hashtext(%s), %s)", (ACCOUNT, slot))
            return True
    return False


def timed(fn, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        assert fn()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95)]


def pooled(url: str, repeats: int) -> None:
    pgb = r._pgbouncer_module()
    if pgb.find_pgbouncer() is None:
        print("pgbouncer not found: the pooler part is skipped")
        return
    bouncer = pgb.PgBouncer(h.SERVER, pool_mode="transaction")
    try:
        purl = bouncer.url_for(url)
        a = psycopg.connect(purl, autocommit=True, prepare_threshold=None)
        b = psycopg.connect(purl, prepare_threshold=None)  # b holds transactions open
        lost = 0
        for _ in range(repeats):
            # a takes a slot; meanwhile b's transaction holds the server connection a's
            # statement ran on (the pooler lends it to whoever asks next); a gives it back
            ok = a.execute("SELECT pg_try_advisory_lock(hashtext(%s), 0)", (ACCOUNT,)).fetchone()
            b.execute("SELECT 1")
            if ok[0]:
                freed = a.execute(
                    "SELECT pg_advisory_unlock(hashtext(%s), 0)", (ACCOUNT,)
                ).fetchone()[0]
                lost += not freed
            b.rollback()
        print(
            f"advisory locks behind PgBouncer (transaction mode): {lost} of {repeats} "
            "give-backs ran on another server connection (unlock false: the slot leaked)"
        )
        a.execute("SELECT pg_advisory_unlock_all()")
        failed = 0
        p = {"account": ACCOUNT, "worker": "a", "lease": 30.0, "n": 1}
        for _ in range(repeats):
            got = [row[0] for row in a.execute(q("slots_take"), p)]
            b.execute("SELECT 1")
            a.execute(q("slots_release"), {**p, "slots": got})
            b.rollback()
            held = a.execute(
                "SELECT count(*) FROM listener_slots WHERE holder IS NOT NULL"
            ).fetchone()[0]
            failed += held != 0
        print(f"leased rows behind PgBouncer: {failed} of {repeats} give-backs left a slot held")
        a.close()
        b.close()
    finally:
        bouncer.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=500)
    args = parser.parse_args()
    h.WORK.mkdir(parents=True, exist_ok=True)
    h.make_template()
    name = f"bench_slots_{os.getpid()}"
    try:
        url = h.fresh_db(name)
        setup(url)
        with psycopg.connect(url, autocommit=True) as c:
            med, p95 = timed(lambda: leased(c, "w"), args.repeats)
            print(f"leased slot rows: take + give back {med:.3f} ms median, {p95:.3f} ms p95")
            med, p95 = timed(lambda: advisory(c), args.repeats)
            print(f"advisory locks:   take + give back {med:.3f} ms median, {p95:.3f} ms p95")
            # for scale: what one committed one-row write costs on this server now
            c.execute("CREATE TABLE bench_probe (x int)")
            c.execute("INSERT INTO bench_probe VALUES (1)")
            med, p95 = timed(
                lambda: c.execute("UPDATE bench_probe SET x = x + 1").rowcount == 1, args.repeats
            )
            print(f"one committed one-row UPDATE:     {med:.3f} ms median, {p95:.3f} ms p95")
        pooled(url, min(args.repeats, 200))
    finally:
        h.drop_db(name)
        h.drop_db(h.TEMPLATE)
    return 0


if __name__ == "__main__":
    os.chdir(h.REPO)
    sys.exit(main())
