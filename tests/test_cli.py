"""The command line keeps the seed's flags as the seed spelled them."""

from __future__ import annotations

import pytest

from listener.cli import build_parser, normalise_go_flags
from tests.helpers import clean_env, run_listener


def test_help_works(tmp_path):
    result = run_listener("--help", env=clean_env(), cwd=tmp_path)
    assert result.returncode == 0
    for flag in ("-generator", "-processor", "-cron", "-verbose", "--once", "migrate"):
        assert flag in result.stdout


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], dict(generator=False, processor=False, cron=False, verbose=False)),
        (["-generator"], dict(generator=True, processor=False)),
        (["--processor", "-verbose"], dict(processor=True, verbose=True)),
        (["-cron"], dict(cron=True)),
        (["-generator=true", "-processor=false"], dict(generator=True, processor=False)),
        (["--once", "--generator"], dict(once=True, generator=True)),
    ],
)
def test_seed_flags(argv, expected):
    args = build_parser().parse_args(
        normalise_go_flags(argv, ("generator", "processor", "cron", "verbose", "once"))
    )
    for key, value in expected.items():
        assert getattr(args, key) is value


def test_unknown_flag_is_refused(tmp_path):
    result = run_listener("-generate", env=clean_env(), cwd=tmp_path)
    assert result.returncode == 2
    assert "unrecognized arguments: -generate" in result.stderr
