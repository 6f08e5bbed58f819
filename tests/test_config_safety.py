"""Settings that would leak a secret, send it in clear, or be retried for ever are refused
at start-up with one line and exit 2 (issue 14); redaction tells nothing about secrets."""

from __future__ import annotations

import logging
import os

import pytest

from listener.config import describe_conninfo, load_settings
from listener.errors import ConfigError
from listener.logs import setup_logging
from listener.providers.fusionbrain.spec import SPEC as FB
from tests.helpers import CONFIG_PREFIXES, clean_env, run_listener


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    for key in list(os.environ):
        if key.startswith(CONFIG_PREFIXES):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def assert_config_error(result, *expected: str, secret: str = "hunter2") -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("listener: configuration error"), lines[0]
    for text in expected:
        assert text in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert secret not in result.stderr + result.stdout


# -- malformed connection settings: refused, not retried -------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"DATABASE_URL": "postgresql://u:hunter2@127.0.0.1/db?sslmode=bogus"}, "sslmode"),
        ({"DATABASE_URL": "postgresql://u:hunter2@127.0.0.1:abc/db"}, "port 'abc'"),
        ({"DATABASE_URL": "postgresql://u:hunter2@127.0.0.1:99999/db"}, "port '99999'"),
        ({"DATABASE_URL": "host=127.0.0.1 port=0 password=hunter2"}, "port '0'"),
        ({"DATABASE_URL": "postgresql://u:hunter2@h/db?connect_timeout=soon"}, "connect_timeout"),
        (
            {"DATABASE_URL": "postgresql://u:hunter2@h/db?target_session_attrs=fastest"},
            "target_session_attrs",
        ),
        ({"DATABASE_URL": "postgresql://u:hunter2@h1:5432,h2:x/db"}, "port 'x'"),
        ({"DATABASE_URL": "host=h hostaddr=10.0.0.300 password=hunter2"}, "hostaddr"),
        ({"DATABASE_URL": "postgresql://u:hunter2@h/db", "PGSSLMODE": "bogus"}, "PGSSLMODE"),
        ({"DATABASE_URL": "postgresql://u:hunter2@h/db", "PGPORT": "-1"}, "PGPORT"),
        ({"DB_HOST": "localhost:5432", "DB_PASSWORD": "hunter2"}, "DB_HOST"),
        ({"DB_HOST": "local host", "DB_PASSWORD": "hunter2"}, "DB_HOST"),
        ({"DB_HOST": "h", "DB_PASSWORD": "hunter2", "PGGSSENCMODE": "always"}, "PGGSSENCMODE"),
    ],
)
def test_a_malformed_connection_setting_is_a_configuration_error(tmp_path, env, expected):
    # `listener` (run) would otherwise wait for the database for ever
    result = run_listener(env=clean_env(**env), cwd=tmp_path, timeout=30)
    assert_config_error(result, expected)


def test_good_connection_settings_still_load(isolated, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:pw@h1:5432,h2/db?sslmode=verify-full"
                       "&connect_timeout=5&target_session_attrs=read-write")  # fmt: skip
    monkeypatch.setenv("PGSSLMODE", "bogus")  # the URL says sslmode: libpq ignores this
    assert load_settings(env_file=None).database_configured
    monkeypatch.delenv("DATABASE_URL")
    monkeypatch.setenv("DB_HOST", "::1")
    assert load_settings(env_file=None).conninfo()


# -- the API's key and URL -------------------------------------------------------------


@pytest.mark.parametrize("key", ["ключ-123", "key with space", "key\u00a0nbsp", "tab\tkey"])
@pytest.mark.parametrize("variable", ["FUSION_BRAIN_API_KEY", "FUSION_BRAIN_SECRET_KEY"])
def test_a_key_that_cannot_travel_in_a_header_is_a_configuration_error(tmp_path, variable, key):
    env = {"FUSION_BRAIN_API_KEY": "k", "FUSION_BRAIN_SECRET_KEY": "s", variable: key}
    result = run_listener("migrate", env=clean_env(**env), cwd=tmp_path)
    assert_config_error(result, variable, "visible ASCII", secret=key)


def test_credentials_in_the_api_url_are_refused_and_never_echoed(tmp_path):
    env = clean_env(FUSION_BRAIN_URL="https://admin:hunter2@api.example.com/")
    assert_config_error(run_listener("migrate", env=env, cwd=tmp_path), "user:password")
    # a URL the parser refuses is quoted without its credentials
    env = clean_env(FUSION_BRAIN_URL="ftp://admin:hunter2@api.example.com/")
    assert_config_error(run_listener("migrate", env=env, cwd=tmp_path), "FUSION_BRAIN_URL")


