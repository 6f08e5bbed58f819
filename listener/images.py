"""An image from the API is checked before anything publishes it.

The API's `files` entry is meant to be raw base64 of a PNG (JPEG before mid-2025). What
arrives could be empty, an HTML error page in base64, or a header that claims 50000 x
50000 pixels: none of these may become a `ReadyToPublish` row or an exported file.
`validate_image` decodes the base64 strictly and lets Pillow identify the format and
read the dimensions from the header, without decoding a single pixel (`Image.open` +
`verify`), under a decompression-bomb limit set here, low and explicit.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from listener.errors import InvalidImage

MAX_SIDE = 4096
# Pillow refuses (DecompressionBombError) above twice this, warns above it; both are
# treated as invalid here. 4096 x 4096 covers every size the API can produce.
MAX_PIXELS = MAX_SIDE * MAX_SIDE
FORMATS = {"PNG": "png", "JPEG": "jpeg"}

Image.MAX_IMAGE_PIXELS = MAX_PIXELS


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
    """Identify decoded image bytes as a PNG or JPEG of sane dimensions (see module)."""
    if not data:
        raise InvalidImage("empty")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=tuple(FORMATS)) as image:
                kind, (width, height) = image.format, image.size
                _check_size(width, height, expected_size)
                image.verify()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise InvalidImage("too many pixels (decompression bomb)") from None
        except UnidentifiedImageError:
            raise InvalidImage(f"not a PNG or JPEG (starts {_magic(data)})") from None
        except InvalidImage:
            raise
        except Exception as exc:  # noqa: BLE001 - any decoder complaint means invalid
            raise InvalidImage(f"damaged {_format_name(data)} ({type(exc).__name__})") from None
    if kind not in FORMATS:
        raise InvalidImage(f"not a PNG or JPEG ({kind})")
    return ImageInfo(FORMATS[kind], width, height, len(data))


def _check_size(width: int, height: int, expected: tuple[int, int] | None) -> None:
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise InvalidImage(f"{width}x{height} is outside 1 to {MAX_SIDE} per side")
    if expected is not None and (width, height) != tuple(expected):
        raise InvalidImage(f"{width}x{height} where {expected[0]}x{expected[1]} was asked for")


def validate_image(b64: str, *, expected_size: tuple[int, int] | None = None) -> ImageInfo:
    """What the API sent, checked: InvalidImage (with a short reason) unless it is strict
    base64 of a PNG or JPEG, at most 4096 per side, and of `expected_size` when given."""
    return inspect_image(decode_base64(b64), expected_size=expected_size)


def _format_name(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "PNG"
    if data.startswith(b"\xff\xd8"):
        return "JPEG"
    return "image"


def _magic(data: bytes) -> str:
    """The first bytes, printable, for a reason line ("<!doct", "\\x00\\x01")."""
    head = data[:6]
    return "".join(chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}" for b in head)
