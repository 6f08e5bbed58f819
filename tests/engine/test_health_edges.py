"""The API's health, at its edges: the line a refused key gets (once a minute, with the
provider's latest words), the quota pause said once at each end and counted from its
refusal, a back-off under a second waited in full (survivors of the mutation run of
2026-12-07 on health.py)."""

from __future__ import annotations

import random

import trio

from listener.engine.health import ApiHealth
from listener.errors import ApiCredentials
from tests.engine.conftest import run_until


async def test_a_refused_key_is_said_once_a_minute_with_the_providers_latest_words(
    autojump_clock, caplog
):
    """Refused from the start for 125 s, the words changing at 62 s: said at 0, 60 and
    120 s, each time with what the provider said last."""

    async def probe() -> None:
        if trio.current_time() < 62:
            raise ApiCredentials("HTTP 401: bad key")
        if trio.current_time() < 125:
            raise ApiCredentials("HTTP 403: key revoked")

    health = ApiHealth(
        backoff_base=1, backoff_max=60, title="Fake API", credentials_help="check FAKE_KEY"
    )
    async with trio.open_nursery() as n:
        await n.start(health.serve_credentials_probe, probe)
        await run_until(
            lambda: trio.current_time() > 1 and health.credentials_ok.is_set(), every=1.0
        )
        n.cancel_scope.cancel()
    lines = [m for m in caplog.messages if "refused the credentials" in m]
    said = [
        "Fake API refused the credentials (HTTP 401: bad key)",
        "Fake API refused the credentials (HTTP 401: bad key)",
        "Fake API refused the credentials (HTTP 403: key revoked)",
    ]
    assert [line[: len(s)] for line, s in zip(lines, said, strict=False)] == said
    assert len(lines) == 3 and all("check FAKE_KEY" in line for line in lines)


async def test_a_used_up_quota_is_said_once_when_it_starts_and_once_when_it_ends(
    autojump_clock, caplog
):
    caplog.set_level("INFO", logger="listener.engine.health")
    health = ApiHealth(backoff_base=1, backoff_max=100, title="Fake API")

    def said(words: str) -> list[str]:
        return [m for m in caplog.messages if words in m]

    health.accepted()  # nothing was paused: nothing to say
    assert said("draws again") == []
    await trio.sleep(50)
    assert health.quota_exhausted("402: no tokens left") == 100  # the pause, from now
    assert len(said("the paid quota is used up (402: no tokens left)")) == 1
    await trio.sleep(100)
    assert health.quota_exhausted("402: no tokens left") == 100
    assert len(said("the paid quota is used up")) == 1  # said once
    health.accepted()
    assert said("draws again") == [
        "Fake API draws again (the paid quota allows it); generation resumed"
    ]


async def test_a_back_off_shorter_than_a_second_is_waited_in_full(autojump_clock, monkeypatch):
    monkeypatch.setattr(random, "uniform", lambda low, high: high)  # the ceiling
    health = ApiHealth(backoff_base=0.5, backoff_max=300)
    start = trio.current_time()
    assert health.busy("HTTP 429") == 0.5
    await health.ready_to_generate()
    assert trio.current_time() - start == 0.5
