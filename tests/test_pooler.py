"""Behind PgBouncer in transaction mode (issue 15), with a real PgBouncer
(tests/fixtures/pgbouncer.py; skipped where the binary is missing): the LISTEN self-test
finds a deaf connection and says so once, LISTEN_DATABASE_URL keeps wake-ups instant, no
server-side prepared statement breaks, migrations are safe, and the service does its work
through the pooler."""

from __future__ import annotations

import logging
import re
import statistics
import threading
import time

import psycopg
import pytest
import trio

import listener.notify
from listener.config import load_settings
from listener.db import detect_transaction_pooler, open_database, use_prepared_statements
from listener.migrate import migrate
from listener.notify import Connected, ListenMode, ListenStream, Notification
from listener.sqlfiles import migrations
from tests.fixtures.listener import rows, wait_until
from tests.helpers import run_listener

pytest_plugins = ("tests.fixtures.pgbouncer",)  # the pgbouncer fixtures

WAKEUP = "images_wakeup"
# psycopg's statements prepared on one server connection, run on another
PREPARED_ERROR = re.compile(r'prepared statement "\w+" (does not exist|already exists)')
WORKER_NAME = "fusionbrain-listener testhost:1:abc123 listen"


class Recorder:
    def __init__(self) -> None:
        self.events: list = []
        self.changed = trio.Event()

    def __call__(self, event) -> None:
        self.events.append(event)
        self.changed.set()
        self.changed = trio.Event()

    def wakeups(self) -> list[Notification]:
        return [e for e in self.events if isinstance(e, Notification) and e.channel == WAKEUP]

    async def wait_for(self, predicate, seconds: float = 10) -> None:
        with trio.fail_after(seconds):
            while not predicate():
                await self.changed.wait()


async def start_stream(nursery, url, **kwargs):
    rec = Recorder()
    stream = ListenStream(url, [WAKEUP], rec, **kwargs)
    await nursery.start(stream.serve)
    return stream, rec


async def execute(url, query, params=None):
    return await trio.to_thread.run_sync(rows, url, query, params)


def deaf_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "LISTEN self-test failed:" in r.getMessage()]


# -- the LISTEN stream on its own ----------------------------------------------------------------


async def test_direct_stream_passes_its_self_test_and_hears(database_url, nursery, caplog):
    stream, rec = await start_stream(nursery, database_url, application_name=WORKER_NAME)
    assert stream.mode == "listen"
    assert rec.events == [Connected(first=True)]  # no ListenMode: "listen" is the default
    await execute(database_url, "INSERT INTO images (prompt) VALUES ('a red fox')")
    await rec.wait_for(rec.wakeups, seconds=2)
    assert rec.wakeups() == [Notification(WAKEUP, "ReadyToGenerate")]
    assert not deaf_warnings(caplog)
    # the self-test's token is not delivered to the consumer
    assert all(isinstance(e, Connected) or e.channel == WAKEUP for e in rec.events)
    (mode,) = await execute(database_url, "SELECT mode FROM images_listeners")
    assert mode == ("listen",)


async def test_stream_through_the_pooler_is_found_deaf_and_says_so_once(
    pgbouncer, database_url, nursery, caplog
):
    pooled = pgbouncer.url_for(database_url)
    caplog.set_level(logging.INFO, logger="listener.notify")
    with trio.fail_after(5):  # the verdict takes the self-test's 2 s, not the sweep's 5 min
        stream, rec = await start_stream(nursery, pooled)
    assert stream.mode == "poll"
    assert rec.events == [ListenMode("poll"), Connected(first=True)]
    (warning,) = deaf_warnings(caplog)
    assert "transaction mode" in warning and "LISTEN_DATABASE_URL" in warning

    # a reconnection (the pooler drops every connection to the database) tests again;
    # still deaf: no second warning, no second ListenMode
    await trio.to_thread.run_sync(pgbouncer.admin, f"KILL {dbname(database_url)}")
    await trio.to_thread.run_sync(pgbouncer.admin, f"RESUME {dbname(database_url)}")
    await rec.wait_for(lambda: Connected(first=False) in rec.events, seconds=15)
    assert stream.mode == "poll"
    assert len(deaf_warnings(caplog)) == 1
    assert rec.events.count(ListenMode("poll")) == 1
    assert "LISTEN self-test failed again" in caplog.text


async def test_listen_direct_notify_through_the_pooler_hears(pgbouncer, database_url, nursery):
    """The LISTEN_DATABASE_URL setup: LISTEN straight to PostgreSQL, the writes (and the
    self-test's NOTIFY) through the pooler."""
    pooled = pgbouncer.url_for(database_url)
    stream, rec = await start_stream(nursery, database_url, notify_conninfo=pooled)
    assert stream.mode == "listen"
    assert rec.events == [Connected(first=True)]
    await execute(pooled, "INSERT INTO images (prompt) VALUES ('through the pooler')")
    await rec.wait_for(rec.wakeups, seconds=2)


