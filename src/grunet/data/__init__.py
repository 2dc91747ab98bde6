"""Datasets for grunet: MNIST-like image sets read as sequences.

    images, labels = load_split("mnist", "train")        # uint8 (N, 28, 28), int64 (N,)
    x = to_sequences(images, "rows")                     # float32 (N, 28, 28): 28 steps of 28 pixels / 255

Modules: ``idx`` (the IDX file format), ``download`` (mirrors + sha256 + atomic cache writes), ``datasets``
(named datasets and where their files come from), ``views`` (image -> sequence). 'mnist-sample' is bundled
and needs no network.
"""
from .datasets import (CLASS_NAMES, DATASETS, SPECS, SPLITS, DatasetSpec, cache_root, load_sample,
                       load_split)
from .download import DownloadError
from .idx import read_idx, write_idx
from .views import VIEWS, permutation, to_sequences

__all__ = [
    "CLASS_NAMES", "DATASETS", "SPECS", "SPLITS", "VIEWS", "DatasetSpec", "DownloadError", "cache_root",
    "load_sample", "load_split", "permutation", "read_idx", "to_sequences", "write_idx",
]
