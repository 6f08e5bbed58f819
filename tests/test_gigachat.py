"""A listener running GigaChat, as a process, against the GigaChat emulator over real
HTTP: every row ends where a user expects, no draw is paid twice, and faults of the
token service and the API fail no row that waiting can save."""

from __future__ import annotations

import base64
import io
import signal
from collections import Counter

import pytest
import trio
from PIL import Image

from tests.fixtures.gigachat import GIGACHAT_KEY
from tests.fixtures.listener import rows, wait_until
from tests.helpers import run_listener

pytestmark = pytest.mark.slow


def insert(url: str, *prompts: str) -> list[int]:
    ids = []
    for prompt in prompts:
        ids.append(
            rows(url, "INSERT INTO images (prompt) VALUES (%s) RETURNING id", (prompt,))[0][0]
        )
    return ids


def statuses(url: str) -> Counter:
    return Counter(dict(rows(url, "SELECT status, count(*) FROM images GROUP BY status")))


async def finished(url: str, n: int, *, seconds: float = 60) -> None:
    def check() -> bool:
        s = statuses(url)
        return s["ReadyToPublish"] + s["Failed"] == n

    try:
        await wait_until(check, seconds=seconds, every=0.1, what=f"{n} rows to finish")
    except AssertionError as exc:
        left = rows(
            url,
            "SELECT id, status, attempts, last_error FROM images "
            "WHERE status NOT IN ('ReadyToPublish', 'Failed') ORDER BY id LIMIT 5",
        )
        raise AssertionError(f"{exc}; still waiting: {left}") from None


def assert_jpeg(b64: str) -> None:
    data = base64.b64decode(b64, validate=True)
    assert data[:3] == b"\xff\xd8\xff"
    with Image.open(io.BytesIO(data)) as img:
        img.verify()
        assert img.format == "JPEG"


def row(url: str, id_: int) -> tuple:
    return rows(
        url, "SELECT status, censored, last_error, uuid, attempts FROM images WHERE id = %s", (id_,)
    )[0]


async def test_fifty_rows_with_the_default_concurrency_never_overlap(
    gigachat, start_gigachat_listener, database_url
) -> None:
    # One stream, as an individual account has: a second call at once would be a 429.
    gigachat.configure(streams=1)
    insert(database_url, *(f"a watercolour lighthouse number {i}" for i in range(50)))
    listener = await start_gigachat_listener()
    await finished(database_url, 50, seconds=120)
    assert statuses(database_url) == Counter({"ReadyToPublish": 50})
    for image, kind, width, height in rows(
        database_url, "SELECT base64, image_type, image_width, image_height FROM images"
    ):
        assert_jpeg(image)
        assert (kind, width, height) == ("jpeg", 96, 96)  # the size GigaChat chose
    stats = gigachat.stats()
    assert stats["max_in_flight"] == 1
    assert stats["rejected_busy"] == 0
    assert stats["draws_total"] == 50 and stats["downloads"] == 50
    assert stats["tokens_issued"] == 1  # one token shared by every call
    assert await listener.stop() == 0
    assert "GigaChat" in listener.log


async def test_token_expiry_and_a_revoked_token_fail_no_row(
    gigachat, start_gigachat_listener, database_url
) -> None:
    gigachat.configure(draw_time=0.2)
    insert(database_url, *(f"token test {i}" for i in range(12)))
    listener = await start_gigachat_listener()
    await wait_until(lambda: statuses(database_url)["ReadyToPublish"] >= 3, what="3 rows done")
    gigachat.expire_tokens()
    await wait_until(lambda: statuses(database_url)["ReadyToPublish"] >= 6, what="6 rows done")
    gigachat.revoke_tokens()
    await finished(database_url, 12)
    assert statuses(database_url) == Counter({"ReadyToPublish": 12})
    stats = gigachat.stats()
    assert stats["tokens_issued"] >= 3 and stats["unauthorized"] >= 2
    assert stats["draws_total"] == 12
    assert "refused the token" in listener.log
    # Neither the key nor a token (the emulator's start "emu.") ever reaches the log.
    assert GIGACHAT_KEY not in listener.log and "emu." not in listener.log


async def test_blacklist_and_no_image_fail_with_the_models_words(
    gigachat, start_gigachat_listener, database_url
) -> None:
    gigachat.configure(blacklist_words=["forbidden"], no_image_words=["describe"])
    censored, text, fine = insert(
        database_url, "something forbidden", "describe a quiet harbour", "a red fox"
    )
    await start_gigachat_listener()
    await finished(database_url, 3)
    status, is_censored, reason, _, _ = row(database_url, censored)
    assert (status, is_censored) == ("Failed", True)
    status, is_censored, reason, _, _ = row(database_url, text)
    assert (status, is_censored) == ("Failed", False)
    assert reason.startswith("no image: GigaChat answered") and "quiet harbour" in reason
    assert row(database_url, fine)[0] == "ReadyToPublish"
    assert gigachat.draws_for("something forbidden") == 0  # refused, not drawn


