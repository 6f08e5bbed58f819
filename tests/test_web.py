"""The HTTP server in the listener process, driven as a user and an orchestrator would:
a listener started with --http, rows inserted with SQL, answers read over HTTP."""

from __future__ import annotations

import subprocess
import sys

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.listener import rows, wait_until
from tests.helpers import REPO, clean_env, listener_cmd
from tests.web_fixtures import get, http_url, post, wait_status

P = "fusionbrain_listener_"


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a /metrics answer, parsed by prometheus-client's own parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((P + name, frozenset(labels.items())), 0.0)


async def test_metrics_equal_what_the_table_says_after_20_rows(
    start_listener, emulator, database_url
):
    emulator.fault("run", "fail", count=2)  # the generation ends FAIL: refused
    emulator.fault("run", "censor", count=1)
    p = await start_listener("--http", "127.0.0.1:0")
    url = await http_url(p)
    rows(
        database_url, "INSERT INTO images (prompt) SELECT 'fox ' || g FROM generate_series(1, 20) g"
    )

    def all_final():
        (n,) = rows(
            database_url,
            "SELECT count(*) FROM images WHERE status IN ('ReadyToPublish', 'Failed')",
        )[0]
        return n == 20

    await wait_until(all_final, seconds=60, what="20 final rows")
    table = dict(
        rows(
            database_url,
            "SELECT 'ready', count(*) FILTER (WHERE status = 'ReadyToPublish') FROM images "
            "UNION ALL SELECT 'failed', count(*) FILTER (WHERE status = 'Failed') FROM images "
            "UNION ALL SELECT 'censored', count(*) FILTER (WHERE censored) FROM images "
            "UNION ALL SELECT 'refused', count(*) FILTER (WHERE last_error LIKE 'generation %') "
            "FROM images "
            "UNION ALL SELECT 'claims', sum(attempts) FROM images "
            "UNION ALL SELECT 'submitted', count(*) FILTER (WHERE uuid IS NOT NULL) FROM images",
        )
    )
    assert table["ready"] == 17 and table["censored"] == 1 and table["refused"] == 2

    response = get(url + "metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    m = samples(response.text)
    prov = {"provider": "fusionbrain"}
    assert (
        value(m, "rows_finished_total", status="ReadyToPublish", reason="none", **prov)
        == (table["ready"])
    )
    assert value(m, "rows_finished_total", status="Failed", reason="censored", **prov) == 1
    assert value(m, "rows_finished_total", status="Failed", reason="refused", **prov) == 2
    failed = sum(
        v
        for (name, labels), v in m.items()
        if name == P + "rows_finished_total" and ("status", "Failed") in labels
    )
    assert failed == table["failed"]
    assert value(m, "rows_claimed_total", kind="ready", **prov) == table["claims"] == 20
    assert value(m, "rows_submitted_total", **prov) == table["submitted"] == 20
    assert value(m, "api_requests_total", endpoint="submit", outcome="ok", **prov) == 20
    assert value(m, "pickup_latency_seconds_count", **prov) == 20
    assert value(m, "end_to_end_latency_seconds_count", status="ReadyToPublish", **prov) == 17
    assert value(m, "end_to_end_latency_seconds_count", status="Failed", **prov) == 3
    assert value(m, "status_checks_per_image_count", **prov) == 20
    checks = value(m, "api_requests_total", endpoint="outcome", outcome="ok", **prov)
    assert value(m, "status_checks_per_image_sum", **prov) == checks
    assert value(m, "rows_in_flight", state="following", **prov) == 0
    assert value(m, "leases_held") == 0
    assert value(m, "queue_rows", state="waiting") == 0
    assert value(m, "generation_paused", reason="credentials", **prov) == 0
    assert value(m, "wakeup_mode", mode="listen") == 1
    assert value(m, "db_pool_connections", pool="main", state="idle") >= 1
    assert (P + "db_pool_connections", frozenset({"pool": "writes", "state": "idle"}.items())) in m
    # the account's shared budget: the provider's default, never lowered (no 429 here)
    assert value(m, "provider_concurrency", value="configured", **prov) == 8
    assert value(m, "provider_concurrency", value="effective", **prov) == 8
    assert value(m, "provider_refusals_total", **prov) == 0
    assert value(m, "provider_concurrency_changes_total", direction="decrease", **prov) == 0
    assert (P + "provider_slot_waits_total", frozenset(prov.items())) in m
    assert value(m, "provider_slots_held", **prov) <= 8
    # every histogram's buckets are cumulative and end at +Inf = count
    assert value(m, "pickup_latency_seconds_bucket", le="+Inf", **prov) == 20
    assert p.proc.poll() is None


async def test_healthz_and_readyz_flip_when_the_database_stops(
    start_listener, listener_env, private_cluster
):
    env = {**listener_env, "DATABASE_URL": private_cluster.url}
    p = await start_listener("--http", "127.0.0.1:0", env=env)
    url = await http_url(p)
    assert get(url + "healthz").json()["status"] == "healthy"
    ready = get(url + "readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["wakeups"]["detail"] == "listening"

    private_cluster.stop()
    down = await wait_status(url + "healthz", 503)
    assert down.json()["checks"]["database"]["ok"] is False
    assert down.json()["checks"]["process"]["ok"] is True
    not_ready = get(url + "readyz")
    assert not_ready.status_code == 503
    assert not_ready.json()["checks"]["database"]["ok"] is False

    private_cluster.start()
    await wait_status(url + "healthz", 200)
    back = await wait_status(url + "readyz", 200, seconds=60)
    assert back.json()["checks"]["wakeups"]["detail"] == "listening"
    assert p.proc.poll() is None


def health_command(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        listener_cmd("status", "--health", "--url", url),
        env=clean_env(),
        cwd=REPO / "tests",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_readyz_and_status_health_flip_when_the_key_is_refused(
    start_listener, emulator, database_url
):
    p = await start_listener("--http", "127.0.0.1:0")
    url = await http_url(p)
    assert health_command(url).returncode == 0
    emulator.configure(wrong_credentials=True)
    rows(database_url, "INSERT INTO images (prompt) VALUES ('a fox')")  # a run meets the 401
    refused = await wait_status(url + "readyz", 503)
    assert refused.json()["checks"]["provider"] == {
        "ok": False,
        "detail": "fusionbrain refuses the key (generation paused)",
    }
    assert get(url + "healthz").status_code == 200  # alive: nothing to restart
    done = health_command(url)
    assert done.returncode == 7, done.stdout + done.stderr
    assert "refuses the key" in done.stdout
    m = samples(get(url + "metrics").text)
    assert value(m, "generation_paused", reason="credentials", provider="fusionbrain") == 1
    assert (
        value(
            m,
            "api_requests_total",
            endpoint="submit",
            outcome="credentials",
            provider="fusionbrain",
        )
        >= 1
    )

    emulator.configure(wrong_credentials=False)
    await wait_status(url + "readyz", 200, seconds=30)  # the probe, every 5 s
    assert health_command(url).returncode == 0


async def test_status_health_without_a_listener_says_so(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = health_command(f"http://127.0.0.1:{port}")
    assert done.returncode == 1
    assert "no answer" in done.stderr


# -- who may change what ---------------------------------------------------------------------


async def test_loopback_refuses_a_post_from_another_origin(start_listener, database_url):
    p = await start_listener("--http", "127.0.0.1:0")
    url = await http_url(p)
    (row_id,) = rows(
        database_url,
        "INSERT INTO images (prompt, not_before) VALUES ('later', now() + "
        "interval '1 hour') RETURNING id",
    )[0]
    target = f"{url}rows/{row_id}/cancel"
    other = post(target, headers={"Origin": "http://evil.example"})
    assert other.status_code == 403
    assert "another origin" in other.text
    assert post(target).status_code == 403  # no Origin at all: not from this page
    # DNS rebinding: a name that resolves to 127.0.0.1 but is not this server's
    origin = url.rstrip("/")
    rebound = post(target, headers={"Origin": "http://evil.example:1", "Host": "evil.example:1"})
    assert rebound.status_code == 400
    assert get(url, headers={"Host": "evil.example"}).status_code == 400
    assert rows(database_url, "SELECT status FROM images WHERE id = %s", (row_id,)) == [
        ("ReadyToGenerate",)
    ]
    ok = post(target, headers={"Origin": origin}, follow_redirects=False)
    assert ok.status_code == 303
    assert rows(database_url, "SELECT status, last_error FROM images WHERE id = %s", (row_id,)) == [
        ("Failed", "cancelled by operator")
    ]


TOKEN = "a-token-for-the-tests-0123456789"


async def test_a_non_loopback_address_refuses_changes_and_reads_without_the_token(
    start_listener, database_url
):
    p = await start_listener(
        "--http",
        "0.0.0.0:0",
        HTTP_ALLOW_REMOTE="true",
        HTTP_TOKEN=TOKEN,
        HTTP_HOSTS="gallery.test",
    )
    url = await http_url(p)
    port = url.rstrip("/").rsplit(":", 1)[1]
    base = f"http://127.0.0.1:{port}/"
    host = {"Host": f"gallery.test:{port}"}
    origin = {**host, "Origin": f"http://gallery.test:{port}"}
    (row_id,) = rows(
        database_url,
        "INSERT INTO images (prompt, status, last_error) VALUES ('x', 'Failed', 'boom') "
        "RETURNING id",
    )[0]
    assert get(base).status_code == 400  # Host 127.0.0.1 is not among HTTP_HOSTS
    assert get(base, headers=host).status_code == 401  # reads need the token too
    assert get(base + "metrics", headers=host).status_code == 401
    page = get(base, headers={**host, "Accept": "text/html"}, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/login")
    assert get(base + "healthz", headers=host).status_code == 200  # probes stay open
    retry = f"{base}rows/{row_id}/retry"
    assert post(retry, headers=origin).status_code == 401
    bearer = {**origin, "Authorization": f"Bearer {TOKEN}"}
    assert (
        post(
            retry, headers={**origin, "Authorization": "Bearer wrong-token-0123456789"}
        ).status_code
        == 401
    )
    assert rows(database_url, "SELECT status FROM images WHERE id = %s", (row_id,)) == [("Failed",)]
    # the login form sets a session cookie, which then does the same as the bearer token
    login = post(
        base + "login", headers=origin, data={"token": TOKEN, "next": "/"}, follow_redirects=False
    )
    assert login.status_code == 303
    cookie = login.headers["set-cookie"]
    assert TOKEN not in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    session = cookie.split(";", 1)[0]
    assert get(base, headers={**host, "Cookie": session}).status_code == 200
    wrong = post(base + "login", headers=origin, data={"token": "nope"})
    assert wrong.status_code == 401
    done = post(retry, headers=bearer, follow_redirects=False)
    assert done.status_code == 303, done.text
    assert rows(database_url, "SELECT status FROM images WHERE id = %s", (row_id,))[0][0] in (
        "ReadyToGenerate",
        "Generate",
        "ReadyToPublish",
    )


async def test_a_public_page_serves_reads_but_not_changes_without_the_token(start_listener):
    p = await start_listener(
        "--http",
        "0.0.0.0:0",
        HTTP_ALLOW_REMOTE="true",
        HTTP_TOKEN=TOKEN,
        HTTP_HOSTS="gallery.test",
        HTTP_PUBLIC="true",
    )
    port = (await http_url(p)).rstrip("/").rsplit(":", 1)[1]
    base = f"http://127.0.0.1:{port}/"
    host = {"Host": f"gallery.test:{port}"}
    assert get(base, headers=host).status_code == 200
    assert get(base + "metrics", headers=host).status_code == 200
    change = post(
        base + "enqueue",
        headers={**host, "Origin": f"http://gallery.test:{port}"},
        data={"prompt": "x"},
    )
    assert change.status_code == 401


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({}, "HTTP_ALLOW_REMOTE=true"),
        ({"HTTP_ALLOW_REMOTE": "true"}, "HTTP_TOKEN: required"),
        ({"HTTP_ALLOW_REMOTE": "true", "HTTP_TOKEN": TOKEN}, "HTTP_HOSTS: required"),
    ],
)
def test_a_non_loopback_address_needs_explicit_settings(tmp_path, env, said):
    done = subprocess.run(
        listener_cmd("--http", "0.0.0.0:8090"),
        env=clean_env(DATABASE_URL="postgresql://nobody@127.0.0.1:1/none", **env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert said in done.stderr
    assert TOKEN not in done.stderr


async def test_a_login_without_operator_rights_gets_a_read_only_page(
    start_listener, database_url, admin_url
):
    """HTTP_DATABASE_URL with a login that may read but not retry: the page says why."""
    login = f"fbl_reader_{abs(hash(database_url)) % 10**8}"
    with psycopg.connect(database_url, autocommit=True) as c:
        c.execute(f"DROP ROLE IF EXISTS {login}")
        c.execute(f"CREATE ROLE {login} LOGIN")
        c.execute(f"GRANT SELECT ON images, image_styles TO {login}")
    p = None
    try:
        reader = psycopg.conninfo.make_conninfo(database_url, user=login)
        p = await start_listener("--http", "127.0.0.1:0", HTTP_DATABASE_URL=reader)
        url = await http_url(p)
        page = get(url)
        assert page.status_code == 200
        assert f"read-only: the login {login} may not retry, cancel, enqueue" in page.text
        assert "New image" not in page.text
        refused = post(url + "enqueue", headers={"Origin": url.rstrip("/")}, data={"prompt": "x"})
        assert refused.status_code == 403
        assert "images_operator" in refused.text
    finally:
        if p is not None:
            p.kill()
        with psycopg.connect(database_url, autocommit=True) as c:
            c.execute(f"REVOKE ALL ON images, image_styles FROM {login}")
            c.execute(f"DROP ROLE IF EXISTS {login}")


async def test_sd_notify_ready_watchdog_and_stopping(start_listener, tmp_path):
    import socket
    import time

    import trio

    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    got: list[str] = []

    def drain() -> list[str]:
        """What arrived so far (watchdog pings keep coming: read for a moment only)."""
        end = time.monotonic() + 0.5
        try:
            while time.monotonic() < end:
                got.extend(sock.recv(4096).decode().split("\n"))
        except TimeoutError:
            pass
        return got

    try:
        p = await start_listener(NOTIFY_SOCKET=str(path), WATCHDOG_USEC="200000")
        await wait_until(lambda: "READY=1" in drain(), seconds=30, what="READY=1")
        got.clear()
        await trio.sleep(0.5)
        assert (await trio.to_thread.run_sync(drain)).count("WATCHDOG=1") >= 2  # every 0.1 s
        await p.stop()
        assert "STOPPING=1" in await trio.to_thread.run_sync(drain)
    finally:
        sock.close()


def test_no_web_import_without_http():
    """Without --http the web libraries are never imported (nothing to pay)."""
    code = (
        "import sys, listener.service, listener.commands.run;"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('starlette', 'jinja2', 'prometheus_client') or m.startswith('listener.web.')"
        " and m != 'listener.web.settings'];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


async def test_live_updates_come_from_polling_under_cron(start_listener, database_url):
    """No LISTEN under -cron: the page's hints come from a comparison every POLL_INTERVAL."""
    import json

    import httpx
    import trio

    p = await start_listener(
        "-cron", "--http", "127.0.0.1:0", POLL_INTERVAL="0.2", GENERATOR_SWEEP_INTERVAL="3600"
    )
    url = await http_url(p)
    assert value(samples(get(url + "metrics").text), "wakeup_mode", mode="cron") == 1

    def watch() -> dict:
        with (
            httpx.Client(timeout=20, trust_env=False) as client,
            client.stream("GET", url + "events") as stream,
        ):
            lines = stream.iter_lines()
            assert next(lines).startswith("retry:")
            rows(database_url, "INSERT INTO images (prompt) VALUES ('seen by polling')")
            for line in lines:
                if line.startswith("data:"):
                    return json.loads(line.removeprefix("data:"))
        raise AssertionError("the stream ended")

    with trio.fail_after(30):
        hint = await trio.to_thread.run_sync(watch, abandon_on_cancel=True)
    assert hint["new"] is True
