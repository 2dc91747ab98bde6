"""Fused CPU GRU: whole-sequence forward and backward of one layer and direction in C++.

Same function as grunet.reference.gru_layer (the equations are there and beside the C++ code), with the
arguments of grunet.contract: ``gru_layer(x (T,B,I), h0 (B,H) or None (zeros), weights, spec, masks,
lengths) -> (out (T,B,H), h_n (B,H))``, float32 and float64.

How it is fast: per step a product x_t W_ih^T, one (B,H)x(H,3H) GEMM and one
vectorised pass over the gates (reset-before: a second GEMM for W_hn (r*h));
backward walks time in reverse with one GEMM per step for dh (two for reset-before), and computes dx,
dW_ih, dW_hh and the bias gradients with a few big products after the loop. Threads split the batch.
The autograd function is C++ (gru_autograd.cpp), so the backward runs without entering Python. An output
that gets no gradient (a classifier reads only h_n) reaches the backward undefined, not as zeros.

The cell options run in the kernel too: layer_norm (both projections normalised per row inside the step),
recurrent dropout (the (B, H) mask on h where the products read it) and zoneout (the (T, B, H) mask, or
1 - p in eval, in the gate pass); input and weight dropout are applied to x and W_hh before it
(grunet.reference.masked_inputs). The C++ side takes the call as named structs (gru_cpu.h: LayerTensors,
LayerCall with CellOptions and LayerMasks), filled in one place: call_arguments.

With grad disabled, or when no input requires grad, the forward keeps no gate activations.
NaN and +-inf propagate as in torch.nn.GRU (values and gradients); with lengths a padded step takes no
part at all, as with packed sequences.
Setting GRUNET_POISON_BUFFERS fills every buffer the kernel takes with NaN (a test runs so: no value may be
read before it is written).
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor

from ...contract import NO_MASKS, CellSpec, LayerWeights, Masks
from ...reference import gru_layer as reference_layer
from ...reference import masked_inputs
from .build import load

__all__ = ["load", "gru_layer", "set_threads", "get_threads"]

ACTIVATION_CODES = {"sigmoid": 0, "hard_sigmoid_keras2": 1, "hard_sigmoid_keras3": 2}
SUPPORTED_DTYPES = (torch.float32, torch.float64)

_threads: Optional[int] = None  # None: torch.get_num_threads() at call time


def set_threads(n: Optional[int]) -> None:
    """Threads the kernel splits the batch over (None: torch.get_num_threads())."""
    global _threads
    _threads = None if n is None else max(1, int(n))


def get_threads() -> int:
    return _threads if _threads is not None else torch.get_num_threads()


def supports(cell: CellSpec) -> bool:
    """Whether the kernel computes ``cell`` itself: every CellSpec (input and weight dropout are applied before
    it, as in every implementation: grunet.reference.masked_inputs)."""
    return isinstance(cell, CellSpec)


@functools.lru_cache(maxsize=64)
def _cell_options(ext, spec: CellSpec):
    """The kernel's CellOptions for ``spec``: CellSpec's fields the time loop reads (input and weight dropout
    happen before it). Cached: filling a pybind11 object field by field costs ~0.5 us a field."""
    cell = ext.CellOptions()
    cell.reset_after, cell.activation, cell.reverse = spec.reset_after, ACTIVATION_CODES[spec.activation], spec.reverse
    cell.layer_norm, cell.zoneout = spec.layer_norm, float(spec.zoneout)
    return cell


def call_arguments(ext, x: Tensor, h0: Optional[Tensor], weights: LayerWeights, spec: CellSpec, masks: Masks,
                   lengths: Optional[Tensor]):
    """The kernel's (LayerTensors, LayerCall) for one layer call: the one place the C++ contract (gru_cpu.h)
    is filled, field by field from grunet.contract's."""
    tensors = ext.LayerTensors()
    tensors.x, tensors.h0, tensors.w_ih, tensors.w_hh = x, h0, weights.w_ih, weights.w_hh
    tensors.b_ih = weights.b_ih
    if spec.reset_after:  # reset-before has one bias, b_ih
        tensors.b_hh = weights.b_hh
    if spec.layer_norm:
        tensors.g_ih, tensors.g_hh = weights.g_ih, weights.g_hh
    call = ext.LayerCall()
    call.cell = _cell_options(ext, spec)
    if masks.recurrent is not None or masks.zoneout is not None:
        call_masks = ext.LayerMasks()
        call_masks.recurrent, call_masks.zoneout = masks.recurrent, masks.zoneout
        call.masks = call_masks
    if lengths is not None:
        call.lengths = lengths.to(device="cpu", dtype=torch.int64)
    call.chunks = ext.batch_chunks(x.shape[1], weights.w_hh.shape[1], get_threads())
    return tensors, call


def gru_layer(
    x: Tensor,
    h0: Optional[Tensor],
    weights: LayerWeights,
    spec: CellSpec = CellSpec(),
    masks: Masks = NO_MASKS,
    lengths: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """One GRU layer over x (T, B, I) from h0 (B, H) -> (output (T, B, H), h_n (B, H)); see module docstring."""
    if x.dtype not in SUPPORTED_DTYPES or not x.is_cpu or not supports(spec):
        return reference_layer(x, h0, weights, spec, masks, lengths)
    x, weights = masked_inputs(x, weights, masks)
    ext = load()
    tensors, call = call_arguments(ext, x, h0, weights, spec, masks, lengths)
    if torch.is_grad_enabled() and (x.requires_grad or (h0 is not None and h0.requires_grad)
                                    or any(t is not None and t.requires_grad for t in weights.__dict__.values())):
        # a C++ autograd function (gru_autograd.cpp): saves what backward needs, backward runs without Python
        out, h_n = ext.gru_autograd(tensors, call)
    else:
        out, h_n = ext.forward(tensors, call, False)
    return out, h_n