async def test_429_storms_are_waited_out(gigachat, start_gigachat_listener, database_url) -> None:
    gigachat.fault("chat", "429", count=15)
    gigachat.fault("download", "429", count=3)
    insert(database_url, *(f"storm {i}" for i in range(5)))
    await start_gigachat_listener()
    await finished(database_url, 5)
    assert statuses(database_url) == Counter({"ReadyToPublish": 5})
    assert rows(database_url, "SELECT max(attempts) FROM images")[0][0] == 1  # 429 is no attempt
    assert gigachat.stats()["draws_total"] == 5


async def test_500s_on_a_draw_are_unknown_outcomes(
    gigachat, start_gigachat_listener, database_url
) -> None:
    # A 5xx after the draw was sent does not say it was not drawn (docs/api-answers.md):
    # with GigaChat's default of 0 re-sends, the row fails saying it may have been drawn.
    gigachat.fault("chat", "500")
    (first,) = insert(database_url, "after one 500")
    listener = await start_gigachat_listener()
    await finished(database_url, 1)
    status, _, reason, _, _ = row(database_url, first)
    assert status == "Failed" and "may have" in reason and "HTTP 500" in reason
    await listener.stop()
    # An operator who accepts the risk allows re-sends: two 500s, then the image.
    gigachat.fault("chat", "500", count=2)
    (second,) = insert(database_url, "after two 500s")
    await start_gigachat_listener(UNKNOWN_OUTCOME_RESENDS="2")
    await finished(database_url, 2)
    assert row(database_url, second)[0] == "ReadyToPublish"


async def test_402_pauses_drawing_then_resumes(
    gigachat, start_gigachat_listener, database_url
) -> None:
    gigachat.configure(quota_exhausted=True)
    ids = insert(database_url, "quota one", "quota two")
    listener = await start_gigachat_listener()
    await listener.wait_for_log("Payment Required")
    await trio.sleep(2)
    assert statuses(database_url)["Failed"] == 0
    assert statuses(database_url)["ReadyToGenerate"] == 2
    # the pause shows while a row waits for its next try; the one draw tried every
    # RETRY_BACKOFF_MAX may have just fallen due between two of the status queries
    for _ in range(10):
        shown = await trio.to_thread.run_sync(
            lambda: run_listener("status", env=listener.env, cwd=listener.cwd)
        )
        if "Payment Required" in shown.stdout:
            break
        await trio.sleep(0.3)
    assert "Payment Required" in shown.stdout, shown.stdout + shown.stderr
    gigachat.configure(quota_exhausted=False)
    await finished(database_url, 2, seconds=30)
    assert [row(database_url, i)[0] for i in ids] == ["ReadyToPublish"] * 2


async def test_a_lost_reply_is_drawn_once_and_fails_saying_so(
    gigachat, start_gigachat_listener, database_url
) -> None:
    gigachat.fault("chat", "lost")
    (id_,) = insert(database_url, "a lost lighthouse")
    await start_gigachat_listener()
    await finished(database_url, 1)
    status, _, reason, _, _ = row(database_url, id_)
    assert status == "Failed"
    assert "may have" in reason and "listener retry" in reason
    # UNKNOWN_OUTCOME_RESENDS defaults to 0 with GigaChat: 1 + 0 draws.
    assert gigachat.draws_for("a lost lighthouse") == 1


async def test_a_download_that_fails_once_then_succeeds(
    gigachat, start_gigachat_listener, database_url
) -> None:
    gigachat.fault("download", "503")
    (id_,) = insert(database_url, "download retried")
    await start_gigachat_listener()
    await finished(database_url, 1)
    assert row(database_url, id_)[0] == "ReadyToPublish"
    stats = gigachat.stats()
    assert (stats["draws_total"], stats["downloads"]) == (1, 1)


async def test_sigkill_after_the_draw_downloads_after_restart_without_drawing_again(
    gigachat, start_gigachat_listener, database_url
) -> None:
    gigachat.fault("download", "delay:60")
    (id_,) = insert(database_url, "killed before the download")
    listener = await start_gigachat_listener()
    await wait_until(lambda: row(database_url, id_)[3] is not None, what="the file id in the row")
    assert row(database_url, id_)[0] == "Generate"
    listener.kill()
    await start_gigachat_listener()
    await finished(database_url, 1, seconds=30)
    assert row(database_url, id_)[0] == "ReadyToPublish"
    assert_jpeg(rows(database_url, "SELECT base64 FROM images WHERE id = %s", (id_,))[0][0])
    assert gigachat.draws_for("killed before the download") == 1


