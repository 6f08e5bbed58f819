"""The client against the emulator over real HTTP on loopback: each outcome the workflows
act on, produced by the server rather than by a mock (test_api_client covers the reading
of every answer shape)."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import stamina
import trio
from PIL import Image

from listener.errors import (
    ApiBusy,
    ApiCredentials,
    ApiNotFound,
    ApiNotTaken,
    ApiOutcomeUnknown,
    ApiPermanent,
    ApiTransient,
)
from listener.providers.fusionbrain.client import FusionBrainClient
from listener.providers.fusionbrain.models import GenerationRequest, GenerationStatus

REQUEST = GenerationRequest("a red fox in the snow", 192, 128, "UHD", "blurry")


@pytest.fixture(autouse=True)
def no_backoff() -> Iterator[None]:
    with stamina.set_testing(True, attempts=3, cap=True):
        yield


@pytest.fixture
async def api(emulator) -> AsyncIterator[FusionBrainClient]:
    async with FusionBrainClient(
        emulator.url, emulator.api_key, emulator.secret_key, timeout=5
    ) as client:
        yield client


async def final(api: FusionBrainClient, uuid: str) -> GenerationStatus:
    with trio.fail_after(10):
        while True:
            status = await api.status(uuid)
            if status.final:
                return status
            await trio.sleep(0.02)


async def test_accepted_run_ends_done_with_a_png_of_the_requested_size(api, emulator) -> None:
    assert await api.availability() == "ACTIVE"
    accepted = await api.run(REQUEST)
    done = await final(api, accepted.uuid)
    assert (done.state, done.censored, len(done.files)) == ("DONE", False, 1)
    with Image.open(io.BytesIO(base64.b64decode(done.files[0]))) as img:
        assert img.size == (192, 128)
    (run,) = emulator.stats()["runs"]
    assert (run["prompt"], run["style"], run["negative_prompt"]) == (
        "a red fox in the snow", "UHD", "blurry")  # fmt: skip


async def test_a_result_is_handed_out_once_then_404(api) -> None:
    accepted = await api.run(REQUEST)
    assert (await final(api, accepted.uuid)).state == "DONE"
    with pytest.raises(ApiNotFound):
        await api.status(accepted.uuid)


async def test_an_unfetched_result_expires(api, emulator) -> None:
    emulator.configure(generation_time=0.1, result_ttl=0.2)
    accepted = await api.run(REQUEST)
    await trio.sleep(0.6)
    with pytest.raises(ApiNotFound):
        await api.status(accepted.uuid)


@pytest.mark.parametrize(
    ("kind", "state"),
    [
        ("busy_model", "DISABLED_BY_QUEUE"),
        ("busy_pipeline", "DISABLED_BY_QUEUE"),
        ("busy_manual", "DISABLED_MANUALLY"),
    ],
)
async def test_busy_in_either_body_form(api, emulator, kind, state) -> None:
    emulator.fault("run", kind, 1)
    with pytest.raises(ApiBusy) as busy:
        await api.run(REQUEST)
    assert busy.value.state == state
    assert emulator.stats()["runs_total"] == 0
    await api.run(REQUEST)  # the pipeline is looked up again and the next run goes through
    assert emulator.stats()["runs_total"] == 1


async def test_busy_availability(api, emulator) -> None:
    emulator.configure(busy="pipeline_status")
    assert await api.availability() == "DISABLED_BY_QUEUE"


async def test_wrong_credentials_are_reported_as_such(api, emulator) -> None:
    emulator.configure(wrong_credentials=True)
    for call in (api.availability, lambda: api.run(REQUEST), lambda: api.status("x")):
        with pytest.raises(ApiCredentials):
            await call()


async def test_a_request_the_api_refuses_is_permanent_with_its_message(api, emulator) -> None:
    with pytest.raises(ApiPermanent) as refused:
        await api.run(GenerationRequest("a fox", 5000, 128, "UHD"))
    assert refused.value.status_code == 400
    assert "width" in refused.value.message
    assert emulator.stats()["runs_total"] == 0


class NotMultipart(httpx.AsyncBaseTransport):
    """Rewrites run requests to a JSON content type: what a broken client would send."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/pipeline/run"):
            request.headers["Content-Type"] = "application/json"
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_malformed_request_gets_415_permanent(emulator) -> None:
    async with FusionBrainClient(
        emulator.url, emulator.api_key, emulator.secret_key, transport=NotMultipart()
    ) as api:
        with pytest.raises(ApiPermanent) as refused:
            await api.run(REQUEST)
    assert refused.value.status_code == 415


