"""The emulator stays a test tool: loopback only unless --public, a control endpoint that
needs its token and a JSON content type and never shows the credentials, and credentials
that need not be command-line arguments."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.emulator import EMULATOR_API_KEY as KEY
from tests.fixtures.emulator import EMULATOR_SECRET_KEY as SECRET
from tests.fixtures.emulator import EmulatorProcess
from tests.helpers import clean_env, run_listener

API = "key/api/v1/"


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    process = EmulatorProcess(cwd=tmp_path_factory.mktemp("emulator"))
    try:
        yield process
    finally:
        process.close()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "example.com"])
def test_a_non_loopback_address_without_public_refuses_to_start(tmp_path: Path, host: str):
    done = run_listener("emulator", "--host", host, "--port", "0", env=clean_env(), cwd=tmp_path)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "--public" in line and host in line
    assert done.stdout == ""


def test_public_binds_and_warns(tmp_path: Path):
    process = EmulatorProcess("--host", "0.0.0.0", "--public", cwd=tmp_path)
    try:
        assert process.url.startswith("http://0.0.0.0:")
        with httpx.Client(timeout=5) as client:
            url = f"http://127.0.0.1:{process.port}/{API}pipelines"
            assert client.get(url, headers=process.headers).status_code == 200
    finally:
        process.close()
    assert "reachable from the network" in process.log


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_loopback_needs_nothing(tmp_path: Path, host: str):
    process = EmulatorProcess("--host", host, cwd=tmp_path)
    try:
        assert process.stats()["runs_total"] == 0
    finally:
        process.close()
    assert "reachable from the network" not in process.log


def test_control_refuses_a_post_that_is_not_json(emu: EmulatorProcess):
    with httpx.Client(base_url=emu.url + "_emulator/", timeout=5) as raw:
        body = json.dumps({"endpoint": "run", "kind": "500"})
        for ctype in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = dict(emu.control_headers)
            if ctype:
                headers["Content-Type"] = ctype
            answer = raw.post("faults", content=body, headers=headers)
            assert answer.status_code == 415, (ctype, answer.text)
        assert emu.control is not None and emu.control.faults() == []


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}, {"X-Token": "t"}],
)
def test_control_refuses_without_its_token(emu: EmulatorProcess, headers: dict[str, str]):
    with httpx.Client(base_url=emu.url + "_emulator/", headers=headers, timeout=5) as raw:
        assert raw.get("config").status_code == 401
        assert raw.get("stats").status_code == 401
        assert raw.post("config", json={"wrong_credentials": True}).status_code == 401
        assert raw.post("reset", json={}).status_code == 401
    assert emu.config()["wrong_credentials"] is False


def test_control_never_returns_or_changes_the_credentials(emu: EmulatorProcess):
    with httpx.Client(base_url=emu.url + "_emulator/", headers=emu.control_headers) as raw:
        answers = [
            raw.get("config"),
            raw.post("config", json={"generation_time": 0}),
            raw.post("reset", json={}),
            raw.get("stats"),
            raw.get("faults"),
            raw.post("config", json={"api_key": None}),
            raw.post("config", json={"secret_key": "other"}),
        ]
    for answer in answers:
        assert KEY not in answer.text and SECRET not in answer.text
    assert answers[0].json()["credentials_checked"] is True
    assert "api_key" not in answers[0].json() and "secret_key" not in answers[0].json()
    assert [a.status_code for a in answers[-2:]] == [400, 400]
    with httpx.Client(base_url=emu.url, timeout=5) as anyone:
        assert anyone.get(API + "pipelines").status_code == 401, "authentication stays on"


def test_the_credentials_need_not_be_arguments(emu: EmulatorProcess):
    assert emu.proc is not None
    cmdline = Path(f"/proc/{emu.proc.pid}/cmdline").read_bytes()
    assert KEY.encode() not in cmdline and SECRET.encode() not in cmdline
    assert emu.token.encode() not in cmdline
    with httpx.Client(base_url=emu.url, timeout=5) as client:
        assert client.get(API + "pipelines", headers=emu.headers).status_code == 200
        wrong = {"X-Key": "Key nope", "X-Secret": f"Secret {SECRET}"}
        assert client.get(API + "pipelines", headers=wrong).status_code == 401


def test_no_control_switches_the_endpoint_off(tmp_path: Path):
    process = EmulatorProcess("--no-control", cwd=tmp_path)
    try:
        with httpx.Client(base_url=process.url, timeout=5) as raw:
            answer = raw.get("_emulator/config", headers=process.control_headers)
            assert answer.status_code == 404
            assert raw.get(API + "pipelines", headers=process.headers).status_code == 200
    finally:
        process.close()


def test_the_token_is_printed_once_and_never_logged(tmp_path: Path):
    process = EmulatorProcess("-verbose", cwd=tmp_path)
    try:
        process.stats()
    finally:
        process.close()
    assert process.token not in process.log
    assert KEY not in process.log and SECRET not in process.log
