"""The seed's cadence, kept as the fallback: a generator sweep every
GENERATOR_SWEEP_INTERVAL (300 s) and a processor sweep every PROCESSOR_SWEEP_INTERVAL
(600 s), never both at once (one lock), each logged at start and end with what it did.

Event-driven, a sweep is one claim pass: it never waits for the work it starts, let
alone for the work wake-ups started, so it holds the lock for milliseconds. It also runs
at start-up and after every reconnection of the LISTEN stream, because notifications
sent while nobody listened are gone. With -cron the sweeps are the only schedule, as in
the seed: a generator sweep waits until its own rows are submitted, a processor sweep
until the generations it adopted are finished.
"""

from __future__ import annotations

import logging

import trio

from listener.engine.budget import Ticket
from listener.engine.claims import Claims
from listener.engine.doorbell import jittered

log = logging.getLogger("listener.engine")


class Sweeps:
    def __init__(
        self,
        claims: Claims,
        *,
        generator_interval: float,
        processor_interval: float,
        wait_for_work: bool,
    ) -> None:
        self.claims = claims
        self.generator_interval = generator_interval
        self.processor_interval = processor_interval
        self.wait_for_work = wait_for_work
        self.lock = trio.Lock()
        self._nursery: trio.Nursery | None = None

    async def generator_sweep(self) -> int:
        async with self.lock:
            log.info("Generator sweep started")
            n = 0
            while True:
                tickets: list[Ticket] = []
                got = await self.claims.claim_ready(tickets)
                n += got
                if not self.wait_for_work or not got:
                    break
                # -cron / --once: this sweep is the schedule, so it takes every due row,
                # a claim (sized by API_CONCURRENCY, maybe 1) at a time.
                for ticket in tickets:
                    await ticket.submitted.wait()
            log.info("Generator sweep finished: %d row(s) submitted", n)
            return n

    async def processor_sweep(self) -> int:
        async with self.lock:
            log.info("Processor sweep started")
            tickets: list[Ticket] = []
            n = await self.claims.adopt(tickets)
            if self.wait_for_work:
                for ticket in tickets:
                    await ticket.finished.wait()
            log.info("Processor sweep finished: %d generation(s) resumed", n)
            return n

    async def catch_up(self) -> None:
        """Both sweeps now: at start-up and after the LISTEN stream reconnected."""
        if self.claims.generate:
            await self.generator_sweep()
        if self.claims.adopting:
            await self.processor_sweep()

    def request_catch_up(self) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self.catch_up, name="catch-up sweep")

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.claims.generate:
                nursery.start_soon(self._every, self.generator_interval, self.generator_sweep)
            if self.claims.adopting:
                nursery.start_soon(self._every, self.processor_interval, self.processor_sweep)
            task_status.started()

    @staticmethod
    async def _every(interval: float, sweep) -> None:
        while True:
            await trio.sleep(jittered(interval, 0.02))
            await sweep()
