"""The GRU equations as a plain PyTorch loop: the readable definition and the oracle of every fast path.

One time step, x: input (B, I), h: previous state (B, H), sigma: the recurrent activation.
Weights use torch.nn.GRU's layout: w_ih (3H, I) and w_hh (3H, H) hold row blocks in r | z | n order.

reset-after  (cuDNN, PyTorch, Keras >= 2.4 default; two biases per gate, b_ih and b_hh):
    r  = sigma(W_ir x + b_ir + W_hr h + b_hr)          reset gate
    z  = sigma(W_iz x + b_iz + W_hz h + b_hz)          update gate
    n  = tanh(W_in x + b_in + r * (W_hn h + b_hn))     candidate state
reset-before (original Keras GRU; one bias per gate, b = b_ih, b_hh is None):
    r  = sigma(W_ir x + W_hr h + b_r)
    z  = sigma(W_iz x + W_hz h + b_z)
    n  = tanh(W_in x + W_hn (r * h) + b_n)
both:
    h' = z * h + (1 - z) * n        (z is the share of the old state that is kept)

The cell options (layer norm, input / recurrent / weight dropout, zoneout) and their equations are in
grunet.contract, which also defines the arguments every implementation takes.

Padded batches: with ``lengths`` the step at time t only applies to sequences with t < length; the others
keep their state and output zeros there. Running the loop backwards (``reverse=True``) with the same mask
starts each sequence's reverse pass at its own last valid step, as packed sequences do in torch.nn.GRU.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .contract import LAYER_NORM_EPS, NO_MASKS, CellSpec, LayerWeights, Masks, zoneout_keep
from .errors import GrunetError


# ----------------------------------------------------------------------------------------------------
# recurrent activations
def hard_sigmoid_keras2(x: Tensor) -> Tensor:
    """Keras 2 hard_sigmoid: clip(0.2 x + 0.5, 0, 1)."""
    return torch.clamp(0.2 * x + 0.5, 0.0, 1.0)


def hard_sigmoid_keras3(x: Tensor) -> Tensor:
    """Keras 3 hard_sigmoid (= relu6(x + 3) / 6): clip(x / 6 + 0.5, 0, 1)."""
    return torch.clamp(x / 6.0 + 0.5, 0.0, 1.0)


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "sigmoid": torch.sigmoid,
    "hard_sigmoid_keras2": hard_sigmoid_keras2,
    "hard_sigmoid_keras3": hard_sigmoid_keras3,
}


def activation(name: str) -> Callable[[Tensor], Tensor]:
    """The recurrent activation called ``name``; 'hard_sigmoid' alone is refused as ambiguous."""
    if name in ACTIVATIONS:
        return ACTIVATIONS[name]
    hint = " ('hard_sigmoid' differs between Keras 2 and 3: name the version)" if name == "hard_sigmoid" else ""
    raise GrunetError(f"recurrent_activation: expected one of {sorted(ACTIVATIONS)}, got {name!r}{hint}")


# ----------------------------------------------------------------------------------------------------
# one step
def gru_step(
    x: Tensor,
    h: Tensor,
    weights: LayerWeights,
    spec: CellSpec = CellSpec(),
    *,
    recurrent_mask: Optional[Tensor] = None,
    keep=None,
    return_gates: bool = False,
):
    """h' for one step (equations in the module docstring and in grunet.contract for the cell options).

    ``recurrent_mask`` (B, H): recurrent dropout's m_h, applied to h where it enters the products.
    ``keep``: zoneout's share of the new state (a (B, H) mask in training, the number 1 - p in eval).
    With ``return_gates`` also returns (r, z, n)."""
    sigma = ACTIVATIONS[spec.activation]
    w = weights
    h_in = h if recurrent_mask is None else recurrent_mask * h  # what the recurrent products read
    gx = x @ w.w_ih.T
    if spec.layer_norm:  # gx = LN(W_ih x) * g_ih + b_ih, gh = LN(W_hh h) * g_hh + b_hh (reset-after only)
        H3 = gx.shape[-1]
        gx = F.layer_norm(gx, (H3,), w.g_ih, w.b_ih, LAYER_NORM_EPS)
        gh = F.layer_norm(h_in @ w.w_hh.T, (H3,), w.g_hh, w.b_hh, LAYER_NORM_EPS)
        a_r, a_z, a_n = gx.chunk(3, -1)
        h_r, h_z, h_n = gh.chunk(3, -1)
        r, z = sigma(a_r + h_r), sigma(a_z + h_z)
        n = torch.tanh(a_n + r * h_n)
    elif spec.reset_after:
        if w.b_ih is not None:
            gx = gx + w.b_ih
        gh = h_in @ w.w_hh.T
        if w.b_hh is not None:
            gh = gh + w.b_hh
        a_r, a_z, a_n = gx.chunk(3, -1)
        h_r, h_z, h_n = gh.chunk(3, -1)
        r, z = sigma(a_r + h_r), sigma(a_z + h_z)
        n = torch.tanh(a_n + r * h_n)
    else:
        W_hr, W_hz, W_hn = w.w_hh.chunk(3, 0)
        b_r, b_z, b_n = w.b_ih.chunk(3) if w.b_ih is not None else (0.0, 0.0, 0.0)
        a_r, a_z, a_n = gx.chunk(3, -1)
        r = sigma(a_r + h_in @ W_hr.T + b_r)
        z = sigma(a_z + h_in @ W_hz.T + b_z)
        n = torch.tanh(a_n + (r * h_in) @ W_hn.T + b_n)
    h_new = z * h + (1 - z) * n
    if keep is not None:  # zoneout: h' = h + m (h~ - h)
        h_new = h + keep * (h_new - h)
    return (h_new, (r, z, n)) if return_gates else h_new


# ----------------------------------------------------------------------------------------------------
# one layer, one direction, the whole sequence
def masked_inputs(x: Tensor, weights: LayerWeights, masks: Masks) -> tuple[Tensor, LayerWeights]:
    """Input dropout (x_t -> m_x x_t) and weight dropout (W_hh -> m_w W_hh), which every implementation
    applies the same way before its time loop."""
    if masks.input is not None:
        x = x * masks.input
    if masks.weight is not None:
        weights = dataclasses.replace(weights, w_hh=weights.w_hh * masks.weight)
    return x, weights


def gru_layer(
    x: Tensor,
    h0: Optional[Tensor],
    weights: LayerWeights,
    spec: CellSpec = CellSpec(),
    masks: Masks = NO_MASKS,
    lengths: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """Run one GRU layer over x (T, B, I) from h0 (B, H) (None: zeros); returns (output (T, B, H), h_n (B, H)).

    ``lengths`` (B,) int64 on x's device: steps t >= lengths[b] leave h unchanged and output zero.
    """
    x, weights = masked_inputs(x, weights, masks)
    T = x.shape[0]
    h = h0 if h0 is not None else x.new_zeros(x.shape[1], weights.w_hh.shape[1])
    outputs: list[Optional[Tensor]] = [None] * T
    steps = range(T - 1, -1, -1) if spec.reverse else range(T)
    for t in steps:
        h_new = gru_step(x[t], h, weights, spec, recurrent_mask=masks.recurrent, keep=zoneout_keep(spec, masks, t))
        if lengths is not None:
            valid = (t < lengths).unsqueeze(1)  # (B, 1)
            h_new = torch.where(valid, h_new, h)
            outputs[t] = torch.where(valid, h_new, torch.zeros_like(h_new))
        else:
            outputs[t] = h_new
        h = h_new
    return torch.stack(outputs, 0), h


def gru_layer_gates(x: Tensor, h0: Tensor, weights: LayerWeights, spec: CellSpec = CellSpec()) -> dict[str, Tensor]:
    """Like gru_layer in eval mode without lengths, but keeps every gate: dict of (T, B, H) tensors h, r, z, n
    in the order the steps ran."""
    h = h0
    trace: dict[str, list[Tensor]] = {"h": [], "r": [], "z": [], "n": []}
    keep = 1.0 - spec.zoneout if spec.zoneout else None
    for t in range(x.shape[0]):
        h, (r, z, n) = gru_step(x[t], h, weights, spec, keep=keep, return_gates=True)
        for key, value in zip("hrzn", (h, r, z, n)):
            trace[key].append(value)
    return {key: torch.stack(values, 0) for key, values in trace.items()}
