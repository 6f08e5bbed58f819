"""What the service knows about the provider as a whole, shared by every in-flight call.

* Busy (the provider says "wait": ApiBusy) or not taken (ApiNotTaken: 408, 425, 429):
  the generator pauses with capped, jittered exponential backoff, at least as long as a
  Retry-After asks (up to RETRY_BACKOFF_MAX); the first accepted submission resets it.
  (With a shared concurrency budget, a refusal for load first lowers the budget:
  Runs._busy.)
* Quota used up (ApiQuotaExhausted): drawing pauses for RETRY_BACKOFF_MAX, then one
  draw (one row) is tried; until one is accepted, every pause admits one draw. No row
  fails because of it; the rows it held wait with the provider's words in last_error.
* Credentials refused (ApiCredentials): nothing is failed because of a bad key.
  Generation stops, a probe asks the API every few seconds, one clear line is logged per
  minute (the provider's likely cause and what to check), and work resumes by itself
  once the key works again.

Every line names the provider by its title and says what to check in its own words
(`Provider.title`, `Provider.credentials_help`): no provider is named here.
"""

from __future__ import annotations

import logging
import math

import trio

from listener.engine.doorbell import backoff_delay
from listener.errors import ApiCredentials, ApiError

log = logging.getLogger(__name__)

CREDENTIALS_PROBE_INTERVAL = 5.0
CREDENTIALS_LOG_INTERVAL = 60.0


class ApiHealth:
    def __init__(
        self,
        *,
        backoff_base: float,
        backoff_max: float,
        title: str = "The image API",
        credentials_help: str = "check the provider's credentials",
    ) -> None:
        self.title = title
        self.credentials_help = credentials_help
        self.refusal = ""  # the provider's words for the last refusal of the key
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.busy_streak = 0
        self.busy_until = -math.inf
        self.quota: str | None = None  # the provider's words while its quota is used up
        self.credentials_ok = trio.Event()
        self.credentials_ok.set()
        self._changed = trio.Event()

    # -- reports from calls ----------------------------------------------------------------

    def accepted(self) -> None:
        if self.busy_streak:
            log.info("%s accepts requests again; generation resumed", self.title)
        if self.quota is not None:
            log.info("%s draws again (the paid quota allows it); generation resumed", self.title)
        self.busy_streak = 0
        self.busy_until = -math.inf
        self.quota = None

    def quota_exhausted(self, words: str) -> float:
        """The paid quota is used up: pause drawing for RETRY_BACKOFF_MAX; return the
        pause."""
        now = trio.current_time()
        if self.quota is None:
            log.error(
                "%s: the paid quota is used up (%s): drawing is paused and no row fails; "
                "one draw is tried every %.0fs until it is accepted",
                self.title,
                words,
                self.backoff_max,
            )
        self.quota = words
        self.busy_until = max(self.busy_until, now + self.backoff_max)
        return self.busy_until - now

    def quota_reason(self) -> str:
        """What a row waiting for the quota says in last_error."""
        return (
            f"waiting: {self.title}: paid quota used up ({self.quota}); one draw is tried "
            f"every {self.backoff_max:.0f}s"
        )

    def claim_limit(self) -> int:
        """How many rows a claim may take for drawing: one while the quota is used up
        (each time the pause ends, one draw is tried, and the pause starts again until
        a draw is accepted)."""
        if self.quota is None:
            return 1_000_000
        self.busy_until = max(self.busy_until, trio.current_time() + self.backoff_max)
        return 1

    def busy(self, what: str, *, retry_after: float | None = None) -> float:
        """Record a busy (or not taken) answer; return how long the generator pauses."""
        now = trio.current_time()
        if now < self.busy_until:  # another call of the same burst already backed off
            return self.busy_until - now
        self.busy_streak += 1
        delay = backoff_delay(self.busy_streak, self.backoff_base, min(self.backoff_max, 60.0))
        if retry_after:
            delay = max(delay, min(retry_after, self.backoff_max))
        self.busy_until = now + delay
        log.warning("%s busy (%s): generation paused for %.1fs", self.title, what, delay)
        return delay

    def credentials_refused(self, why: str = "") -> None:
        if why:
            self.refusal = why
        if self.credentials_ok.is_set():
            self.credentials_ok = trio.Event()
            self._changed.set()

    def may_generate(self) -> bool:
        return self.credentials_ok.is_set() and trio.current_time() >= self.busy_until

    # -- waiting ---------------------------------------------------------------------------

    async def ready_to_generate(self) -> None:
        """Return when the generator may call run: credentials fine, not backing off."""
        while True:
            if self.credentials_ok.is_set():
                # The usual case, at every wake-up: no trip through the scheduler between
                # the doorbell and the claim (a cancelled task still stops here).
                await trio.lowlevel.checkpoint_if_cancelled()
            else:
                await self.credentials_ok.wait()
            pause = self.busy_until - trio.current_time()
            if pause <= 0:
                return
            await trio.sleep(pause)

    async def serve_credentials_probe(
        self, probe, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """At start, one probe: a key the provider refuses (or a provider that is gone)
        is said at once, in one line, before any row is claimed for it. Then, while the
        credentials are refused, ask the API until it accepts them again."""
        task_status.started()
        try:
            await probe()
        except ApiCredentials as exc:
            self.credentials_refused(exc.message)
        except ApiError:
            pass  # anything else is the calls' business (busy, transient...)
        while True:
            await self._changed.wait()
            self._changed = trio.Event()
            last_log = -math.inf
            while not self.credentials_ok.is_set():
                now = trio.current_time()
                if now - last_log >= CREDENTIALS_LOG_INTERVAL:
                    log.error(
                        "%s refused the credentials%s: generation is paused and no row "
                        "is changed; %s (retrying every %.0fs)",
                        self.title,
                        f" ({self.refusal})" if self.refusal else "",
                        self.credentials_help,
                        CREDENTIALS_PROBE_INTERVAL,
                    )
                    last_log = now
                await trio.sleep(CREDENTIALS_PROBE_INTERVAL)
                try:
                    await probe()
                except ApiCredentials as exc:
                    self.refusal = exc.message
                    continue
                except ApiError:
                    pass  # any other answer means the key itself was accepted
                log.info("%s accepts the credentials again; work resumed", self.title)
                self.credentials_ok.set()
