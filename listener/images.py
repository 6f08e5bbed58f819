"""An image from the API is checked before anything publishes it.

The API's `files` entry is meant to be raw base64 of a PNG (JPEG before mid-2025; GigaChat
draws JPEGs). What arrives could be empty, an HTML error page in base64, a file cut short,
or a header that claims 50000 x 50000 pixels: none of these may become a `ReadyToPublish`
row or an exported file. `validate_image` decodes the base64 strictly, then reads the
file's structure, never a pixel, so it costs microseconds and needs no image library:

* PNG: the signature, IHDR first (its size and a valid bit depth / colour type), every
  chunk whole with its CRC right, at least one IDAT, and IEND (what Pillow's `verify`
  checked before);
* JPEG: the SOI marker, the marker segments up to the start of scan with a frame header
  (SOFn: the size) among them, and the end-of-image marker after the scan (a file cut
  short has none: entropy-coded data cannot hold FF D9).

A size above MAX_PIXELS is refused as a decompression bomb before anything else about it.
Pillow is for what really decodes pixels (the gallery's thumbnails, the emulators).
"""

from __future__ import annotations

import base64
import binascii
import struct
import zlib
from dataclasses import dataclass

from listener.errors import InvalidImage

MAX_SIDE = 4096
# 4096 x 4096 covers every size the API can produce; more is refused as a bomb.
MAX_PIXELS = MAX_SIDE * MAX_SIDE
FORMATS = {"PNG": "png", "JPEG": "jpeg"}

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8\xff"
# PNG bit depths allowed per colour type (PNG spec, 11.2.2).
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
# JPEG frame headers: SOF0-SOF15 less DHT (C4), JPG (C8) and DAC (CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Codes read as no marker (a stuffed 0x00) or as one without a length: TEM, RST0-RST7,
# SOI, EOI.
_JPEG_BARE = frozenset({0x00, 0x01, *range(0xD0, 0xDA)})
_JPEG_SOS, _JPEG_EOI = 0xDA, 0xD9


@dataclass(frozen=True)
class ImageInfo:
    format: str  # "png" or "jpeg"
    width: int
    height: int
    bytes: int  # size of the decoded file


def decode_base64(b64: str) -> bytes:
    """Strict base64 (the standard alphabet, padding required, no `data:` prefix, no
    whitespace); InvalidImage otherwise."""
    if not isinstance(b64, str):
        raise InvalidImage("not a base64 string")
    if not b64:
        raise InvalidImage("empty")
    try:
        return base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage("not valid base64") from None


def inspect_image(data: bytes, *, expected_size: tuple[int, int] | None = None) -> ImageInfo:
    """Identify decoded image bytes as a whole PNG or JPEG of sane dimensions (see module)."""
    if not data:
        raise InvalidImage("empty")
    if data.startswith(PNG_SIGNATURE):
        kind, (width, height) = "png", _png(data, expected_size)
    elif data.startswith(JPEG_SOI):
        kind, (width, height) = "jpeg", _jpeg(data, expected_size)
    else:
        raise InvalidImage(f"not a PNG or JPEG (starts {_magic(data)})")
    return ImageInfo(kind, width, height, len(data))


def validate_image(b64: str, *, expected_size: tuple[int, int] | None = None) -> ImageInfo:
    """What the API sent, checked: InvalidImage (with a short reason) unless it is strict
    base64 of a PNG or JPEG, at most 4096 per side, and of `expected_size` when given."""
    return inspect_image(decode_base64(b64), expected_size=expected_size)


def _check_size(width: int, height: int, expected: tuple[int, int] | None) -> None:
    """Checked as soon as the header is read, before the rest of the file (as before)."""
    if width * height > MAX_PIXELS:
        raise InvalidImage("too many pixels (decompression bomb)")
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise InvalidImage(f"{width}x{height} is outside 1 to {MAX_SIDE} per side")
    if expected is not None and (width, height) != tuple(expected):
        raise InvalidImage(f"{width}x{height} where {expected[0]}x{expected[1]} was asked for")


