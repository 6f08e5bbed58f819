"""Following one generation until its image is in the row.

A generation is followed from the moment its handle is durable: right after this
process submitted it, or adopted from the table (left in Generate by a stopped or crashed
listener, or by the seed service). It is never submitted again.

Following = wait the provider's hint, then ask again when an answer is likely: spaced
from the generation times observed (`listener.engine.pacing`), never more often than
every DEFAULT_CHECK_INTERVAL seconds, within a time limit (`timeout_reason`).
The provider hands a result out once, so the question and the write of its answer run
shielded as one unit: an image is validated and in the database before anything else.

At a stop, the first check of a generation this process just paid for (`gen.until`
set: a draw's download) is part of its run: made within the paid call's own deadline,
and waited for by the stop (the budget counts it), so a drawn image lands before exit.
Later checks, and those of adopted generations, end with the grace.

Outcomes: an image -> ReadyToPublish; an image that does not validate -> Failed
`invalid image: ...`; censored -> Failed `censored`; refused (FAIL, CANCEL) -> Failed
with the provider's reason; unknown handle (404) -> Failed; no result in time -> Failed
(see `timeout_reason`). Transient errors are asked again at the next check; refused
credentials pause following (nothing fails because of a bad key).
"""

from __future__ import annotations

import logging
import math
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


def _nothing() -> None:
    return None


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

    async def follow(
        self, gen: Generation, own: Ownership, *, first_checked: Callable[[], None] = _nothing
    ) -> None:
        """Follow `gen` to its end. `first_checked` is called once its first check is
        over (or will not be made): until then a stop waits for it, when `gen` was just
        paid for by this process (`gen.until`, see `_wait_until`)."""
        try:
            await self._follow(gen, own, first_checked)
        finally:
            first_checked()

    async def _follow(
        self, gen: Generation, own: Ownership, first_checked: Callable[[], None]
    ) -> None:
        s = self.settings
        pacing = self.pacing
        # Times on the local clock, from the age the database measured: no clock skew.
        accepted = trio.current_time() - gen.age
        deadline = accepted + s.default_generation_timeout
        # The paid call's own deadline at a stop, kept by the first check (then -inf).
        until = gen.until
        now = trio.current_time()
        if not await self._wait_until(now + min(gen.check_after, max(0.0, deadline - now)), until):
            return  # stopping: the row keeps its uuid and is resumed later
        # The seed's DEFAULT_MAX_ATTEMPTS checks DEFAULT_CHECK_INTERVAL apart, as a time
        # limit of the same length whatever the spacing (see `pacing`).
        by_checks = trio.current_time() + s.default_max_attempts * s.default_check_interval
        limit_by_checks = by_checks < deadline
        deadline = min(deadline, by_checks)
        pending_at = 0.0  # seconds after acceptance of the last "not yet"
        # What a finished generation teaches the pacing: only a time this process saw
        # bounded, from its own submission or its own "not yet". A generation adopted
        # after a restart and ready at its first check says only "done some time in
        # the last `age` seconds": learned as a generation time, one kill would space
        # every later check by minutes.
        bounded = gen.age == 0.0
        failed: ApiTransient | None = None  # what went wrong with the previous check
        while True:
            if not await self._credentials_ok(until):
                return  # stopping while the key is refused: resumed later
            wait_at_least = 0.0
            heard = True  # the provider answered (a "not yet" is news)
            with self.guard.shielded(until=until) as scope:
                try:
                    pacing.checked()
                    async with self.budget.call():
                        outcome = await self.provider.outcome(gen.handle)
                except ApiNotFound:
                    pacing.ended()
                    await self._fail(gen, own, gone_reason(gen.handle, failed), until=until)
                    return
                except ApiCredentials as exc:
                    self.health.credentials_refused(exc.message)
                    continue
                except ApiPermanent as exc:
                    pacing.ended()
                    reason = clean(f"status check refused: {exc.message}")
                    await self._fail(gen, own, reason, until=until)
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
                    if bounded:
                        pacing.finished_between(pending_at, now - accepted)
                    pacing.ended()
                    await self._publish(gen, own, outcome.image, accepted, until=until)
                    return
                if isinstance(outcome, Refused):
                    pacing.ended()
                    reason = clean(outcome.reason)
                    await self._fail(gen, own, reason, censored=outcome.censored, until=until)
                    return
                if now >= deadline:
                    pacing.ended()
                    await self._fail(gen, own, self.timeout_reason(limit_by_checks), until=until)
                    return
            if until > -math.inf:
                until = -math.inf  # the first check is over: the rest is not part of the run
                first_checked()
            if scope.cancelled_caught:
                return  # stopping: the row keeps its uuid and is resumed later
            if heard:
                pending_at, bounded = now - accepted, True
            delay = max(pacing.delay(now - accepted), wait_at_least)
            # the last check is made at the time limit, for a result that may be ready
            await trio.sleep(min(delay, max(0.0, deadline - now)))

    async def _wait_until(self, due: float, until: float) -> bool:
        """Sleep until the first check is `due`. For a generation just paid for (`until`
        set) a stop wakes it, and the check is part of the run: still made at `due` when
        that leaves SHUTDOWN_GRACE before the paid call's deadline (a draw's download is
        due at once; a poll's first "not yet" costs one status call), else not made
        (False: the row keeps its uuid, resumed later); never after a second signal."""
        if until == -math.inf:
            await _sleep_until(due)
            return True
        with self.guard.until_stopped():
            await _sleep_until(due)
        if not self.guard.stopping:
            return True
        if self.guard.hard or due > until - self.settings.shutdown_grace:
            return False
        await _sleep_until(due)
        return True

    async def _credentials_ok(self, until: float) -> bool:
        """Wait while the key is refused (nothing fails because of a key). Before the
        first check of a generation just paid for, a stop ends the wait (False)."""
        if self.health.credentials_ok.is_set():
            # The usual case, on every check: no trip through the scheduler. (A second
            # signal cannot have come since `_wait_until` said go: nothing awaited.)
            await trio.lowlevel.checkpoint_if_cancelled()
            return True
        if until == -math.inf:
            await self.health.credentials_ok.wait()
            return True
        with self.guard.until_stopped():
            await self.health.credentials_ok.wait()
        return self.health.credentials_ok.is_set() and not self.guard.hard

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

    async def _publish(
        self,
        gen: Generation,
        own: Ownership,
        image: str,
        accepted: float,
        *,
        until: float = -math.inf,
    ) -> None:
        expected = None
        if self.provider.traits.honours_size and gen.width and gen.height:
            expected = (gen.width, gen.height)
        try:
            info = await self.validate(image, expected)
        except InvalidImage as exc:
            await self._fail(gen, own, clean(f"invalid image: {exc.message}"), until=until)
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
                until=until,
            )
        own.settle()
        elapsed = trio.current_time() - accepted
        log.info("Image ID %d ready (ReadyToPublish) in %.1fs", gen.id, elapsed)

    async def _fail(
        self,
        gen: Generation,
        own: Ownership,
        reason: str,
        *,
        censored: bool = False,
        until: float = -math.inf,
    ) -> None:
        with own.settling():
            await self.guard.durable(
                f"Image ID {gen.id}: recording failure",
                lambda: self.store.fail(gen.id, reason, from_status="Generate", censored=censored),
                until=until,
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


async def _sleep_until(due: float) -> None:
    """`trio.sleep_until`, without a trip through the scheduler when `due` has passed
    (a generation whose hint is "now"): a cancelled task still stops here."""
    if due > trio.current_time():
        await trio.sleep_until(due)
    else:
        await trio.lowlevel.checkpoint_if_cancelled()
