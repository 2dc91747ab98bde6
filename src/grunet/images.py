"""Digit images from disk, prepared the way MNIST's digits were made: (28, 28) uint8, bright ink on dark.

LeCun, Cortes and Burges made MNIST by fitting each digit into a 20x20 box (aspect ratio kept, anti-aliased
to gray levels) and then centring it in a 28x28 field by its centre of mass. A model trained on those digits
sees nothing else, so a drawing that is merely resized (thin strokes, off centre, large margins) reads as
something it never saw. ``prepare_digit`` repeats the recipe on any image:

    1. alpha over a background: a drawing on a transparent canvas loses its alpha channel, and the colour
       under a transparent pixel is arbitrary (often black, even under black strokes); the canvas is
       composited over white, or over black when the strokes themselves are light
    2. grayscale, and the datasets' polarity (bright on dark): an image whose border is light is dark ink
       on light paper and is inverted; the border's median is then the paper's level, subtracted as zero
    3. crop to the ink's bounding box
    4. strokes thinner than MNIST's (a pen line on a large canvas) are widened before shrinking, else they
       would fade to a faint one-pixel trace
    5. fit into a 20x20 box keeping the aspect ratio, the strongest ink scaled to 255
    6. place in 28x28 with the centre of mass at (14, 14), as measured on MNIST's own test digits

A real MNIST digit comes back almost unchanged. Files are untrusted: the pixel count a header declares is
checked before any pixel is decoded (a small file can declare gigapixels).
"""
from __future__ import annotations

import io

from pathlib import Path

import numpy as np

from .errors import GrunetError

SIZE = 28
BOX = 20  # MNIST's digits fit a 20x20 box inside the 28x28 field
CENTRE = 14.0  # mean centre of mass (row and column) of the bundled MNIST test digits: 13.99, 14.01
MAX_PIXELS = 50_000_000  # a 48-megapixel phone photo of a digit fits; a declared 100000x100000 does not
FORMATS = ("PNG", "JPEG")
INK_LEVEL = 0.1  # ink: above this share of the strongest stroke (anti-aliased edges of noise are not ink)
MIN_CONTRAST = 24.0  # of 255: weaker than this is a blank page or noise, not a digit
STROKE = 3.0  # median stroke width of MNIST test digits, in pixels of the 20x20 box
WORK = 4  # strokes are measured and widened at WORK times the box's resolution
THIN = 0.5  # strokes narrower than this share of MNIST's are widened


def load_digit(path: str | Path) -> np.ndarray:
    """Read a PNG or JPEG file as a (28, 28) uint8 array prepared like MNIST (see the module docstring)."""
    return prepare_digit(read_gray(path), str(path))


def digit_from_bytes(data: bytes, name: str = "image") -> np.ndarray:
    """A PNG or JPEG file's bytes (an upload) as load_digit prepares a file: (28, 28) uint8, like MNIST."""
    return prepare_digit(_gray(io.BytesIO(data), name), name)


def read_gray(path: str | Path) -> np.ndarray:
    """The image's luminance as float64 (H, W) in [0, 255], alpha composited away; untrusted files refused."""
    p = Path(path)
    if not p.is_file():
        raise GrunetError(f"{p}: expected a PNG or JPEG image file, got no such file")
    return _gray(p, str(p))


def _gray(source, p: str) -> np.ndarray:
    """read_gray of a path or a binary file object, named ``p`` in messages."""
    from PIL import Image, UnidentifiedImageError

    unreadable = (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError,
                  EOFError, MemoryError)
    try:
        with Image.open(source) as image:
            if image.format not in FORMATS:  # only the header was read
                raise GrunetError(f"{p}: expected a PNG or JPEG image, got {image.format or 'an unknown'} format")
            width, height = image.size  # from the header; nothing decoded yet
            if width * height > MAX_PIXELS or width < 1 or height < 1:
                raise GrunetError(f"{p}: expected an image of at most {MAX_PIXELS:,} pixels, got a header "
                                  f"declaring {width:,} x {height:,} (refused before decoding)")
            image.load()
            return _luminance(image)
    except GrunetError:
        raise
    except Image.DecompressionBombError as e:  # Pillow's own header check fires first for the largest ones
        raise GrunetError(f"{p}: expected an image of at most {MAX_PIXELS:,} pixels, got a header declaring "
                          f"more than Pillow's limit ({e}) (refused before decoding)") from None
    except unreadable as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise GrunetError(f"{p}: expected a PNG or JPEG image, got a file that cannot be read as a whole one "
                          f"({reason})") from None


