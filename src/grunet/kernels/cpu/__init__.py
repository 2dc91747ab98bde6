"""Fused CPU GRU: whole-sequence forward and backward of one layer and direction in C++.

Same function as grunet.reference.gru_layer (the equations are there and beside the C++ code), with the
arguments of grunet.contract: ``gru_layer(x (T,B,I), h0 (B,H) or None (zeros), weights, spec, masks,
lengths) -> (out (T,B,H), h_n (B,H))``, float32 and float64.

How it is fast: per step a product x_t W_ih^T, one (B,H)x(H,3H) GEMM and one
vectorised pass over the gates (reset-before: a second GEMM for W_hn (r*h));
backward walks time in reverse with one GEMM per step for dh (two for reset-before), and computes dx,
dW_ih, dW_hh and the bias gradients with a few big products after the loop. Threads split the batch.

The cell options run in the kernel too: layer_norm (both projections normalised per row inside the step),
recurrent dropout (the (B, H) mask on h where the products read it) and zoneout (the (T, B, H) mask, or
1 - p in eval, in the gate pass); input and weight dropout are applied to x and W_hh before it
(grunet.reference.masked_inputs).

The layer is the PyTorch operator torch.ops.grunet.gru_layer (gru_ops.cpp; fake implementations in ops.py),
whose arguments spell out the C++ contract (gru_cpu.h: LayerTensors, LayerCall with CellOptions and
LayerMasks): call_arguments fills them from grunet.contract's, in one place, and gru_ops.cpp builds the
structs from them. So torch.compile traces the layer, with every cell option, without a graph break, and
torch.export, torch.jit.trace and the TorchScript ONNX exporter (as the ONNX GRU operator, for the plain
cell) keep it. Its Autograd kernel is a C++ autograd function (gru_autograd.cpp), so the backward runs
without entering Python; create_graph=True recomputes the gradients with the reference loop, and under
torch.func transforms (vmap, jacrev ...) the layer is the reference loop. An output that gets no gradient
(a classifier reads only h_n) reaches the backward undefined, not as zeros.

With grad disabled, or when no input requires grad, the forward keeps no gate activations.
NaN and +-inf propagate as in torch.nn.GRU (values and gradients); with lengths a padded step takes no
part at all, as with packed sequences.
Setting GRUNET_POISON_BUFFERS fills every buffer the kernel takes with NaN (a test runs so: no value may be
read before it is written).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ...contract import NO_MASKS, CellSpec, LayerWeights, Masks
from ...reference import gru_layer as reference_layer
from ...reference import masked_inputs
from . import build, ops

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


def under_torch_func() -> bool:
    """Whether a torch.func transform (vmap, grad, jacrev ...) is running: torch.func cannot enter a C++
    autograd function, so the layer then runs the reference loop, the same function in plain operations."""
    return not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active()


def call_arguments(x: Tensor, h0: Optional[Tensor], weights: LayerWeights, spec: CellSpec, masks: Masks,
                   lengths: Optional[Tensor]) -> tuple:
    """The arguments of grunet::gru_layer for one layer call (x and weights already through masked_inputs):
    the one place grunet.contract's fields become the kernel's (gru_ops.cpp builds gru_cpu.h's structs from
    them). The last one is threads, 0 for torch's thread count when the layer runs (a compiled graph does not
    fix it)."""
    reset_after = spec.reset_after
    b_hh = weights.b_hh if reset_after else None  # reset-before has one bias, passed as b_ih
    g_ih, g_hh = (weights.g_ih, weights.g_hh) if spec.layer_norm else (None, None)
    if lengths is not None:
        lengths = lengths.to(device="cpu", dtype=torch.int64)
    return (x, h0, weights.w_ih, weights.w_hh, weights.b_ih, b_hh, g_ih, g_hh, masks.recurrent, masks.zoneout, lengths,
            reset_after, ACTIVATION_CODES[spec.activation], spec.reverse, spec.layer_norm, float(spec.zoneout),
            _threads or 0)


def gru_layer(
    x: Tensor,
    h0: Optional[Tensor],
    weights: LayerWeights,
    spec: CellSpec = CellSpec(),
    masks: Masks = NO_MASKS,
    lengths: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """One GRU layer over x (T, B, I) from h0 (B, H) -> (output (T, B, H), h_n (B, H)); see module docstring."""
    if x.dtype not in SUPPORTED_DTYPES or not x.is_cpu or not supports(spec) or under_torch_func():
        return reference_layer(x, h0, weights, spec, masks, lengths)
    x, weights = masked_inputs(x, weights, masks)
    ext = load()  # defines the operators on first use (later: two checks of a global)
    # the operator grunet::gru_layer: its Autograd kernel (gru_autograd.cpp) runs the training forward when
    # a gradient is needed, else the inference forward that keeps no gate activations. Eager calls go
    # through the extension's binding of it (~3 us less per call); torch.compile traces torch.ops.
    layer = torch.ops.grunet.gru_layer.default if torch.compiler.is_compiling() else ext.gru_layer
    return layer(*call_arguments(x, h0, weights, spec, masks, lengths))


def load():
    """The compiled extension (built on first use), with its operators' Python parts registered."""
    ext = build.load()
    ops.register(ext)
    return ext
