"""Gate layouts: the same GRU weights as Keras, PyTorch and ONNX store them.

U units, I inputs. Only permutations and transposes, so every conversion is exact to the last bit.
    torch (grunet, nn.GRU): w_ih (3U, I), w_hh (3U, U), rows r | z | n;
                            reset-after b_ih, b_hh (3U,); reset-before one bias b (3U,)
    Keras:                  kernel (I, 3U), recurrent_kernel (U, 3U), columns z | r | h;
                            reset-after bias (2, 3U) (row 0 input, row 1 recurrent); reset-before bias (3U,)
    ONNX GRU operator:      W (3U, I), R (3U, U) rows z | r | h; B (6U,) = [Wb, Rb], each z | r | h
Swapping the first two gate blocks turns r | z | n into z | r | h and back.
"""
from __future__ import annotations

from typing import Optional

import numpy as np


def swap_rz(a: np.ndarray, axis: int) -> np.ndarray:
    """Exchange the first two of three equal gate blocks along ``axis`` (r|z|n <-> z|r|h)."""
    first, second, third = np.split(np.asarray(a), 3, axis=axis)
    return np.ascontiguousarray(np.concatenate([second, first, third], axis=axis))


def keras_to_torch(kernel: np.ndarray, recurrent_kernel: np.ndarray, bias: Optional[np.ndarray],
                   reset_after: bool) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]:
    """Keras GRU weights -> (w_ih, w_hh, b_ih, b_hh); reset-before: b_ih is the one bias, b_hh None."""
    w_ih = np.ascontiguousarray(swap_rz(kernel, 1).T)
    w_hh = np.ascontiguousarray(swap_rz(recurrent_kernel, 1).T)
    if bias is None:
        return w_ih, w_hh, None, None
    if reset_after:
        b = swap_rz(bias, 1)
        return w_ih, w_hh, np.ascontiguousarray(b[0]), np.ascontiguousarray(b[1])
    return w_ih, w_hh, swap_rz(bias, 0), None


def torch_to_keras(w_ih: np.ndarray, w_hh: np.ndarray, b_ih: Optional[np.ndarray], b_hh: Optional[np.ndarray],
                   reset_after: bool) -> list[np.ndarray]:
    """(w_ih, w_hh, b_ih, b_hh) -> [kernel, recurrent_kernel(, bias)] in Keras's layout."""
    out = [np.ascontiguousarray(swap_rz(w_ih, 0).T), np.ascontiguousarray(swap_rz(w_hh, 0).T)]
    if b_ih is not None:
        out.append(swap_rz(np.stack([b_ih, b_hh]), 1) if reset_after else swap_rz(b_ih, 0))
    return out


def torch_to_onnx(w_ih: np.ndarray, w_hh: np.ndarray, b_ih: Optional[np.ndarray], b_hh: Optional[np.ndarray],
                  reset_after: bool) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """One direction's (W, R, B) for the ONNX GRU operator.

    reset-after runs with linear_before_reset=1: B = [b_ih, b_hh] reordered.
    reset-before runs with linear_before_reset=0, where the operator computes
    h~ = g(X W_h^T + (r * H) R_h^T + Rb_h + Wb_h) and the gates add Wb + Rb: the one bias goes into Wb, Rb = 0.
    """
    W, R = swap_rz(w_ih, 0), swap_rz(w_hh, 0)
    if b_ih is None:
        return W, R, None
    second = b_hh if reset_after else np.zeros_like(b_ih)
    return W, R, np.concatenate([swap_rz(b_ih, 0), swap_rz(second, 0)])
