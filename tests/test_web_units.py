"""The HTTP server's parts on their own: settings, reason classes, thumbnails, the live
comparison, systemd's datagrams. Milliseconds each; the process tests are test_web.py."""

from __future__ import annotations

import base64
import io
import socket
from datetime import UTC, datetime

import pytest
from PIL import Image

from listener.config import load_settings
from listener.engine.follow import Follow
from listener.engine.runs import Runs
from listener.errors import ConfigError, InvalidImage
from listener.sdnotify import Notifier
from listener.web.live import MAX_PENDING, Live, Subscriber
from listener.web.metrics import REASONS, reason_class
from listener.web.settings import load_http_settings, parse_address
from listener.web.thumbs import THUMB_SIDE, Thumb, ThumbCache, make_thumb

TOKEN = "0123456789abcdef-token"


# -- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8090", ("127.0.0.1", 8090)),
        ("8090", ("127.0.0.1", 8090)),
        (":0", ("127.0.0.1", 0)),
        ("[::1]:9000", ("::1", 9000)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_addresses(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1", "host:99999", "a b:80", "[::1]", "x/y:80"])
def test_bad_addresses_are_refused_naming_the_variable(text):
    with pytest.raises(ConfigError, match="HTTP_ADDRESS"):
        load_http_settings(env_file=None, http_address=text)


def test_loopback_needs_nothing_else_and_is_off_by_default():
    assert not load_http_settings(env_file=None).enabled
    http = load_http_settings(env_file=None, address="127.0.0.1:0")
    assert http.enabled and http.loopback and not http.reads_need_token


def test_a_token_is_never_echoed_in_an_error():
    with pytest.raises(ConfigError) as caught:
        load_http_settings(env_file=None, http_token="short-secret")
    assert "short-secret" not in caught.value.message
    assert "HTTP_TOKEN" in caught.value.message


def test_remote_reads_need_the_token_unless_public():
    remote = {"http_allow_remote": True, "http_token": TOKEN, "http_hosts": "a.example"}
    http = load_http_settings(env_file=None, address="0.0.0.0:80", **remote)
    assert http.reads_need_token and http.hosts == ["a.example"]
    public = load_http_settings(env_file=None, address="10.1.2.3:80", http_public=True, **remote)
    assert not public.reads_need_token
    assert TOKEN in public.secrets()


# -- reason classes: the engine's own texts --------------------------------------------------


def test_every_failure_the_engine_writes_has_its_class():
    s = load_settings(env_file=None)
    follow = Follow(s, None, None, None, None, None, None)  # type: ignore[arg-type]
    texts = {
        Runs.unknown_reason(None, 2): "unknown_outcome",  # type: ignore[arg-type]
        follow.timeout_reason(False): "timeout",
        follow.timeout_reason(True): "timeout",
        "gave up after 5 attempts: API error": "attempts",
        "blank prompt (not sent)": "blank_prompt",
        "invalid image: not a PNG": "invalid_image",
        "the API no longer knows generation abc (404): expired": "expired",
        "API refused the request: bad style": "refused",
        "generation FAIL: no description": "refused",
        "status check refused: 400": "refused",
        "the API reported DONE without an image": "refused",
        "cancelled by operator": "cancelled",
        "something nobody wrote yet": "other",
    }
    for text, expected in texts.items():
        assert reason_class(text) == expected, text
    assert reason_class("whatever", censored=True) == "censored"
    assert set(texts.values()) | {"censored"} <= set(REASONS)


# -- thumbnails ----------------------------------------------------------------------------


def image_b64(fmt: str, size=(600, 400)) -> str:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(out, fmt)
    return base64.b64encode(out.getvalue()).decode()


@pytest.mark.parametrize(("fmt", "media"), [("PNG", "image/png"), ("JPEG", "image/jpeg")])
def test_thumbnails_of_png_and_jpeg(fmt, media):
    thumb = make_thumb(image_b64(fmt))
    assert (thumb.width, thumb.height, thumb.media_type) == (600, 400, media)
    with Image.open(io.BytesIO(thumb.data)) as im:
        assert im.format == "JPEG" and max(im.size) == THUMB_SIDE


@pytest.mark.parametrize(
    "text", ["not base64 at all!", base64.b64encode(b"GIF89a....").decode(), image_b64("PNG")[:200]]
)
def test_what_is_not_a_png_or_jpeg_gets_no_thumbnail(text):
    with pytest.raises(InvalidImage):
        make_thumb(text)


def test_the_thumbnail_cache_stays_within_its_bytes():
    cache = ThumbCache(max_bytes=1000)
    t = Thumb(b"x" * 300, 1, 1, "image/png")
    for i in range(10):
        cache.put(i, "v1", t)
    assert cache.bytes <= 1000 and len(cache) == 3
    assert cache.get(9, "v1") is t and cache.get(0, "v1") is None
    cache.put(9, "v2", t)  # a new version replaces the old one
    assert cache.get(9, "v1") is None and cache.known(9) is t and cache.bytes <= 1000
    cache.put(11, "v1", Thumb(b"x" * 5000, 1, 1, "image/png"))  # larger than the cache
    assert cache.known(11) is None


# -- live updates --------------------------------------------------------------------------


class FakePages:
    def __init__(self) -> None:
        self.rows: list[dict] = []

    async def fetch(self, name, params=None):
        assert name == "recent_states"
        return sorted(self.rows, key=lambda r: -r["id"])[: params["limit"]]


def state(id_, status, t=0):
    return {"id": id_, "status": status, "updated_at": datetime(2026, 1, 1, 0, 0, t, tzinfo=UTC)}


async def test_the_comparison_hints_new_and_changed_rows():
    pages = FakePages()
    live = Live(pages, polling=False, poll_interval=1)  # type: ignore[arg-type]
    sub = Subscriber()
    live.subscribers.add(sub)
    pages.rows = [state(1, "ReadyToPublish"), state(2, "ReadyToGenerate")]
    await live.look()  # the first look only takes the snapshot
    assert not sub.ready.is_set()
    pages.rows = [state(1, "ReadyToPublish"), state(2, "Generate", 1), state(3, "ReadyToGenerate")]
    await live.look()
    assert sub.take() == {"new": True, "changed": [2], "reload": False}
    await live.look()
    assert not sub.ready.is_set()  # nothing changed, nothing said


def test_a_slow_subscriber_is_told_to_reload_instead_of_piling_up():
    sub = Subscriber()
    sub.tell(False, set(range(MAX_PENDING + 1)))
    assert sub.take() == {"new": False, "changed": [], "reload": True}


# -- systemd -------------------------------------------------------------------------------


def test_notifications_reach_a_socket_we_bind(tmp_path):
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        n = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"})
        assert n.enabled and n.watchdog == 2.0
        assert n.send("READY=1", "STATUS=ready")
        assert sock.recv(100) == b"READY=1\nSTATUS=ready"


def test_abstract_sockets_and_no_systemd(tmp_path):
    name = f"fbl-test-{id(tmp_path)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).send("STOPPING=1")
        assert sock.recv(100) == b"STOPPING=1"
    off = Notifier({})
    assert not off.enabled and not off.send("READY=1")
    other = Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert other.watchdog is None  # the watchdog is another process's
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    assert gone.send("READY=1") is False  # a warning, never an exception
