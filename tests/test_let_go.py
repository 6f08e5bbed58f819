"""No row stranded, as a user sees it: listener processes driven with SQL.

An operator's repair while a generation runs (by hand as the table's owner, and with
images_regenerate as images_operator), a row deleted or handed to another application
while its image arrives, a listener killed while it follows a generation, the answer to
a write's COMMIT lost on the way, a paid run call cut off by a second signal. Whatever
happens, a row belongs to exactly one live task or to nobody."""

from __future__ import annotations

import contextlib
import signal
import socket
import struct
import threading
import time

import psycopg
import pytest
import trio

from tests.fixtures.listener import rows, wait_until
from tests.test_chaos import insert_many

GENERATION = 3.0  # seconds the emulator takes; its runs say "ask after 2 s"
# "Right before the image arrives": a second before, so that a loaded machine's delays
# cannot let the image land first; the lease (30 s) is renewed only every 10 s.
PATIENT = {"DEFAULT_MAX_ATTEMPTS": "1000"}  # checks every 0.05 s must not time out


def state(url: str, id_: int) -> tuple | None:
    found = rows(
        url,
        "SELECT status, locked_by, uuid, unknown_outcomes, attempts FROM images WHERE id = %s",
        (id_,),
    )
    return found[0] if found else None


def started(url: str, id_: int) -> float:
    """Seconds since the row's generation was accepted, by the database's clock."""
    (age,) = rows(
        url,
        "SELECT extract(epoch FROM now() - generation_started_at)::float8 FROM images "
        "WHERE id = %s",
        (id_,),
    )[0]
    return age


async def in_generate(url: str, *ids: int) -> None:
    await wait_until(
        lambda: all((state(url, i) or ("",))[0] == "Generate" for i in ids), what="Generate"
    )


def move_back(url: str, id_: int, operator_url: str | None) -> None:
    """The repair: as the table's owner by hand, or as images_operator."""
    if operator_url is None:
        rows(url, "UPDATE images SET status = 'ReadyToGenerate', uuid = NULL WHERE id = %s", (id_,))
    else:
        rows(operator_url, "SELECT images_regenerate(%s)", (id_,))


@pytest.mark.parametrize("moment", ["after the run", "before the image"])
async def test_a_generation_sent_back_by_an_operator_is_generated_again_at_once(
    start_listener, roles_applied, login_as, emulator, listener_env, moment
) -> None:
    """Regression: the write of the result was refused and the row task ended, but the
    row kept this listener's lease and every claim left "ours" out: with one listener it
    stayed ReadyToGenerate for ever (the 5-minute sweep submitted nothing)."""
    url = roles_applied
    operator = login_as("images_operator")
    emulator.configure(generation_time=GENERATION)
    env = {k: v for k, v in listener_env.items() if k != "LEASE_TIMEOUT"}  # the default
    listener = await start_listener(env=env, **PATIENT)
    by_hand, by_function = insert_many(url, 2, moment)
    await in_generate(url, by_hand, by_function)
    if moment == "before the image":  # the write of the result is the first to notice
        await wait_until(lambda: started(url, by_hand) > GENERATION - 1.0, what="the moment")
    moved = trio.current_time()
    move_back(url, by_hand, None)
    move_back(url, by_function, operator)

    def both_published():
        return all(state(url, i)[0] == "ReadyToPublish" for i in (by_hand, by_function))

    await wait_until(both_published, seconds=10, what="both rows published again")
    assert trio.current_time() - moved < 10
    assert [state(url, i)[1] for i in (by_hand, by_function)] == [None, None]
    assert emulator.stats()["runs_total"] == 4
    log = listener.log
    if moment == "before the image":
        assert log.count("write refused (finalise)") == 2
    assert "Traceback" not in log
    assert rows(url, "SELECT count(*) FROM images WHERE locked_by IS NOT NULL") == [(0,)]


