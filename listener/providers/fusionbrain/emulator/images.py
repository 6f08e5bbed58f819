"""Real images for the emulator: a PNG of the requested size, derived from the prompt.

A gradient between two colours chosen by a hash of (prompt, style), with the prompt's
words written on it, so that a human looking at a result can tell which row it belongs to
and a test can tell two prompts apart. The same (prompt, width, height, style) always
gives the same bytes. Results are cached and PNG compression is kept at its cheapest
level, so making images is never what limits the emulator.
"""

from __future__ import annotations

import base64
import hashlib
import io
import textwrap
from collections import OrderedDict
from functools import lru_cache

import trio
from PIL import Image, ImageDraw, ImageFont

# Above this many pixels an image is made in a worker thread, off the event loop.
BIG_IMAGE_PIXELS = 256 * 256


def _colours(prompt: str, style: str) -> tuple[tuple[int, int, int], tuple[int, int, int], int]:
    digest = hashlib.sha256(f"{style}\x00{prompt}".encode()).digest()
    first = (digest[0], digest[1], digest[2])
    second = (digest[3], digest[4], digest[5])
    angle = (0, 90, 180, 270)[digest[6] % 4]
    return first, second, angle


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def render_png(prompt: str, width: int, height: int, style: str = "DEFAULT") -> bytes:
    """The PNG bytes of the image for this request (deterministic)."""
    first, second, angle = _colours(prompt, style)
    mask = Image.linear_gradient("L").rotate(angle).resize((width, height))
    image = Image.composite(
        Image.new("RGB", (width, height), first), Image.new("RGB", (width, height), second), mask
    )
    if width >= 16 and height >= 10:
        size = max(8, min(48, height // 12, width // 16))
        font = _font(size)
        draw = ImageDraw.Draw(image)
        mean = [(a + b) / 2 for a, b in zip(first, second, strict=True)]
        light = 0.299 * mean[0] + 0.587 * mean[1] + 0.114 * mean[2] > 128
        ink = (0, 0, 0) if light else (255, 255, 255)
        columns = max(1, (width - 2 * (size // 2)) * 2 // size)
        lines = textwrap.wrap(prompt, columns)[: max(1, height // (size + 2))]
        y = size // 2
        for line in lines:
            draw.text((size // 2, y), line, fill=ink, font=font)
            y += size + 2
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


class ImageCache:
    """The last `size` images, base64 encoded the way the API sends them (no `data:`)."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, int, int, str], str] = OrderedDict()

    def clear(self) -> None:
        self._items.clear()

    async def get(self, prompt: str, width: int, height: int, style: str) -> str:
        key = (prompt, width, height, style)
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
            return found
        if width * height > BIG_IMAGE_PIXELS:
            made = await trio.to_thread.run_sync(image_b64, *key)
        else:
            made = image_b64(*key)
        self._items[key] = made
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return made


def image_b64(prompt: str, width: int, height: int, style: str = "DEFAULT") -> str:
    """The image as the API sends it: raw base64 of the PNG."""
    return base64.b64encode(render_png(prompt, width, height, style)).decode("ascii")