async def test_sigterm_during_a_draw_lets_it_finish_and_land_before_exit(
    gigachat, start_gigachat_listener, database_url
) -> None:
    # Longer than the old fixed SHUTDOWN_GRACE of 5 s: the draw's own deadline counts.
    gigachat.configure(draw_time=7)
    (id_,) = insert(database_url, "drawn during shutdown")
    listener = await start_gigachat_listener()
    await wait_until(lambda: gigachat.stats()["draws_total"] == 1, what="the draw to start")
    listener.proc.send_signal(signal.SIGTERM)
    assert await listener.wait_exit(seconds=30) == 0
    log = listener.log
    # The signal landed mid-draw: the draw was not cut and its reply came after the
    # signal; the image was downloaded and written before the process exited.
    assert log.index("Received SIGTERM") < log.index("accepted by the API")
    assert log.index("accepted by the API") < log.index("ready (ReadyToPublish)")
    assert gigachat.stats()["downloads"] == 1
    status, censored, last_error, handle, _ = row(database_url, id_)
    assert (status, censored, last_error) == ("ReadyToPublish", False, None)
    assert handle is not None
    (image,) = rows(database_url, "SELECT base64 FROM images WHERE id = %s", (id_,))[0]
    assert_jpeg(image)
    assert gigachat.draws_for("drawn during shutdown") == 1


async def test_styles_become_system_messages(
    gigachat, start_gigachat_listener, database_url
) -> None:
    rows(database_url, "INSERT INTO images (prompt, style) VALUES ('a photo of a pier', 'UHD')")
    rows(database_url, "INSERT INTO images (prompt, style) VALUES ('no style at all', 'DEFAULT')")
    insert(database_url, "the default style")  # DEFAULT_STYLE: ANIME
    await start_gigachat_listener()
    await finished(database_url, 3)
    assert statuses(database_url) == Counter({"ReadyToPublish": 3})
    system = {d["prompt"]: d["system"] for d in gigachat.stats()["draws"]}
    assert "фотограф" in system["Нарисуй: a photo of a pier"]
    assert system["Нарисуй: no style at all"] is None
    assert "аниме" in system["Нарисуй: the default style"]


async def test_make_run_with_gigachat_uses_its_built_in_emulator(
    start_gigachat_listener, gigachat_env, database_url
) -> None:
    env = {k: v for k, v in gigachat_env.items() if not k.startswith("GIGACHAT_")}
    (id_,) = insert(database_url, "a fox drawn by the built-in emulator")
    listener = await start_gigachat_listener("--with-emulator", env=env)
    await finished(database_url, 1, seconds=60)
    assert row(database_url, id_)[0] == "ReadyToPublish"
    image, kind = rows(database_url, "SELECT base64, image_type FROM images")[0]
    assert_jpeg(image)
    assert kind == "jpeg"
    assert "built-in GigaChat emulator" in listener.log


async def test_two_listeners_on_one_stream_wait_out_the_429s(
    gigachat, start_gigachat_listener, database_url
) -> None:
    # Several listeners on one individual key share its one stream: 429 is routine. Told
    # the account allows two (PROVIDER_CONCURRENCY), they collide at the provider.
    gigachat.configure(streams=1, draw_time=0.3)
    await start_gigachat_listener(PROVIDER_CONCURRENCY="2")
    await start_gigachat_listener(PROVIDER_CONCURRENCY="2")
    insert(database_url, *(f"shared key {i}" for i in range(12)))  # both are ready
    await finished(database_url, 12, seconds=90)
    assert statuses(database_url) == Counter({"ReadyToPublish": 12})
    stats = gigachat.stats()
    assert stats["draws_total"] == 12  # a 429 is refused before drawing: none paid twice
    assert stats["rejected_busy"] > 0  # the two did collide, and it cost nothing


async def test_two_listeners_on_one_key_share_its_one_stream_without_a_429(
    gigachat, start_gigachat_listener, database_url
) -> None:
    # The default: the account's budget (GigaChat's one call at a time) is shared through
    # the database by every listener using the same credentials, so they take turns.
    gigachat.configure(streams=1, draw_time=0.3)
    await start_gigachat_listener()
    await start_gigachat_listener()
    insert(database_url, *(f"taking turns {i}" for i in range(12)))
    await finished(database_url, 12, seconds=90)
    assert statuses(database_url) == Counter({"ReadyToPublish": 12})
    stats = gigachat.stats()
    assert stats["draws_total"] == 12
    assert stats["rejected_busy"] == 0  # never two calls at once on the one stream
    accounts = rows(database_url, "SELECT account, configured FROM listener_limits")
    assert len(accounts) == 1 and accounts[0][1] == 1, accounts
    assert accounts[0][0].startswith("gigachat:")


async def test_an_expired_file_fails_the_row_and_is_not_drawn_again(
    gigachat, start_gigachat_listener, database_url
) -> None:
    gigachat.fault("download", "404")
    (id_,) = insert(database_url, "a file that expired")
    await start_gigachat_listener()
    await finished(database_url, 1)
    status, _, reason, handle, _ = row(database_url, id_)
    assert status == "Failed" and "404" in reason and handle in reason
    assert gigachat.draws_for("a file that expired") == 1
