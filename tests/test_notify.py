"""The LISTEN stream on trio: wake-ups arrive, bulk inserts stay cheap, cancellation is
prompt, and a killed connection comes back and says so."""

from __future__ import annotations

import json

import psycopg
import trio

from listener.notify import Connected, ListenStream, Notification

CHANNELS = ["images_wakeup", "images_done"]


class Recorder:
    def __init__(self):
        self.events: list = []
        self.changed = trio.Event()

    def __call__(self, event):
        self.events.append(event)
        self.changed.set()
        self.changed = trio.Event()

    def notifications(self, channel=None):
        return [
            e
            for e in self.events
            if isinstance(e, Notification) and (channel is None or e.channel == channel)
        ]

    async def wait_for(self, predicate, seconds=10):
        with trio.fail_after(seconds):
            while not predicate():
                await self.changed.wait()


async def start_stream(nursery, url, **kwargs):
    rec = Recorder()
    stream = ListenStream(url, CHANNELS, rec, **kwargs)
    await nursery.start(stream.serve)
    return stream, rec


async def execute(url, query, params=None):
    def go():
        with psycopg.connect(url, autocommit=True) as c:
            cur = c.execute(query, params)
            return cur.fetchall() if cur.description else []

    return await trio.to_thread.run_sync(go)


async def test_insert_wakes_the_listener(database_url, nursery):
    _, rec = await start_stream(nursery, database_url)
    assert rec.events == [Connected(first=True)]
    await execute(database_url, "INSERT INTO images (prompt) VALUES ('a red fox')")
    await rec.wait_for(lambda: rec.notifications("images_wakeup"), seconds=1)
    assert rec.notifications() == [Notification("images_wakeup", "ReadyToGenerate")]


async def test_bulk_insert_sends_one_wakeup(database_url, nursery):
    _, rec = await start_stream(nursery, database_url)
    await execute(
        database_url,
        "INSERT INTO images (prompt) SELECT 'bulk ' || g FROM generate_series(1, 10000) g",
    )
    # A marker sent after the bulk insert: when it arrives, everything before it has too.
    await execute(database_url, "SELECT pg_notify('images_done', 'marker')")
    await rec.wait_for(lambda: any(n.payload == "marker" for n in rec.notifications()))
    assert rec.notifications("images_wakeup") == [Notification("images_wakeup", "ReadyToGenerate")]


async def test_completion_channel_announces_id_and_status(database_url, nursery):
    _, rec = await start_stream(nursery, database_url)
    rows = await execute(database_url, "INSERT INTO images (prompt) VALUES ('x') RETURNING id")
    (id_,) = rows[0]
    await execute(
        database_url, "UPDATE images SET status = 'Failed', last_error = 'e' WHERE id = %s", (id_,)
    )
    await rec.wait_for(lambda: rec.notifications("images_done"))
    (done,) = rec.notifications("images_done")
    assert json.loads(done.payload) == {"id": id_, "status": "Failed"}


async def test_transitions_that_need_no_listener_are_silent(database_url, nursery):
    rows = await execute(
        database_url, "INSERT INTO images (prompt, locked_by) VALUES ('x', 'w1') RETURNING id"
    )
    (id_,) = rows[0]
    _, rec = await start_stream(nursery, database_url)
    # a heartbeat, a claimed row becoming Generate with its owner: nobody needs waking
    await execute(database_url, "UPDATE images SET locked_until = now() WHERE id = %s", (id_,))
    await execute(
        database_url, "UPDATE images SET status = 'Generate', uuid = 'u' WHERE id = %s", (id_,)
    )
    # the owner lets the generation go: another listener must pick it up
    await execute(database_url, "UPDATE images SET locked_by = NULL WHERE id = %s", (id_,))
    await execute(database_url, "SELECT pg_notify('images_done', 'marker')")
    await rec.wait_for(lambda: any(n.payload == "marker" for n in rec.notifications()))
    assert rec.notifications("images_wakeup") == [Notification("images_wakeup", "Generate")]


async def test_cancelling_a_waiting_stream_is_prompt(database_url):
    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            await start_stream(nursery, database_url)
            await trio.sleep(0.1)
            nursery.cancel_scope.cancel()


async def test_terminated_backend_reconnects_and_reports_it(database_url, nursery):
    stream, rec = await start_stream(nursery, database_url)
    old_pid = stream.backend_pid
    await execute(database_url, "SELECT pg_terminate_backend(%s)", (old_pid,))
    await rec.wait_for(lambda: Connected(first=False) in rec.events)
    assert stream.backend_pid not in (None, old_pid)
    assert stream.reconnects == 1
    # and it listens again
    await execute(database_url, "INSERT INTO images (prompt) VALUES ('after')")
    await rec.wait_for(lambda: rec.notifications("images_wakeup"))


async def test_keepalive_keeps_an_idle_stream_working(database_url, nursery):
    stream, rec = await start_stream(nursery, database_url, keepalive=0.05)
    await trio.sleep(0.3)  # several keep-alive pings go by
    assert stream.reconnects == 0
    await execute(database_url, "INSERT INTO images (prompt) VALUES ('x')")
    await rec.wait_for(lambda: rec.notifications("images_wakeup"))
