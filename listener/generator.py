"""The generator: claim ReadyToGenerate rows and submit them to the API at once.

Choice (DESIGN.md, "Generator"): claim + commit a lease, then call. The claiming
transaction is over in a millisecond, so no connection is held while the API answers,
and the lease (locked_by / locked_until, renewed by the heartbeat) keeps the row ours.
A crash at any instant leaves the row recoverable: its lease runs out after
LEASE_TIMEOUT and another listener (or the next start) claims it again. The uuid of an
accepted run is made durable before anything else, so a duplicate run after a crash is
limited to the calls that were in flight at that instant. Measured against holding the
row's transaction open through the call (bench/CLAIM_STRATEGIES.md): one commit more
per row, the same rate once the API takes 100 ms, and no connection left idle in
transaction, holding locks and the vacuum horizon, while the API answers.

Outcomes of a run:
* accepted    -> status Generate + uuid (durable), then followed by the processor at once;
* busy        -> row released uncounted, the generator pauses (capped, jittered backoff);
* transient   -> attempt counted, last_error kept, retried after backoff; Failed with the
                 last error after RETRY_MAX_ATTEMPTS;
* permanent   -> Failed with the API's message;
* credentials -> row released uncounted, generation paused until the key works again.
"""

from __future__ import annotations

import logging
import random

import trio

from listener.api.client import FusionBrainClient
from listener.api.models import GenerationRequest
from listener.config import Settings
from listener.durable import Guard, WriteAbandoned
from listener.errors import (
    ApiBusy,
    ApiCredentials,
    ApiOutcomeUnknown,
    ApiPermanent,
    ApiTransient,
    DatabaseError,
    LeaseLost,
)
from listener.health import ApiHealth
from listener.primitives import Capacity, Doorbell, backoff_delay
from listener.store import Generation, ReadyRow, Store

log = logging.getLogger(__name__)

# A listener whose last wake-up found nothing (another listener was faster) waits up to
# this long before the next claim, so ten listeners do not stampede one row.
CONTENDED_JITTER = 0.003
PROMPT_IN_LOG = 80


def short(prompt: str) -> str:
    prompt = " ".join(prompt.split())
    return prompt if len(prompt) <= PROMPT_IN_LOG else prompt[: PROMPT_IN_LOG - 1] + "…"


