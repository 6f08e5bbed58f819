"""The API emulator, over real HTTP on loopback, as a separate process (the product's
`listener emulator` command). Most tests share one process, reset before each test."""

from __future__ import annotations

import base64
import io
import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from listener.cli import build_parser
from listener.providers.fusionbrain.emulator import EmulatorConfig, EmulatorControl
from tests.fixtures.emulator import EMULATOR_API_KEY as KEY
from tests.fixtures.emulator import EMULATOR_SECRET_KEY as SECRET
from tests.fixtures.emulator import EmulatorProcess, start_emulator
from tests.helpers import clean_env, run_listener

API = "key/api/v1/"
SPRING_KEYS = {"timestamp", "status", "error", "message", "path"}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    process = start_emulator(cwd=tmp_path_factory.mktemp("emulator"))
    try:
        yield process
    finally:
        process.close()


@pytest.fixture
def emu(shared: EmulatorProcess) -> EmulatorProcess:
    shared.reset()
    return shared


@pytest.fixture(scope="module")
def shared_client(shared: EmulatorProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shared.url, headers=shared.headers, timeout=5) as client:
        yield client


@pytest.fixture
def api(emu: EmulatorProcess, shared_client: httpx.Client) -> httpx.Client:
    """A client with the right credentials (one connection pool for the module)."""
    return shared_client


@pytest.fixture(scope="module")
def shared_control(shared: EmulatorProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shared.url, headers=shared.control_headers, timeout=5) as client:
        yield client


@pytest.fixture
def control(emu: EmulatorProcess, shared_control: httpx.Client) -> httpx.Client:
    """Plain HTTP to the control endpoint (with its token), for what EmulatorControl
    would refuse."""
    return shared_control


def pipeline_id(api: httpx.Client) -> str:
    return api.get(API + "pipelines").json()[0]["id"]


def params(prompt: str = "a red fox", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "GENERATE",
        "numImages": 1,
        "width": 128,
        "height": 64,
        "style": "DEFAULT",
        "negativePromptDecoder": "blurry",
        "generateParams": {"query": prompt},
    }
    body.update(overrides)
    return body


def run(
    api: httpx.Client,
    body: dict[str, Any] | None = None,
    *,
    pipeline: str | None = None,
    params_type: str | None = "application/json",
    **kwargs: Any,
) -> httpx.Response:
    pid = pipeline if pipeline is not None else pipeline_id(api)
    text = json.dumps(body if body is not None else params())
    part = (None, text, params_type) if params_type else (None, text)
    return api.post(
        API + "pipeline/run", files={"pipeline_id": (None, pid), "params": part}, **kwargs
    )


def status(api: httpx.Client, uuid: str) -> httpx.Response:
    return api.get(f"{API}pipeline/status/{uuid}")


