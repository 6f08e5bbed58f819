"""Configuration: the seed's .env loads verbatim; bad values stop start-up with one line."""

from __future__ import annotations

import os

import pytest

from listener.config import SEED_NEGATIVE_PROMPT, load_settings
from listener.errors import ConfigError
from listener.providers.fusionbrain.settings import FusionBrainSettings
from tests.helpers import CONFIG_PREFIXES, clean_env, run_listener

SEED_ENV = """\
# Fusion Brain API Configuration
FUSION_BRAIN_API_KEY=your-api-key-here
FUSION_BRAIN_SECRET_KEY=your-secret-key-here

# Image Generation Defaults
DEFAULT_IMAGE_WIDTH=1024
DEFAULT_IMAGE_HEIGHT=1024
DEFAULT_NUM_IMAGES=1
DEFAULT_STYLE=ANIME
DEFAULT_NEGATIVE_PROMPT=worst quality, normal quality, low quality, low res, blurry, text, watermark, logo, banner, extra digits, cropped, jpeg artifacts, signature, username, error, sketch ,duplicate, ugly, monochrome, geometry, mutation, disgusting
DEFAULT_GENERATION_TIMEOUT=300
DEFAULT_CHECK_INTERVAL=2
DEFAULT_MAX_ATTEMPTS=30

# Database Configuration
DB_HOST=localhost
DB_PORT=5432
DB_USER=postgres
DB_PASSWORD=your-password-here
DB_NAME=your-database-name
DB_SSL_MODE=disable
DB_MAX_OPEN_CONNS=25
DB_MAX_IDLE_CONNS=25
DB_CONN_MAX_LIFETIME=300 # 5 minutes in seconds
"""


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No configuration from the developer's environment leaks into these tests."""
    for key in list(os.environ):
        if key.startswith(CONFIG_PREFIXES):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_seed_env_block_loads_verbatim(isolated):
    """The seed's block with real values in place of its placeholders."""
    (isolated / ".env").write_text(
        SEED_ENV.replace("your-api-key-here", "k-1")
        .replace("your-secret-key-here", "s-2")
        .replace("your-password-here", "pw-3")
        .replace("your-database-name", "images")
    )
    s, fb = load_settings(), FusionBrainSettings()
    assert fb.fusion_brain_api_key.get_secret_value() == "k-1"
    assert fb.fusion_brain_secret_key.get_secret_value() == "s-2"
    assert fb.placeholders_ignored == ()
    assert (s.default_image_width, s.default_image_height) == (1024, 1024)
    assert s.default_num_images == 1
    assert s.default_style == "ANIME"
    assert s.default_negative_prompt == SEED_NEGATIVE_PROMPT
    assert s.default_generation_timeout == 300
    assert s.default_check_interval == 2
    assert s.default_max_attempts == 30
    assert (s.db_host, s.db_port, s.db_user, s.db_name) == ("localhost", 5432, "postgres", "images")
    assert s.db_password.get_secret_value() == "pw-3"
    assert s.db_ssl_mode == "disable"
    assert (s.db_max_open_conns, s.db_max_idle_conns) == (25, 25)
    assert s.db_conn_max_lifetime == 300  # the inline comment is not part of the value
    assert s.database_configured
    assert s.placeholders_ignored == ()


def test_seed_env_block_as_shipped_means_nothing_configured(isolated):
    """Its placeholders are not a key, a password or a database name (issue 13)."""
    (isolated / ".env").write_text(SEED_ENV)
    s, fb = load_settings(), FusionBrainSettings()
    assert fb.fusion_brain_api_key is None and fb.fusion_brain_secret_key is None
    assert not fb.configured and not s.database_configured
    assert (s.db_host, s.db_name, s.db_password) == (None, None, None)
    assert s.db_conn_max_lifetime == 300  # everything else still loads


def test_defaults_are_the_seeds(isolated):
    s = load_settings()
    assert s.default_image_width == 1024 and s.default_image_height == 1024
    assert s.default_style == "ANIME" and s.default_num_images == 1
    assert s.default_negative_prompt == SEED_NEGATIVE_PROMPT
    assert (s.default_generation_timeout, s.default_check_interval, s.default_max_attempts) == (
        300,
        2,
        30,
    )
    assert (
        s.db_port,
        s.db_ssl_mode,
        s.db_max_open_conns,
        s.db_max_idle_conns,
        s.db_conn_max_lifetime,
    ) == (5432, "disable", 25, 25, 300)
    fb = FusionBrainSettings()
    assert str(fb.fusion_brain_url) == "https://api-key.fusionbrain.ai/"
    assert (s.generator_sweep_interval, s.processor_sweep_interval) == (300, 600)
    assert not s.database_configured and not fb.configured
    # Unset: the provider's own defaults (Fusion Brain 8 and 1)
    assert s.api_concurrency is None and s.unknown_outcome_resends is None
    assert s.image_provider is None


def test_database_url_wins_over_db_variables(isolated, monkeypatch):
    monkeypatch.setenv("DB_HOST", "elsewhere")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:pw@db.example:6543/images")
    info = load_settings().conninfo()
    assert "db.example" in info and "elsewhere" not in info


def test_secrets_never_shown(isolated, monkeypatch):
    monkeypatch.setenv("FUSION_BRAIN_API_KEY", "KEY-s3cr3t-1")
    monkeypatch.setenv("FUSION_BRAIN_SECRET_KEY", "SECRET-s3cr3t-2")
    monkeypatch.setenv("DB_PASSWORD", "PW-s3cr3t-3")
    s, fb = load_settings(), FusionBrainSettings()
    shown = repr(s) + str(s) + str(s.model_dump()) + repr(fb) + str(fb.model_dump())
    for secret in ("KEY-s3cr3t-1", "SECRET-s3cr3t-2", "PW-s3cr3t-3"):
        assert secret not in shown
    assert s.secrets() == ["PW-s3cr3t-3"]
    assert sorted(fb.secrets()) == ["KEY-s3cr3t-1", "SECRET-s3cr3t-2"]


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("DB_PORT", "abc", "DB_PORT"),
        ("DEFAULT_IMAGE_WIDTH", "0", "DEFAULT_IMAGE_WIDTH"),
        ("DEFAULT_IMAGE_WIDTH", "5000", "DEFAULT_IMAGE_WIDTH"),
        ("DEFAULT_NUM_IMAGES", "3", "exactly 1 image"),
        ("DEFAULT_CHECK_INTERVAL", "-1", "DEFAULT_CHECK_INTERVAL"),
        ("DATABASE_URL", "postgresql://u:hunter2@[broken", "DATABASE_URL"),
        ("DB_SSL_MODE", "sometimes", "DB_SSL_MODE"),
    ],
)
def test_bad_value_stops_startup_with_one_line(tmp_path, variable, value, expected):
    result = run_listener("migrate", env=clean_env(**{variable: value}), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0] and expected in lines[0]
    assert "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr


def test_config_error_names_every_bad_variable(isolated, monkeypatch):
    monkeypatch.setenv("DB_PORT", "abc")
    monkeypatch.setenv("DEFAULT_MAX_ATTEMPTS", "0")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "DB_PORT" in info.value.message and "DEFAULT_MAX_ATTEMPTS" in info.value.message
