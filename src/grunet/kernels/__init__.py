"""The single dispatch point between the GRU layers and their implementations.

Every implementation is a function with the signature of ``grunet.reference.gru_layer``, taking the
contract of grunet.contract: ``(x (T,B,I), h0 (B,H) or None (zeros), weights: LayerWeights, spec: CellSpec,
masks: Masks, lengths) -> (output (T,B,H), h_n (B,H))``, differentiable through autograd.

impl="reference": the plain PyTorch loop (always available).
impl="fused":     the compiled kernel for the input's device and dtype; raises GrunetError if it cannot be
                  had (no kernel for the device, a dtype it does not run, a failed build).
impl="auto":      the fused kernel when it is available for the input, else the reference, with one warning
                  when a kernel exists for the device but could not be built or loaded (a dtype the
                  kernel does not run, such as float16, goes to the reference without a word).
impl="triton":    grunet's Triton kernel (kernels/gpu/triton_layer.py) for every cell, on CUDA tensors, or on
                  CPU tensors under Triton's interpreter (TRITON_INTERPRET=1); raises GrunetError elsewhere.
The fused kernel of a device: cpu/ (C++) on CPU; gpu/ on CUDA, which is cuDNN (torch.nn.GRU's own kernel) for
the cells it computes exactly (reset-after, sigmoid, no layer norm / recurrent dropout / zoneout) and the
Triton kernel for the others.
Kernels are built lazily (on first use) so that importing grunet needs neither a compiler nor CUDA.
"""
from __future__ import annotations

import importlib
import warnings
from typing import Callable

from torch import Tensor

from ..contract import CellSpec
from ..errors import GrunetError

IMPLS = ("auto", "reference", "fused", "triton")

# device type -> module that provides ``load()`` (raises KernelUnavailable) and ``gru_layer``
_FUSED_MODULES = {"cpu": "grunet.kernels.cpu", "cuda": "grunet.kernels.gpu"}
_warned: set[str] = set()


class KernelUnavailable(RuntimeError):
    """A fused kernel cannot be built or loaded here (no compiler, build error, unsupported device)."""


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise GrunetError(f"impl: expected one of {list(IMPLS)}, got {impl!r}")
    return impl


_imported: dict[str, object] = {}  # module name -> the imported kernel module (import_module costs ~3 us a call)


def kernel_module(device_type: str):
    """The module of the fused kernel for ``device_type`` (imported, not built): ``load()``, ``gru_layer``
    and ``SUPPORTED_DTYPES``."""
    name = _FUSED_MODULES.get(device_type)
    if name is None:
        raise KernelUnavailable(f"no fused GRU kernel for device type {device_type!r} (there is one for: "
                                f"{', '.join(_FUSED_MODULES)})")
    module = _imported.get(name)
    if module is None:
        try:
            module = _imported[name] = importlib.import_module(name)
        except ImportError as e:  # pragma: no cover - the module ships with the package
            raise KernelUnavailable(f"{name} could not be imported: {e}") from e
    return module


def fused_layer(device_type: str) -> Callable:
    """The fused layer function for ``device_type``, building the kernel on first use."""
    module = kernel_module(device_type)
    module.load()
    return module.gru_layer


def layer_function(impl: str, x: Tensor, cell: CellSpec = CellSpec()) -> Callable:
    """Choose the implementation of one GRU layer for input ``x`` and ``cell`` (see module docstring)."""
    check_impl(impl)
    if impl == "reference":
        from ..reference import gru_layer

        return gru_layer
    if impl == "triton":
        return triton_function(x)
    try:
        module = kernel_module(x.device.type)
        if x.dtype not in module.SUPPORTED_DTYPES:  # the kernel does not run it: the reference loop does
            if impl == "fused":
                kinds = " or ".join(str(d).replace("torch.", "") for d in module.SUPPORTED_DTYPES)
                raise GrunetError(f"impl='fused': expected {kinds} input on {x.device.type} (impl='auto' runs "
                                  f"other dtypes in the reference loop), got {str(x.dtype).replace('torch.', '')}")
            from ..reference import gru_layer

            return gru_layer
        if not module.supports(cell):
            if impl == "fused":
                raise GrunetError(f"impl='fused': expected a cell the {x.device.type} kernel computes, got {cell}")
            from ..reference import gru_layer

            return gru_layer
        module.load()
        return module.gru_layer
    except KernelUnavailable as e:
        if impl == "fused":
            raise GrunetError(f"impl: 'fused' was asked for, but the fused kernel is unavailable: {e}") from e
        from ..reference import gru_layer

        if x.device.type in _FUSED_MODULES and x.device.type not in _warned:
            _warned.add(x.device.type)
            warnings.warn(f"grunet: fused GRU kernel unavailable ({e}); using the reference loop", stacklevel=3)
        return gru_layer


def triton_function(x: Tensor) -> Callable:
    """The Triton kernel's layer function for ``x``, or GrunetError saying why it cannot run it."""
    gpu = kernel_module("cuda")
    reason = gpu.triton_unavailable()
    if reason is not None:
        raise GrunetError(f"impl='triton': {reason}")
    module = gpu.triton_module()
    if not module.runs_on(x):
        raise GrunetError(f"impl='triton': expected a CUDA tensor (or TRITON_INTERPRET=1 for CPU tensors), got "
                          f"a {x.device.type} tensor")
    if x.dtype not in module.SUPPORTED_DTYPES:
        kinds = ", ".join(str(d).replace("torch.", "") for d in module.SUPPORTED_DTYPES)
        raise GrunetError(f"impl='triton': expected {kinds} input, got {str(x.dtype).replace('torch.', '')}")
    return module.gru_layer


# The kernels' Python modules are imported now rather than at the first forward, which torch.compile may be
# tracing (it cannot trace an import). Importing one builds nothing: its load() does, on first use.
for _device_type in _FUSED_MODULES:
    kernel_module(_device_type)
