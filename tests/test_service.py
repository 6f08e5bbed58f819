"""The listener as a user runs it: a process, driven with the seed's SQL, read back with
SQL, talking to the emulator over loopback."""

from __future__ import annotations

import base64
import io
import re
import shutil
import signal

import pytest
import trio
from PIL import Image

from tests.fixtures.listener import API_KEY, API_SECRET, rows, wait_until
from tests.helpers import listener_cmd

PLAIN_LINE = re.compile(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (?![\w/]+\.py:\d+: )\S")
VERBOSE_LINE = re.compile(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d [\w/]+\.py:\d+: \S")
SEED_INSERT = "INSERT INTO images (prompt, status) VALUES (%s, 'ReadyToGenerate') RETURNING id"


def insert(url: str, prompt: str = "a red fox in the snow", **columns) -> int:
    names = ["prompt", "status", *columns]
    values = [prompt, "ReadyToGenerate", *columns.values()]
    marks = ", ".join(["%s"] * len(values))
    return rows(url, f"INSERT INTO images ({', '.join(names)}) VALUES ({marks}) RETURNING id",
                values)[0][0]  # fmt: skip


def row(url: str, image_id: int) -> dict:
    cur = rows(
        url,
        "SELECT status, uuid, base64, last_error, attempts, censored, locked_by "
        "FROM images WHERE id = %s",
        (image_id,),
    )
    keys = ("status", "uuid", "base64", "last_error", "attempts", "censored", "locked_by")
    return dict(zip(keys, cur[0], strict=True))


async def finished(url: str, image_id: int, *, seconds: float = 30) -> dict:
    def check():
        r = row(url, image_id)
        return r if r["status"] in ("ReadyToPublish", "Failed") else None

    return await wait_until(check, seconds=seconds, what=f"image {image_id} to finish")


def png_size(b64: str) -> tuple[int, int]:
    data = base64.b64decode(b64, validate=True)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(data)) as img:
        return img.size


async def test_seed_insert_becomes_a_png_of_the_configured_size(
    start_listener, database_url, emulator
) -> None:
    listener = await start_listener()
    with_seed_sql = rows(database_url, SEED_INSERT, ("a red fox in the snow",))[0][0]
    done = await finished(database_url, with_seed_sql)
    assert done["status"] == "ReadyToPublish", done["last_error"]
    assert done["uuid"] and done["locked_by"] is None
    assert png_size(done["base64"]) == (128, 64)
    assert emulator.stats()["runs_by_prompt"] == {"a red fox in the snow": 1}
    await listener.wait_for_log(f"Image ID {with_seed_sql} ready")
    assert await listener.stop() == 0
    log = listener.log
    assert "Service stopped" in log
    assert all(PLAIN_LINE.match(line) for line in log.splitlines()), log
    for secret in (API_KEY, API_SECRET):
        assert secret not in log


async def test_verbose_adds_file_and_line_to_every_line(start_listener, database_url) -> None:
    listener = await start_listener("-verbose")
    done = await finished(database_url, insert(database_url))
    assert done["status"] == "ReadyToPublish"
    assert await listener.stop() == 0
    lines = listener.log.splitlines()
    assert any("Image ID 1 ready" in line for line in lines)
    assert all(VERBOSE_LINE.match(line) for line in lines), listener.log


async def test_per_row_overrides_reach_the_api(start_listener, database_url, emulator) -> None:
    await start_listener()
    image_id = insert(
        database_url, "a lighthouse", style="UHD", width=256, height=192,
        negative_prompt="fog",
    )  # fmt: skip
    done = await finished(database_url, image_id)
    assert done["status"] == "ReadyToPublish"
    assert png_size(done["base64"]) == (256, 192)
    (run,) = emulator.stats()["runs"]
    assert (run["prompt"], run["style"], run["width"], run["height"], run["negative_prompt"]) == (
        "a lighthouse", "UHD", 256, 192, "fog")  # fmt: skip


@pytest.mark.parametrize(
    ("fault", "status", "reason"),
    [
        (("run", "busy_model", 3), "ReadyToPublish", None),
        (("run", "busy_pipeline", 2), "ReadyToPublish", None),
        (("run", "busy_manual", 2), "ReadyToPublish", None),
        (("run", "503", 1), "ReadyToPublish", None),
        (("run", "429", 3), "ReadyToPublish", None),
        (("run", "malformed", 1), "ReadyToPublish", None),
        (("run", "drop", 1), "ReadyToPublish", None),
        # A run without a usable answer may have been paid for: re-sent once, not twice.
        (("run", "malformed", 2), "Failed", "gave up: 2 run(s) sent without a usable answer"),
        (("run", "drop", 2), "Failed", "gave up: 2 run(s) sent without a usable answer"),
        (("status", "502", 3), "ReadyToPublish", None),
        (("status", "malformed", 3), "ReadyToPublish", None),
        # A 5xx after the run was sent may have been paid for: counted like a timeout.
        (("run", "500", 50), "Failed", "gave up: 2 run(s) sent without a usable answer"),
        (("run", "504", 50), "Failed", "gave up: 2 run(s) sent without a usable answer"),
        (("run", "400", 1), "Failed", "API refused the request"),
        (("run", "fail", 1), "Failed", "generation FAIL: emulated failure"),
        (("run", "cancel", 1), "Failed", "generation CANCEL"),
        (("run", "censor", 1), "Failed", "censored"),
        (("status", "404", 1), "Failed", "no longer knows generation"),
    ],
    ids=lambda v: "-".join(map(str, v)) if isinstance(v, tuple) else str(v),
)
async def test_each_outcome_ends_where_the_readme_says(
    start_listener, database_url, emulator, fault, status, reason
) -> None:
    emulator.fault(*fault)
    await start_listener(RETRY_MAX_ATTEMPTS="3")
    image_id = insert(database_url)
    done = await finished(database_url, image_id)
    assert done["status"] == status, done
    if reason:
        assert reason in done["last_error"]
        assert done["base64"] is None
    else:
        assert done["last_error"] is None or fault[0] == "run"
    if fault[1] == "censor":
        assert done["censored"] is True
    runs = emulator.stats()["runs_total"]
    accepted = fault[0] == "status" or fault[1] in ("fail", "cancel", "censor")
    assert runs == (1 if accepted else int(status == "ReadyToPublish")), "never a second run"


async def test_a_run_answered_after_the_timeout_is_retried_at_the_cost_of_a_second_run(
    start_listener, database_url, emulator
) -> None:
    """The run reached the API, but its answer came too late: the outcome is unknown. The
    row is retried (the README says so: it may cost one more run) and logged as such."""
    emulator.fault("run", "delay:1.5", 1)
    listener = await start_listener(API_TIMEOUT="0.5")
    done = await finished(database_url, insert(database_url))
    assert done["status"] == "ReadyToPublish"
    assert emulator.stats()["runs_total"] == 2
    assert "the run may have been accepted" in listener.log


async def test_slow_status_answers_are_retried(start_listener, database_url, emulator) -> None:
    emulator.fault("status", "delay:1.5", 2)
    await start_listener(API_TIMEOUT="0.5")
    done = await finished(database_url, insert(database_url))
    assert done["status"] == "ReadyToPublish"
    assert emulator.stats()["runs_total"] == 1


async def test_a_result_that_expired_while_no_listener_ran_fails_the_row(
    start_listener, database_url, emulator
) -> None:
    emulator.configure(generation_time=0.3, result_ttl=0.2)
    listener = await start_listener(DEFAULT_CHECK_INTERVAL="5")
    image_id = insert(database_url)
    await wait_until(lambda: row(database_url, image_id)["uuid"], what="the run accepted")
    assert await listener.stop() == 0
    await trio.sleep(1)  # generation over (0.3 s), then its result kept 0.2 s, then gone
    await start_listener()
    done = await finished(database_url, image_id)
    assert done["status"] == "Failed"
    assert "no longer knows generation" in done["last_error"]
    assert emulator.stats()["runs_total"] == 1


async def test_busy_runs_do_not_count_as_attempts(start_listener, database_url, emulator) -> None:
    emulator.fault("run", "busy_model", 4)
    await start_listener(RETRY_MAX_ATTEMPTS="2")
    done = await finished(database_url, insert(database_url))
    assert done["status"] == "ReadyToPublish"


async def test_generation_timeout_fails_the_row(start_listener, database_url, emulator) -> None:
    emulator.configure(generation_time=60)
    await start_listener(DEFAULT_GENERATION_TIMEOUT="1")
    done = await finished(database_url, insert(database_url))
    assert done["status"] == "Failed"
    assert done["last_error"].startswith("timeout: no result 1s after the API accepted")


async def test_max_status_checks_fail_the_row(start_listener, database_url, emulator) -> None:
    emulator.configure(generation_time=60)
    await start_listener(DEFAULT_MAX_ATTEMPTS="3")
    done = await finished(database_url, insert(database_url))
    assert done["status"] == "Failed"
    assert done["last_error"] == (
        "timeout: no result 0.15s after the first status check (3 x 0.05s)"
    )


async def test_bad_credentials_pause_generation_until_fixed(
    start_listener, database_url, emulator
) -> None:
    emulator.configure(wrong_credentials=True)
    listener = await start_listener()
    ids = [insert(database_url, f"prompt {i}") for i in range(3)]
    await listener.wait_for_log("refused the credentials")
    assert {row(database_url, i)["status"] for i in ids} == {"ReadyToGenerate"}
    assert {row(database_url, i)["attempts"] for i in ids} == {0}
    emulator.configure(wrong_credentials=False)
    for i in ids:
        assert (await finished(database_url, i))["status"] == "ReadyToPublish"
    await listener.wait_for_log("accepts the credentials again")
    assert emulator.stats()["runs_total"] == 3
    assert listener.log.count("refused the credentials") == 1, "one line per minute"


async def test_cron_mode_works_only_on_its_schedule(start_listener, database_url) -> None:
    image_id = insert(database_url, "waiting for the first sweep")
    listener = await start_listener(
        "-cron", GENERATOR_SWEEP_INTERVAL="2", PROCESSOR_SWEEP_INTERVAL="3"
    )
    await listener.wait_for_log("Generator sweep finished", count=1)
    # The start-up pass took the first row; a new row waits for the next sweep.
    second = insert(database_url, "inserted between sweeps")
    await trio_sleep(0.8)
    assert row(database_url, second)["status"] == "ReadyToGenerate", "no LISTEN in -cron mode"
    assert (await finished(database_url, second, seconds=10))["status"] == "ReadyToPublish"
    assert row(database_url, image_id)["status"] == "ReadyToPublish"
    await listener.wait_for_log("Processor sweep finished", count=2, seconds=10)
    assert await listener.stop() == 0
    assert_sweeps_never_overlap(listener.log)


def assert_sweeps_never_overlap(log: str) -> None:
    running = None
    seen = 0
    for line in log.splitlines():
        for kind in ("Generator", "Processor"):
            if f"{kind} sweep started" in line:
                assert running is None, f"{kind} sweep started while {running} sweep ran"
                running = kind
                seen += 1
            elif f"{kind} sweep finished" in line:
                assert running == kind
                running = None
    assert seen >= 4


async def trio_sleep(seconds: float) -> None:
    import trio

    await trio.sleep(seconds)


async def test_once_processes_what_is_there_and_exits_zero(
    start_listener, database_url, emulator
) -> None:
    emulator.configure(generation_time=0.3)
    ids = [insert(database_url, f"batch {i}") for i in range(5)]
    listener = await start_listener("--once", ready=False)
    assert await listener.wait_exit() == 0
    assert {row(database_url, i)["status"] for i in ids} == {"ReadyToPublish"}
    assert emulator.stats()["runs_total"] == 5


async def test_roles_split_across_processes(start_listener, database_url, emulator) -> None:
    await start_listener("-generator")
    image_id = insert(database_url)
    await wait_until(lambda: row(database_url, image_id)["status"] == "Generate", what="Generate")
    await start_listener("--processor")
    assert (await finished(database_url, image_id))["status"] == "ReadyToPublish"
    assert emulator.stats()["runs_total"] == 1


async def test_sigterm_mid_generation_then_restart_runs_once(
    start_listener, database_url, emulator
) -> None:
    emulator.configure(generation_time=2)
    # 30 checks 0.05 s apart (the default count, the tests' interval) are 1.5 s: fewer
    # than the resumed generation may still need, which would be the timeout rule's Failed.
    patient = {"DEFAULT_MAX_ATTEMPTS": "1000"}
    first = await start_listener(**patient)
    image_id = insert(database_url, "interrupted")
    await wait_until(lambda: row(database_url, image_id)["status"] == "Generate", what="Generate")
    assert await first.stop(signal.SIGTERM, seconds=10) == 0
    held = row(database_url, image_id)
    assert (held["status"], held["locked_by"]) == ("Generate", None)
    assert held["uuid"], "a Generate row keeps its uuid"
    await start_listener(**patient)
    done = await finished(database_url, image_id)
    assert done["status"] == "ReadyToPublish", done["last_error"]
    assert emulator.stats()["runs_by_prompt"] == {"interrupted": 1}


async def test_unmigrated_database_is_refused(start_listener, make_database, listener_env) -> None:
    bare = make_database(migrated=False)
    listener = await start_listener(env={**listener_env, "DATABASE_URL": bare}, ready=False)
    assert await listener.wait_exit() == 1
    assert "the database is not migrated" in listener.log
    assert "run `listener migrate`" in listener.log
    assert "Traceback" not in listener.log


@pytest.mark.skipif(not shutil.which("psql"), reason="psql is not installed")
async def test_with_emulator_and_no_key_the_try_it_line_works(
    start_listener, database_url, listener_env, tmp_path
) -> None:
    """What `make run` shows a first-time user: the built-in emulator, and one line whose
    psql command inserts a row that becomes an image the export command writes."""
    env = {k: v for k, v in listener_env.items() if not k.startswith("FUSION_BRAIN_")}
    listener = await start_listener("--with-emulator", env=env)
    assert "images are placeholders until an API key is set" in listener.log
    hint = next(line for line in listener.log.splitlines() if "Try it: " in line)
    psql_part = hint.split("Try it: ", 1)[1].split(" ; then: ", 1)[0]
    inserted = await trio.run_process(["bash", "-c", psql_part + " -At"], capture_stdout=True)
    image_id = int(inserted.stdout.split()[0])
    done = await finished(database_url, image_id)
    assert done["status"] == "ReadyToPublish", done["last_error"]
    assert "export ID -o fox.png" in hint
    out = tmp_path / "fox.png"
    exported = await trio.run_process(
        listener_cmd("export", str(image_id), "-o", str(out)), env=env, cwd=tmp_path
    )
    assert exported.returncode == 0
    assert out.read_bytes().startswith(b"\x89PNG")
