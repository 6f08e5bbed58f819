"""Following one generation until its image is in the row.

A generation is followed from the moment its handle is durable: right after this
process submitted it, or adopted from the table (left in Generate by a stopped or crashed
listener, or by the seed service). It is never submitted again.

Following = wait the provider's hint, then ask again when an answer is likely: spaced
from the generation times observed (`listener.engine.pacing`), never more often than
every DEFAULT_CHECK_INTERVAL seconds, within a time limit (`timeout_reason`).
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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from listener.config import Settings
from listener.engine.budget import Budget
from listener.engine.guard import Guard
from listener.engine.health import ApiHealth
from listener.engine.lease import Ownership
from listener.engine.pacing import Pacing
from listener.engine.ports import Generation, Pending, Provider, Ready, Refused, Store
from listener.errors import (
    ApiBusy,
    ApiCredentials,
    ApiMalformed,
    ApiNotFound,
    ApiNotTaken,
    ApiPermanent,
    ApiQuotaExhausted,
    ApiTransient,
    InvalidImage,
)
from listener.sanitize import clean

if TYPE_CHECKING:
    from listener.images import ImageInfo

log = logging.getLogger("listener.engine")

# await validate(image_base64, expected (width, height) or None) -> what the image is
# (listener.images.ImageInfo: format "png" / "jpeg", width, height); raises InvalidImage
Validate = Callable[[str, "tuple[int, int] | None"], Awaitable["ImageInfo"]]


@dataclass
class Follow:
    settings: Settings
    store: Store
    provider: Provider
    health: ApiHealth
    guard: Guard
    budget: Budget
    validate: Validate
    pacing: Pacing = field(default_factory=lambda: Pacing(interval=2.0))

    async def follow(self, gen: Generation, own: Ownership) -> None:
        s = self.settings
        pacing = self.pacing
        # Times on the local clock, from the age the database measured: no clock skew.
        accepted = trio.current_time() - gen.age
        deadline = accepted + s.default_generation_timeout
        if gen.check_after > 0:
            await trio.sleep(min(gen.check_after, max(0.0, deadline - trio.current_time())))
        # The seed's DEFAULT_MAX_ATTEMPTS checks DEFAULT_CHECK_INTERVAL apart, as a time
        # limit of the same length whatever the spacing (see `pacing`).
        by_checks = trio.current_time() + s.default_max_attempts * s.default_check_interval
        limit_by_checks = by_checks < deadline
        deadline = min(deadline, by_checks)
        pending_at = 0.0  # seconds after acceptance of the last "not yet"
        failed: ApiTransient | None = None  # what went wrong with the previous check
        while True:
            await self.health.credentials_ok.wait()
            wait_at_least = 0.0
            heard = True  # the provider answered (a "not yet" is news)
            with self.guard.shielded() as scope:
                try:
                    pacing.checked()
                    async with self.budget.call():
                        outcome = await self.provider.outcome(gen.handle)
                except ApiNotFound:
                    pacing.ended()
                    await self._fail(gen, own, gone_reason(gen.handle, failed))
                    return
                except ApiCredentials as exc:
                    self.health.credentials_refused(exc.message)
                    continue
                except ApiPermanent as exc:
                    pacing.ended()
                    await self._fail(gen, own, clean(f"status check refused: {exc.message}"))
                    return
                except (ApiBusy, ApiNotTaken) as exc:  # asked too often: wait as told
                    outcome, heard = Pending(), False
                    wait_at_least = min(exc.retry_after or 0.0, s.retry_backoff_max)
                except (ApiTransient, ApiQuotaExhausted) as exc:
                    # asked again at the next check (a download is not a draw: the quota
                    # only delays it)
                    log.warning("Image ID %d: status check failed: %s", gen.id, clean(exc.message))
                    outcome, heard = Pending(), False
                    failed = exc if isinstance(exc, ApiTransient) else None
                else:
                    failed = None
                now = trio.current_time()
                if isinstance(outcome, Ready):
                    pacing.finished_between(pending_at, now - accepted)
                    pacing.ended()
                    await self._publish(gen, own, outcome.image, accepted)
                    return
                if isinstance(outcome, Refused):
                    pacing.ended()
                    await self._fail(gen, own, clean(outcome.reason), censored=outcome.censored)
                    return
                if now >= deadline:
                    pacing.ended()
                    await self._fail(gen, own, self.timeout_reason(limit_by_checks))
                    return
            if scope.cancelled_caught:
                return  # stopping: the row keeps its uuid and is resumed later
            if heard:
                pending_at = now - accepted
            delay = max(pacing.delay(now - accepted), wait_at_least)
            # the last check is made at the time limit, for a result that may be ready
            await trio.sleep(min(delay, max(0.0, deadline - now)))

    def timeout_reason(self, by_checks: bool) -> str:
        """The timeout rule: Failed when DEFAULT_GENERATION_TIMEOUT seconds have passed
        since the provider accepted the run, or DEFAULT_MAX_ATTEMPTS x
        DEFAULT_CHECK_INTERVAL seconds since this listener's first status check (the
        seed's "N checks that far apart", as a time: checks are spaced by `pacing`),
        whichever comes first. A resumed generation past its deadline is still asked
        once, for a result that may wait."""
        s = self.settings
        if by_checks:
            limit = s.default_max_attempts * s.default_check_interval
            return (
                f"timeout: no result {limit:g}s after the first status check "
                f"({s.default_max_attempts} x {s.default_check_interval:g}s)"
            )
        return (
            f"timeout: no result {s.default_generation_timeout:g}s after the API accepted the run"
        )

    async def _publish(self, gen: Generation, own: Ownership, image: str, accepted: float) -> None:
        expected = None
        if self.provider.traits.honours_size and gen.width and gen.height:
            expected = (gen.width, gen.height)
        try:
            info = await self.validate(image, expected)
        except InvalidImage as exc:
            await self._fail(gen, own, clean(f"invalid image: {exc.message}"))
            return
        with own.settling():
            await self.guard.durable(
                f"Image ID {gen.id}: writing the image",
                lambda: self.store.finalise(
                    gen.id,
                    gen.handle,
                    image,
                    image_type=info.format,
                    width=info.width,
                    height=info.height,
                ),
            )
        own.settle()
        elapsed = trio.current_time() - accepted
        log.info("Image ID %d ready (ReadyToPublish) in %.1fs", gen.id, elapsed)

    async def _fail(
        self, gen: Generation, own: Ownership, reason: str, *, censored: bool = False
    ) -> None:
        with own.settling():
            await self.guard.durable(
                f"Image ID {gen.id}: recording failure",
                lambda: self.store.fail(gen.id, reason, from_status="Generate", censored=censored),
            )
        own.settle()
        log.info("Image ID %d failed: %s", gen.id, reason)


def gone_reason(handle: str, failed: ApiTransient | None) -> str:
    """Why a generation answered 404, as far as the listener can tell: the API hands a
    result out once, so a check whose answer could not be read may have carried it."""
    gone = f"the API no longer knows generation {clean(handle)} (404)"
    if isinstance(failed, ApiMalformed):
        return clean(
            f"{gone} right after an answer the listener could not read ({failed.message}): "
            "the result was most likely in that answer (the API hands a result out once)"
        )
    if failed is not None:
        return clean(
            f"{gone} right after a status check that failed ({failed.message}): the "
            "result was in that answer if the API sent one, else it expired or was "
            "fetched elsewhere"
        )
    return f"{gone}: its result expired or was fetched elsewhere"
