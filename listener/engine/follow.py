"""Following one generation until its image is in the row.

A generation is followed from the moment its handle is durable: right after this
process submitted it, or adopted from the table (left in Generate by a stopped or crashed
listener, or by the seed service). It is never submitted again.

Following = wait the provider's hint, then ask every DEFAULT_CHECK_INTERVAL seconds.
The provider hands a result out once, so the question and the write of its answer run
shielded as one unit: an image is validated and in the database before anything else.

Outcomes: an image -> ReadyToPublish; an image that does not validate -> Failed
`invalid image: ...`; censored -> Failed `censored`; refused (FAIL, CANCEL) -> Failed
with the provider's reason; unknown handle (404) -> Failed; no result in time -> Failed
(see `timeout_reason`). Transient errors are asked again at the next check; refused
credentials pause following (nothing fails because of a bad key).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from listener.config import Settings
from listener.engine.budget import Budget
from listener.engine.guard import Guard
from listener.engine.health import ApiHealth
from listener.engine.lease import Ownership
from listener.engine.ports import Generation, Pending, Provider, Ready, Refused, Store
from listener.errors import (
    ApiCredentials,
    ApiNotFound,
    ApiPermanent,
    ApiTransient,
    InvalidImage,
)
from listener.sanitize import clean

log = logging.getLogger("listener.engine")

# await validate(image_base64, expected (width, height) or None): raises InvalidImage
Validate = Callable[[str, "tuple[int, int] | None"], Awaitable[object]]


@dataclass
class Follow:
    settings: Settings
    store: Store
    provider: Provider
    health: ApiHealth
    guard: Guard
    budget: Budget
    validate: Validate

    async def follow(self, gen: Generation, own: Ownership) -> None:
        s = self.settings
        # Deadline on the local clock, from the age the database measured: no clock skew.
        deadline = trio.current_time() - gen.age + s.default_generation_timeout
        if gen.check_after > 0:
            await trio.sleep(min(gen.check_after, max(0.0, deadline - trio.current_time())))
        checks = 0
        while True:
            await self.health.credentials_ok.wait()
            with self.guard.shielded() as scope:
                try:
                    async with self.budget.status_call():
                        outcome = await self.provider.outcome(gen.handle)
                except ApiNotFound:
                    await self._fail(
                        gen,
                        own,
                        f"the API no longer knows generation {clean(gen.handle)} "
                        "(404): its result expired or was fetched elsewhere",
                    )
                    return
                except ApiCredentials as exc:
                    self.health.credentials_refused(exc.message)
                    continue
                except ApiPermanent as exc:
                    await self._fail(gen, own, clean(f"status check refused: {exc.message}"))
                    return
                except ApiTransient as exc:
                    log.warning("Image ID %d: status check failed: %s", gen.id, clean(exc.message))
                    outcome = Pending()
                else:
                    checks += 1
                if isinstance(outcome, Ready):
                    await self._publish(gen, own, outcome.image, deadline)
                    return
                if isinstance(outcome, Refused):
                    await self._fail(gen, own, clean(outcome.reason), censored=outcome.censored)
                    return
                reason = self.timeout_reason(trio.current_time() >= deadline, checks)
                if reason:
                    await self._fail(gen, own, reason)
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

    async def _publish(self, gen: Generation, own: Ownership, image: str, deadline: float) -> None:
        expected = None
        if self.provider.traits.honours_size and gen.width and gen.height:
            expected = (gen.width, gen.height)
        try:
            await self.validate(image, expected)
        except InvalidImage as exc:
            await self._fail(gen, own, clean(f"invalid image: {exc.message}"))
            return
        await self.guard.durable(
            f"Image ID {gen.id}: writing the image",
            lambda: self.store.finalise(gen.id, gen.handle, image),
        )
        own.settle()
        elapsed = trio.current_time() - (deadline - self.settings.default_generation_timeout)
        log.info("Image ID %d ready (ReadyToPublish) in %.1fs", gen.id, elapsed)

    async def _fail(
        self, gen: Generation, own: Ownership, reason: str, *, censored: bool = False
    ) -> None:
        await self.guard.durable(
            f"Image ID {gen.id}: recording failure",
            lambda: self.store.fail(gen.id, reason, from_status="Generate", censored=censored),
        )
        own.settle()
        log.info("Image ID %d failed: %s", gen.id, reason)