@pytest.mark.parametrize("change", ["deleted", "Published"])
async def test_a_row_deleted_or_handed_on_while_its_image_arrives_is_let_go(
    start_listener, database_url, emulator, listener_env, change
) -> None:
    url = database_url
    emulator.configure(generation_time=GENERATION)
    env = {k: v for k, v in listener_env.items() if k != "LEASE_TIMEOUT"}  # no renewal
    listener = await start_listener(env=env, **PATIENT)
    (id_,) = insert_many(url, 1, change)
    await in_generate(url, id_)
    await wait_until(lambda: started(url, id_) > GENERATION - 1.0, what="the moment")
    if change == "deleted":
        rows(url, "DELETE FROM images WHERE id = %s", (id_,))
    else:
        rows(url, "INSERT INTO image_statuses VALUES ('Published')")
        rows(url, "UPDATE images SET status = 'Published' WHERE id = %s", (id_,))
    await listener.wait_for_log(f"image ID {id_}: write refused (finalise)", seconds=10)
    await trio.sleep(1)
    log = listener.log
    after = log[log.index(f"image ID {id_}: write refused") :]
    assert [line for line in after.splitlines() if f"ID {id_}" in line][1:] == []  # one line
    if change == "deleted":
        assert state(url, id_) is None
    else:
        assert state(url, id_)[:2] == ("Published", None)  # nothing of ours left on it
    assert rows(url, "SELECT count(*) FROM images WHERE locked_by IS NOT NULL") == [(0,)]
    assert (await listener.stop()) == 0
    assert "Released" not in listener.log  # nothing was left to release at the end


async def test_a_killed_listeners_generation_is_followed_when_its_lease_runs_out(
    start_listener, database_url, emulator
) -> None:
    """Regression: the row entered Generate leased, which rang nobody, and a surviving
    listener learned when that lease ran out only at its next pass (the 10-minute
    sweep); the provider had dropped the result by then."""
    url = database_url
    emulator.configure(generation_time=2.0, result_ttl=20.0)
    lease = 3.0
    env = {"LEASE_TIMEOUT": str(lease)}  # the sweeps keep their defaults (300 s, 600 s)
    listeners = [await start_listener(**env, **PATIENT) for _ in range(2)]
    (id_,) = insert_many(url, 1, "orphan")
    await in_generate(url, id_)
    owner = state(url, id_)[1]
    (following,) = [p for p in listeners if f":{p.proc.pid}:" in owner]
    (other,) = [p for p in listeners if p is not following]
    await trio.sleep(0.5)
    following.kill()
    killed = trio.current_time()
    await wait_until(
        lambda: state(url, id_)[0] == "ReadyToPublish", seconds=lease + 5, what="the image"
    )
    assert trio.current_time() - killed < lease + 2.5  # a lease, then a moment
    assert f"Resuming generation of image ID {id_}" in other.log
    assert other.log.count("Processor sweep started") == 1  # the start-up sweep only
    assert emulator.stats()["runs_total"] == 1


class CommitAnswerLost:
    """A TCP proxy in front of PostgreSQL that, once, lets a transaction containing
    `marker` commit and then drops the server's answer to the COMMIT (in autocommit: to
    the statement itself, which the server sends once it committed), closing both
    sides: the client cannot know whether its write landed."""

    def __init__(self, host: str, port: int, marker: bytes) -> None:
        self.target, self.marker = (host, port), marker
        self.dropped = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.server.close()
        for s in self._sockets:
            s.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._sockets += [client, upstream]
            flags = {"armed": False, "committing": False}
            threading.Thread(
                target=self._pump, args=(client, upstream, flags, True), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(upstream, client, flags, False), daemon=True
            ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, flags: dict, from_client: bool):
        buffer, typed = b"", not from_client  # the client's first message has no type
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                buffer += data
                while True:
                    head = 5 if typed else 4
                    if len(buffer) < head:
                        break
                    (length,) = struct.unpack("!I", buffer[head - 4 : head])
                    end = head - 4 + length
                    if len(buffer) < end:
                        break
                    message, buffer = buffer[:end], buffer[end:]
                    kind, body = message[:1], message[head:]
                    if typed and not self.dropped.is_set():
                        if from_client and kind in (b"P", b"Q") and self.marker in body:
                            flags["armed"] = True
                        if from_client and kind == b"Q" and body.startswith(b"BEGIN"):
                            flags["transaction"] = True
                        if from_client and kind == b"Q" and body.startswith(b"COMMIT"):
                            flags["committing"] = flags["armed"]
                        answer = not from_client and kind == b"C"
                        if answer and body.startswith(b"COMMIT") and flags["committing"]:
                            self.dropped.set()
                            break
                        if answer and flags["armed"] and not flags.get("transaction"):
                            # autocommit: the statement's own answer comes after its commit
                            flags["committing"] = True
                            self.dropped.set()
                            break
                    typed = True
                    dst.sendall(message)
                if self.dropped.is_set() and flags["committing"]:
                    break
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


