"""Light image augmentation for training batches: each image moved by up to N pixels in x and y, the
uncovered border filled with zeros (the background of the MNIST-style data sets).

The shifts are drawn from torch's global generator, whose state every checkpoint holds: a resumed run draws
the same shifts as one that never stopped. Every rank of a process group draws the shifts of the whole global
batch (the same numbers on each) and keeps its own rows, so the update is the one-process update.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .data.views import permutation

MAX_SHIFT = 8  # beyond this a 28 x 28 digit is mostly pushed off the image


def draw_shifts(batch_size: int, max_shift: int) -> torch.Tensor:
    """(batch_size, 2) integer offsets (dy, dx) in [-max_shift, max_shift], from torch's generator."""
    return torch.randint(-max_shift, max_shift + 1, (batch_size, 2))


def shift_images(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """images (B, H, W) moved by shifts (B, 2) = (dy, dx): pixel (r, c) of the result is pixel (r - dy, c - dx)
    of the image, or 0 where that falls outside."""
    b, h, w = images.shape
    n = int(shifts.abs().max()) if len(shifts) else 0
    if n == 0:
        return images
    padded = F.pad(images, (n, n, n, n)).reshape(b, -1)
    shifts = shifts.to(images.device)
    rows = torch.arange(h, device=images.device)[None, :] + n - shifts[:, :1]  # (B, H)
    cols = torch.arange(w, device=images.device)[None, :] + n - shifts[:, 1:]  # (B, W)
    # one gather over the flattened padded images: about twice as fast as indexing with three index tensors
    index = (rows[:, :, None] * (w + 2 * n) + cols[:, None, :]).reshape(b, -1)
    return padded.gather(1, index).reshape(b, h, w)


def shift_sequences(x: torch.Tensor, shifts: torch.Tensor, view: str, permutation_seed: int = 0,
                    size: tuple[int, int] = (28, 28)) -> torch.Tensor:
    """Sequences (B, T, I) of ``view`` (grunet.data.views) whose images are shifted: back to images, shifted,
    and read in the view's order again (the permuted view's fixed pixel order included)."""
    h, w = size
    if view == "rows":
        return shift_images(x, shifts)
    flat = x.reshape(len(x), h * w)
    if view == "permuted":
        order = torch.from_numpy(permutation(permutation_seed, h * w)).to(x.device)
        images = torch.empty_like(flat)
        images[:, order] = flat  # the view read pixel order[k] at step k
        moved = shift_images(images.reshape(-1, h, w), shifts).reshape(-1, h * w)[:, order]
    else:
        moved = shift_images(flat.reshape(-1, h, w), shifts).reshape(-1, h * w)
    return moved.reshape(x.shape)