class Generator:
    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        api: FusionBrainClient,
        health: ApiHealth,
        capacity: Capacity,
        guard: Guard,
        handoff=None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.api = api
        self.health = health
        self.capacity = capacity
        self.guard = guard
        self.handoff = handoff  # Processor.follow, when this process follows its runs
        self.slots = trio.Semaphore(settings.api_concurrency)
        self.doorbell = Doorbell()
        self.next_due_in: float | None = None
        self.contended = False
        self.stopping = False
        self.runs: trio.Nursery | None = None
        self.in_flight = Capacity(settings.api_concurrency)

    # -- the loop ----------------------------------------------------------------------------

    async def serve(
        self,
        runs: trio.Nursery,
        *,
        event_driven: bool,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Claim on every wake-up and whenever a waiting row falls due."""
        self.runs = runs
        task_status.started()
        if not event_driven:
            await trio.sleep_forever()  # -cron: only the sweeps call drain()
        rung = False
        while True:
            found = await self.drain()
            self.contended = rung and found == 0
            rung = await self.doorbell.wait(self.next_due_in)
            if rung and self.contended:
                await trio.sleep(random.uniform(0, CONTENDED_JITTER))

    async def drain(self) -> int:
        """Claim and submit every due row there is room for; return how many."""
        total = 0
        while not self.stopping:
            await self.health.ready_to_generate()
            await self.capacity.wait_for_room()
            await self.slots.acquire()
            limit = 1
            while limit < self.capacity.free and self.slots.value > 0:
                self.slots.acquire_nowait()
                limit += 1
            try:
                claimed = await self.store.claim_ready(limit, next_due=False)
            except DatabaseError as exc:
                for _ in range(limit):
                    self.slots.release()
                log.warning("Generator: cannot claim rows: %s", exc.message)
                self.next_due_in = 1.0
                return total
            for _ in range(limit - len(claimed.rows)):
                self.slots.release()
            for row in claimed.rows:
                self.capacity.take()
                self.in_flight.take()
                assert self.runs is not None
                self.runs.start_soon(self.submit, row, name=f"submit image {row.id}")
            total += len(claimed.rows)
            if len(claimed.rows) < limit:
                # Asked only now, while the runs just started are already on their way.
                try:
                    self.next_due_in = await self.store.next_ready_in()
                except DatabaseError:
                    self.next_due_in = 1.0
                break
            self.next_due_in = 0.0
        return total

    async def wait_idle(self) -> None:
        """Until no run call is in flight (used by --once and shutdown)."""
        await self.in_flight.wait_empty()

    # -- one row -----------------------------------------------------------------------------

    def request_for(self, row: ReadyRow) -> GenerationRequest:
        s = self.settings
        return GenerationRequest(
            prompt=row.prompt,
            width=row.width or s.default_image_width,
            height=row.height or s.default_image_height,
            style=row.style or s.default_style,
            negative_prompt=row.negative_prompt or s.default_negative_prompt,
        )

    async def submit(self, row: ReadyRow) -> None:
        try:
            await self._submit(row)
        except LeaseLost as exc:
            log.error("%s; leaving it to that listener", exc.message)
        except WriteAbandoned as exc:
            log.error("Image ID %d: %s", row.id, exc.message)
        except DatabaseError as exc:
            # The row keeps its lease, which runs out; then it is claimed again.
            log.warning(
                "Image ID %d: %s; it is retried when its lease runs out", row.id, exc.message
            )
        finally:
            self.slots.release()
            self.in_flight.give()
            self.capacity.give()

    async def _submit(self, row: ReadyRow) -> None:
        s = self.settings
        if row.attempts > s.retry_max_attempts:
            # Claimed more often than allowed: every earlier attempt ended in a crash or a
            # transient error. Give up instead of looping on a row that kills listeners.
            reason = f"gave up after {s.retry_max_attempts} attempts"
            if row.last_error:
                reason += f": {row.last_error}"
            await self.guard.durable(
                f"Image ID {row.id}: recording failure",
                lambda: self.store.fail(row.id, reason, from_status="ReadyToGenerate"),
            )
            log.info("Image ID %d failed: %s", row.id, reason)
            return

        log.info("Processing image ID %d with prompt: %s", row.id, short(row.prompt))
        request = self.request_for(row)
        with self.guard.shielded() as scope:
            try:
                accepted = await self.api.run(request)
            except ApiBusy as exc:
                delay = self.health.busy(exc.state)
                await self.store.release_uncounted(row.id, delay=delay)
                self.doorbell.ring()  # no NOTIFY for a row due later: look again ourselves
                return
            except ApiCredentials:
                self.health.credentials_refused()
                await self.store.release_uncounted(row.id)
                self.doorbell.ring()
                return
            except ApiPermanent as exc:
                reason = f"API refused the request: {exc.message}"
                await self.guard.durable(
                    f"Image ID {row.id}: recording failure",
                    lambda: self.store.fail(row.id, reason, from_status="ReadyToGenerate"),
                )
                log.info("Image ID %d failed: %s", row.id, reason)
                return
            except ApiTransient as exc:
                await self._transient(row, exc)
                return
            self.health.accepted()
            log.info("Image ID %d accepted by the API: uuid %s", row.id, accepted.uuid)
            keep = self.handoff is not None
            await self.guard.durable(
                f"Image ID {row.id}: recording uuid {accepted.uuid}",
                lambda: self.store.record_accepted(row.id, accepted.uuid, keep=keep),
            )
        if scope.cancelled_caught:
            return  # stopped while the call was in flight: the row stays claimed, released
        if self.handoff is not None:
            self.handoff(
                Generation(
                    row.id, accepted.uuid, row.prompt, age=0.0, status_time=accepted.status_time
                )
            )

    async def _transient(self, row: ReadyRow, exc: ApiTransient) -> None:
        s = self.settings
        if isinstance(exc, ApiOutcomeUnknown):
            log.warning(
                "Image ID %d: %s; the run may have been accepted, so retrying it may "
                "cost a second generation",
                row.id,
                exc.message,
            )
        if row.attempts >= s.retry_max_attempts:
            reason = f"gave up after {row.attempts} attempts: {exc.message}"
            await self.guard.durable(
                f"Image ID {row.id}: recording failure",
                lambda: self.store.fail(row.id, reason, from_status="ReadyToGenerate"),
            )
            log.info("Image ID %d failed: %s", row.id, reason)
            return
        delay = backoff_delay(row.attempts, s.retry_backoff_base, s.retry_backoff_max)
        if exc.retry_after:
            delay = max(delay, exc.retry_after)
        await self.store.retry_later(row.id, delay=delay, error=exc.message)
        self.doorbell.ring()  # the claim loop learns when this row falls due
        log.warning(
            "Image ID %d: API error (attempt %d/%d): %s; retrying in %.1fs",
            row.id,
            row.attempts,
            s.retry_max_attempts,
            exc.message,
            delay,
        )
