"""Real JPEGs for the GigaChat emulator: square, derived from the prompt, cached.

A gradient between two colours chosen by a hash of the prompt, with the prompt's words
on it, so a human can tell which row an image belongs to and a test can tell two
prompts apart. GigaChat chooses the size itself; the emulator draws `image_size` square.
"""

from __future__ import annotations

import hashlib
import io
import textwrap
from collections import OrderedDict

import trio
from PIL import Image, ImageDraw, ImageFont

BIG_IMAGE_PIXELS = 256 * 256


def render_jpeg(prompt: str, size: int) -> bytes:
    digest = hashlib.sha256(prompt.encode("utf-8", "replace")).digest()
    first, second = (digest[0], digest[1], digest[2]), (digest[3], digest[4], digest[5])
    mask = Image.linear_gradient("L").rotate((0, 90, 180, 270)[digest[6] % 4]).resize((size, size))
    image = Image.composite(
        Image.new("RGB", (size, size), first), Image.new("RGB", (size, size), second), mask
    )
    font_size = max(8, min(48, size // 16))
    draw = ImageDraw.Draw(image)
    mean = [(a + b) / 2 for a, b in zip(first, second, strict=True)]
    ink = (0, 0, 0) if 0.299 * mean[0] + 0.587 * mean[1] + 0.114 * mean[2] > 128 else (255,) * 3
    font = ImageFont.load_default(size=font_size)
    y = font_size // 2
    columns = max(1, (size - font_size) * 2 // font_size)
    for line in textwrap.wrap(prompt, columns)[: max(1, size // (font_size + 2))]:
        draw.text((font_size // 2, y), line, fill=ink, font=font)
        y += font_size + 2
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=80)
    return out.getvalue()


class JpegCache:
    """The last `size` images drawn."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, int], bytes] = OrderedDict()

    async def get(self, prompt: str, side: int) -> bytes:
        key = (prompt, side)
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
            return found
        if side * side > BIG_IMAGE_PIXELS:
            made = await trio.to_thread.run_sync(render_jpeg, prompt, side)
        else:
            made = render_jpeg(prompt, side)
        self._items[key] = made
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return made
