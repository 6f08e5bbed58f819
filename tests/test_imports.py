"""What the long-running service imports: the hot path and its command line pull in none of
the optional parts (they cost memory for the process's whole life: docs/performance.md)."""

from __future__ import annotations

import subprocess
import sys

# Imported only where used: image decoding (thumbnails, emulators), the embedded
# database, the emulators, the web server and its parts, the other subcommands.
OPTIONAL = (
    "PIL",
    "pgserver",
    "starlette",
    "hypercorn",
    "jinja2",
    "prometheus_client",
    "listener.web.app",
    "listener.web.runtime",
    "listener.providers.fusionbrain.emulator",
    "listener.providers.gigachat.emulator",
    "listener.commands.export",
    "listener.commands.emulator",
    "listener.commands.status",
    "listener.operator",
)

SERVICE = """
import sys
from listener.cli import build_parser, needed
build_parser(needed({argv!r})).parse_args({argv!r})
import listener.service, listener.commands.run, listener.commands.common
from listener.providers import registry
for name in registry.names():
    spec = registry.spec(name)
    spec.load_settings(env_file=None)
import listener.providers.fusionbrain.provider, listener.providers.gigachat.provider
optional = {optional!r}
loaded = sorted(m for m in sys.modules if m in optional or m.startswith(tuple(o + "." for o in optional)))
print(loaded)
sys.exit(1 if loaded else 0)
"""


def loads(argv: list[str]) -> subprocess.CompletedProcess[str]:
    code = SERVICE.format(argv=argv, optional=OPTIONAL)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_the_service_imports_none_of_the_optional_parts():
    for argv in ([], ["-generator", "--http", "127.0.0.1:0"], ["run", "-cron"]):
        done = loads(argv)
        assert done.returncode == 0, (argv, done.stdout, done.stderr)


def test_the_check_itself_sees_an_optional_import():
    """Another subcommand's command line does load them: the check can fail."""
    done = loads(["status"])
    assert done.returncode == 1
    assert "listener.commands.export" in done.stdout


def test_the_web_server_does_not_hold_pillow_until_an_image_is_shown():
    code = (
        "import sys, listener.web.runtime, listener.web.app;"
        "sys.exit(1 if any(m.split('.')[0] == 'PIL' for m in sys.modules) else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_web_server_imports_jinja2_only_for_its_first_page():
    """/metrics and the probes need no templates: Jinja2 is imported by the first page."""
    code = (
        "import sys, listener.web.runtime, listener.web.app as app;"
        "views = app.Views(None);"
        "before = 'jinja2' in sys.modules;"
        "views.templates.get_template('gallery.html');"
        "sys.exit(10 * before + ('jinja2' not in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, (done.returncode, done.stderr)
