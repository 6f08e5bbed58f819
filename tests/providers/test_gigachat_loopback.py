"""The GigaChat client and provider against the GigaChat emulator over real HTTP on
loopback: every outcome the engine acts on, produced by a server rather than a mock."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import stamina
import trio
from PIL import Image

from listener.engine.ports import Ready, Refused, Request, Submitted
from listener.errors import (
    ApiBusy,
    ApiCredentials,
    ApiMalformed,
    ApiNotFound,
    ApiNotTaken,
    ApiOutcomeUnknown,
    ApiPermanent,
    ApiQuotaExhausted,
    ApiTransient,
)
from listener.providers.gigachat.client import GigaChatClient
from listener.providers.gigachat.emulator.server import serve
from listener.providers.gigachat.emulator.state import GigaChatEmulatorConfig
from listener.providers.gigachat.provider import GigaChatProvider

KEY = base64.b64encode(b"client-id:client-secret-7d1e").decode()
CONTROL = "control-token-for-tests"


@pytest.fixture(autouse=True)
def no_backoff() -> Iterator[None]:
    with stamina.set_testing(True, attempts=3, cap=True):
        yield


@dataclass
class Emu:
    url: str
    http: httpx.AsyncClient

    async def control(self, method: str, what: str, body: Any = None) -> Any:
        reply = await self.http.request(
            method,
            f"{self.url}_emulator/{what}",
            json=(body or {}) if method == "POST" else None,
            headers={"Authorization": f"Bearer {CONTROL}"},
        )
        assert reply.status_code == 200, reply.text
        return reply.json()

    async def configure(self, **fields: Any) -> None:
        await self.control("POST", "config", fields)

    async def fault(self, endpoint: str, kind: str, count: int = 1) -> None:
        await self.control("POST", "faults", {"endpoint": endpoint, "kind": kind, "count": count})

    async def stats(self) -> dict[str, Any]:
        return await self.control("GET", "stats")


@pytest.fixture
async def emu() -> AsyncIterator[Emu]:
    config = GigaChatEmulatorConfig(
        credentials=KEY, scope="GIGACHAT_API_PERS", draw_time=0, image_size=64
    )
    async with trio.open_nursery() as nursery, httpx.AsyncClient() as http:
        url = await nursery.start(
            lambda task_status: serve(config, control_token=CONTROL, task_status=task_status)
        )
        yield Emu(url, http)
        nursery.cancel_scope.cancel()


def client_for(
    emu: Emu,
    *,
    key: str = KEY,
    scope: str = "GIGACHAT_API_PERS",
    calls: int = 1,
    model: str = "GigaChat-2",
    timeout: float = 5,
) -> GigaChatClient:
    return GigaChatClient(
        auth_url=emu.url + "api/v2/oauth",
        base_url=emu.url + "api/v1",
        credentials=key,
        scope=scope,
        model=model,
        timeout=timeout,
        concurrency=calls,
        limiter=trio.CapacityLimiter(calls),
        max_response_bytes=4 * 1024 * 1024,
        retry_after_max=30,
    )


@pytest.fixture
async def api(emu: Emu) -> AsyncIterator[GigaChatClient]:
    async with client_for(emu) as client:
        yield client


def request(
    prompt: str = "a lighthouse at dusk",
    row_id: int = 42,
    attempt: int = 1,
    style_prompt: str | None = None,
) -> Request:
    return Request(row_id=row_id, attempt=attempt, prompt=prompt, style_prompt=style_prompt)


async def test_a_draw_gives_a_file_id_and_its_download_a_jpeg(api, emu) -> None:
    provider = GigaChatProvider(api)
    submitted = await provider.submit(request(style_prompt="Ты иллюстратор, рисуешь акварелью."))
    assert isinstance(submitted, Submitted) and len(submitted.handle) == 36
    ready = await provider.outcome(submitted.handle)
    assert isinstance(ready, Ready)
    data = base64.b64decode(ready.image)
    assert data[:3] == b"\xff\xd8\xff"
    with Image.open(io.BytesIO(data)) as img:
        assert (img.format, img.size) == ("JPEG", (64, 64))
    stats = await emu.stats()
    assert stats["draws_by_prompt"] == {"Нарисуй: a lighthouse at dusk": 1}
    assert stats["request_ids"] == ["images-42-attempt-1"]
    assert (stats["tokens_issued"], stats["downloads"]) == (1, 1)


async def test_one_token_serves_many_calls_and_concurrent_callers_fetch_one(emu) -> None:
    async with client_for(emu, calls=5) as api:
        provider = GigaChatProvider(api)
        handles: list[str] = []

        async def draw(i: int) -> None:
            result = await provider.submit(request(f"prompt {i}", row_id=i))
            assert isinstance(result, Submitted)
            handles.append(result.handle)

        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(draw, i)
        for handle in handles:
            assert isinstance(await provider.outcome(handle), Ready)
    stats = await emu.stats()
    assert stats["tokens_issued"] == 1 and stats["token_requests"] == 1
    assert stats["draws_total"] == 5


async def test_the_limiter_allows_one_call_at_once(emu) -> None:
    await emu.configure(draw_time=0.2, streams=1)
    async with client_for(emu, calls=1) as api:
        provider = GigaChatProvider(api)
        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(provider.submit, request(f"p{i}", row_id=i))
    stats = await emu.stats()
    assert (stats["max_in_flight"], stats["rejected_busy"], stats["draws_total"]) == (1, 0, 3)


async def test_expired_and_revoked_tokens_are_replaced_and_the_call_repeated(api, emu) -> None:
    provider = GigaChatProvider(api)
    assert isinstance(await provider.submit(request("one")), Submitted)
    await emu.control("POST", "expire")
    assert isinstance(await provider.submit(request("two")), Submitted)
    await emu.control("POST", "revoke")
    assert isinstance(await provider.submit(request("three")), Submitted)
    stats = await emu.stats()
    assert stats["tokens_issued"] == 3 and stats["unauthorized"] == 2
    assert stats["draws_total"] == 3  # a 401 is refused before any drawing
    assert stats["distinct_rquids"] == stats["token_requests"] == 3


async def test_a_token_refused_twice_is_a_credentials_error(api, emu) -> None:
    await api.tokens.get()
    await emu.fault("chat", "401", count=2)
    with pytest.raises(ApiCredentials, match="GIGACHAT_CREDENTIALS"):
        await GigaChatProvider(api).submit(request())


async def test_a_wrong_key_and_a_wrong_scope_say_which(emu) -> None:
    other = base64.b64encode(b"someone:else").decode()
    async with client_for(emu, key=other) as api:
        with pytest.raises(ApiCredentials, match="wrong or reissued") as caught:
            await api.models()
        assert other not in caught.value.message
    async with client_for(emu, scope="GIGACHAT_API_CORP") as api:
        with pytest.raises(ApiCredentials, match="does not match the key"):
            await api.models()


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("429", ApiNotTaken),
        ("408", ApiNotTaken),
        ("402", ApiQuotaExhausted),
        ("500", ApiOutcomeUnknown),
        ("503", ApiOutcomeUnknown),
        ("502", ApiOutcomeUnknown),
        ("504", ApiOutcomeUnknown),
        ("422", ApiPermanent),
        ("413", ApiPermanent),
        ("lost", ApiOutcomeUnknown),
        ("malformed", ApiOutcomeUnknown),
        ("bad_file_id", ApiOutcomeUnknown),
    ],
)
async def test_draw_failures_map_to_the_engines_words(api, emu, kind, error) -> None:
    await emu.fault("chat", kind)
    with pytest.raises(error) as caught:
        await GigaChatProvider(api).submit(request())
    if error is ApiNotTaken:
        assert not isinstance(caught.value, ApiOutcomeUnknown)
    if kind == "429":
        assert caught.value.retry_after == 1
    if kind in ("malformed", "bad_file_id"):
        assert isinstance(caught.value, ApiMalformed)


async def test_a_lost_reply_was_drawn_once_and_not_repeated(api, emu) -> None:
    await emu.fault("chat", "lost")
    with pytest.raises(ApiOutcomeUnknown):
        await GigaChatProvider(api).submit(request("lost one"))
    assert (await emu.stats())["draws_by_prompt"] == {"Нарисуй: lost one": 1}


async def test_quota_exhausted_keeps_the_apis_words(api, emu) -> None:
    await emu.configure(quota_exhausted=True)
    with pytest.raises(ApiQuotaExhausted, match="Payment Required"):
        await GigaChatProvider(api).submit(request())
    assert (await emu.stats())["draws_total"] == 0


async def test_blacklist_is_censored_and_no_image_keeps_an_excerpt(api, emu) -> None:
    await emu.configure(blacklist_words=["forbidden"], no_image_words=["describe"])
    provider = GigaChatProvider(api)
    censored = await provider.submit(request("something forbidden"))
    assert isinstance(censored, Refused) and censored.censored
    assert "declined" in censored.reason
    text = await provider.submit(request("describe a cat\n2030/01/01 forged line"))
    assert isinstance(text, Refused) and not text.censored
    assert text.reason.startswith("no image: GigaChat answered (finish_reason stop): ")
    assert "\n" not in text.reason and len(text.reason) < 300


async def test_an_unknown_model_is_a_configuration_error(emu) -> None:
    async with client_for(emu, model="GigaChat-Nonexistent") as api:
        provider = GigaChatProvider(api)
        with pytest.raises(ApiCredentials, match="GIGACHAT_MODEL"):
            await provider.submit(request())
        with pytest.raises(ApiCredentials, match="not offered"):
            await provider.probe()


async def test_downloads_retry_transient_failures_and_404_is_not_found(api, emu) -> None:
    provider = GigaChatProvider(api)
    submitted = await provider.submit(request())
    assert isinstance(submitted, Submitted)
    await emu.fault("download", "500")
    with pytest.raises(ApiTransient):
        await provider.outcome(submitted.handle)
    assert isinstance(await provider.outcome(submitted.handle), Ready)
    with pytest.raises(ApiNotFound):
        await provider.outcome("0b7a5b56-0000-4000-8000-000000000000")
    await emu.fault("download", "429")
    with pytest.raises(ApiNotTaken, match="429"):
        await provider.outcome(submitted.handle)
    await emu.fault("download", "malformed")
    with pytest.raises(ApiMalformed, match="not a JPEG"):
        await provider.outcome(submitted.handle)


async def test_models_and_balance(api, emu) -> None:
    assert "GigaChat-2" in [m.id for m in (await api.models()).data]
    assert await api.balance() is None  # 403: pay-as-you-go
    await emu.configure(balance={"GigaChat-2": 900000})
    balance = await api.balance()
    assert balance is not None and balance.balance[0].value == 900000


async def test_a_draw_slower_than_the_timeout_is_an_unknown_outcome(emu) -> None:
    await emu.configure(draw_time=2)
    async with client_for(emu, timeout=0.5) as api:
        with pytest.raises(ApiOutcomeUnknown, match=r"within 0\.5s"):
            await GigaChatProvider(api).submit(request("slow"))
    assert (await emu.stats())["draws_total"] == 1


async def test_the_token_service_down_is_busy_not_a_failure(emu) -> None:
    await emu.fault("token", "503", count=5)
    async with client_for(emu) as api:
        with pytest.raises(ApiBusy, match="token service"):
            await GigaChatProvider(api).submit(request())
    assert (await emu.stats())["draws_total"] == 0


async def test_neither_the_key_nor_a_token_reaches_a_message(api, emu) -> None:
    await emu.fault("token", "echo_headers")
    with pytest.raises(ApiCredentials) as refused:
        await api.models()
    assert KEY not in refused.value.message and "***" in refused.value.message
    token = await api.tokens.get()
    await emu.fault("chat", "echo_headers")
    with pytest.raises(ApiPermanent) as echoed:
        await GigaChatProvider(api).submit(request())
    assert token not in echoed.value.message and "Bearer ***" in echoed.value.message


async def test_the_first_probe_says_what_the_account_shows(api, emu, caplog) -> None:
    caplog.set_level("INFO", logger="listener.gigachat")
    await emu.configure(balance={"GigaChat-2": 900000})
    provider = GigaChatProvider(api)
    await provider.probe()
    await provider.probe()
    assert caplog.text.count("GigaChat balance (prepaid tokens left): GigaChat-2 900000") == 1
    async with client_for(emu, model="GigaChat-9") as other:
        await GigaChatProvider(other).probe()
    assert "GIGACHAT_MODEL GigaChat-9 is not among the models" in caplog.text
