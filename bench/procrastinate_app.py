"""The baseline: the same job done with procrastinate (asyncio, psycopg async connector).

One task per image row (its kwargs: the row's id and prompt, so the task needs no read
of its own, as our claim returns the prompt): POST run (the same multipart shape as
listener/providers/fusionbrain/client.py), record the uuid and status Generate (as our
listener makes the uuid durable), poll the status every BENCH_CHECK_INTERVAL seconds
until DONE, then write the image and ReadyToPublish into the row. The row lives in the
same `images` table as ours (the benchmark migrates the baseline's database with our
migrations, then applies procrastinate's schema beside it), so the same `images_done`
trigger timestamps completions for both.

    python bench/procrastinate_app.py worker      # env: DATABASE_URL, FUSION_BRAIN_URL,
                                                  # BENCH_IMAGE_SIZE, BENCH_CHECK_INTERVAL,
                                                  # BENCH_CONCURRENCY,
                                                  # BENCH_PROCRASTINATE_QUIET
The benchmark client imports `make_app` with a sync connector to defer jobs and to
apply the schema.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys

import httpx
import procrastinate

PREFIX = "key/api/v1/"
HEADERS = {"X-Key": "Key bench-api-key-7c41", "X-Secret": "Secret bench-secret-key-93ad"}


class TooMany(Exception):
    """The provider's 429: retried by the drain benchmark's RetryStrategy."""


class Api:
    """One long-lived httpx.AsyncClient per worker process, like the listener's."""

    def __init__(self, base_url: str, max_connections: int) -> None:
        self.http = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/" + PREFIX,
            headers=HEADERS,
            timeout=30.0,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )
        self.pipeline: str | None = None

    async def pipeline_id(self) -> str:
        if self.pipeline is None:
            r = await self.http.get("pipelines", params={"type": "TEXT2IMAGE"})
            r.raise_for_status()
            self.pipeline = str(r.json()[0]["id"])
        return self.pipeline

    async def run(self, prompt: str, size: int) -> str:
        params = {
            "type": "GENERATE",
            "numImages": 1,
            "width": size,
            "height": size,
            "style": "DEFAULT",
            "generateParams": {"query": prompt[:999]},
        }
        files = {
            "pipeline_id": (None, await self.pipeline_id()),
            "params": (None, json.dumps(params), "application/json"),
        }
        r = await self.http.post("pipeline/run", files=files)
        if r.status_code == 429:
            raise TooMany("run: 429 Too Many Requests")
        r.raise_for_status()
        return r.json()["uuid"]

    async def wait_done(self, uuid: str, every: float) -> str:
        while True:
            r = await self.http.get(f"pipeline/status/{uuid}")
            r.raise_for_status()
            body = r.json()
            if body["status"] == "DONE":
                return body["result"]["files"][0]
            if body["status"] in ("FAIL", "CANCEL"):
                raise RuntimeError(f"generation {uuid} ended {body['status']}")
            await asyncio.sleep(every)


def make_app(connector: procrastinate.BaseConnector) -> procrastinate.App:
    app = procrastinate.App(connector=connector)
    state: dict[str, Api] = {}

    # The drain benchmark (bench/drain.py): a 429 is retried after a second, the way a
    # procrastinate user would handle a provider's limit (each retry is an attempt).
    retry = (
        procrastinate.RetryStrategy(max_attempts=1000, wait=1, retry_exceptions={TooMany})
        if os.environ.get("BENCH_RETRY_429")
        else None
    )

    @app.task(name="generate", retry=retry)
    async def generate(image_id: int, prompt: str) -> None:
        size = int(os.environ.get("BENCH_IMAGE_SIZE", "64"))
        every = float(os.environ.get("BENCH_CHECK_INTERVAL", "0.05"))
        if "api" not in state:
            conc = int(os.environ.get("BENCH_CONCURRENCY", "8"))
            state["api"] = Api(os.environ["FUSION_BRAIN_URL"], 2 * conc)
        api = state["api"]
        uuid = await api.run(prompt, size)
        await app.connector.execute_query_async(
            "UPDATE images SET status = 'Generate', uuid = %(uuid)s, "
            "generation_started_at = now() WHERE id = %(id)s",
            uuid=uuid,
            id=image_id,
        )
        image = await api.wait_done(uuid, every)
        await app.connector.execute_query_async(
            "UPDATE images SET status = 'ReadyToPublish', base64 = %(b64)s, "
            "generation_finished_at = now() WHERE id = %(id)s",
            b64=image,
            id=image_id,
        )

    return app


async def worker() -> None:
    concurrency = int(os.environ.get("BENCH_CONCURRENCY", "8"))
    connector = procrastinate.PsycopgConnector(
        conninfo=os.environ["DATABASE_URL"], min_size=2, max_size=concurrency + 4
    )
    app = make_app(connector)
    async with app.open_async():
        # listen_notify=True is the default; written out to make the setting visible.
        await app.run_worker_async(concurrency=concurrency, listen_notify=True)


if __name__ == "__main__":
    quiet = bool(os.environ.get("BENCH_PROCRASTINATE_QUIET"))
    # Quiet, as its users configure it for throughput (the compare section): warnings and
    # errors only, so no INFO line per job (procrastinate's "Starting job", "Job ...
    # success", httpx's one per request). Otherwise INFO, which the older sections use.
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(message)s",
    )
    if sys.argv[1:] != ["worker"]:
        sys.exit("usage: procrastinate_app.py worker")
    if quiet:  # procrastinate's own "Starting worker" is an INFO line
        print("Starting worker (logging at WARNING)", file=sys.stderr, flush=True)
    asyncio.run(worker())
