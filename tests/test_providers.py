"""Providers as a user meets them: listener processes on the Fusion Brain emulator,
driven with SQL. The key service gone (404), rows pinned to a provider nobody runs,
generations left in flight when a user switches provider."""

from __future__ import annotations

import trio

from tests.fixtures.listener import rows, wait_until
from tests.helpers import run_listener
from tests.test_service import finished, insert, row

RETIRED_HINT = "looks retired"


async def test_a_retired_key_service_pauses_with_one_line_naming_gigachat(
    start_listener, database_url, emulator
) -> None:
    """Its key API answers 404 everywhere: at start, and for a generation in flight."""
    emulator.configure(generation_time=3600)
    first = await start_listener()
    image_id = insert(database_url, "in flight when the service went away")
    accepted = await wait_until(
        lambda: row(database_url, image_id)["status"] != "ReadyToGenerate", what="a run"
    )
    assert accepted
    await first.stop()
    emulator.configure(retired=True)
    listener = await start_listener()
    waiting = insert(database_url, "inserted after")
    await listener.wait_for_log(RETIRED_HINT)
    log = listener.log
    line = next(x for x in log.splitlines() if RETIRED_HINT in x)
    assert "404" in line and "GIGACHAT_CREDENTIALS" in line and "IMAGE_PROVIDER=gigachat" in line
    await trio.sleep(1.5)
    # Nothing fails because of it, nothing crashes, nothing is paid for.
    assert listener.proc.poll() is None
    assert row(database_url, image_id)["status"] == "Generate"
    assert row(database_url, waiting)["status"] == "ReadyToGenerate"
    assert row(database_url, waiting)["attempts"] == 0
    assert listener.log.count(RETIRED_HINT) == 1, "one line a minute"
    # The service is back: work resumes by itself.
    emulator.configure(retired=False, generation_time=0)
    assert (await finished(database_url, waiting))["status"] == "ReadyToPublish"
    await listener.wait_for_log("accepts the credentials again")


async def test_a_row_pinned_to_a_provider_nobody_runs_waits_and_status_says_so(
    start_listener, database_url, listener_env, tmp_path
) -> None:
    pinned = insert(database_url, "for gigachat only", provider="gigachat")
    anyone = insert(database_url, "for anyone")
    await start_listener()
    done = await finished(database_url, anyone)
    assert done["status"] == "ReadyToPublish"
    await trio.sleep(0.5)
    assert row(database_url, pinned)["status"] == "ReadyToGenerate"
    assert row(database_url, pinned)["attempts"] == 0
    (got,) = rows(
        database_url,
        "SELECT provider, image_type, image_width, image_height FROM images WHERE id = %s",
        (anyone,),
    )
    assert got == ("fusionbrain", "png", 128, 64)
    result = await trio.to_thread.run_sync(
        lambda: run_listener("status", env=listener_env, cwd=tmp_path)
    )
    assert result.returncode == 0, result.stderr
    assert "no connected listener runs provider gigachat" in result.stdout
    assert "1 pinned row(s) wait" in result.stdout
    assert "fusionbrain" in result.stdout  # the listener's provider, in its table


async def test_fusion_brain_generations_survive_a_switch_and_are_finished_or_requeued(
    start_listener, database_url, emulator, listener_env, tmp_path
) -> None:
    """Generations in flight at the switch keep their provider: a listener of another
    provider never asks about them (store-level: tests/test_provider_rows.py); a Fusion
    Brain listener finishes them, or the operator requeues them."""
    emulator.configure(generation_time=4)
    listener = await start_listener()
    ids = [insert(database_url, f"fox {i}") for i in range(4)]
    for i in ids:
        await wait_until(lambda i=i: row(database_url, i)["status"] == "Generate", what="run")
    assert await listener.stop() == 0
    assert {r[0] for r in rows(database_url, "SELECT provider FROM images")} == {"fusionbrain"}

    # The user requeues two of them by hand ...
    env = listener_env
    dry = await trio.to_thread.run_sync(
        lambda: run_listener("requeue", "--provider", "fusionbrain", env=env, cwd=tmp_path)
    )
    assert dry.returncode == 0, dry.stderr
    assert "4 generation(s)" in dry.stdout and "--yes" in dry.stdout
    assert {row(database_url, i)["status"] for i in ids} == {"Generate"}
    rows(database_url, "UPDATE images SET provider = 'fusionbrain2' WHERE id = ANY(%s)", (ids[:2],))
    done = await trio.to_thread.run_sync(
        lambda: run_listener(
            "requeue", "--provider", "fusionbrain2", "--yes", env=env, cwd=tmp_path
        )
    )
    assert done.returncode == 0, done.stderr
    assert "2 generation(s)" in done.stdout and "new paid draw" in done.stdout
    # ... and a Fusion Brain listener finishes the rest and draws the requeued ones.
    emulator.configure(generation_time=0)
    runs_before = emulator.stats()["runs_total"]
    await start_listener(DEFAULT_MAX_ATTEMPTS="1000")
    for i in ids:
        done = await finished(database_url, i)
        assert done["status"] == "ReadyToPublish", done["last_error"]
    assert emulator.stats()["runs_total"] == runs_before + 2, "only the requeued were drawn"
