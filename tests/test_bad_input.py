"""Bad input that the database accepts reaches the API in a form the API accepts; what
the database refuses is covered in test_schema, bad settings in test_config."""

from __future__ import annotations

import pytest
import regex

from tests.fixtures.listener import rows, wait_until


async def run_one(start_listener, url: str, emulator, prompt: str, **columns) -> tuple:
    await start_listener()
    names = ["prompt", "status", *columns]
    values = [prompt, "ReadyToGenerate", *columns.values()]
    (image_id,) = rows(
        url,
        f"INSERT INTO images ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(values))}) "
        "RETURNING id",
        values,
    )[0]

    def done():
        status, error = rows(url, "SELECT status, last_error FROM images WHERE id = %s",
                             (image_id,))[0]  # fmt: skip
        return (status, error) if status in ("ReadyToPublish", "Failed") else None

    outcome = await wait_until(done, what="the row to finish")
    (run,) = emulator.stats()["runs"]
    return outcome, run


async def test_a_100000_character_prompt_is_cut_to_999(start_listener, database_url, emulator):
    prompt = "a very long prompt " * 5263  # 99,997: the most a waiting row may hold is 100,000
    outcome, run = await run_one(start_listener, database_url, emulator, prompt)
    assert outcome == ("ReadyToPublish", None)
    assert run["prompt"] == prompt[:999]
    # The row keeps what the user wrote.
    assert rows(database_url, "SELECT length(prompt) FROM images")[0][0] == len(prompt)


@pytest.mark.parametrize("cluster", ["👍🏽", "👨‍👩‍👧", "e\u0301", "🇫🇷"])
async def test_graphemes_around_the_999th_character_stay_whole(
    start_listener, database_url, emulator, cluster
):
    prompt = "x" * 997 + cluster * 3
    outcome, run = await run_one(start_listener, database_url, emulator, prompt)
    assert outcome[0] == "ReadyToPublish"
    sent = run["prompt"]
    assert len(sent) <= 999 and prompt.startswith(sent)
    assert regex.findall(r"\X", sent)[997:] == [cluster] * len(regex.findall(r"\X", sent)[997:])


async def test_a_prompt_that_looks_like_sql_is_just_text(start_listener, database_url, emulator):
    prompt = "'); DROP TABLE images; --"
    outcome, run = await run_one(start_listener, database_url, emulator, prompt)
    assert outcome == ("ReadyToPublish", None)
    assert run["prompt"] == prompt
    assert rows(database_url, "SELECT count(*) FROM images")[0][0] == 1


async def test_width_not_a_multiple_of_64_is_sent_as_given(start_listener, database_url, emulator):
    outcome, run = await run_one(start_listener, database_url, emulator, "odd", width=1000)
    assert outcome == ("ReadyToPublish", None)
    assert run["width"] == 1000


async def test_a_long_negative_prompt_is_capped_at_1000(start_listener, database_url, emulator):
    outcome, run = await run_one(
        start_listener, database_url, emulator, "fox", negative_prompt="n" * 1500
    )
    assert outcome == ("ReadyToPublish", None)
    assert run["negative_prompt"] == "n" * 1000


async def test_unreachable_database_at_start_is_retried_with_a_clear_message(
    start_listener, listener_env
):
    listener = await start_listener(
        env={**listener_env, "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/postgres"},
        ready=False,
    )
    await listener.wait_for_log("Database unavailable", count=2, seconds=20)
    assert listener.proc.poll() is None, "it waits for the database"
    assert await listener.stop() == 0
    assert "Traceback" not in listener.log


async def test_unknown_default_style_is_refused_at_start(start_listener, listener_env):
    listener = await start_listener(env={**listener_env, "DEFAULT_STYLE": "NOIR"}, ready=False)
    assert await listener.wait_exit() == 2
    assert "DEFAULT_STYLE: 'NOIR' is not a known style" in listener.log
