"""The seed's cadence, kept as the fallback: a generator sweep every
GENERATOR_SWEEP_INTERVAL (300 s) and a processor sweep every PROCESSOR_SWEEP_INTERVAL
(600 s), never both at once (one lock), each logged at start and end.

Event-driven, they are a safety net: they also run at start-up and after every
reconnection of the LISTEN stream, because notifications sent while nobody listened are
gone. With -cron they are the only schedule, as in the seed: the processor sweep then
waits for the generations it follows, and the generator sweep waits for it.
"""

from __future__ import annotations

import logging

import trio

from listener.generator import Generator
from listener.primitives import jittered
from listener.processor import Processor

log = logging.getLogger(__name__)


class Sweeps:
    def __init__(
        self,
        generator: Generator | None,
        processor: Processor | None,
        *,
        generator_interval: float,
        processor_interval: float,
        cron: bool,
    ) -> None:
        self.generator = generator
        self.processor = processor
        self.generator_interval = generator_interval
        self.processor_interval = processor_interval
        self.cron = cron
        self.lock = trio.Lock()
        self.nursery: trio.Nursery | None = None

    async def generator_sweep(self) -> int:
        assert self.generator is not None
        async with self.lock:
            log.info("Generator sweep started")
            n = await self.generator.drain()
            await self.generator.wait_idle()
            log.info("Generator sweep finished: %d row(s) submitted", n)
            return n

    async def processor_sweep(self) -> int:
        assert self.processor is not None
        async with self.lock:
            log.info("Processor sweep started")
            n = await self.processor.adopt()
            if self.cron:
                await self.processor.wait_idle()
            log.info("Processor sweep finished: %d generation(s) resumed", n)
            return n

    async def catch_up(self) -> None:
        """Both sweeps now: at start-up and after the LISTEN stream reconnected."""
        if self.generator:
            await self.generator_sweep()
        if self.processor:
            await self.processor_sweep()

    def request_catch_up(self) -> None:
        assert self.nursery is not None
        self.nursery.start_soon(self.catch_up, name="catch-up sweep")

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            if self.generator:
                nursery.start_soon(self._every, self.generator_interval, self.generator_sweep)
            if self.processor:
                nursery.start_soon(self._every, self.processor_interval, self.processor_sweep)
            task_status.started()

    @staticmethod
    async def _every(interval: float, sweep) -> None:
        while True:
            await trio.sleep(jittered(interval, 0.02))
            await sweep()
