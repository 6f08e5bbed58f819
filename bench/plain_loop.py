"""The floor for Python on this machine: the listener's job, written the plain way.

What a Python programmer writes without a framework: synchronous psycopg and httpx,
BENCH_CONCURRENCY worker threads (8, like API_CONCURRENCY), each with its own
connection, and one thread that LISTENs on images_wakeup and wakes one idle worker per
notification. Each worker repeats: claim one row (UPDATE ... FOR UPDATE SKIP LOCKED,
a lease in locked_by / locked_until, as the listener's claim_ready), POST the run (the
same multipart shape as listener/providers/fusionbrain/client.py), write status
Generate and the uuid, ask the status after the answer's status_time and then every
BENCH_CHECK_INTERVAL seconds until DONE, write the image and ReadyToPublish. Same table,
same statuses, same number of writes per row as the listener; no retries, no image
validation, no log line per row. Used by bench/run.py's compare section (issue 23).

    python bench/plain_loop.py      # env: DATABASE_URL, FUSION_BRAIN_URL,
                                    # BENCH_IMAGE_SIZE, BENCH_CHECK_INTERVAL,
                                    # BENCH_CONCURRENCY
Prints "plain loop ready" once it listens; SIGTERM stops it after the rows in hand.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import httpx
import psycopg

HEADERS = {"X-Key": "Key bench-api-key-7c41", "X-Secret": "Secret bench-secret-key-93ad"}
POLL = 1.0  # seconds a worker waits for a notification before it looks anyway
WORKER = f"plain-{os.getpid()}"

CLAIM = """
UPDATE images SET locked_by = %(worker)s, locked_until = now() + interval '5 minutes',
                  attempts = attempts + 1
WHERE id = (
    SELECT id FROM images
    WHERE status = 'ReadyToGenerate' AND (locked_until IS NULL OR locked_until < now())
    ORDER BY not_before, id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
RETURNING id, prompt
"""
ACCEPTED = """
UPDATE images SET status = 'Generate', uuid = %(uuid)s, generation_started_at = now()
WHERE id = %(id)s AND locked_by = %(worker)s
"""
FINISHED = """
UPDATE images SET status = 'ReadyToPublish', base64 = %(image)s, locked_by = NULL,
                  locked_until = NULL, generation_finished_at = now()
WHERE id = %(id)s AND locked_by = %(worker)s
"""
RELEASE = "UPDATE images SET locked_by = NULL, locked_until = NULL WHERE id = %(id)s"


class Doorbell:
    """Notifications counted, so that one arriving between a worker's empty claim and its
    wait is not lost."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._rings = 0

    def ring(self) -> None:
        with self._cond:
            self._rings += 1
            self._cond.notify()

    def wait(self, timeout: float) -> None:
        with self._cond:
            if not self._rings:
                self._cond.wait(timeout)
            if self._rings:
                self._rings -= 1


def run_params(prompt: str, size: int) -> str:
    return json.dumps(
        {
            "type": "GENERATE",
            "numImages": 1,
            "width": size,
            "height": size,
            "style": "DEFAULT",
            "generateParams": {"query": prompt[:999]},
        }
    )


def worker(url: str, http: httpx.Client, pipeline: str, bell: Doorbell, stop: threading.Event):
    size = int(os.environ.get("BENCH_IMAGE_SIZE", "64"))
    every = float(os.environ.get("BENCH_CHECK_INTERVAL", "0.05"))
    ids = {"worker": WORKER}
    with psycopg.connect(url, autocommit=True) as db:
        while not stop.is_set():
            row = db.execute(CLAIM, ids).fetchone()
            if row is None:
                bell.wait(POLL)
                continue
            image_id, prompt = row
            try:
                files: dict[str, tuple[str | None, str] | tuple[str | None, str, str]] = {
                    "pipeline_id": (None, pipeline),
                    "params": (None, run_params(prompt, size), "application/json"),
                }
                answer = http.post("pipeline/run", files=files)
                answer.raise_for_status()
                run = answer.json()
                db.execute(ACCEPTED, {"uuid": run["uuid"], "id": image_id} | ids)
                time.sleep(float(run.get("status_time") or 0))
                while True:
                    answer = http.get(f"pipeline/status/{run['uuid']}")
                    answer.raise_for_status()
                    status = answer.json()
                    if status["status"] == "DONE":
                        break
                    if status["status"] in ("FAIL", "CANCEL"):
                        raise RuntimeError(f"generation ended {status['status']}")
                    time.sleep(every)
                image = status["result"]["files"][0]
                db.execute(FINISHED, {"image": image, "id": image_id} | ids)
            except (httpx.HTTPError, RuntimeError, KeyError, ValueError) as exc:
                print(f"image {image_id}: {type(exc).__name__}: {exc}", file=sys.stderr)
                db.execute(RELEASE, {"id": image_id})


def listen(url: str, bell: Doorbell, stop: threading.Event, ready: threading.Event) -> None:
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("LISTEN images_wakeup")
        ready.set()
        while not stop.is_set():
            for _ in db.notifies(timeout=0.5):
                bell.ring()


def main() -> int:
    url = os.environ["DATABASE_URL"]
    concurrency = int(os.environ.get("BENCH_CONCURRENCY", "8"))
    http = httpx.Client(
        base_url=os.environ["FUSION_BRAIN_URL"].rstrip("/") + "/key/api/v1/",
        headers=HEADERS,
        timeout=30.0,
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
    )
    answer = http.get("pipelines", params={"type": "TEXT2IMAGE"})
    answer.raise_for_status()
    pipeline = str(answer.json()[0]["id"])
    bell, stop, listening = Doorbell(), threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threads = [threading.Thread(target=listen, args=(url, bell, stop, listening), daemon=True)]
    threads[0].start()
    listening.wait(30)
    threads += [
        threading.Thread(target=worker, args=(url, http, pipeline, bell, stop), daemon=True)
        for _ in range(concurrency)
    ]
    for t in threads[1:]:
        t.start()
    print("plain loop ready", flush=True)
    while not stop.is_set():
        stop.wait(0.5)
    for _ in threads:
        bell.ring()  # wake the idle workers so that they see `stop`
    for t in threads:
        t.join(10)
    http.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
