"""listener.images: what counts as an image the listener may publish or export."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from listener.errors import InvalidImage
from listener.images import MAX_PIXELS, ImageInfo, validate_image
from listener.providers.fusionbrain.emulator.images import image_b64


def encoded(image: Image.Image, fmt: str) -> str:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return base64.b64encode(out.getvalue()).decode()


def png_header(width: int, height: int, *, idat: bool = True) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + (chunk(b"IDAT", zlib.compress(b"")) if idat else b"")
    return b"\x89PNG\r\n\x1a\n" + body + chunk(b"IEND", b"")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_the_emulators_png_is_valid_with_its_size() -> None:
    info = validate_image(image_b64("a red fox", 128, 64), expected_size=(128, 64))
    assert info == ImageInfo("png", 128, 64, info.bytes)
    assert info.bytes > 0


def test_a_jpeg_is_valid() -> None:
    info = validate_image(encoded(Image.new("RGB", (64, 32), "red"), "JPEG"), expected_size=None)
    assert (info.format, info.width, info.height) == ("jpeg", 64, 32)


def test_the_bomb_limit_is_set_low_and_explicit() -> None:
    assert Image.MAX_IMAGE_PIXELS == MAX_PIXELS == 4096 * 4096


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("aGk", "not valid base64"),  # no padding
        ("aGk=\n", "not valid base64"),
        ("data:image/png;base64,aGk=", "not valid base64"),
        ("a-b_", "not valid base64"),  # the URL-safe alphabet
        (b64(b""), "empty"),
        (b64(b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>"), "not a PNG or JPEG"),
        (b64(b"GIF89a" + b"\x00" * 20), "not a PNG or JPEG"),
        (b64(png_header(50000, 50000)), "too many pixels"),
        (b64(png_header(4097, 4097)), "too many pixels"),
        (b64(png_header(5000, 64)), "outside 1 to 4096"),
        (b64(png_header(64, 64, idat=False)), "damaged PNG"),
        (b64(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30), "not a PNG or JPEG"),
    ],
)
def test_invalid_images_are_refused_with_a_short_reason(text: str, reason: str) -> None:
    with pytest.raises(InvalidImage) as refused:
        validate_image(text, expected_size=None)
    assert reason in refused.value.message
    assert len(refused.value.message) < 100


def test_a_gif_or_webp_is_not_an_image_we_publish() -> None:
    with pytest.raises(InvalidImage, match="not a PNG or JPEG"):
        validate_image(encoded(Image.new("RGB", (8, 8)), "GIF"), expected_size=None)
    with pytest.raises(InvalidImage, match="not a PNG or JPEG"):
        validate_image(encoded(Image.new("RGB", (8, 8)), "WEBP"), expected_size=None)


def test_the_size_must_be_the_one_asked_for_when_given() -> None:
    with pytest.raises(InvalidImage, match="128x64 where 64x64 was asked for"):
        validate_image(image_b64("a fox", 128, 64), expected_size=(64, 64))


def test_a_truncated_png_is_damaged() -> None:
    raw = base64.b64decode(image_b64("a fox", 128, 64))
    with pytest.raises(InvalidImage, match="damaged PNG"):
        validate_image(b64(raw[: len(raw) // 2]), expected_size=None)
