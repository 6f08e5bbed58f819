"""Thumbnails: made with Pillow from a row's image, kept in memory within a fixed budget.

A thumbnail is a JPEG at most THUMB_SIDE pixels on its longer side (10-20 KB), keyed by
the row's id and the version of its image (its updated_at), so a retried row never
shows an old picture. The cache is an LRU bounded in bytes by HTTP_THUMBNAIL_CACHE_MB
(default 16 MiB: about a thousand thumbnails); it is part of the process's memory budget.
Decoding runs in a worker thread; the image's format (PNG or JPEG) is read from its bytes.
Pillow is imported at the first image shown, not with the server: a listener whose
gallery nobody opens does not hold it.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections import OrderedDict
from dataclasses import dataclass

from listener.errors import InvalidImage

THUMB_SIDE = 320
MAX_PIXELS = 4096 * 4096  # far above what a provider returns; a bomb is refused
FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg"}


@dataclass(frozen=True)
class Picture:
    """An image's bytes with what its header says."""

    data: bytes
    media_type: str
    width: int
    height: int


@dataclass(frozen=True)
class Thumb:
    data: bytes
    width: int  # of the original image
    height: int
    media_type: str  # of the original image


def sniff(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    return None


def decode(text: str) -> Picture:
    """The row's base64 as a PNG or JPEG, checked by its header (no full decode)."""
    if text.startswith("data:") and "," in text[:100]:
        text = text.split(",", 1)[1]
    try:
        data = base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError):
        raise InvalidImage("the base64 column is not valid base64") from None
    media_type = sniff(data)
    if media_type is None:
        raise InvalidImage("neither PNG nor JPEG")
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=list(FORMATS)) as im:
            width, height = im.size
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidImage(f"unreadable image: {exc}") from None
    if width * height > MAX_PIXELS:
        raise InvalidImage(f"{width}x{height} is too large to show")
    return Picture(data, media_type, width, height)


def make_thumb(text: str) -> Thumb:
    """Blocking (Pillow decodes the whole image): run it in a worker thread."""
    picture = decode(text)
    from PIL import Image

    try:
        with Image.open(io.BytesIO(picture.data), formats=list(FORMATS)) as source:
            source.draft("RGB", (THUMB_SIDE, THUMB_SIDE))  # JPEG: decode at a smaller scale
            small = source.convert("RGB")
            small.thumbnail((THUMB_SIDE, THUMB_SIDE))
            out = io.BytesIO()
            small.save(out, "JPEG", quality=80, optimize=True)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidImage(f"unreadable image: {exc}") from None
    return Thumb(out.getvalue(), picture.width, picture.height, picture.media_type)


class ThumbCache:
    """LRU of thumbnails, bounded by the total of their bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[tuple[int, str], Thumb] = OrderedDict()
        self._latest: dict[int, str] = {}  # id -> the version cached

    def __len__(self) -> int:
        return len(self._items)

    def get(self, id_: int, version: str) -> Thumb | None:
        thumb = self._items.get((id_, version))
        if thumb is not None:
            self._items.move_to_end((id_, version))
        return thumb

    def known(self, id_: int) -> Thumb | None:
        """The latest cached thumbnail of a row, whatever its version (sizes on cards)."""
        version = self._latest.get(id_)
        return None if version is None else self._items.get((id_, version))

    def put(self, id_: int, version: str, thumb: Thumb) -> None:
        if len(thumb.data) > self.max_bytes:
            return
        old = self._latest.get(id_)
        if old is not None:
            self._drop((id_, old))
        self._items[(id_, version)] = thumb
        self._latest[id_] = version
        self.bytes += len(thumb.data)
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._items)))

    def _drop(self, key: tuple[int, str]) -> None:
        thumb = self._items.pop(key, None)
        if thumb is not None:
            self.bytes -= len(thumb.data)
            if self._latest.get(key[0]) == key[1]:
                del self._latest[key[0]]