def _luminance(image) -> np.ndarray:
    mode = image.mode
    if mode.startswith("I;16"):
        return np.asarray(image.convert("I"), dtype=np.float64) / 257.0
    if mode in ("I", "F"):
        a = np.asarray(image, dtype=np.float64)
        return a / 257.0 if a.max() > 255 else a
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if not has_alpha:
        return np.asarray(image.convert("L"), dtype=np.float64)
    rgba = image.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float64) / 255.0
    gray = np.asarray(rgba.convert("RGB").convert("L"), dtype=np.float64)  # the colours, alpha ignored
    weight = alpha.sum()
    # On a transparent canvas (most pixels see-through) the strokes are what is opaque: put them over the
    # colour they contrast with. An opaque picture with a few transparent pixels goes over white, as paper.
    canvas = (alpha < 0.5).mean() > 0.5
    light_strokes = weight > 0 and (gray * alpha).sum() / weight > 127.5
    background = 0.0 if canvas and light_strokes else 255.0
    return gray * alpha + background * (1.0 - alpha)


def prepare_digit(gray: np.ndarray, name: str = "image") -> np.ndarray:
    """A grayscale image (H, W) in [0, 255], either polarity, as MNIST's (28, 28) uint8 bright-on-dark digit."""
    g = np.asarray(gray, dtype=np.float64)
    border = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
    ink = 255.0 - g if border.mean() > 127.5 else g.copy()
    ink = np.clip(ink - np.median(255.0 - border if border.mean() > 127.5 else border), 0.0, None)
    strongest = float(ink.max())
    if strongest < MIN_CONTRAST:
        raise GrunetError(f"{name}: expected a digit (strokes that differ from the background), got a blank "
                          f"image (strongest contrast {strongest:.0f} of 255)")
    rows, cols = np.nonzero(ink > INK_LEVEL * strongest)
    ink = ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1] / strongest
    ink = _widen_thin_strokes(ink)
    h, w = ink.shape
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    fitted = _resize(ink, size) if size != (w, h) else ink
    fitted = np.clip(fitted, 0.0, None)
    fitted *= 255.0 / max(float(fitted.max()), 1e-12)
    return _centre(fitted)


def _resize(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resample a float image to size (width, height); shrinking averages (anti-aliased, like MNIST's gray)."""
    from PIL import Image

    shrink = size[0] < a.shape[1] or size[1] < a.shape[0]
    resample = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize(size, resample), dtype=np.float64)


def _widen_thin_strokes(ink: np.ndarray) -> np.ndarray:
    """The ink with strokes at least about MNIST's width relative to its size; the input itself when they are
    (so a digit already drawn like MNIST's is not resampled twice). Strokes are measured at WORK x the box's
    resolution, where a widened drawing is also returned."""
    h, w = ink.shape
    scale = BOX * WORK / max(h, w)
    work = _resize(ink, (max(1, round(w * scale)), max(1, round(h * scale))))
    work /= max(float(work.max()), 1e-12)  # a thin line fades when averaged down; its trace is still the line
    wanted = STROKE * WORK  # MNIST's stroke at this resolution
    width = _stroke_width(work > 0.5)
    if width >= THIN * wanted:
        return ink
    return _dilate(work, int(round(wanted - width)))


def _stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width of a binary drawing: area over half its outline (a w-wide line of length L has
    area w L and an outline of 2 L pixels); 1 for one-pixel lines."""
    area = int(mask.sum())
    if area == 0:
        return 0.0
    padded = np.pad(mask, 1)
    interior = (padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    outline = area - int(interior.sum())
    return max(1.0, area / max(outline / 2.0, 1.0)) if outline < area else 1.0


def _dilate(a: np.ndarray, k: int) -> np.ndarray:
    """Grey dilation by a (k+1) x (k+1) square (a running maximum along each axis), keeping the shape."""
    out = np.pad(a, ((k // 2, k - k // 2), (k // 2, k - k // 2)))
    rows = out.copy()
    for s in range(1, k + 1):
        rows[:-s] = np.maximum(rows[:-s], out[s:])
    both = rows.copy()
    for s in range(1, k + 1):
        both[:, :-s] = np.maximum(both[:, :-s], rows[:, s:])
    return both[: a.shape[0] + k, : a.shape[1] + k]


def _centre(patch: np.ndarray) -> np.ndarray:
    """Place ``patch`` (at most 20x20) in a 28x28 field with its centre of mass nearest (CENTRE, CENTRE)."""
    h, w = patch.shape
    mass = patch.sum()
    cy = (patch.sum(1) * np.arange(h)).sum() / mass
    cx = (patch.sum(0) * np.arange(w)).sum() / mass
    top = int(np.clip(round(CENTRE - cy), 0, SIZE - h))
    left = int(np.clip(round(CENTRE - cx), 0, SIZE - w))
    field = np.zeros((SIZE, SIZE))
    field[top:top + h, left:left + w] = patch
    return np.clip(np.rint(field), 0, 255).astype(np.uint8)
