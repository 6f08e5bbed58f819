"""Submitting one claimed row to the provider: the paid step.

Outcomes of a run:
* accepted      -> status Generate + the handle, durable before anything else; then this
                   process follows it (or, generator-only, releases it to the processors);
* refused at submit (Refused: censored, an answer without an image) -> Failed;
* busy          -> released uncounted, generation pauses (capped, jittered backoff, at
                   least the provider's Retry-After);
* not taken (408, 425, 429: the provider says it did not take the request) -> released
                   uncounted with the reason, generation pauses like busy, at least as
                   long as its Retry-After; a storm of them fails nothing;
* credentials   -> released uncounted, generation paused until the key works again;
* quota used up -> released uncounted with the provider's words in last_error;
                   drawing pauses, one draw is tried every RETRY_BACKOFF_MAX;
* transient     -> attempt counted, reason kept, retried after a backoff; Failed with the
                   last reason after RETRY_MAX_ATTEMPTS;
* outcome unknown (timeout after sending, dropped connection, a 5xx, a 2xx that cannot be
                   read: docs/api-answers.md): the provider
                   may have generated it. Re-sent at most UNKNOWN_OUTCOME_RESENDS times
                   over the row's whole life (counted in the row), then Failed with a
                   reason that says so: a prompt costs at most 1 + UNKNOWN_OUTCOME_RESENDS
                   runs, plus one per crash of the listener during its submission
                   (UNKNOWN_OUTCOME_RESENDS defaults to the provider's own: Traits);
* permanent     -> Failed with the provider's message.

At a stop, a paid call in flight keeps its own deadline (Traits.call_timeout), so a
draw that was going to finish is not thrown away, and the Generation it returns carries
that deadline (`until`) for its first outcome check, which the stop waits for (Follow):
a draw's image is downloaded and written before exit. A row claimed but not yet sent is
released uncounted. A paid call cut off (a second signal, or its deadline) may have been
paid for: its row is released as it was and counted as an unknown outcome.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import trio

from listener.config import Settings
from listener.engine.budget import Budget
from listener.engine.doorbell import backoff_delay
from listener.engine.flow import Slots
from listener.engine.guard import Guard, WriteAbandoned
from listener.engine.health import ApiHealth
from listener.engine.lease import Ownership
from listener.engine.ports import (
    Generation,
    Provider,
    ReadyRow,
    Refused,
    Request,
    Store,
    Submitted,
)
from listener.errors import (
    ApiBusy,
    ApiCredentials,
    ApiNotTaken,
    ApiOutcomeUnknown,
    ApiPermanent,
    ApiQuotaExhausted,
    ApiTransient,
    BlankPrompt,
)
from listener.prompt import cap_negative_prompt, for_log, truncate_prompt
from listener.sanitize import clean

log = logging.getLogger("listener.engine")

# How long a slot whose submission was refused for load rests, at least (seconds).
REFUSED_SLOT_REST = 1.0


@dataclass
class Runs:
    settings: Settings
    store: Store
    provider: Provider
    health: ApiHealth
    guard: Guard
    follow_here: bool  # this process follows what it submits (it has the processor role)
    budget: Budget  # its call() slot is held around every submission
    resends: int = 1  # UNKNOWN_OUTCOME_RESENDS in effect (the setting, or the provider's)
    on_retry_scheduled: object = None  # callable: a row falls due later; look again then
    slots: Slots | None = None  # the account's shared budget (None: not shared)
    # row id -> seconds its slot rests before reuse (a refusal for load: see _busy)
    refused_slots: dict[int, float] = field(default_factory=dict)

    def request_for(self, row: ReadyRow) -> Request:
        """The row as any provider is asked it: the prompt without its blank edges and
        cut to 999 characters (whole graphemes; BlankPrompt when nothing is left), the
        configured defaults filled in (sizes only for a provider that honours them: the
        others draw at their own)."""
        s = self.settings
        sized = self.provider.traits.honours_size
        negative = cap_negative_prompt(row.negative_prompt or s.default_negative_prompt or "")
        return Request(
            row_id=row.id,
            attempt=row.attempts,
            prompt=truncate_prompt(row.prompt),
            negative_prompt=negative or None,
            style=row.style or s.default_style,
            width=(row.width or s.default_image_width) if sized else None,
            height=(row.height or s.default_image_height) if sized else None,
            style_prompt=row.style_prompt,
        )

    async def fail(
        self,
        row_id: int,
        reason: str,
        own: Ownership,
        censored: bool = False,
        *,
        until: float = -math.inf,
    ) -> None:
        with own.settling():
            await self.guard.durable(
                f"Image ID {row_id}: recording failure",
                lambda: self.store.fail(
                    row_id, reason, from_status="ReadyToGenerate", censored=censored
                ),
                until=until,
            )
        own.settle()
        log.info("Image ID %d failed: %s", row_id, reason)

    async def submit(self, row: ReadyRow, own: Ownership) -> Generation | None:
        """Submit `row`; return the generation to follow here, or None when the row has
        been written to its next state and released."""
        s = self.settings
        if row.attempts > s.retry_max_attempts:
            # Claimed more often than allowed: every earlier attempt ended in a crash or a
            # transient error. Give up instead of looping on a row that kills listeners.
            reason = f"gave up after {s.retry_max_attempts} attempts"
            if row.last_error:
                reason += f": {row.last_error}"
            await self.fail(row.id, clean(reason), own)
            return None
        if row.unknown_outcomes > self.resends:
            await self.fail(row.id, self.unknown_reason(row.unknown_outcomes), own)
            return None

        if self.guard.stopping:
            # Claimed, but the stop came first: nothing is sent now (nor paid for).
            await self.store.release(row.id, status="ReadyToGenerate", uncount=True)
            own.settle()
            return None
        if log.isEnabledFor(logging.INFO):  # the prompt is cut and made safe only if shown
            log.info("Processing image ID %d with prompt: %s", row.id, for_log(row.prompt))
        try:
            request = self.request_for(row)
        except BlankPrompt:
            await self.fail(row.id, "blank prompt (not sent)", own)
            return None
        # A paid call keeps its own deadline at a stop (the provider's call timeout), and
        # the writes of its outcome the grace after it; a second signal cuts it.
        until = trio.current_time() + self.provider.traits.call_timeout + s.shutdown_grace
        with self.guard.shielded(until=until) as scope:
            try:
                accepted = await self._submit(request)
            except trio.Cancelled:
                # Cut off (a second signal, or its own deadline at a stop): it may have
                # been accepted and paid for. Released with the rest, counted as an
                # unknown outcome.
                own.unknown_outcome = True
                raise
            except ApiBusy as exc:
                delay = await self._busy(row.id, exc)
                await self.store.release(
                    row.id, status="ReadyToGenerate", delay=delay, uncount=True
                )
                own.settle()
                self._look_again()
                return None
            except ApiNotTaken as exc:
                # 408, 425, 429: not taken, free. A 429 is a refusal for load (the shared
                # budget is lowered, see _busy); the others pause like busy.
                if exc.status_code == 429:
                    delay = await self._busy(row.id, exc)
                else:
                    what = clean(exc.message, limit=120)
                    delay = self.health.busy(what, retry_after=exc.retry_after)
                await self.store.release(
                    row.id,
                    status="ReadyToGenerate",
                    delay=delay,
                    error=clean(exc.message),
                    uncount=True,
                )
                own.settle()
                self._look_again()
                return None
            except ApiCredentials as exc:
                self.health.credentials_refused(exc.message)
                await self.store.release(row.id, status="ReadyToGenerate", uncount=True)
                own.settle()
                self._look_again()
                return None
            except ApiQuotaExhausted as exc:
                delay = self.health.quota_exhausted(exc.message)
                await self.store.release(
                    row.id,
                    status="ReadyToGenerate",
                    delay=delay,
                    uncount=True,
                    error=self.health.quota_reason(),
                )
                own.settle()
                self._look_again()
                return None
            except BlankPrompt:
                await self.fail(row.id, "blank prompt (not sent)", own, until=until)
                return None
            except ApiPermanent as exc:
                reason = clean(f"API refused the request: {exc.message}")
                await self.fail(row.id, reason, own, until=until)
                return None
            except ApiTransient as exc:
                await self._transient(row, exc, own, until=until)
                return None
            if isinstance(accepted, Refused):
                await self.fail(row.id, clean(accepted.reason), own, accepted.censored, until=until)
                return None
            self.health.accepted()
            if self.slots is not None:
                await self.slots.succeeded()
            if log.isEnabledFor(logging.INFO):
                log.info("Image ID %d accepted by the API: uuid %s", row.id, clean(accepted.handle))
            with own.moving_to("Generate"):
                try:
                    await self.guard.durable(
                        f"Image ID {row.id}: recording uuid {clean(accepted.handle)}",
                        lambda: self.store.record_accepted(
                            row.id, accepted.handle, keep=self.follow_here
                        ),
                        until=until,
                    )
                except WriteAbandoned:
                    own.unknown_outcome = True  # paid, and its uuid could not be kept
                    raise
        if own.unknown_outcome:
            log.warning(
                "Image ID %d: the paid call was cut off at the stop; it may "
                "have been accepted (counted as an unknown outcome); the row is released",
                row.id,
            )
            return None
        if own.status != "Generate":
            return None  # the deadline cut the write of an answer: released with the rest
        if not self.follow_here:
            own.settle()  # released to the processors by record_accepted
            return None
        if scope.cancelled_caught:
            return None  # stopping: the row keeps its uuid and is resumed later
        return Generation(
            row.id,
            accepted.handle,
            age=0.0,
            check_after=accepted.check_after,
            width=request.width,
            height=request.height,
            until=until,
        )

    async def _submit(self, request: Request) -> Submitted | Refused:
        async with self.budget.call(submission=True):
            return await self.provider.submit(request)

    def unknown_reason(self, n: int) -> str:
        return (
            f"gave up: {n} run(s) sent without a usable answer (the API may have generated "
            "the image and charged for it); not sent again to avoid paying twice. "
            "To send it once more: listener retry ID (or SELECT images_retry(ID))"
        )

    async def _busy(self, row_id: int, exc: ApiBusy | ApiNotTaken) -> float:
        """A refusal for load (429, DISABLED_BY_QUEUE): how long the row waits. While the
        shared budget can still go lower, lowering it is the answer and nothing pauses
        (the row is claimed again when a slot frees, after the provider's Retry-After);
        at one at a time, generation pauses with the capped backoff as before."""
        state = exc.state if isinstance(exc, ApiBusy) else None
        what = clean(state or exc.message, limit=64)
        if self.slots is not None:
            # The slot this row used was one too many: it is kept out of use for a while
            # (given back by the row's task after this long), or it would be refused again
            # at once, as fast as requests go, until the value is lowered.
            self.refused_slots[row_id] = min(
                max(exc.retry_after or 0.0, REFUSED_SLOT_REST), self.settings.retry_backoff_max
            )
        if self.slots is not None and self.slots.effective > 1:
            await self.slots.refused(what)
            return min(exc.retry_after or 0.0, self.settings.retry_backoff_max)
        if self.slots is not None:
            await self.slots.refused(what)  # counted; at one there is nothing to lower
        return self.health.busy(what, retry_after=exc.retry_after)

    def _look_again(self) -> None:
        if callable(self.on_retry_scheduled):
            self.on_retry_scheduled()

    async def _transient(
        self, row: ReadyRow, exc: ApiTransient, own: Ownership, *, until: float = -math.inf
    ) -> None:
        s = self.settings
        message = clean(exc.message)
        unknown = isinstance(exc, ApiOutcomeUnknown)
        if unknown:
            sent = row.unknown_outcomes + 1
            log.warning(
                "Image ID %d: %s; the run may have been accepted (%d of at most %d "
                "re-send(s) used)",
                row.id,
                message,
                min(sent, self.resends),
                self.resends,
            )
            if sent > self.resends:
                reason = self.unknown_reason(sent) + f"; last: {message}"
                await self.fail(row.id, reason, own, until=until)
                return
        if row.attempts >= s.retry_max_attempts:
            reason = f"gave up after {row.attempts} attempts: {message}"
            await self.fail(row.id, reason, own, until=until)
            return
        delay = backoff_delay(row.attempts, s.retry_backoff_base, s.retry_backoff_max)
        if exc.retry_after:
            delay = max(delay, min(exc.retry_after, s.retry_backoff_max))
        with own.settling():
            await self.guard.durable(
                f"Image ID {row.id}: scheduling a retry",
                lambda: self.store.retry_later(
                    row.id, delay=delay, error=message, unknown_outcome=unknown
                ),
                until=until,
            )
        own.settle()
        self._look_again()
        log.warning(
            "Image ID %d: API error (attempt %d/%d): %s; retrying in %.1fs",
            row.id,
            row.attempts,
            s.retry_max_attempts,
            message,
            delay,
        )
