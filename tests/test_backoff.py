"""listener.backoff: the first try runs bare; a failure brings stamina in with the same
schedule as a stamina loop from the start (fake clock: the waits are real trio sleeps)."""

from __future__ import annotations

import pytest
import stamina
import trio

from listener.backoff import first_then_retry


class Flaky:
    """Fails `failures` times with `error`, then answers; records when it was called."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or OSError("down")
        self.calls: list[float] = []

    async def __call__(self) -> str:
        self.calls.append(trio.current_time())
        if len(self.calls) <= self.failures:
            raise self.error
        return "ok"


async def test_a_first_try_that_succeeds_never_enters_stamina(monkeypatch, autojump_clock):
    def entered(*args, **kwargs):
        raise AssertionError("stamina entered on the success path")

    monkeypatch.setattr(stamina, "retry_context", entered)
    call = Flaky(0)
    assert await first_then_retry(call, on=OSError, attempts=3, wait_initial=0.1) == "ok"
    assert len(call.calls) == 1


async def test_a_failure_is_retried_after_the_first_backoff(autojump_clock):
    call = Flaky(2)
    got = await first_then_retry(
        call, on=OSError, attempts=3, wait_initial=0.5, wait_max=5.0, wait_jitter=0.0
    )
    assert got == "ok"
    assert len(call.calls) == 3
    # stamina's schedule from the first failure on: 0.5 s, then 0.5 x 2 s
    assert call.calls[1] - call.calls[0] == pytest.approx(0.5, abs=0.01)
    assert call.calls[2] - call.calls[1] == pytest.approx(1.0, abs=0.01)


async def test_attempts_count_the_bare_first_try(autojump_clock):
    call = Flaky(10)
    with pytest.raises(OSError, match="down"):
        await first_then_retry(call, on=OSError, attempts=3, wait_initial=0.01)
    assert len(call.calls) == 3


async def test_what_on_does_not_take_is_raised_at_once(autojump_clock):
    call = Flaky(1, ValueError("not retried"))
    with pytest.raises(ValueError, match="not retried"):
        await first_then_retry(call, on=OSError, attempts=3, wait_initial=0.01)
    assert len(call.calls) == 1


async def test_a_predicate_decides_as_in_stamina(autojump_clock):
    no = Flaky(1, OSError("permanent"))
    with pytest.raises(OSError, match="permanent"):
        await first_then_retry(
            no, on=lambda exc: "permanent" not in str(exc), attempts=3, wait_initial=0.01
        )
    assert len(no.calls) == 1
    yes = Flaky(1, OSError("blip"))
    assert await first_then_retry(yes, on=lambda exc: True, attempts=3, wait_initial=0.01)
    assert len(yes.calls) == 2


async def test_testing_mode_caps_attempts_as_before(autojump_clock):
    call = Flaky(10)
    with stamina.set_testing(True, attempts=2, cap=True), pytest.raises(OSError, match="down"):
        await first_then_retry(call, on=OSError, attempts=5, wait_initial=1.0)
    assert len(call.calls) == 2
