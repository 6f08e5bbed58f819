"""The provider registry: a provider is one package and one line; IMAGE_PROVIDER chooses,
else the one whose credentials are set (in registry order), else the default."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from listener.errors import ConfigError
from listener.providers import registry
from tests.helpers import CONFIG_PREFIXES


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    for key in list(os.environ):
        if key.startswith((*CONFIG_PREFIXES, "FAKEPIX_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    # one more registry line: a third provider (tests/providers_fake)
    providers = {**registry.PROVIDERS, "fakepix": "tests.providers_fake.spec:SPEC"}
    monkeypatch.setattr(registry, "PROVIDERS", providers)
    monkeypatch.setattr(registry, "_loaded", {})
    return tmp_path


def test_with_nothing_set_the_default_is_chosen(isolated):
    choice = registry.choose(None)
    assert (choice.spec.name, choice.why, choice.configured) == (
        "fusionbrain",
        "the default",
        False,
    )


def test_the_provider_whose_credentials_are_set_is_chosen(isolated, monkeypatch):
    monkeypatch.setenv("FAKEPIX_KEY", "k")
    choice = registry.choose(None)
    assert choice.spec.name == "fakepix" and choice.configured
    assert choice.why == "IMAGE_PROVIDER is unset and only its credentials are set"
    assert choice.spec.secrets(choice.settings) == ["k"]


def test_an_existing_fusion_brain_setup_keeps_fusion_brain(isolated, monkeypatch):
    """Both keys set and IMAGE_PROVIDER unset: the first in registry order, Fusion Brain,
    as before the second provider existed."""
    monkeypatch.setenv("FAKEPIX_KEY", "k")
    monkeypatch.setenv("FUSION_BRAIN_API_KEY", "fb")
    monkeypatch.setenv("FUSION_BRAIN_SECRET_KEY", "fs")
    assert registry.choose(None).spec.name == "fusionbrain"


def test_image_provider_wins(isolated, monkeypatch):
    monkeypatch.setenv("FUSION_BRAIN_API_KEY", "fb")
    choice = registry.choose("fakepix")
    assert (choice.spec.name, choice.why, choice.configured) == (
        "fakepix",
        "IMAGE_PROVIDER=fakepix",
        False,
    )


def test_an_unknown_name_is_a_configuration_error_listing_the_known(isolated):
    with pytest.raises(ConfigError, match="IMAGE_PROVIDER: 'dalle' is not a provider") as info:
        registry.choose("dalle")
    assert "fusionbrain" in info.value.message and "fakepix" in info.value.message


def test_a_registry_line_whose_package_is_not_installed_is_skipped_when_choosing(
    isolated, monkeypatch
):
    providers = {**registry.PROVIDERS, "absent": "listener.providers.absent.spec:SPEC"}
    monkeypatch.setattr(registry, "PROVIDERS", providers)
    assert "absent" not in registry.available()
    assert registry.choose(None).spec.name == "fusionbrain"


def test_each_provider_declares_its_defaults(isolated):
    fb = registry.spec("fusionbrain")
    assert (fb.traits.default_concurrency, fb.traits.unknown_outcome_resends) == (8, 1)
    assert fb.traits.honours_size
    assert registry.spec("fakepix").traits.default_concurrency == 2


def test_a_provider_whose_package_is_absent_is_named_when_asked_for(isolated, monkeypatch):
    providers = {**registry.PROVIDERS, "absent": "listener.providers.absent.spec:SPEC"}
    monkeypatch.setattr(registry, "PROVIDERS", providers)
    with pytest.raises(ConfigError, match="'absent' is registered but its package"):
        registry.choose("absent")


def test_no_provider_package_imports_another():
    """A provider is one package: what two emulators share lives in
    listener/providers/emulator_kit, never in one provider's package used by another."""
    root = Path(registry.__file__).parent
    names = set(registry.PROVIDERS)
    crossing = []
    for name in sorted(names):
        for path in sorted((root / name).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module:
                    modules = [node.module]
                elif isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                else:
                    continue
                for module in modules:
                    inside = module.removeprefix("listener.providers.").split(".")[0]
                    if module.startswith("listener.providers.") and inside in names - {name}:
                        crossing.append(f"{path.relative_to(root)}: {module}")
    assert crossing == []


def test_the_service_path_imports_no_emulator():
    """The CLI, the service and every provider's spec leave the emulators' servers,
    apps and the shared kit's modules (hypercorn among them) unimported."""
    code = (
        "import sys, listener.cli, listener.service, listener.commands.run\n"
        "from listener.providers import registry\n"
        "[registry.spec(n) for n in registry.names()]\n"
        "bad = [m for m in sys.modules if m.split('.')[0] == 'hypercorn'"
        " or m.startswith('listener.providers.emulator_kit.')"
        " or m.split('.')[-1] in ('app', 'server', 'state', 'images', 'control')"
        " and '.emulator.' in m]\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