async def test_a_polling_stream_shows_in_images_listeners(make_database, database_url, nursery):
    """Deaf without a pooler: the self-test's NOTIFY goes to another database, so the token
    never comes. The LISTEN connection is then named '... poll'."""
    elsewhere = make_database()
    stream, _ = await start_stream(
        nursery,
        database_url,
        notify_conninfo=elsewhere,
        application_name=WORKER_NAME,
        self_test_timeout=0.3,
    )
    assert stream.mode == "poll"
    assert await execute(database_url, "SELECT worker, listening, mode FROM images_listeners") == [
        ("testhost:1:abc123", False, "poll")
    ]


async def test_a_late_token_turns_polling_back_into_listening(database_url, nursery, monkeypatch):
    """A self-test answered after its deadline (a loaded machine) proves the connection
    hears: the stream listens after all, and says so with ListenMode and a catch-up."""
    send = listener.notify._send_token

    def late(*args):
        threading.Timer(0.5, send, args).start()

    monkeypatch.setattr(listener.notify, "_send_token", late)
    stream, rec = await start_stream(nursery, database_url, self_test_timeout=0.1)
    assert stream.mode == "poll"
    await rec.wait_for(lambda: stream.mode == "listen", seconds=5)
    assert rec.events == [
        ListenMode("poll"),
        Connected(first=True),
        ListenMode("listen"),
        Connected(first=False),
    ]
    await execute(database_url, "INSERT INTO images (prompt) VALUES ('heard')")
    await rec.wait_for(rec.wakeups, seconds=2)


def dbname(url: str) -> str:
    return psycopg.conninfo.conninfo_to_dict(url)["dbname"]


# -- prepared statements ---------------------------------------------------------------------


def test_detects_a_transaction_pooler_and_nothing_else(
    pgbouncer, pgbouncer_session_mode, database_url
):
    assert detect_transaction_pooler(pgbouncer.url_for(database_url)) is True
    assert detect_transaction_pooler(database_url) is False
    # session pooling keeps one server connection per client: prepared statements work
    assert detect_transaction_pooler(pgbouncer_session_mode.url_for(database_url)) is False
    assert use_prepared_statements("auto", pgbouncer.url_for(database_url)) is False
    assert use_prepared_statements("auto", database_url) is True
    assert use_prepared_statements("on", pgbouncer.url_for(database_url)) is True
    assert use_prepared_statements("off", database_url) is False


async def _repeat_queries(url: str, prepared: bool, times: int = 30) -> list[str]:
    """One query over and over through the pool (two connections, taking turns) while,
    before every third run, another client of the pooler takes the server connection
    released last (the one the pooler would lend next): the pool's connections keep
    landing on server connections other than the one they prepared on."""
    settings = load_settings(
        env_file=None, database_url=url, db_max_open_conns=2, db_max_idle_conns=2
    )
    errors: list[str] = []
    other = await trio.to_thread.run_sync(
        lambda: psycopg.connect(url, autocommit=True, prepare_threshold=None)
    )
    try:
        async with open_database(
            url, settings, application_name="fbl-test", prepared=prepared
        ) as db:
            for i in range(times):
                if i % 3 == 0:
                    await trio.to_thread.run_sync(other.execute, "BEGIN")
                    await trio.to_thread.run_sync(other.execute, "SELECT 1")
                try:
                    await db.sql("SELECT count(*) FROM images WHERE id > %s", (i,))
                except Exception as exc:
                    errors.append(str(exc))
                if i % 3 == 0:
                    await trio.to_thread.run_sync(other.execute, "COMMIT")
    finally:
        other.close()
    return errors


async def test_no_prepared_statement_errors_through_the_pooler(pgbouncer, database_url):
    pooled = pgbouncer.url_for(database_url)
    assert await _repeat_queries(pooled, prepared=False) == []
    # and the failure this prevents is real (psycopg prepares from the 5th run on)
    errors = await _repeat_queries(pooled, prepared=True)
    assert any(PREPARED_ERROR.search(e) for e in errors), errors


# -- migrations ------------------------------------------------------------------------------


