"""Sequence views: how an image (N, H, W) becomes the GRU input x of shape (N, T, I), values pixels / 255.

    rows      T = H,     I = W   the seed recipe: one image row per time step (28 steps of 28 features)
    pixels    T = H * W, I = 1   "sequential MNIST": one pixel per step in reading order (784 steps)
    permuted  T = H * W, I = 1   "permuted sequential MNIST": the pixels of every image reordered by one fixed
                                 permutation, which destroys the local structure rows/pixels keep, so the
                                 network needs long-range memory

The permutation comes from NumPy's legacy ``RandomState(seed)``, whose stream NumPy guarantees never to change,
so a seed names the same permutation on every machine and version (the tests pin its first values).
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import GrunetError

VIEWS = ("rows", "pixels", "permuted")


def permutation(seed: int = 0, size: int = 28 * 28) -> np.ndarray:
    """The fixed permutation of ``size`` pixel positions that the 'permuted' view applies (int64)."""
    return np.random.RandomState(seed).permutation(size).astype(np.int64)


def to_sequences(images, view: str, *, permutation_seed: int = 0) -> torch.Tensor:
    """float32 sequences (N, T, I) from uint8 images (N, H, W) (numpy or torch), scaled to [0, 1]."""
    if view not in VIEWS:
        raise GrunetError(f"view: expected one of {', '.join(VIEWS)}, got {view!r}")
    x = torch.as_tensor(images)
    if x.ndim != 3:
        raise GrunetError(f"images: expected shape (N, H, W), got {tuple(x.shape)}")
    n, h, w = x.shape
    x = x.to(torch.float32) / 255.0
    if view == "rows":
        return x.contiguous()
    x = x.reshape(n, h * w)
    if view == "permuted":
        x = x[:, torch.from_numpy(permutation(permutation_seed, h * w))]
    return x.unsqueeze(-1).contiguous()