@pytest.mark.parametrize(
    ("kind", "state", "description", "censored"),
    [
        ("fail", "FAIL", "emulated failure", False),
        ("cancel", "CANCEL", None, False),
        ("censor", "DONE", None, True),
    ],
)
async def test_generations_that_end_without_an_image(
    api, emulator, kind, state, description, censored
) -> None:
    emulator.fault("run", kind, 1)
    ended = await final(api, (await api.run(REQUEST)).uuid)
    assert (ended.state, ended.censored, ended.files) == (state, censored, ())
    if description:
        assert ended.error_description == description


@pytest.mark.parametrize("kind", ["500", "502", "503", "504"])
async def test_5xx_on_run_is_outcome_unknown_and_not_repeated(api, emulator, kind) -> None:
    """The body was sent: a server error does not say the run was not carried out."""
    await api.pipeline_id()
    emulator.fault("run", kind, 1)
    with pytest.raises(ApiOutcomeUnknown) as failed:
        await api.run(REQUEST)
    assert f"HTTP {kind}" in failed.value.message
    assert emulator.stats()["run_requests"] == 1, "the caller decides when to try again"


async def test_429_on_run_is_not_taken(api, emulator) -> None:
    await api.pipeline_id()
    emulator.fault("run", "429", 1)
    with pytest.raises(ApiNotTaken) as failed:
        await api.run(REQUEST)
    assert failed.value.retry_after == 1
    assert emulator.stats()["runs_total"] == 0


@pytest.mark.parametrize("kind", ["500", "502", "503", "504"])
async def test_the_emulator_can_take_a_run_then_answer_a_server_error(api, emulator, kind) -> None:
    await api.pipeline_id()
    emulator.fault("run", f"taken:{kind}", 1)
    with pytest.raises(ApiOutcomeUnknown):
        await api.run(REQUEST)
    emulator.configure(error_after_run=int(kind))
    with pytest.raises(ApiOutcomeUnknown):
        await api.run(REQUEST)
    assert emulator.stats()["runs_total"] == 2, "both were taken: the quota is spent"
    emulator.configure(error_after_run=None)
    await api.run(REQUEST)
    assert emulator.stats()["runs_total"] == 3


async def test_status_reads_ride_out_5xx_and_garbage(api, emulator) -> None:
    accepted = await api.run(REQUEST)
    emulator.fault("status", "502", 1)
    emulator.fault("status", "malformed", 1)
    assert (await final(api, accepted.uuid)).state == "DONE"


async def test_a_run_answered_too_late_is_outcome_unknown(emulator) -> None:
    emulator.fault("run", "delay:2", 1)
    async with FusionBrainClient(
        emulator.url, emulator.api_key, emulator.secret_key, timeout=0.5
    ) as api:
        await api.pipeline_id()
        with pytest.raises(ApiOutcomeUnknown):
            await api.run(REQUEST)
    assert emulator.stats()["runs_total"] == 1, "it was accepted: the quota is spent"


@pytest.mark.parametrize("kind", ["malformed", "drop"])
async def test_a_run_without_a_usable_answer_is_outcome_unknown(api, emulator, kind) -> None:
    await api.pipeline_id()
    emulator.fault("run", kind, 1)
    with pytest.raises(ApiOutcomeUnknown):
        await api.run(REQUEST)
    assert emulator.stats()["run_requests"] == 1, "never sent twice by the client"


async def test_connection_refused_is_transient(api, emulator) -> None:
    await api.pipeline_id()
    emulator.stop()
    with pytest.raises(ApiTransient) as down:
        await api.run(REQUEST)
    assert not isinstance(down.value, ApiOutcomeUnknown)
    assert "cannot reach the API" in down.value.message
