"""Digit images from disk as the datasets' 28x28 uint8 arrays.

MNIST, Fashion-MNIST and KMNIST all draw the object bright on a dark background. A photo or drawing of
dark ink on light paper is inverted to that polarity, judged by its border: the border of a digit image
is background.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import GrunetError

SIZE = 28


def load_digit(path: str | Path) -> np.ndarray:
    """Read a PNG or JPEG file as a (28, 28) uint8 array, bright digit on dark background."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise GrunetError(f"{p}: expected a PNG or JPEG image file, got no such file")
    try:
        with Image.open(p) as image:
            fmt = image.format
            if fmt not in ("PNG", "JPEG"):
                raise GrunetError(f"{p}: expected a PNG or JPEG image, got {fmt or 'an unknown'} format")
            gray = image.convert("L").resize((SIZE, SIZE), Image.LANCZOS)
    except (UnidentifiedImageError, OSError) as e:
        raise GrunetError(f"{p}: expected a PNG or JPEG image, got a file that cannot be read as one ({e})") from None
    a = np.array(gray, dtype=np.uint8)  # a writable copy (torch.from_numpy warns on read-only)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return 255 - a if border.mean() > 127 else a
