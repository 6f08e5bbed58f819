"""Checking an image before it is published (the engine's `validate` seam)."""

from __future__ import annotations

import binascii


def validate_image(image: str, expected: tuple[int, int] | None) -> None:
    """Raise ValueError with a short reason when `image` is not a usable image."""
    if not image:
        raise ValueError("empty")
    try:
        binascii.a2b_base64(image, strict_mode=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None