def test_migrate_through_the_pooler_is_safe(pgbouncer, make_database, tmp_path):
    pooled = pgbouncer.url_for(make_database(migrated=False))
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def go() -> None:
        try:
            results.append(migrate(pooled))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert sorted(name for r in results for name in r) == [m.name for m in migrations()]
    # no advisory lock left behind on a server connection another client gets next
    # (this database's: pg_locks is the whole server's, where other tests migrate too)
    held = rows(
        pooled,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    assert held == [(0,)]
    # and the command says it is done, through the pooler
    from tests.helpers import clean_env

    done = run_listener("migrate", env=clean_env(DATABASE_URL=pooled), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "up to date" in done.stdout + done.stderr


# -- the service through the pooler (python -m listener) -----------------------------------------
# These need the engine's wiring of issue 15 (LISTEN_DATABASE_URL passed to ListenStream,
# ListenMode handled by a poll loop, DB_PREPARED_STATEMENTS passed to open_database).


def pooler_env(listener_env: dict[str, str], pgbouncer, **extra: str) -> dict[str, str]:
    return {
        **listener_env,
        "DATABASE_URL": pgbouncer.url_for(listener_env["DATABASE_URL"]),
        **extra,
    }


def insert(url: str, n: int, tag: str) -> list[int]:
    return [
        r[0]
        for r in rows(
            url,
            "INSERT INTO images (prompt) SELECT %s || g FROM generate_series(1, %s) g RETURNING id",
            (f"{tag} ", n),
        )
    ]


def finished(url: str, ids: list[int]) -> int:
    return rows(
        url,
        "SELECT count(*) FROM images WHERE id = ANY(%s) AND status = 'ReadyToPublish'",
        (ids,),
    )[0][0]


async def wait_done(url: str, ids: list[int], seconds: float) -> None:
    await wait_until(
        lambda: finished(url, ids) == len(ids), seconds=seconds, what=f"{len(ids)} rows done"
    )


async def test_event_mode_through_the_pooler_only_polls_and_says_so_once(
    pgbouncer, listener_env, database_url, start_listener
):
    env = pooler_env(listener_env, pgbouncer, POLL_INTERVAL="0.5")
    proc = await start_listener(env=env)
    pooled = env["DATABASE_URL"]
    ids = await trio.to_thread.run_sync(insert, pooled, 20, "polled")
    started = time.monotonic()
    await wait_done(pooled, ids, seconds=8)  # the sweep would take 5 minutes
    assert time.monotonic() - started < 8
    assert proc.log.count("LISTEN self-test failed:") == 1, proc.log
    assert not PREPARED_ERROR.search(proc.log)
    assert await proc.stop() == 0


async def test_listen_database_url_keeps_pickup_instant(
    pgbouncer, listener_env, database_url, emulator, start_listener
):
    # POLL_INTERVAL far away: a fast pickup can only come from a notification
    env = pooler_env(listener_env, pgbouncer, LISTEN_DATABASE_URL=database_url, POLL_INTERVAL="30")
    proc = await start_listener(env=env)
    pooled = env["DATABASE_URL"]
    latencies = []
    for i in range(8):
        commit = time.time()
        (row,) = await trio.to_thread.run_sync(insert, pooled, 1, f"instant {i}")
        await wait_done(pooled, [row], seconds=5)
        arrived = emulator.stats()["runs"][-1]["arrived_at"]
        latencies.append(arrived - commit)
    assert statistics.median(latencies) < 0.25, latencies
    assert "LISTEN self-test failed" not in proc.log
    listening = await execute(database_url, "SELECT listening, mode FROM images_listeners")
    assert (True, "listen") in listening
    assert await proc.stop() == 0


@pytest.mark.parametrize("mode", ["-cron", "event"])
async def test_no_prepared_statement_error_over_200_rows(
    mode, pgbouncer, listener_env, database_url, start_listener
):
    env = pooler_env(
        listener_env,
        pgbouncer,
        POLL_INTERVAL="0.2",
        GENERATOR_SWEEP_INTERVAL="0.2",
        PROCESSOR_SWEEP_INTERVAL="0.5",
    )
    proc = await start_listener(*(["-cron"] if mode == "-cron" else []), env=env)
    pooled = env["DATABASE_URL"]
    ids = await trio.to_thread.run_sync(insert, pooled, 200, "many")
    await wait_done(pooled, ids, seconds=20)
    assert not PREPARED_ERROR.search(proc.log)
    assert "transaction-mode connection pooler" in proc.log  # auto found it
    assert await proc.stop() == 0


async def test_four_listeners_through_one_pooler_run_each_row_once(
    pgbouncer, listener_env, database_url, emulator, start_listener
):
    env = pooler_env(listener_env, pgbouncer, POLL_INTERVAL="0.3", DB_MAX_OPEN_CONNS="3")
    procs = []
    async with trio.open_nursery() as n:

        async def one() -> None:
            procs.append(await start_listener(env=env))

        for _ in range(4):
            n.start_soon(one)
    pooled = env["DATABASE_URL"]
    ids = await trio.to_thread.run_sync(insert, pooled, 60, "shared")
    await wait_done(pooled, ids, seconds=15)
    stats = emulator.stats()
    assert stats["runs_total"] == 60
    assert sorted(r["prompt"] for r in stats["runs"]) == sorted(f"shared {g}" for g in range(1, 61))
    for p in procs:
        assert not PREPARED_ERROR.search(p.log)
        assert await p.stop() == 0
