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

Padded batches: with ``lengths`` the step at time t only applies to sequences with t < length; the others
keep their state and output zeros there. Running the loop backwards (``reverse=True``) with the same mask
starts each sequence's reverse pass at its own last valid step, as packed sequences do in torch.nn.GRU.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

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
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor],
    b_hh: Optional[Tensor],
    *,
    reset_after: bool = True,
    sigma: Callable[[Tensor], Tensor] = torch.sigmoid,
    return_gates: bool = False,
):
    """h' for one step (equations in the module docstring); with ``return_gates`` also (r, z, n)."""
    W_ir, W_iz, W_in = w_ih.chunk(3, 0)
    W_hr, W_hz, W_hn = w_hh.chunk(3, 0)
    b_r, b_z, b_n = b_ih.chunk(3) if b_ih is not None else (0.0, 0.0, 0.0)
    if reset_after:
        b_hr, b_hz, b_hn = b_hh.chunk(3) if b_hh is not None else (0.0, 0.0, 0.0)
        r = sigma(x @ W_ir.T + b_r + h @ W_hr.T + b_hr)
        z = sigma(x @ W_iz.T + b_z + h @ W_hz.T + b_hz)
        n = torch.tanh(x @ W_in.T + b_n + r * (h @ W_hn.T + b_hn))
    else:
        r = sigma(x @ W_ir.T + h @ W_hr.T + b_r)
        z = sigma(x @ W_iz.T + h @ W_hz.T + b_z)
        n = torch.tanh(x @ W_in.T + (r * h) @ W_hn.T + b_n)
    h_new = z * h + (1 - z) * n
    return (h_new, (r, z, n)) if return_gates else h_new


# ----------------------------------------------------------------------------------------------------
# one layer, one direction, the whole sequence
def gru_layer(
    x: Tensor,
    h0: Optional[Tensor],
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor],
    b_hh: Optional[Tensor],
    *,
    reset_after: bool = True,
    activation_name: str = "sigmoid",
    lengths: Optional[Tensor] = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor]:
    """Run one GRU layer over x (T, B, I) from h0 (B, H) (None: zeros); returns (output (T, B, H), h_n (B, H)).

    ``lengths`` (B,) int64 on x's device: steps t >= lengths[b] leave h unchanged and output zero.
    """
    sigma = activation(activation_name)
    T = x.shape[0]
    h = h0 if h0 is not None else x.new_zeros(x.shape[1], w_hh.shape[1])
    outputs: list[Optional[Tensor]] = [None] * T
    steps = range(T - 1, -1, -1) if reverse else range(T)
    for t in steps:
        h_new = gru_step(x[t], h, w_ih, w_hh, b_ih, b_hh, reset_after=reset_after, sigma=sigma)
        if lengths is not None:
            valid = (t < lengths).unsqueeze(1)  # (B, 1)
            h_new = torch.where(valid, h_new, h)
            outputs[t] = torch.where(valid, h_new, torch.zeros_like(h_new))
        else:
            outputs[t] = h_new
        h = h_new
    return torch.stack(outputs, 0), h


def gru_layer_gates(
    x: Tensor,
    h0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor],
    b_hh: Optional[Tensor],
    *,
    reset_after: bool = True,
    activation_name: str = "sigmoid",
) -> dict[str, Tensor]:
    """Like gru_layer without lengths, but keeps every gate: dict of (T, B, H) tensors h, r, z, n."""
    sigma = activation(activation_name)
    h = h0
    trace: dict[str, list[Tensor]] = {"h": [], "r": [], "z": [], "n": []}
    for t in range(x.shape[0]):
        h, (r, z, n) = gru_step(
            x[t], h, w_ih, w_hh, b_ih, b_hh, reset_after=reset_after, sigma=sigma, return_gates=True
        )
        for key, value in zip("hrzn", (h, r, z, n)):
            trace[key].append(value)
    return {key: torch.stack(values, 0) for key, values in trace.items()}