def test_http_to_another_machine_is_refused_unless_allowed(isolated, tmp_path, monkeypatch):
    env = clean_env(FUSION_BRAIN_URL="http://api.example.com/")
    assert_config_error(
        run_listener("migrate", env=env, cwd=tmp_path), "ALLOW_INSECURE_API_URL=true", "clear"
    )
    for url in ("http://10.0.0.5:8080/", "http://localhost.example.com/", "http://[::2]/"):
        monkeypatch.setenv("FUSION_BRAIN_URL", url)
        with pytest.raises(ConfigError, match="in clear"):
            FB.load_settings(env_file=None)
    monkeypatch.setenv("FUSION_BRAIN_URL", "http://api.example.com/")
    monkeypatch.setenv("ALLOW_INSECURE_API_URL", "true")
    allowed = FB.load_settings(env_file=None)
    assert str(allowed.fusion_brain_url) == "http://api.example.com/"
    monkeypatch.delenv("ALLOW_INSECURE_API_URL")
    for url in ("http://127.0.0.1:8089/", "http://localhost:8089/", "http://[::1]:8089/",
                "https://api.example.com/"):  # fmt: skip
        monkeypatch.setenv("FUSION_BRAIN_URL", url)
        assert FB.load_settings(env_file=None)


# -- redaction tells nothing -----------------------------------------------------------


def _logged(settings, text: str, capsys, extra: list[str] | None = None) -> str:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        setup_logging(secrets=settings.secrets() + (extra or []))
        logging.getLogger("listener").info("%s", text)
        return capsys.readouterr().err
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.mark.parametrize(
    "env",
    [
        {"DB_HOST": "db.internal", "DB_USER": "alice", "DB_PASSWORD": "alice", "DB_NAME": "img"},
        {"DATABASE_URL": "postgresql://alice:alice@db.internal:5432/img"},
        {"DATABASE_URL": "postgresql://alice:ali@db.internal:5432/img"},
        {"DATABASE_URL": "postgresql://alice:img@db.internal:5432/img"},
        {"DATABASE_URL": "postgresql://alice:5432@db.internal:5432/img"},
    ],
)
def test_a_password_equal_to_a_shown_name_is_not_masked_there(isolated, monkeypatch, capsys, env):
    """`***@db.internal` would tell the reader the password is the user name."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s = load_settings(env_file=None)
    line = _logged(s, "Database: " + describe_conninfo(s.conninfo()), capsys)
    assert "Database: alice@db.internal:5432/img" in line
    assert "***" not in line


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # part of the host: masked there, as a whole token
        ("postgresql://alice:longpass1@longpass1.internal:5432/img", "alice@***.internal:5432/img"),
        # equal to the user or the database name: masked there too
        ("postgresql://longpass1:longpass1@db.internal:5432/img", "***@db.internal:5432/img"),
        ("postgresql://alice:LongPass1@db.internal:5432/longpass1", "alice@db.internal:5432/***"),
        # inside a longer name: that name is not the password, it is shown
        ("postgresql://app_longpass1:longpass1@db.internal:5432/img",
         "app_longpass1@db.internal:5432/img"),
    ],
)  # fmt: skip
def test_a_password_of_8_or_more_is_masked_wherever_it_is_a_whole_token(
    isolated, monkeypatch, capsys, url, shown
):
    monkeypatch.setenv("DATABASE_URL", url)
    s = load_settings(env_file=None)
    line = _logged(s, "Database: " + describe_conninfo(s.conninfo()) + " pw=longpass1.", capsys)
    assert f"Database: {shown} pw=***." in line, line
    assert "longpass1." not in line.lower().replace("app_longpass1", "")


def test_other_secrets_are_still_masked_everywhere(isolated, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", "postgresql://alice:Pw-9f3e@db.internal/img")
    monkeypatch.setenv("FUSION_BRAIN_API_KEY", "KEY-77aa")
    monkeypatch.setenv("FUSION_BRAIN_SECRET_KEY", "KEY-77aa-and-more")
    s = load_settings(env_file=None)
    line = _logged(
        s,
        "leak: Pw-9f3e KEY-77aa KEY-77aa-and-more alice",
        capsys,
        extra=FB.secrets(FB.load_settings(env_file=None)),
    )
    assert "leak: *** *** *** alice" in line


def test_describe_conninfo_shows_the_user_as_configured(isolated, monkeypatch):
    monkeypatch.setenv("DB_HOST", "db.internal")
    monkeypatch.setenv("DB_USER", "alice")
    monkeypatch.setenv("DB_PASSWORD", "s3cret")
    info = describe_conninfo(load_settings(env_file=None).conninfo())
    assert info == "alice@db.internal:5432/alice"
    assert "s3cret" not in info


def test_the_database_line_of_a_real_start_shows_the_user_when_it_is_the_password(tmp_path):
    env = clean_env(DATABASE_URL="postgresql://alice:alice@127.0.0.1:1/img?connect_timeout=2")
    result = run_listener("migrate", env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Database: alice@127.0.0.1:1/img" in result.stderr
    assert "***" not in result.stderr