def finish(api: httpx.Client, uuid: str, seconds: float = 5) -> dict[str, Any]:
    """Poll until a final answer; returns it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        answer = status(api, uuid)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        if body["status"] in ("DONE", "FAIL", "CANCEL"):
            return body
        time.sleep(0.01)
    raise AssertionError(f"{uuid} did not finish in {seconds}s")


def assert_spring(response: httpx.Response, code: int) -> dict[str, Any]:
    assert response.status_code == code, response.text
    body = response.json()
    assert set(body) == SPRING_KEYS
    assert body["status"] == code
    assert body["path"] == response.request.url.path
    return body


def decode_png(b64: str) -> Image.Image:
    raw = base64.b64decode(b64, validate=True)
    assert raw.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(raw))
    image.load()
    return image


# -- discovery and credentials -------------------------------------------------------------


def test_pipelines_lists_one_active_kandinsky_and_availability_is_active(api):
    pipelines = api.get(API + "pipelines").json()
    assert len(pipelines) == 1
    (p,) = pipelines
    assert (p["name"], p["version"], p["status"], p["type"]) == (
        "Kandinsky",
        3.1,
        "ACTIVE",
        "TEXT2IMAGE",
    )
    assert api.get(API + "pipelines", params={"type": "TEXT2IMAGE"}).json() == pipelines
    assert api.get(f"{API}pipeline/{p['id']}/availability").json() == {"status": "ACTIVE"}
    assert_spring(api.get(f"{API}pipeline/not-a-pipeline/availability"), 404)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Key": f"Key {KEY}"},
        {"X-Key": "Key wrong", "X-Secret": f"Secret {SECRET}"},
        {"X-Key": f"Key {KEY}", "X-Secret": "Secret wrong"},
        {"X-Key": KEY, "X-Secret": SECRET},  # prefixes missing
    ],
)
def test_wrong_credentials_are_401_on_every_endpoint(emu, headers):
    with httpx.Client(base_url=emu.url, headers=headers, timeout=5) as bad:
        assert_spring(bad.get(API + "pipelines"), 401)
        assert_spring(bad.get(API + "pipeline/x/availability"), 401)
        assert_spring(bad.get(API + "pipeline/status/x"), 401)
        assert_spring(run(bad, pipeline="x"), 401)
    assert emu.stats()["runs_total"] == 0


def test_without_configured_keys_any_credentials_are_accepted(tmp_path):
    emu = EmulatorProcess(api_key=None, secret_key=None, cwd=tmp_path)
    try:
        assert emu.config()["credentials_checked"] is False
        with httpx.Client(base_url=emu.url, timeout=5) as anyone:
            assert anyone.get(API + "pipelines").status_code == 200
            assert run(anyone).status_code == 201
            assert anyone.get(API + "pipelines", headers={"X-Key": "Key no"}).status_code == 200
    finally:
        emu.close()


def test_wrong_credentials_mode_refuses_even_the_right_ones(emu, api):
    emu.configure(wrong_credentials=True)
    assert_spring(api.get(API + "pipelines"), 401)
    emu.configure(wrong_credentials=False)
    assert api.get(API + "pipelines").status_code == 200


# -- run: validation -------------------------------------------------------------------------


def test_params_without_json_content_type_is_415(emu, api):
    assert_spring(run(api, params_type=None), 415)
    assert_spring(run(api, params_type="text/plain"), 415)
    form = {"pipeline_id": pipeline_id(api), "params": json.dumps(params())}
    assert_spring(api.post(API + "pipeline/run", data=form), 415)  # not multipart at all
    stats = emu.stats()
    assert (stats["runs_total"], stats["run_requests"]) == (0, 3)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"width": 1025}, "width"),
        ({"width": 0}, "width"),
        ({"height": 2048}, "height"),
        ({"height": -64}, "height"),
        ({"width": "128"}, "width"),
        ({"width": 64.5}, "width"),
        ({"style": "PHOTO"}, "style"),
        ({"numImages": 2}, "numImages"),
        ({"type": "EDIT"}, "type"),
        ({"generateParams": {"query": ""}}, "query"),
        ({"generateParams": {"query": "x" * 1001}}, "query"),
        ({"generateParams": {}}, "query"),
        ({"negativePromptDecoder": "n" * 1001}, "negativePromptDecoder"),
    ],
)
def test_bad_params_are_400_with_a_spring_body(emu, api, change, message):
    body = assert_spring(run(api, params(**{}) | change), 400)
    assert message in body["message"]
    assert body["error"] == "Bad Request"
    assert emu.stats()["runs_total"] == 0


def test_wrong_pipeline_id_and_bad_json_are_400(api):
    assert_spring(run(api, pipeline="00000000-0000-0000-0000-000000000000"), 400)
    files = {"pipeline_id": (None, pipeline_id(api)), "params": (None, "{nope", "application/json")}
    assert_spring(api.post(API + "pipeline/run", files=files), 400)
    assert_spring(api.post(API + "pipeline/run", files={"pipeline_id": (None, "x")}), 400)


def test_limits_themselves_are_accepted(emu, api):
    at_limits = params(
        "é" * 1000,
        width=1024,
        height=1,
        style="ANIME",
        negativePromptDecoder="n" * 1000,
    )
    answer = run(api, at_limits)
    assert answer.status_code == 201, answer.text
    for style in ("KANDINSKY", "UHD", "DEFAULT"):
        assert run(api, params(style=style)).status_code == 201
    assert emu.stats()["runs_total"] == 4


# -- run and status ------------------------------------------------------------------------


def test_run_answers_201_initial_with_status_time(emu, api):
    emu.configure(status_time=7)
    answer = run(api)
    assert answer.status_code == 201
    body = answer.json()
    assert set(body) == {"uuid", "status", "status_time"}
    assert (body["status"], body["status_time"]) == ("INITIAL", 7)


def test_status_goes_initial_processing_done_in_generation_time(emu, api):
    emu.configure(generation_time=0.3)
    started = time.monotonic()
    uuid = run(api).json()["uuid"]
    seen = []
    while True:
        body = status(api, uuid).json()
        if not seen or seen[-1] != body["status"]:
            seen.append(body["status"])
        if body["status"] == "DONE":
            break
        assert body.get("result") is None
        assert time.monotonic() - started < 3
        time.sleep(0.01)
    assert seen == ["INITIAL", "PROCESSING", "DONE"]
    assert time.monotonic() - started >= 0.3
    assert body["uuid"] == uuid
    assert body["result"]["censored"] is False
    assert len(body["result"]["files"]) == 1
    assert isinstance(body["generationTime"], int)


def test_generation_time_zero_is_done_at_the_first_status_call(api):
    uuid = run(api).json()["uuid"]
    assert status(api, uuid).json()["status"] == "DONE"


def test_image_is_a_png_of_the_requested_size_derived_from_the_prompt(api):
    def image_of(prompt: str, width: int, height: int, style: str = "DEFAULT") -> str:
        uuid = run(api, params(prompt, width=width, height=height, style=style)).json()["uuid"]
        (file,) = finish(api, uuid)["result"]["files"]
        return file

    for width, height in ((128, 64), (1, 1), (1024, 1024), (640, 384)):
        assert decode_png(image_of("a red fox", width, height)).size == (width, height)
    first = image_of("a red fox", 256, 128)
    assert image_of("a red fox", 256, 128) == first  # deterministic
    assert image_of("a blue whale", 256, 128) != first
    assert image_of("a red fox", 256, 128, "ANIME") != first
    fox, whale = decode_png(first).convert("RGB"), decode_png(image_of("a blue whale", 256, 128))
    assert fox.getpixel((255, 127)) != whale.convert("RGB").getpixel((255, 127))


def test_a_final_answer_is_handed_out_once(emu, api):
    uuid = run(api).json()["uuid"]
    assert status(api, uuid).json()["status"] == "DONE"
    assert_spring(status(api, uuid), 404)
    assert_spring(status(api, "5f0e7c4b-0000-4000-8000-000000000000"), 404)
    assert emu.stats()["results_fetched"] == 1


def test_unfetched_results_expire_after_result_ttl(emu, api):
    emu.configure(result_ttl=0.2)
    uuid = run(api).json()["uuid"]
    kept = run(api).json()["uuid"]
    assert status(api, kept).json()["status"] == "DONE"  # fetched in time
    time.sleep(0.35)
    assert_spring(status(api, uuid), 404)


@pytest.mark.parametrize("key", ["model_status", "pipeline_status"])
def test_busy_answers_2xx_without_uuid_on_run_and_availability(emu, api, key):
    emu.configure(busy=key)
    answer = run(api)
    assert answer.status_code == 200
    assert answer.json() == {key: "DISABLED_BY_QUEUE"}
    pid = pipeline_id(api)
    assert api.get(f"{API}pipeline/{pid}/availability").json() == {
        "pipeline_status": "DISABLED_BY_QUEUE"
    }
    emu.configure(busy_value="DISABLED_MANUALLY")
    assert run(api).json() == {key: "DISABLED_MANUALLY"}
    stats = emu.stats()
    assert (stats["runs_total"], stats["run_requests"]) == (0, 2)
    emu.configure(busy=None)
    assert run(api).status_code == 201


# -- next-N faults ---------------------------------------------------------------------------


@pytest.mark.parametrize("code", [500, 502, 503, 504, 429, 400, 401, 404])
def test_status_code_faults_hit_the_next_n_requests_then_stop(emu, api, code):
    emu.fault("pipelines", str(code), count=2)
    for _ in range(2):
        answer = api.get(API + "pipelines")
        assert_spring(answer, code)
        if code == 429:
            assert answer.headers["retry-after"] == "1"
    assert api.get(API + "pipelines").status_code == 200
    assert emu.control.faults() == []


@pytest.mark.parametrize("code", ["500", "503", "504", "429", "401", "400"])
def test_a_faulted_run_is_not_accepted(emu, api, code):
    emu.fault("run", code)
    assert run(api).status_code == int(code)
    assert run(api).status_code == 201
    stats = emu.stats()
    assert (stats["runs_total"], stats["run_requests"]) == (1, 2)


@pytest.mark.parametrize("code", [500, 502, 503, 504])
def test_a_server_error_after_taking_the_run_counts_the_run(emu, api, code):
    """The paid-run knob: the run is taken (it costs quota), the answer is a 5xx."""
    emu.fault("run", f"taken:{code}", count=2)
    assert emu.control.faults() == [{"endpoint": "run", "kind": f"taken:{code}", "count": 2}]
    for _ in range(2):
        assert_spring(run(api), code)
    assert run(api).status_code == 201
    emu.configure(error_after_run=code)
    for _ in range(3):
        assert_spring(run(api), code)
    stats = emu.stats()
    assert (stats["runs_total"], stats["run_requests"]) == (6, 6), "every one was taken"
    emu.configure(busy="model_status")
    assert run(api).status_code == 200, "a busy answer takes nothing, and says so"
    assert emu.stats()["runs_total"] == 6


def test_a_404_fault_on_status_keeps_the_result(emu, api):
    uuid = run(api).json()["uuid"]
    emu.fault("status", "404")
    assert_spring(status(api, uuid), 404)
    assert status(api, uuid).json()["status"] == "DONE"


def test_malformed_fault_is_200_with_html(emu, api):
    emu.fault("availability", "malformed")
    answer = api.get(f"{API}pipeline/{pipeline_id(api)}/availability")
    assert (answer.status_code, answer.text) == (200, "<html>oops</html>")
    with pytest.raises(ValueError):  # noqa: PT011 - whatever JSON error the decoder raises
        answer.json()


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("busy_model", {"model_status": "DISABLED_BY_QUEUE"}),
        ("busy_pipeline", {"pipeline_status": "DISABLED_BY_QUEUE"}),
        ("busy_manual", {"model_status": "DISABLED_MANUALLY"}),
    ],
)
def test_busy_faults_on_run(emu, api, kind, body):
    emu.fault("run", kind)
    answer = run(api)
    assert (answer.status_code, answer.json()) == (200, body)
    assert run(api).status_code == 201
    assert emu.stats()["runs_total"] == 1


def test_drop_closes_the_connection_without_an_answer_and_the_run_is_not_accepted(emu, api):
    emu.fault("run", "drop")
    with pytest.raises(httpx.RemoteProtocolError):
        run(api)
    assert run(api).status_code == 201
    stats = emu.stats()
    assert (stats["runs_total"], stats["run_requests"]) == (1, 2)


def test_a_delayed_run_is_accepted_even_when_the_client_gives_up(emu, api):
    emu.fault("run", "delay:1")
    before = time.time()
    with pytest.raises(httpx.ReadTimeout):
        run(api, params("slow one"), timeout=0.3)
    (recorded,) = emu.stats()["runs"]
    assert recorded["prompt"] == "slow one"
    assert before <= recorded["arrived_at"] <= before + 0.3
    assert status(api, recorded["uuid"]).json()["status"] == "DONE"


def test_a_delay_fault_answers_normally_after_the_delay(emu, api):
    emu.fault("status", "delay:0.3")
    uuid = run(api).json()["uuid"]
    started = time.monotonic()
    assert status(api, uuid).json()["status"] == "DONE"
    assert time.monotonic() - started >= 0.3


def test_a_status_client_that_gives_up_during_a_delay_does_not_lose_the_result(emu, api):
    emu.fault("status", "delay:0.5")
    uuid = run(api).json()["uuid"]
    with pytest.raises(httpx.ReadTimeout):
        api.get(f"{API}pipeline/status/{uuid}", timeout=0.1)
    time.sleep(0.5)
    assert status(api, uuid).json()["status"] == "DONE"


@pytest.mark.parametrize(
    ("kind", "final", "censored"),
    [("fail", "FAIL", None), ("cancel", "CANCEL", None), ("censor", "DONE", True)],
)
def test_outcome_faults_decide_how_the_next_runs_end(emu, api, kind, final, censored):
    emu.fault("run", kind, count=2)
    answers = [finish(api, run(api).json()["uuid"]) for _ in range(3)]
    for body in answers[:2]:
        assert body["status"] == final
        if final == "FAIL":
            assert body["errorDescription"] == "emulated failure"
        if censored:
            assert body["result"] == {"files": [], "censored": True}
    assert answers[2]["status"] == "DONE"
    assert answers[2]["result"]["censored"] is False
    assert emu.stats()["runs_total"] == 3


def test_any_endpoint_faults_hit_whatever_comes_next(emu, api):
    emu.fault("any", "503", count=2)
    assert api.get(API + "pipelines").status_code == 503
    assert run(api, pipeline="x").status_code == 503
    assert api.get(API + "pipelines").status_code == 200


def test_bad_fault_requests_are_refused(emu, control):
    answer = control.post("_emulator/faults", json={"endpoint": "status", "kind": "fail"})
    assert answer.status_code == 400
    for bad in (
        {"endpoint": "run", "kind": "teapot"},
        {"endpoint": "nowhere", "kind": "500"},
        {"endpoint": "run", "kind": "500", "count": 0},
        {"endpoint": "run", "kind": "delay:soon"},
        {"endpoint": "run", "kind": "taken:501"},
        {"endpoint": "run", "kind": "taken:"},
        {"endpoint": "status", "kind": "taken:504"},
    ):
        assert control.post("_emulator/faults", json=bad).status_code == 400
    assert emu.control.faults() == []


# -- configured behaviour ----------------------------------------------------------------------


def test_censor_words_end_done_censored_without_files(emu, api):
    emu.configure(censor_words=["Forbidden"])
    body = finish(api, run(api, params("a forbidden fruit")).json()["uuid"])
    assert body["status"] == "DONE"
    assert body["result"] == {"files": [], "censored": True}
    assert finish(api, run(api).json()["uuid"])["result"]["censored"] is False


def test_rates_of_one_apply_to_every_request(emu, api):
    emu.configure(fail_rate=1.0)
    body = finish(api, run(api).json()["uuid"])
    assert (body["status"], body["errorDescription"]) == ("FAIL", "emulated failure")
    emu.configure(fail_rate=0, cancel_rate=1.0)
    assert finish(api, run(api).json()["uuid"])["status"] == "CANCEL"
    emu.configure(cancel_rate=0, error_rate=1.0)
    assert_spring(api.get(API + "pipelines"), 500)
    assert_spring(run(api, pipeline="x"), 500)
    emu.configure(error_rate=0, malformed_rate=1.0)
    assert api.get(API + "pipelines").text == "<html>oops</html>"
    emu.configure(malformed_rate=0, delay=0.2)
    started = time.monotonic()
    assert api.get(API + "pipelines").status_code == 200
    assert time.monotonic() - started >= 0.2


def test_rates_between_zero_and_one_are_seeded(emu, api):
    def outcomes() -> list[str]:
        emu.reset()
        emu.configure(fail_rate=0.5, seed=42)
        return [finish(api, run(api).json()["uuid"])["status"] for _ in range(20)]

    first = outcomes()
    assert set(first) == {"DONE", "FAIL"}
    assert outcomes() == first


# -- statistics, reset, control ----------------------------------------------------------------


def test_stats_count_runs_requests_and_arrival_times(emu, api):
    before = time.time()
    pid = pipeline_id(api)  # 1 request
    uuids = [
        run(api, params("p one", width=64, height=32, style="UHD"), pipeline=pid).json()["uuid"],
        run(api, params("p one"), pipeline=pid).json()["uuid"],
        run(api, params("p two", negativePromptDecoder=""), pipeline=pid).json()["uuid"],
    ]
    assert run(api, params(width=5000), pipeline=pid).status_code == 400
    status(api, uuids[0])
    status(api, uuids[0])  # 404 now: still a status call
    after = time.time()
    stats = emu.stats()
    assert stats["runs_total"] == 3
    assert stats["runs_by_prompt"] == {"p one": 2, "p two": 1}
    assert stats["run_requests"] == 4
    assert stats["status_calls"] == 2
    assert stats["results_fetched"] == 1
    assert stats["requests_total"] == 7
    assert [r["uuid"] for r in stats["runs"]] == uuids
    first = stats["runs"][0]
    assert {k: first[k] for k in ("prompt", "width", "height", "style", "negative_prompt")} == {
        "prompt": "p one",
        "width": 64,
        "height": 32,
        "style": "UHD",
        "negative_prompt": "blurry",
    }
    assert stats["runs"][2]["negative_prompt"] == ""
    times = [r["arrived_at"] for r in stats["runs"]]
    assert before <= times[0] <= times[1] <= times[2] <= after


def test_reset_restores_the_start_config_and_forgets_everything(emu, api):
    start = emu.config()
    uuid = run(api).json()["uuid"]
    emu.configure(generation_time=5, fail_rate=0.5, censor_words=["x"])
    emu.fault("run", "500", count=3)
    assert emu.reset() == start
    assert emu.config() == start
    assert emu.control.faults() == []
    assert_spring(status(api, uuid), 404)
    stats = emu.stats()
    assert stats == {
        "runs_total": 0,
        "runs_by_prompt": {},
        "runs": [],
        "run_requests": 0,
        "status_calls": 1,
        "results_fetched": 0,
        "requests_total": 1,
        "runs_refused": 0,
        "refused_at": [],
        "most_running": 0,
    }


def test_control_config_reads_and_updates_at_once(emu, api, control):
    config = emu.config()
    assert (
        config
        == EmulatorConfig(
            api_key=KEY, secret_key=SECRET, generation_time=0, status_time=0
        ).to_json()
    )
    updated = emu.configure(generation_time=1.5, busy="pipeline_status")
    assert updated["generation_time"] == 1.5
    assert emu.config() == updated
    assert run(api).json() == {"pipeline_status": "DISABLED_BY_QUEUE"}
    for bad in (
        {"fail_rate": 2},
        {"nope": 1},
        {"delay": -1},
        {"busy": "maybe"},
        {"seed": "x"},
        {"error_after_run": 501},
        {"error_after_run": "504"},
        {"error_after_run": True},
    ):
        answer = control.post("_emulator/config", json=bad)
        assert answer.status_code == 400, bad
    with pytest.raises(ValueError, match="fail_rate"):
        emu.configure(fail_rate=-0.5)
    assert emu.config() == updated


def test_emulator_control_client_strips_nothing_from_the_url(emu):
    with EmulatorControl(emu.url.rstrip("/"), token=emu.token) as control:
        assert control.stats()["runs_total"] == 0


# -- the command and the process ---------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--fail-rate", "1.5"],
        ["--error-rate", "-0.1"],
        ["--malformed-rate", "x"],
        ["--cancel-rate", "2"],
        ["--port", "70000"],
        ["--port", "-1"],
        ["--generation-time", "-1"],
        ["--result-ttl", "nan"],
        ["--busy", "sometimes"],
        ["--error-after-run", "501"],
        ["--error-after-run", "x"],
    ],
)
def test_the_command_refuses_bad_arguments(args, capsys):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["emulator", *args])
    assert exited.value.code == 2
    assert "emulator" in capsys.readouterr().err


def test_the_command_process_exits_2_on_a_bad_rate(tmp_path):
    done = run_listener("emulator", "--fail-rate", "7", env=clean_env(), cwd=tmp_path)
    assert done.returncode == 2
    assert "rate" in done.stderr
    assert done.stdout == ""


def test_stop_and_start_again_on_the_same_port(emulator):
    port, url = emulator.port, emulator.url
    assert url == f"http://127.0.0.1:{port}/"
    with httpx.Client(base_url=url, headers=emulator.headers, timeout=2) as client:
        uuid = run(client).json()["uuid"]
        assert emulator.stop() == 0
        with pytest.raises(httpx.ConnectError):
            client.get(API + "pipelines")
        emulator.start()
        assert (emulator.port, emulator.url) == (port, url)
        assert client.get(API + "pipelines").status_code == 200
        assert_spring(status(client, uuid), 404)  # a restarted emulator has no memory
    assert emulator.stop(signal.SIGINT) == 0
    assert "Traceback" not in emulator.log


def test_verbose_logs_requests_without_secrets(tmp_path):
    process = start_emulator("-verbose", cwd=tmp_path)
    try:
        with httpx.Client(base_url=process.url, headers=process.headers, timeout=2) as client:
            client.get(API + "pipelines")
    finally:
        assert process.stop() == 0
    log = process.log
    assert "GET /key/api/v1/pipelines -> 200" in log
    assert SECRET not in log


def test_the_accounts_true_limits_refuse_runs_beyond_them(emu, api):
    emu.configure(generation_time=0.5, max_concurrent=2)
    first = [run(api, params(f"p{i}")) for i in range(2)]
    assert all(r.status_code == 201 for r in first)
    third = run(api, params("p3"))
    assert_spring(third, 429)
    assert third.headers["retry-after"] == "1"
    emu.configure(over_limit="busy")
    assert run(api, params("p4")).json() == {"model_status": "DISABLED_BY_QUEUE"}
    time.sleep(0.6)  # the two generations are over: room again
    assert run(api, params("p5")).status_code == 201
    stats = emu.stats()
    assert (stats["runs_refused"], stats["most_running"]) == (2, 2)
    emu.configure(max_concurrent=None, start_rate=2, over_limit="429")
    time.sleep(1.05)  # the runs above are out of the sliding second
    codes = [run(api, params(f"r{i}")).status_code for i in range(3)]
    assert codes == [201, 201, 429]  # two a second


def test_true_limit_settings_are_checked():
    with pytest.raises(ValueError, match="max_concurrent"):
        EmulatorConfig(max_concurrent=-1)
    with pytest.raises(ValueError, match="over_limit"):
        EmulatorConfig(over_limit="nope")
    with pytest.raises(ValueError, match="start_rate"):
        EmulatorConfig(start_rate=-1)
