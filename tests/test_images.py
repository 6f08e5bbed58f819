"""listener.images: what counts as an image the listener may publish or export."""

from __future__ import annotations

import base64
import io
import struct
import subprocess
import sys
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


def raw(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def jpeg_with_size(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header is rewritten to claim another size."""
    data = bytearray(raw(Image.new("RGB", (16, 16), "blue"), "JPEG"))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def pictures() -> list[tuple[str, bytes]]:
    """What Pillow writes, in the shapes a provider may send: every PNG colour type and
    depth, interlaced, JPEG baseline, progressive, greyscale, CMYK, with an EXIF block."""
    rgb = Image.new("RGB", (48, 20), "red")
    exif = Image.Exif()
    exif[0x010F] = "camera"
    return [
        ("png 1-bit", raw(rgb.convert("1"), "PNG")),
        ("png grey", raw(rgb.convert("L"), "PNG")),
        ("png grey+alpha", raw(rgb.convert("LA"), "PNG")),
        ("png palette", raw(rgb.convert("P"), "PNG")),
        ("png rgb", raw(rgb, "PNG")),
        ("png rgba", raw(rgb.convert("RGBA"), "PNG")),
        ("png 16-bit", raw(rgb.convert("I;16"), "PNG")),
        ("png interlaced", raw(rgb, "PNG", interlace=1)),
        ("png with text", raw(rgb, "PNG", pnginfo=_text_chunk())),
        ("jpeg", raw(rgb, "JPEG")),
        ("jpeg progressive", raw(rgb, "JPEG", progressive=True)),
        ("jpeg grey", raw(rgb.convert("L"), "JPEG")),
        ("jpeg cmyk", raw(rgb.convert("CMYK"), "JPEG")),
        ("jpeg exif", raw(rgb, "JPEG", exif=exif.tobytes())),
        ("jpeg restart markers", raw(rgb, "JPEG", restart_marker_blocks=1)),
    ]


def _text_chunk():  # type: ignore[no-untyped-def]
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "drawn by the emulator")
    return info


def test_the_emulators_png_is_valid_with_its_size() -> None:
    info = validate_image(image_b64("a red fox", 128, 64), expected_size=(128, 64))
    assert info == ImageInfo("png", 128, 64, info.bytes)
    assert info.bytes > 0


def test_a_jpeg_is_valid() -> None:
    info = validate_image(encoded(Image.new("RGB", (64, 32), "red"), "JPEG"), expected_size=None)
    assert (info.format, info.width, info.height) == ("jpeg", 64, 32)


def test_the_bomb_limit_is_set_low_and_explicit() -> None:
    """The header check holds the limit itself (Pillow is not involved): 4096 x 4096 is
    the most, read from the header without decoding a pixel."""
    assert MAX_PIXELS == 4096 * 4096
    info = validate_image(b64(png_header(4096, 4096)), expected_size=None)
    assert (info.width, info.height) == (4096, 4096)
    with pytest.raises(InvalidImage, match="too many pixels"):
        validate_image(b64(png_header(4096, 4097)), expected_size=None)
    with pytest.raises(InvalidImage, match="too many pixels"):
        validate_image(b64(jpeg_with_size(65535, 65535)), expected_size=None)


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


@pytest.mark.parametrize(("name", "data"), pictures(), ids=[n for n, _ in pictures()])
def test_the_header_check_accepts_what_pillow_reads_with_its_size(name: str, data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as image:
        size, kind = image.size, image.format.lower()
    info = validate_image(b64(data), expected_size=size)
    assert (info.format, info.width, info.height, info.bytes) == (kind, *size, len(data))


@pytest.mark.parametrize(("name", "data"), pictures(), ids=[n for n, _ in pictures()])
def test_every_cut_of_an_image_is_refused(name: str, data: bytes) -> None:
    """A file cut short anywhere (a dropped connection, a capped body) is never taken for
    an image: the PNG's chunks or the JPEG's segments and end marker say it is whole."""
    kind = "PNG" if data.startswith(b"\x89PNG") else "JPEG"
    cuts = {*range(1, 64), *range(64, len(data), max(1, len(data) // 97)), len(data) - 1}
    for cut in sorted(c for c in cuts if 0 < c < len(data)):
        with pytest.raises(InvalidImage) as refused:
            validate_image(b64(data[:cut]), expected_size=None)
        assert f"damaged {kind}" in refused.value.message or "not a PNG or JPEG" in (
            refused.value.message
        ), (cut, refused.value.message)


def test_a_damaged_png_chunk_is_refused() -> None:
    data = bytearray(raw(Image.new("RGB", (32, 32), "green"), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 6] ^= 0x01  # one bit of the compressed pixels
    with pytest.raises(InvalidImage, match=r"damaged PNG \(CRC\)"):
        validate_image(b64(bytes(data)), expected_size=None)


def test_a_png_header_no_decoder_could_read_is_refused() -> None:
    data = bytearray(png_header(64, 64))
    data[8 + 8 + 8] = 3  # a bit depth of 3
    struct.pack_into(">I", data, 8 + 8 + 13, zlib.crc32(bytes(data[12 : 12 + 17])))
    with pytest.raises(InvalidImage, match="damaged PNG"):
        validate_image(b64(bytes(data)), expected_size=None)


def test_jpeg_sizes_come_from_the_frame_header() -> None:
    with pytest.raises(InvalidImage, match="outside 1 to 4096"):
        validate_image(b64(jpeg_with_size(5000, 64)), expected_size=None)
    with pytest.raises(InvalidImage, match="outside 1 to 4096"):
        validate_image(b64(jpeg_with_size(64, 0)), expected_size=None)
    with pytest.raises(InvalidImage, match="64x32 where 64x64 was asked for"):
        validate_image(b64(raw(Image.new("RGB", (64, 32)), "JPEG")), expected_size=(64, 64))


def test_a_jpeg_without_a_frame_header_or_an_end_is_refused() -> None:
    data = raw(Image.new("RGB", (16, 16), "blue"), "JPEG")
    sof = data.index(b"\xff\xc0")
    length = struct.unpack_from(">H", data, sof + 2)[0]
    without_sof = data[:sof] + data[sof + 2 + length :]
    with pytest.raises(InvalidImage, match="no frame header"):
        validate_image(b64(without_sof), expected_size=None)
    with pytest.raises(InvalidImage, match="no end of image"):
        validate_image(b64(data[:-2]), expected_size=None)


def test_bytes_after_the_end_of_an_image_are_tolerated_as_before() -> None:
    """Pillow accepted trailing bytes after IEND / EOI; so does the header check."""
    for fmt in ("PNG", "JPEG"):
        data = raw(Image.new("RGB", (16, 8), "blue"), fmt) + b"\x00\x00trailer"
        assert validate_image(b64(data), expected_size=(16, 8)).width == 16


def test_checking_an_image_needs_no_image_library() -> None:
    """The service's path never imports Pillow: the check reads headers only."""
    code = (
        "import sys, listener.images, listener.service;sys.exit(1 if 'PIL' in sys.modules else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