def _png(data: bytes, expected: tuple[int, int] | None) -> tuple[int, int]:
    """(width, height) of a whole PNG: every chunk's length and CRC walked, in C per chunk
    (zlib.crc32 over a memoryview: nothing copied)."""
    view = memoryview(data)
    end = len(data)
    at = len(PNG_SIGNATURE)
    if data[at : at + 8] != b"\x00\x00\x00\x0dIHDR":
        raise InvalidImage(f"not a PNG or JPEG (starts {_magic(data)})")
    size: tuple[int, int] | None = None
    image_data = False
    while True:
        if at + 12 > end:
            raise InvalidImage("damaged PNG (truncated)")
        length, kind = struct.unpack_from(">I4s", data, at)
        stop = at + 8 + length
        if length > 0x7FFFFFFF or stop + 4 > end:
            raise InvalidImage("damaged PNG (truncated)")
        if not kind.isalpha():
            raise InvalidImage("damaged PNG (a chunk is not one)")
        (crc,) = struct.unpack_from(">I", data, stop)
        if zlib.crc32(view[at + 4 : stop]) != crc:
            raise InvalidImage("damaged PNG (CRC)")
        if size is None:
            size = _png_header(data, at + 8)
            _check_size(*size, expected)
        elif kind == b"IDAT":
            image_data = True
        elif kind == b"IEND":
            break
        at = stop + 4
    if not image_data:
        raise InvalidImage("damaged PNG (no image data)")
    assert size is not None  # the first chunk is IHDR (checked above)
    return size


def _png_header(data: bytes, at: int) -> tuple[int, int]:
    width, height, depth, colour, compression, filtering, interlace = struct.unpack_from(
        ">IIBBBBB", data, at
    )
    if (
        depth not in _PNG_DEPTHS.get(colour, ())
        or compression
        or filtering
        or interlace not in (0, 1)
        or width > 0x7FFFFFFF
        or height > 0x7FFFFFFF
    ):
        raise InvalidImage("damaged PNG (IHDR)")
    return width, height


def _jpeg(data: bytes, expected: tuple[int, int] | None) -> tuple[int, int]:
    """(width, height) from the frame header of a JPEG whose marker segments are whole up
    to the start of scan and whose end-of-image marker follows the scan."""
    end = len(data)
    at = 2
    size: tuple[int, int] | None = None
    while True:
        # A marker: 0xFF, any number of 0xFF fill bytes, the marker's code. Bytes that are
        # no marker are skipped between segments, as Pillow (and libjpeg) do.
        at = data.find(b"\xff", at)
        if at < 0:
            raise InvalidImage("damaged JPEG (truncated)")
        while at < end and data[at] == 0xFF:
            at += 1
        if at >= end:
            raise InvalidImage("damaged JPEG (truncated)")
        code = data[at]
        at += 1
        if code in _JPEG_BARE:
            continue
        if code < 0xC0:
            raise InvalidImage(f"damaged JPEG (marker {code:02X} where a segment belongs)")
        if at + 2 > end:
            raise InvalidImage("damaged JPEG (truncated)")
        (length,) = struct.unpack_from(">H", data, at)
        if length < 2 or at + length > end:
            raise InvalidImage("damaged JPEG (truncated)")
        if code in _JPEG_SOF:
            if length < 8:
                raise InvalidImage("damaged JPEG (frame header)")
            height, width = struct.unpack_from(">HH", data, at + 3)
            size = (width, height)
            _check_size(width, height, expected)
        at += length
        if code == _JPEG_SOS:
            break
    if size is None:
        raise InvalidImage("damaged JPEG (no frame header)")
    if data.find(b"\xff\xd9", at) < 0:
        raise InvalidImage("damaged JPEG (truncated: no end of image)")
    return size


def _magic(data: bytes) -> str:
    """The first bytes, printable, for a reason line ("<!doct", "\\x00\\x01")."""
    head = data[:6]
    return "".join(chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}" for b in head)
