"""Named datasets: where the files of 'mnist', 'fashion-mnist', 'kmnist' and 'mnist-sample' come from.

All three full datasets share MNIST's layout: four IDX files, 60,000 train and 10,000 test images of 28x28
uint8 pixels with labels 0..9. ``load_split`` looks for a split's two files in this order:

    1. ``data_dir`` when given: files already on disk (gzip-compressed or not), and nowhere else;
    2. a system copy (Debian's dataset-fashion-mnist installs /usr/share/datasets/fashion-mnist);
    3. the cache ``<cache>/<name>/``, with <cache> = ``cache_dir``, else $GRUNET_DATA, else ~/.cache/grunet;
    4. a download into that cache from the spec's mirrors, in order (``download.fetch``).

Two checksums per file, because they guard different things:
    ``sha256``      of the .gz bytes the mirrors serve (published values): a download is kept only if it
                    matches, so a truncated or tampered file never enters the cache.
    ``idx_sha256``  of the gunzipped IDX bytes: independent of how a file was compressed. Debian re-gzipped
                    Fashion-MNIST (its .gz files differ from Zalando's), yet the content is identical, so the
                    system copy, the cache and ``data_dir`` files are all checked against this where known.
Sources: MNIST and KMNIST .gz hashes as published in torchvision's dataset definitions; Fashion-MNIST's as
published alongside Zalando's MD5 table; Fashion-MNIST IDX hashes computed from Debian's
dataset-fashion-mnist 0.0~git20200523.55506a9-1 (equal to published values); MNIST IDX hashes published by
several projects. KMNIST's IDX hashes are not known to us, so there only downloads are checksummed.

'mnist-sample' is the offline fallback: 5,000 real MNIST digits bundled in ``mnist_sample.npz`` (made by
scripts/make_mnist_sample.py), 4,000 train (400 a class, shuffled) and 1,000 test (100 a class).
"""
from __future__ import annotations

import importlib.resources
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import GrunetError
from .download import DownloadError, fetch
from .idx import IdxHeader, load_idx

