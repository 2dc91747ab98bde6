"""grunet.images: a user's drawing prepared the way MNIST was made, and untrusted image files refused."""
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from grunet.data import load_split
from grunet.errors import GrunetError
from grunet.images import MAX_PIXELS, load_digit, prepare_digit


@pytest.fixture(scope="module")
def digits():
    images, labels = load_split("mnist-sample", "test")
    return images, labels


def centre_of_mass(a):
    a = a.astype(np.float64)
    rows, cols = np.indices(a.shape)
    return np.array([(a * rows).sum(), (a * cols).sum()]) / a.sum()


def correlation(a, b):
    return float(np.corrcoef(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())[0, 1])


def test_mnist_digits_come_back_almost_unchanged(digits):
    images, _ = digits
    diffs = np.array([np.abs(prepare_digit(a).astype(int) - a).mean() for a in images[:200]])
    assert np.median(diffs) == 0.0  # most are fixed points of the recipe that made them
    assert np.mean([correlation(prepare_digit(a), a) for a in images[:200]]) > 0.97


def thin_off_centre(digit, canvas=(400, 600), scale=8, at=(30, 380)):
    """The digit drawn with a thin pen (only its strongest pixels), enlarged, dark on light paper, placed
    near the top-right corner of a large canvas."""
    core = (digit > 250).astype(np.uint8) * 255  # about one pixel wide at 28x28
    r, c = np.nonzero(core)
    core = core[r.min():r.max() + 1, c.min():c.max() + 1]
    big = np.asarray(Image.fromarray(core).resize((core.shape[1] * scale, core.shape[0] * scale), Image.NEAREST))
    paper = np.full(canvas, 235, dtype=np.uint8)  # slightly gray paper
    top, left = at
    paper[top:top + big.shape[0], left:left + big.shape[1]] = 235 - (big.astype(int) * 215 // 255)
    return paper


@pytest.mark.parametrize("index", [3, 120, 555, 901])
def test_thin_off_centre_drawing_comes_back_in_place(digits, tmp_path, index):
    images, _ = digits
    original = images[index]
    path = tmp_path / "drawing.png"
    Image.fromarray(thin_off_centre(original)).save(path)
    got = load_digit(path)
    assert got.shape == (28, 28) and got.dtype == np.uint8 and got.max() == 255
    assert np.abs(centre_of_mass(got) - centre_of_mass(original)).max() < 1.0
    rows, cols = np.nonzero(got > 25)
    assert max(np.ptp(rows), np.ptp(cols)) + 1 in (19, 20, 21)  # fits MNIST's 20x20 box
    assert correlation(got, original) > 0.6
    # the strokes are widened to about MNIST's: as much ink as the original, not a faint trace
    assert 0.5 < (got > 127).sum() / (original > 127).sum() < 2.0
    # merely resizing (what predict did) loses the digit in a corner
    resized = 255 - np.asarray(Image.open(path).convert("L").resize((28, 28), Image.LANCZOS))
    assert correlation(resized, original) < 0.3


def as_alpha_png(digit, path, colour):
    """The digit as the alpha channel of a single-colour RGBA image: strokes of that colour on transparent."""
    rgba = np.zeros((*digit.shape, 4), dtype=np.uint8)
    rgba[..., :3] = colour
    rgba[..., 3] = digit
    big = Image.fromarray(rgba, mode="RGBA").resize((280, 280), Image.BILINEAR)
    big.save(path)


@pytest.mark.parametrize("colour", [0, 255], ids=["black-stroke", "white-stroke"])
def test_transparent_png_strokes_are_the_digit(digits, tmp_path, colour):
    images, _ = digits
    original = images[42]
    path = tmp_path / "stroke.png"
    as_alpha_png(original, path, colour)
    got = load_digit(path)
    assert got.max() == 255 and (got > 127).mean() < 0.4  # not all black, not all white
    assert correlation(got, original) > 0.85
    assert np.abs(centre_of_mass(got) - centre_of_mass(original)).max() < 1.0


def test_gray_alpha_and_palette_images(digits, tmp_path):
    original = digits[0][7]
    la = np.stack([np.zeros_like(original), original], -1)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    assert correlation(load_digit(tmp_path / "la.png"), original) > 0.95
    Image.fromarray(255 - original).convert("P").save(tmp_path / "p.png")
    assert correlation(load_digit(tmp_path / "p.png"), original) > 0.95
    Image.fromarray(255 - original).save(tmp_path / "d.jpg", quality=95)
    assert correlation(load_digit(tmp_path / "d.jpg"), original) > 0.9


@pytest.mark.parametrize("fill", [0, 255, 128])
def test_blank_image_one_clear_line(tmp_path, fill):
    path = tmp_path / "blank.png"
    Image.fromarray(np.full((50, 40), fill, dtype=np.uint8)).save(path)
    with pytest.raises(GrunetError) as e:
        load_digit(path)
    assert "expected a digit" in str(e.value) and "blank image" in str(e.value)
    assert len(str(e.value).splitlines()) == 1


def png_declaring(width, height):
    """A tiny PNG whose header declares width x height pixels (the body holds almost nothing)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("width,height", [(100_000, 100_000), (8_000, 8_000), (2**31 - 1, 1)])
def test_decompression_bomb_refused_before_decoding(tmp_path, width, height):
    assert width * height > MAX_PIXELS
    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(width, height))
    assert path.stat().st_size < 200
    with pytest.raises(GrunetError) as e:
        load_digit(path)
    message = str(e.value)
    assert f"at most {MAX_PIXELS:,} pixels" in message and "refused before decoding" in message
    assert len(message.splitlines()) == 1


def test_truncated_and_foreign_files_one_line(tmp_path, digits):
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300), dtype=np.uint8)).save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    jpeg = tmp_path / "good.jpg"
    Image.fromarray(digits[0][0]).resize((200, 200)).save(jpeg)
    cut_jpeg = tmp_path / "cut.jpg"
    cut_jpeg.write_bytes(jpeg.read_bytes()[:300])
    text = tmp_path / "notes.png"
    text.write_text("not an image at all\n")
    gif = tmp_path / "digit.gif"
    Image.fromarray(digits[0][0]).save(gif)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for path, got in ((cut, "cannot be read"), (cut_jpeg, "cannot be read"), (text, "cannot be read"),
                      (gif, "got GIF format"), (empty, "cannot be read")):
        with pytest.raises(GrunetError) as e:
            load_digit(path)
        assert str(e.value).startswith(f"{path}: expected a PNG or JPEG image, "), path
        assert got in str(e.value) and len(str(e.value).splitlines()) == 1
    with pytest.raises(GrunetError, match="no such file"):
        load_digit(tmp_path / "missing.png")