async def test_a_write_whose_commit_answer_is_lost_is_found_done_and_the_row_moves_on(
    start_listener, database_url, emulator
) -> None:
    """Regression: the retried retry_later found its own write done, called the row lost
    ("leaving it to its new owner": there was none) and rang nobody; the row waited for
    the generator sweep (5 minutes)."""
    params = psycopg.conninfo.conninfo_to_dict(database_url)
    host = str(params.get("host") or "127.0.0.1")
    if host.startswith("/"):
        pytest.skip("the test server listens on a Unix socket; the proxy speaks TCP")
    proxy = CommitAnswerLost(host, int(params.get("port") or 5432), b"unknown_outcomes +")
    try:
        url = (
            f"postgresql://{params.get('user', 'postgres')}@127.0.0.1:{proxy.port}/"
            f"{params['dbname']}?sslmode=disable&gssencmode=disable"
        )
        emulator.fault("run", "503", 1)  # a 5xx after sending: retry_later, counted
        listener = await start_listener(DATABASE_URL=url, RETRY_BACKOFF_MAX="1")
        (id_,) = insert_many(database_url, 1, "lost commit")
        begun = trio.current_time()
        await wait_until(
            lambda: state(database_url, id_)[0] == "ReadyToPublish", seconds=10, what="image"
        )
        assert trio.current_time() - begun < 10
        assert proxy.dropped.is_set(), "the proxy dropped no COMMIT answer"
        # counted once, though the write was sent twice
        assert state(database_url, id_)[1:] == (None, state(database_url, id_)[2], 1, 2)
        log = listener.log
        assert "scheduling a retry" in log  # the write was retried ...
        assert "write refused" not in log and "changed under" not in log  # ... and found done
    finally:
        proxy.close()


@pytest.mark.parametrize("roles", [["-generator"], []], ids=["generator only", "both roles"])
async def test_a_run_call_cut_by_a_second_signal_is_released_and_counted(
    start_listener, database_url, emulator, roles
) -> None:
    """Regression (generator only): the row was taken for settled though nothing was
    written, and stayed leased until its lease ran out; in neither role was the abandoned
    (possibly paid) call counted. A paid call keeps its own deadline at the first signal
    (API_TIMEOUT): the second one cuts it."""
    url = database_url
    emulator.fault("run", "delay:20", 1)  # recorded (paid), answered 20 s later
    listener = await start_listener(*roles, SHUTDOWN_GRACE="1", LEASE_TIMEOUT="60")
    (id_,) = insert_many(url, 1, "cut off")
    await listener.wait_for_log(f"Processing image ID {id_}")
    await trio.sleep(0.3)
    listener.proc.send_signal(signal.SIGTERM)
    await trio.sleep(1.5)  # past SHUTDOWN_GRACE: still waiting for the paid call
    assert listener.proc.poll() is None
    begun = time.monotonic()
    assert await listener.stop(signal.SIGTERM, seconds=10) == 0
    assert time.monotonic() - begun < 3
    assert state(url, id_)[:4] == ("ReadyToGenerate", None, None, 1)
    assert "counted as an unknown outcome" in listener.log
    assert emulator.stats()["runs_total"] == 1