SPLITS = ("train", "test")
FILES = {  # split -> (images, labels), the canonical names every mirror uses
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
ALL_FILES = FILES["train"] + FILES["test"]
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
MAX_IMAGES = {"train": 60_000, "test": 10_000}
SAMPLE = "mnist-sample"
SAMPLE_FILE = "mnist_sample.npz"


@dataclass(frozen=True)
class DatasetSpec:
    """Where a named dataset's four IDX files come from and how to recognise them."""

    name: str
    mirrors: tuple[str, ...]  # base URLs, tried in order
    sha256: dict[str, str]  # canonical .gz name -> sha256 of the bytes mirrors serve
    idx_sha256: dict[str, str] = field(default_factory=dict)  # canonical .gz name -> sha256 once gunzipped
    system_dirs: tuple[str, ...] = ()  # read-only copies installed by the OS, used when present
    class_names: tuple[str, ...] = tuple(str(d) for d in range(10))
    # the most images a split's files may declare: MNIST's own counts for the named datasets (KMNIST and
    # Fashion-MNIST share them); what a header promises beyond this is refused before it is read
    max_images: dict[str, int] = field(default_factory=lambda: dict(MAX_IMAGES))


def _sums(*hexes: str) -> dict[str, str]:
    return dict(zip(ALL_FILES, hexes))


SPECS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        "mnist",
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "https://storage.googleapis.com/cvdf-datasets/mnist/",
                 "http://yann.lecun.com/exdb/mnist/"),
        sha256=_sums("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                     "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                     "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                     "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
        idx_sha256=_sums("ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                         "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                         "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                         "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    ),
    "fashion-mnist": DatasetSpec(
        "fashion-mnist",
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                 "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
        sha256=_sums("3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                     "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                     "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                     "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
        idx_sha256=_sums("c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                         "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                         "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                         "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                     "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
    "kmnist": DatasetSpec(
        "kmnist",
        mirrors=("https://codh.rois.ac.jp/kmnist/dataset/kmnist/",
                 "http://codh.rois.ac.jp/kmnist/dataset/kmnist/"),
        sha256=_sums("51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4",
                     "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17",
                     "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5",
                     "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c"),
        # one hiragana from each row of the gojuon table, romanised
        class_names=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    ),
}
DATASETS = (SAMPLE,) + tuple(SPECS)
CLASS_NAMES: dict[str, tuple[str, ...]] = {SAMPLE: SPECS["mnist"].class_names,
                                           **{n: s.class_names for n, s in SPECS.items()}}


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else $GRUNET_DATA, else ~/.cache/grunet (datasets live in ``<root>/<name>/``)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("GRUNET_DATA"):
        return Path(os.environ["GRUNET_DATA"]).expanduser()
    return Path.home() / ".cache" / "grunet"


def load_split(name: str | DatasetSpec, split: str, *, data_dir: str | os.PathLike | None = None,
               cache_dir: str | os.PathLike | None = None,
               download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One split of a named dataset: (images uint8 (N, 28, 28), labels int64 (N,)).

    ``name`` is one of DATASETS, or a DatasetSpec (e.g. one with other mirrors). 'mnist-sample' is bundled:
    it ignores cache_dir and download, and refuses data_dir (files on disk are read as the dataset they are,
    e.g. 'mnist'; reading them as the sample would silently train on something else).
    """
    if split not in SPLITS:
        raise GrunetError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
    if isinstance(name, DatasetSpec):
        spec = name
    elif name == SAMPLE:
        if data_dir is not None:
            raise GrunetError(f"--data-dir: expected no directory with --dataset {SAMPLE} (it is bundled; for IDX "
                              f"files on disk name their dataset, e.g. --dataset mnist --data-dir {data_dir}), "
                              f"got {data_dir}")
        return load_sample(split)
    elif name in SPECS:
        spec = SPECS[name]
    else:
        raise GrunetError(f"dataset: expected one of {', '.join(DATASETS)}, got {name!r}")

    wanted = FILES[split]
    if data_dir is not None:
        paths = [_find(Path(data_dir), f) for f in wanted]
        missing = [f for f, p in zip(wanted, paths) if p is None]
        if missing:
            raise GrunetError(f"dataset {spec.name} in data_dir {Path(data_dir)}: expected files "
                              f"{', '.join(missing)} (or the same names without .gz), got none of them")
    else:
        paths = _system_copy(spec, wanted) or _cached_or_downloaded(spec, wanted, cache_dir, download)
    images, labels = (_read(spec, f, p, split) for f, p in zip(wanted, paths))
    _check_split(images, labels, paths)
    return images, labels.astype(np.int64)


def load_sample(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The bundled 'mnist-sample' split: train 4,000 (shuffled), test 1,000 (grouped by class)."""
    if split not in SPLITS:
        raise GrunetError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
    with importlib.resources.files(__package__).joinpath(SAMPLE_FILE).open("rb") as f, np.load(f) as z:
        return z[f"{split}_images"], z[f"{split}_labels"].astype(np.int64)


def _find(directory: Path, gz_name: str) -> Path | None:
    """``directory/gz_name``, else the same name without .gz (users often gunzip), else None."""
    for candidate in (directory / gz_name, directory / gz_name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def _system_copy(spec: DatasetSpec, wanted: tuple[str, ...]) -> list[Path] | None:
    for directory in spec.system_dirs:
        paths = [_find(Path(directory), f) for f in wanted]
        if all(paths):
            return paths
    return None


def _cached_or_downloaded(spec: DatasetSpec, wanted: tuple[str, ...], cache_dir, download: bool) -> list[Path]:
    target = cache_root(cache_dir) / spec.name
    paths = [_find(target, f) for f in wanted]
    missing = [f for f, p in zip(wanted, paths) if p is None]
    if not missing:
        return paths
    how_to = (f"To work offline, put the files {', '.join(ALL_FILES)} (gzip-compressed or not) in {target}, "
              f"or pass data_dir (--data-dir) pointing at them; or use --dataset {SAMPLE}, which is bundled "
              "and works offline.")
    if not download:
        raise GrunetError(f"dataset {spec.name}: expected {', '.join(missing)} in {target}, got none "
                          f"(download disabled). {how_to}")
    unknown = [f for f in missing if f not in spec.sha256]
    if unknown:
        raise GrunetError(f"dataset {spec.name}: expected a published sha256 for {', '.join(unknown)} to "
                          f"download it, got none. {how_to}")
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    try:
        for f in missing:
            paths[wanted.index(f)] = fetch(f, spec.mirrors, spec.sha256[f], target)
    except DownloadError as e:
        if created and not any(target.iterdir()):
            target.rmdir()
        raise GrunetError(f"dataset {spec.name}: {e}. {how_to}") from None
    return paths


def _read(spec: DatasetSpec, gz_name: str, path: Path, split: str) -> np.ndarray:
    limit = spec.max_images.get(split, MAX_IMAGES[split])
    is_images = gz_name == FILES[split][0]
    kind = "images" if is_images else "labels"
    shape = f"(N, {IMAGE_SHAPE[0]}, {IMAGE_SHAPE[1]})" if is_images else "(N,)"

    def check(head: IdxHeader) -> None:  # before anything is inflated: the shape a split can have
        ok_shape = head.dims[1:] == IMAGE_SHAPE if is_images else len(head.dims) == 1
        if head.dtype != np.uint8 or not ok_shape:
            raise GrunetError(f"{kind} file {path}: expected uint8 {kind} of shape {shape}, "
                              f"got {head.dtype.newbyteorder('=').name} {head.dims} (in its header)")
        if not 1 <= head.dims[0] <= limit:
            raise GrunetError(f"{kind} file {path}: expected 1 to {limit:,} {kind} (the {spec.name} {split} split), "
                              f"got {head.dims[0]:,} (in its header)")

    content = load_idx(path, check=check)
    expected = spec.idx_sha256.get(gz_name)
    if expected is not None and content.sha256 != expected:
        raise GrunetError(f"dataset {spec.name} file {path}: expected IDX content with sha256 {expected}, "
                          f"got {content.sha256} (not the published {spec.name} file; delete or replace it)")
    return content.array


def _check_split(images: np.ndarray, labels: np.ndarray, paths: list[Path]) -> None:
    """Images (N, 28, 28) uint8 and labels (N,) uint8 in 0..9, as every MNIST-like file pair has."""
    image_path, label_path = paths
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE or images.dtype != np.uint8:
        raise GrunetError(f"images file {image_path}: expected uint8 images of shape (N, 28, 28), "
                          f"got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise GrunetError(f"labels file {label_path}: expected uint8 labels of shape (N,), "
                          f"got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise GrunetError(f"dataset files {image_path} and {label_path}: expected as many labels as images, "
                          f"got {len(labels)} labels for {len(images)} images")
    if len(labels) and labels.max() >= NUM_CLASSES:
        raise GrunetError(f"labels file {label_path}: expected labels 0..{NUM_CLASSES - 1}, "
                          f"got a label {int(labels.max())}")
