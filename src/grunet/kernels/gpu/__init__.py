"""grunet on CUDA: PyTorch's cuDNN GRU where it computes the cell exactly, grunet's Triton kernel elsewhere.

    cudnn.py         reset-after, sigmoid gates, no layer norm / recurrent dropout / zoneout (input and weight
                     dropout are applied before any kernel): torch._VF.gru, torch.nn.GRU's own call, with
                     lengths through packing and the reverse direction by reversing each sequence; flatten
                     puts each layer and direction's parameters into one buffer in cuDNN's layout
                     (grunet.GRU.flatten_parameters), so that cuDNN reads them without copying them
    triton_layer.py  everything else (reset-before, the hard sigmoids, the cell options): one persistent
                     Triton launch per layer and direction for the time loop, forward and backward; it also
                     runs on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1), which the tests use

Triton is an optional extra (``pip install grunet[gpu]``): without it the cells cuDNN cannot compute run in
the reference loop (impl="auto") or are refused (impl="triton"). The module imports neither triton nor CUDA.
"""
from __future__ import annotations

import importlib
from typing import Optional

import torch
from torch import Tensor

from ...contract import NO_MASKS, CellSpec, LayerWeights, Masks
from ...reference import gru_layer as reference_layer
from . import cudnn

__all__ = ["load", "gru_layer", "supports", "triton_module", "SUPPORTED_DTYPES"]

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def triton_module():
    """grunet.kernels.gpu.triton_layer, or None when it cannot be imported (no triton)."""
    try:
        return importlib.import_module(f"{__name__}.triton_layer")
    except ImportError:
        return None


def triton_unavailable() -> Optional[str]:
    """None when the Triton kernel can run here, else why not (one line)."""
    module = triton_module()
    if module is None:
        return "the Triton kernel needs triton (pip install 'grunet[gpu]')"
    return module.available()


def load() -> None:
    """Nothing to build: cuDNN comes with PyTorch, and Triton compiles each kernel on its first launch."""


def supports(cell: CellSpec) -> bool:
    """Whether a CUDA call of ``cell`` runs a kernel here (cuDNN, or the Triton kernel when triton is there)."""
    return cudnn.computes(cell) or triton_unavailable() is None


def gru_layer(x: Tensor, h0: Optional[Tensor], weights: LayerWeights, spec: CellSpec = CellSpec(),
              masks: Masks = NO_MASKS, lengths: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """One layer and direction on CUDA: cuDNN for its cell, the Triton kernel for the rest (float64 and a
    missing triton: the reference loop)."""
    if cudnn.computes(spec):
        return cudnn.gru_layer(x, h0, weights, spec, masks, lengths)
    module = triton_module()
    if module is not None and module.available() is None and x.dtype in module.SUPPORTED_DTYPES:
        return module.gru_layer(x, h0, weights, spec, masks, lengths)
    return reference_layer(x, h0, weights, spec, masks, lengths)
