"""When to ask again whether a generation is done: spaced from what generations took.

Every status check costs a request against the provider's quota, so checks are placed
where an answer is likely, not every DEFAULT_CHECK_INTERVAL:

* The first check is at the provider's hint (`status_time`), as before.
* With observed generation times (the last HISTORY finished ones, this process; each
  learned from the last "not yet" and the answer, see `finished_between`), the
  next check is at the first of the median, the 75th, 90th and 99th percentile that is
  still ahead; past all of them, every `spread` seconds (p90 - p50), or a tenth of the
  time elapsed if longer (a first wave of observations can be early and tight).
* Without any, the next check is a quarter of the time elapsed so far later: an answer
  is found at most 25% after it was ready, in a handful of checks.
* Never sooner than DEFAULT_CHECK_INTERVAL after the previous check (the fastest rate).

The time limit is separate and unchanged in length (`Follow.timeout_reason`).

`checks` and `finished` count status checks and finished generations (for /metrics and
the benchmark: status checks per image = checks / finished).
"""

from __future__ import annotations

import statistics
from collections import deque

HISTORY = 100
QUANTILES = (0.5, 0.75, 0.9, 0.99)
UNKNOWN_SHARE = 0.25
# Past every mark (the observations were too few, or too early): a tenth of the time so
# far, so a spread learned as nothing does not mean a check every interval.
PAST_SHARE = 0.1


class Pacing:
    def __init__(self, *, interval: float, history: int = HISTORY) -> None:
        self.interval = interval
        self._times: deque[float] = deque(maxlen=history)
        self._marks: tuple[float, ...] = ()
        self._spread = interval
        # New observations not yet in the marks: they are computed when read (a provider
        # whose images are ready at the first check never reads them).
        self._stale = False
        self.checks = 0  # status checks made
        self.finished = 0  # generations followed to their end (image or refusal)

    # -- learning ----------------------------------------------------------------------

    def observe(self, seconds: float) -> None:
        """A generation finished `seconds` after the provider accepted it."""
        if not seconds >= 0 or seconds == float("inf"):
            return
        self._times.append(seconds)
        self._stale = True

    def _learn(self) -> None:
        """The marks and the spread of the times observed, computed again only after a
        new observation."""
        if not self._stale:
            return
        self._stale = False
        ordered = sorted(self._times)
        if len(ordered) == 1:
            self._marks, self._spread = (ordered[0],), self.interval
            return
        cuts = statistics.quantiles(ordered, n=100, method="inclusive")
        marks = [statistics.median(ordered)] + [cuts[round(q * 100) - 1] for q in QUANTILES[1:]]
        self._marks = tuple(sorted(set(marks)))
        self._spread = max(self.interval, marks[2] - marks[0])

    def finished_between(self, pending: float, ready: float) -> None:
        """A generation answered "not yet" `pending` seconds after acceptance and was
        done at `ready`. What is learned: the middle when the two are close (within two
        intervals); otherwise just under `ready` (by an interval, or an eighth of the
        gap): the answer's own time would teach the spacing its own lateness forever
        (a steady 2 s generation found at 2.44 s is checked at 2.44 s ever after), the
        middle of a wide gap a time too early, which costs a check on every later one."""
        gap = ready - pending
        if gap <= 2 * self.interval:
            self.observe(pending + gap / 2)
        else:
            self.observe(ready - max(self.interval, gap / 8))

    def checked(self) -> None:
        self.checks += 1

    def ended(self) -> None:
        self.finished += 1

    # -- reading -----------------------------------------------------------------------

    @property
    def observed(self) -> int:
        return len(self._times)

    @property
    def median(self) -> float | None:
        self._learn()
        return self._marks[0] if self._marks else None

    @property
    def spread(self) -> float:
        self._learn()
        return self._spread

    @property
    def checks_per_image(self) -> float | None:
        return self.checks / self.finished if self.finished else None

    def delay(self, elapsed: float) -> float:
        """Seconds from now (`elapsed` seconds after acceptance, a check just answered
        "not yet") to the next check."""
        self._learn()
        if not self._marks:
            return max(self.interval, elapsed * UNKNOWN_SHARE)
        for mark in self._marks:
            if mark > elapsed:
                return max(self.interval, mark - elapsed)
        return max(self.interval, self._spread, elapsed * PAST_SHARE)
