"""`listener provider check` on GigaChat, as a process against the emulator: what works
is listed, and each thing that can go wrong is one clear line (key refused, scope wrong,
CA not trusted, host unreachable); nothing is ever drawn. Plus GigaChat's settings."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import trio
from pydantic import ValidationError

from listener.config import format_validation_error
from listener.providers import registry
from listener.providers.gigachat.settings import GigaChatSettings
from tests.fixtures.gigachat import GIGACHAT_KEY
from tests.helpers import clean_env, listener_cmd, run_listener


def check_env(gigachat, **overrides: str) -> dict[str, str]:
    env = clean_env(
        GIGACHAT_CREDENTIALS=GIGACHAT_KEY,
        GIGACHAT_AUTH_URL=gigachat.auth_url,
        GIGACHAT_BASE_URL=gigachat.base_url,
    )
    return {**env, **overrides}


def check(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_listener("provider", "check", env=env, cwd=cwd)


def test_check_lists_the_token_the_models_and_the_balance(gigachat, tmp_path) -> None:
    done = check(check_env(gigachat), tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "GigaChat API (chosen because" in out
    assert "ok: token: granted for scope GIGACHAT_API_PERS, valid for 30 min" in out
    assert "ok: GIGACHAT_MODEL GigaChat-2: listed" in out
    assert "ok: balance: not shown for this account (pay-as-you-go)" in out
    gigachat.configure(balance={"GigaChat-2": 900000})
    assert "ok: balance: GigaChat-2 900000" in check(check_env(gigachat), tmp_path).stdout
    stats = gigachat.stats()
    assert stats["draws_total"] == 0 and stats["chat_requests"] == 0
    assert GIGACHAT_KEY not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"GIGACHAT_CREDENTIALS": "d3Jvbmc6a2V5"},
            "token service 127.0.0.1: refused: GIGACHAT_CREDENTIALS was refused",
        ),
        (
            {"GIGACHAT_SCOPE": "GIGACHAT_API_CORP"},
            "token service 127.0.0.1: refused: GIGACHAT_SCOPE does not match the key",
        ),
        (
            {"GIGACHAT_MODEL": "GigaChat-Nonexistent"},
            "GIGACHAT_MODEL GigaChat-Nonexistent: NOT listed",
        ),
    ],
)
def test_check_names_what_is_wrong(gigachat, tmp_path, overrides, expected) -> None:
    done = check(check_env(gigachat, **overrides), tmp_path)
    assert expected in done.stdout, done.stdout + done.stderr
    if "NOT listed" not in expected:
        assert done.returncode == 1
        assert sum("FAILED" in line for line in done.stdout.splitlines()) == 1
    assert "d3Jvbmc6a2V5" not in done.stdout + done.stderr


def test_check_says_when_the_base_url_leads_nowhere(gigachat, tmp_path) -> None:
    done = check(check_env(gigachat, GIGACHAT_BASE_URL=gigachat.url + "v1"), tmp_path)
    assert done.returncode == 1
    assert "FAILED: API 127.0.0.1 (models): refused: models: HTTP 404" in done.stdout
    assert "check GIGACHAT_BASE_URL" in done.stdout


def test_check_says_when_the_host_is_unreachable(gigachat, tmp_path) -> None:
    env = check_env(gigachat, GIGACHAT_AUTH_URL="http://127.0.0.1:9/api/v2/oauth")
    done = check(env, tmp_path)
    assert done.returncode == 1
    assert "FAILED: token service 127.0.0.1: host unreachable:" in done.stdout


def test_check_without_credentials_is_a_configuration_error(tmp_path) -> None:
    done = check(clean_env(IMAGE_PROVIDER="gigachat"), tmp_path)
    assert done.returncode == 2
    assert "GIGACHAT_CREDENTIALS" in done.stderr


def _self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def _tls_proxy(cert: Path, key: Path, target_port: int, task_status) -> None:
    """TLS in front of the emulator, with a certificate no default store trusts."""
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))

    async def handle(client: trio.SSLStream) -> None:
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", target_port)
        except OSError:
            return

        async def pipe(a, b) -> None:
            try:
                while data := await a.receive_some(65536):
                    await b.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            with trio.move_on_after(1):
                await b.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipe, client, upstream)
            nursery.start_soon(pipe, upstream, client)

    listeners = await trio.open_ssl_over_tcp_listeners(0, context, host="127.0.0.1")
    task_status.started(listeners[0].transport_listener.socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


async def test_check_says_when_the_ca_is_not_trusted_and_the_bundle_fixes_it(
    gigachat, tmp_path
) -> None:
    cert, key = _self_signed(tmp_path)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(_tls_proxy, cert, key, gigachat.port)
        base = f"https://127.0.0.1:{port}/"
        env = check_env(
            gigachat, GIGACHAT_AUTH_URL=base + "api/v2/oauth", GIGACHAT_BASE_URL=base + "api/v1"
        )
        done = await trio.run_process(
            listener_cmd("provider", "check"), env=env, cwd=tmp_path, capture_stdout=True,
            capture_stderr=True, check=False,
        )  # fmt: skip
        out = done.stdout.decode()
        assert done.returncode == 1
        assert "FAILED: token service 127.0.0.1: CA not trusted:" in out
        assert "GIGACHAT_CA_BUNDLE_FILE" in out
        env["GIGACHAT_CA_BUNDLE_FILE"] = str(cert)
        done = await trio.run_process(
            listener_cmd("provider", "check"), env=env, cwd=tmp_path, capture_stdout=True,
            capture_stderr=True, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
        assert "ok: token: granted" in done.stdout.decode()
        nursery.cancel_scope.cancel()


# -- settings ---------------------------------------------------------------------------------


def settings(**env: str) -> GigaChatSettings:
    return GigaChatSettings(_env_file=None, **env)  # type: ignore[call-arg]


def test_defaults_are_the_sdks(monkeypatch) -> None:
    for name in ("GIGACHAT_SCOPE", "GIGACHAT_TIMEOUT", "GIGACHAT_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)
    s = settings()
    assert (
        s.gigachat_scope,
        s.gigachat_model,
        s.gigachat_timeout,
        s.gigachat_verify_ssl_certs,
    ) == (
        "GIGACHAT_API_PERS",
        "GigaChat-2",
        120.0,
        True,
    )
    assert s.auth == "https://ngw.devices.sberbank.ru:9443/api/v2/oauth"
    assert s.base == "https://gigachat.devices.sberbank.ru/api/v1/"
    assert not s.configured and s.warnings() == []


def test_the_key_is_read_from_the_sdks_variables(monkeypatch) -> None:
    monkeypatch.setenv("GIGACHAT_CREDENTIALS", f"  Basic {GIGACHAT_KEY}\n")
    monkeypatch.setenv("GIGACHAT_SCOPE", "gigachat_api_b2b")
    monkeypatch.setenv("GIGACHAT_BASE_URL", "https://api.giga.chat/v1")
    s = settings()
    assert (
        s.gigachat_credentials is not None
        and s.gigachat_credentials.get_secret_value() == GIGACHAT_KEY
    )
    assert (s.gigachat_scope, s.base) == ("GIGACHAT_API_B2B", "https://api.giga.chat/v1/")
    assert GIGACHAT_KEY not in repr(s)


def test_a_short_timeout_is_accepted_with_a_warning() -> None:
    (line,) = settings(gigachat_timeout=30).warnings()  # type: ignore[arg-type]
    assert "GIGACHAT_TIMEOUT=30s" in line and "paid" in line


@pytest.mark.parametrize(
    "bad",
    [
        {"gigachat_auth_url": "http://sber.example/api/v2/oauth"},
        {"gigachat_base_url": "https://user:pw@gigachat.example/api/v1"},
        {"gigachat_credentials": "not a key"},
        {"gigachat_prompt_template": "no placeholder"},
        {"gigachat_timeout": float("inf")},
        {"gigachat_ca_bundle_file": "/nonexistent/ca.pem"},
    ],
)
def test_unsafe_or_broken_settings_are_refused(bad) -> None:
    with pytest.raises(ValidationError) as caught:
        settings(**bad)
    line = format_validation_error(caught.value)
    assert line.startswith("configuration error: GIGACHAT_") and "not a key" not in line


def test_only_gigachat_credentials_choose_gigachat(monkeypatch, tmp_path) -> None:
    for name in ("IMAGE_PROVIDER", "FUSION_BRAIN_API_KEY", "FUSION_BRAIN_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GIGACHAT_CREDENTIALS", GIGACHAT_KEY)
    choice = registry.choose(None, env_file=None)
    assert choice.spec.name == "gigachat" and choice.configured
    assert "only its credentials are set" in choice.why


def test_check_on_fusion_brain_asks_its_pipeline_without_a_run(emulator, tmp_path) -> None:
    env = clean_env(
        FUSION_BRAIN_URL=emulator.url,
        FUSION_BRAIN_API_KEY=emulator.api_key,
        FUSION_BRAIN_SECRET_KEY=emulator.secret_key,
    )
    done = check(env, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok: pipeline availability: ACTIVE" in done.stdout
    done = check({**env, "FUSION_BRAIN_API_KEY": "wrong-key"}, tmp_path)
    assert done.returncode == 1 and "FAILED: API 127.0.0.1:" in done.stdout
    assert emulator.stats()["run_requests"] == 0
