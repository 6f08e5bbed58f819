"""The processor: follow every generation until its image is in the row.

A generation is followed from the moment its uuid is durable: handed over in-process by
the generator, or adopted from the table (left in Generate by a stopped or crashed
listener, or by the seed service) on a wake-up, a sweep, or when a lease runs out.
It is never submitted again.

Following = wait the API's `status_time`, then ask every DEFAULT_CHECK_INTERVAL seconds.
The API hands a result out once, so the question and the write of its answer run
shielded as one unit: a DONE answer is in the database before anything else happens.

Outcomes: DONE -> ReadyToPublish with the first file's base64; DONE + censored ->
Failed 'censored'; FAIL / CANCEL -> Failed with the API's errorDescription; 404 before
the result was fetched -> Failed (expired or fetched elsewhere); timeout -> Failed (see
`timeout_reason`). Transient errors are retried at the next check; refused credentials
pause the follower (nothing is failed because of a bad key).
"""

from __future__ import annotations

import binascii
import logging

import trio

from listener.api.client import FusionBrainClient
from listener.api.models import GenerationStatus
from listener.config import Settings
from listener.durable import Guard, WriteAbandoned
from listener.errors import (
    ApiCredentials,
    ApiNotFound,
    ApiPermanent,
    ApiTransient,
    DatabaseError,
    LeaseLost,
)
from listener.health import ApiHealth
from listener.primitives import Capacity, Doorbell, jittered
from listener.store import Generation, Store

log = logging.getLogger(__name__)

ADOPT_BATCH = 100


def valid_base64(data: str) -> bool:
    try:
        binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError):
        return False
    return True


class Processor:
    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        api: FusionBrainClient,
        health: ApiHealth,
        capacity: Capacity,
        guard: Guard,
    ) -> None:
        self.settings = settings
        self.store = store
        self.api = api
        self.health = health
        self.capacity = capacity
        self.guard = guard
        self.slots = trio.Semaphore(settings.api_concurrency)
        self.doorbell = Doorbell()
        self.next_due_in: float | None = None
        self.stopping = False
        self.followers: trio.Nursery | None = None
        self.following = Capacity(settings.max_in_flight)

    # -- the loop ----------------------------------------------------------------------------

    async def serve(
        self,
        followers: trio.Nursery,
        *,
        event_driven: bool,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Adopt unfollowed generations on every wake-up and when a lease runs out."""
        self.followers = followers
        task_status.started()
        if not event_driven:
            await trio.sleep_forever()  # -cron: only the sweeps call adopt()
        while True:
            await self.adopt()
            wait = None if self.next_due_in is None else jittered(self.next_due_in + 0.05)
            await self.doorbell.wait(wait)

    async def adopt(self) -> int:
        """Claim generations nobody follows, as many as there is room for."""
        total = 0
        while not self.stopping and self.capacity.free > 0:
            limit = min(self.capacity.free, ADOPT_BATCH)
            try:
                claimed = await self.store.claim_generating(limit)
            except DatabaseError as exc:
                log.warning("Processor: cannot claim generations: %s", exc.message)
                self.next_due_in = 1.0
                return total
            self.next_due_in = claimed.next_due_in
            for gen in claimed.rows:
                log.info("Resuming generation of image ID %d (uuid %s)", gen.id, gen.uuid)
                self.follow(gen)
            total += len(claimed.rows)
            if len(claimed.rows) < limit:
                break
        return total

    def follow(self, gen: Generation) -> None:
        """Start following `gen` now (the generator calls this the moment it is durable)."""
        assert self.followers is not None
        self.capacity.take()
        self.following.take()
        self.followers.start_soon(self._follow, gen, name=f"follow image {gen.id}")

    async def wait_idle(self) -> None:
        """Until every followed generation is finished (used by --once and -cron)."""
        await self.following.wait_empty()

    # -- one generation ----------------------------------------------------------------------

    async def _follow(self, gen: Generation) -> None:
        try:
            await self._track(gen)
        except LeaseLost as exc:
            log.error(
                "%s; the result of generation %s is left to that listener", exc.message, gen.uuid
            )
        except WriteAbandoned as exc:
            log.error("Image ID %d: %s", gen.id, exc.message)
        except DatabaseError as exc:
            log.warning(
                "Image ID %d: %s; it is resumed when its lease runs out", gen.id, exc.message
            )
        finally:
            self.following.give()
            self.capacity.give()

    async def _track(self, gen: Generation) -> None:
        s = self.settings
        # Deadline on the local clock, from the age the database measured: no clock skew.
        deadline = trio.current_time() - gen.age + s.default_generation_timeout
        if gen.status_time > 0:
            await trio.sleep(min(gen.status_time, max(0.0, deadline - trio.current_time())))
        checks = 0
        while True:
            await self.health.credentials_ok.wait()
            with self.guard.shielded() as scope:
                try:
                    async with self.slots:
                        status = await self.api.status(gen.uuid)
                except ApiNotFound:
                    await self._fail(
                        gen,
                        f"the API no longer knows generation {gen.uuid} "
                        "(404): its result expired or was fetched elsewhere",
                    )
                    return
                except ApiCredentials:
                    self.health.credentials_refused()
                    continue
                except ApiPermanent as exc:
                    await self._fail(gen, f"status check refused: {exc.message}")
                    return
                except ApiTransient as exc:
                    log.warning("Image ID %d: status check failed: %s", gen.id, exc.message)
                    status = None
                else:
                    checks += 1
                    if status.final:
                        await self._conclude(gen, status, deadline)
                        return
                now = trio.current_time()
                reason = self.timeout_reason(now >= deadline, checks)
                if reason:
                    await self._fail(gen, reason)
                    return
            if scope.cancelled_caught:
                return  # stopping: the row keeps its uuid and is resumed later
            await trio.sleep(s.default_check_interval)

    def timeout_reason(self, past_deadline: bool, checks: int) -> str | None:
        """The timeout rule: Failed when DEFAULT_GENERATION_TIMEOUT seconds have passed
        since the API accepted the run, or when this pass made DEFAULT_MAX_ATTEMPTS
        status checks without a final answer; whichever comes first. A resumed
        generation past its deadline is still asked once, for a result that may wait."""
        s = self.settings
        if past_deadline:
            return (
                f"timeout: no result {s.default_generation_timeout:g}s after the API "
                "accepted the run"
            )
        if checks >= s.default_max_attempts:
            return f"timeout: no result after {s.default_max_attempts} status checks"
        return None

    async def _conclude(self, gen: Generation, status: GenerationStatus, deadline: float) -> None:
        elapsed = trio.current_time() - (deadline - self.settings.default_generation_timeout)
        if status.state == "DONE" and status.censored:
            await self._fail(gen, "censored", censored=True)
            return
        if status.state != "DONE":
            detail = status.error_description or "no description"
            await self._fail(gen, f"generation {status.state}: {detail}")
            return
        if not status.files or not valid_base64(status.files[0]):
            await self._fail(gen, "the API reported DONE without a valid image")
            return
        image = status.files[0]
        await self.guard.durable(
            f"Image ID {gen.id}: writing the image",
            lambda: self.store.finalise(gen.id, gen.uuid, image),
        )
        log.info("Image ID %d ready (ReadyToPublish) in %.1fs", gen.id, elapsed)

    async def _fail(self, gen: Generation, reason: str, *, censored: bool = False) -> None:
        await self.guard.durable(
            f"Image ID {gen.id}: recording failure",
            lambda: self.store.fail(gen.id, reason, from_status="Generate", censored=censored),
        )
        log.info("Image ID %d failed: %s", gen.id, reason)
