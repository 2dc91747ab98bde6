"""GRU layer on Triton: one persistent kernel launch per layer and direction runs the whole time loop.

Same function as grunet.reference.gru_layer (the equations are there, in grunet.contract and beside the
kernels in triton_kernels.py), with the arguments of grunet.contract: ``gru_layer(x (T,B,I), h0 (B,H) or
None (zeros), weights, spec, masks, lengths) -> (out (T,B,H), h_n (B,H))``. Every CellSpec runs: both
variants, the three recurrent activations, reverse, lengths, layer norm, recurrent dropout and zoneout (the
kernels read the (B, H) and (T, B, H) masks), input and weight dropout (applied to x and W_hh first, by
grunet.reference.masked_inputs, as in every implementation).

How it runs:
- the input side of all steps at once, G = x W_ih^T + b_ih (T, B, 3H) (layer norm: LN(x W_ih^T) g_ih +
  b_ih), is one torch product (cuBLAS on a GPU), left to autograd: dx, dW_ih, db_ih, dg_ih come from it;
- one forward launch walks the sequence, each program holding BLOCK_B batch rows. Up to REGISTER_UNITS
  (H padded to a power of two) the state stays in registers and, up to RESIDENT_UNITS, W_hh too; wider
  layers use the wide kernels (state and products in small global buffers, products in column tiles). In
  training it saves r, z, n, a (reset-after) or r*h_in (reset-before), h_prev (and layer norm's xhat and
  rstd) per step; without grad, or when nothing requires grad, it saves nothing;
- the backward is one launch walking time the other way, returning dG = [da_r | da_z | da_n] for every step
  (the gradient of G) and dh0; dW_hh, db_hh and dg_hh are then a few large torch products over all steps.
float32 throughout inside; float16 and bfloat16 inputs are computed in float32 (state, products and
accumulation) and the outputs returned in the input's dtype. float64 is refused.

CUDA tensors run the compiled kernels. With TRITON_INTERPRET=1 in the environment, CPU tensors run the same
kernels in Triton's interpreter (numpy, slow: for tests on machines without a GPU).

Under torch.compile the layer is left out of the graph (torch.compiler.disable: one graph break per layer
call) and runs as in eager mode: Dynamo would otherwise trace into the launches (and into the interpreter,
which it cannot run); the time loop is one launch either way.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ...contract import LAYER_NORM_EPS, NO_MASKS, CellSpec, LayerWeights, Masks
from ...errors import GrunetError
from ...reference import gru_layer as reference_layer
from ...reference import masked_inputs

__all__ = ["available", "runs_on", "supports", "gru_layer", "SUPPORTED_DTYPES"]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ACTIVATION_CODES = {"sigmoid": 0, "hard_sigmoid_keras2": 1, "hard_sigmoid_keras3": 2}
BLOCK_B = 16  # batch rows per program: tl.dot's smallest tile side
# Up to REGISTER_UNITS (H padded to a power of two) each program keeps its rows' state in registers and
# multiplies by whole (HP, HP) tiles of W_hh; above it, the wide kernels keep the state in a global buffer
# and multiply in (BLOCK_B, block) tiles, block = WIDE_BLOCK or, when that is None, 32 up to 128 units (75
# units: 96 columns computed rather than 128) and 64 above. Compiled for sm_90, the register kernels at 64
# units take 52 KiB (forward) and 108 KiB (backward) of shared memory, at 128 units 392 and 536 KiB, over
# the 227 KiB an H100/H200 block may have: hence 64. Module variables, so that tests can send small layers
# through the other kernels.
REGISTER_UNITS = 64
WIDE_BLOCK: Optional[int] = None
# Up to RESIDENT_UNITS (padded) the register kernels load W_hh's three gate tiles once, before the time loop,
# and keep them on chip for the whole sequence; wider, every step reads them again (from L2 after the first).
RESIDENT_UNITS = 64

_kernel_modules: dict[bool, object] = {}  # interpreted? -> the loaded triton_kernels module


def _interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available() -> Optional[str]:
    """None when the kernel can run here (triton imports, and CUDA or TRITON_INTERPRET=1), else why not."""
    try:
        import triton  # noqa: F401
    except ImportError as e:
        return f"triton could not be imported ({e}); pip install 'grunet[gpu]'"
    if not torch.cuda.is_available() and not _interpreter_on():
        return "no CUDA device (set TRITON_INTERPRET=1 to run the kernel on CPU tensors in Triton's interpreter)"
    return None


def runs_on(x: Tensor) -> bool:
    """Whether the kernel runs on x's device: CUDA, or CPU with TRITON_INTERPRET=1."""
    return x.is_cuda or (x.device.type == "cpu" and _interpreter_on())


def supports(spec: CellSpec) -> bool:
    """Whether the kernel computes ``spec``: every CellSpec (input and weight dropout are applied before it,
    as in every implementation: grunet.reference.masked_inputs)."""
    return isinstance(spec, CellSpec)


def _kernels(interpreted: bool):
    """triton_kernels imported for the compiled (CUDA) or the interpreted (CPU) path.

    Triton decides at decoration time whether a @triton.jit function is interpreted (TRITON_INTERPRET as it
    is then), so the file is executed once per mode under its own module name with the variable set for
    that import: the mode no longer depends on what imported triton first (torch.compile does, for one)."""
    module = _kernel_modules.get(interpreted)
    if module is None:
        name = f"{__package__}.triton_kernels_{'interpreted' if interpreted else 'compiled'}"
        path = os.path.join(os.path.dirname(__file__), "triton_kernels.py")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        before = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1" if interpreted else "0"
        try:
            sys.modules[name] = module  # the jit functions find their module's globals through it
            spec.loader.exec_module(module)
        finally:
            if before is None:
                del os.environ["TRITON_INTERPRET"]
            else:
                os.environ["TRITON_INTERPRET"] = before
        _kernel_modules[interpreted] = module
    return module


def _padded(H: int) -> int:
    """H rounded up to a power of two, at least 16 (tl.dot's smallest tile side)."""
    return max(16, 1 << (H - 1).bit_length())


class _Call:
    """The constants of one layer call, shared by its forward and backward launches."""

    def __init__(self, spec: CellSpec, masks: Masks, T: int, B: int, H: int):
        self.T, self.B, self.H = T, B, H
        self.reset_after = spec.reset_after
        self.act = ACTIVATION_CODES[spec.activation]
        self.reverse = spec.reverse
        self.layer_norm = spec.layer_norm
        if masks.zoneout is not None:
            self.zone, self.keep_eval = 1, 1.0
        elif spec.zoneout:
            self.zone, self.keep_eval = 2, 1.0 - spec.zoneout
        else:
            self.zone, self.keep_eval = 0, 1.0
        self.grid = (-(-B // BLOCK_B),)
        self.HP = _padded(H)
        self.wide = self.HP > REGISTER_UNITS
        self.resident = self.HP <= RESIDENT_UNITS
        self.block = WIDE_BLOCK or (32 if H <= 128 else 64)
        self.num_warps = 4 if self.HP <= 32 else 8


def _or(t: Optional[Tensor], dummy: Tensor) -> Tensor:
    """A pointer argument for an absent tensor (its kernel flag is off, so it is never read)."""
    return t if t is not None else dummy


class _TritonGRU(torch.autograd.Function):
    """(G, h0, w_hh, b_hh, g_hh) -> (out, h_n); masks and lengths are constants of the call."""

    @staticmethod
    def forward(ctx, G, h0, w_hh, b_hh, g_hh, m_rec, zone, lengths, call: _Call, kernels, store: bool):
        T, B, H = call.T, call.B, call.H
        out = G.new_empty(T, B, H)
        h_n = G.new_empty(B, H)
        # r, z, n, aux (a or rh), h_prev; layer norm also xhat (T, B, 3H) and rstd (T, B)
        saved = [G.new_empty(T, B, H) for _ in range(5)] if store else [out] * 5
        ln_saved = [G.new_empty(T, B, 3 * H), G.new_empty(T, B)] if store and call.layer_norm else [out] * 2
        args = (G, w_hh, _or(b_hh, out), _or(h0, out), _or(m_rec, out), _or(zone, out), _or(lengths, out),
                out, h_n, *saved)
        flags = dict(RESET_AFTER=call.reset_after, ACT=call.act, REVERSE=call.reverse, HAS_H0=h0 is not None,
                     HAS_B_HH=b_hh is not None, HAS_M_REC=m_rec is not None, ZONE=call.zone,
                     HAS_LEN=lengths is not None, STORE=store, BLOCK_B=BLOCK_B)
        if call.wide:
            scratch = (G.new_empty(2, B, H), G.new_empty(B, 3 * H), G.new_empty(B, H))
            kernels.gru_forward_wide_kernel[call.grid](
                *args, _or(g_hh, out), *ln_saved, *scratch, T, B, H, call.keep_eval, LAYER_NORM_EPS, **flags,
                LAYER_NORM=call.layer_norm, BLOCK_N=call.block, BLOCK_K=call.block)
        else:
            kernels.gru_forward_kernel[call.grid](
                *args, _or(g_hh, out), *ln_saved, T, B, H, call.keep_eval, LAYER_NORM_EPS, **flags,
                LAYER_NORM=call.layer_norm, RESIDENT=call.resident, HP=call.HP, num_warps=call.num_warps)
        if store:
            ctx.save_for_backward(w_hh, g_hh, m_rec, zone, lengths, *saved, *(ln_saved if call.layer_norm else ()))
        ctx.call, ctx.kernels, ctx.stored = call, kernels, store
        return out, h_n

    @staticmethod
    def backward(ctx, d_out, d_hn):
        if not ctx.stored:  # pragma: no cover - autograd calls backward only when a gradient is due
            raise RuntimeError("grunet triton GRU: backward without saved activations")
        w_hh, g_hh, m_rec, zone, lengths, r, z, n, aux, h_prev, *ln_saved = ctx.saved_tensors
        call, kernels = ctx.call, ctx.kernels
        T, B, H = call.T, call.B, call.H
        d_G = r.new_empty(T, B, 3 * H)
        d_a = r.new_empty(T, B, H) if call.reset_after else d_G
        d_P = r.new_empty(T, B, 3 * H) if call.layer_norm else d_G
        d_h0 = r.new_empty(B, H)
        args = (w_hh, _or(m_rec, r), _or(zone, r), _or(lengths, r), r, z, n, aux, h_prev,
                d_out.contiguous() if d_out is not None else r, d_hn.contiguous() if d_hn is not None else r,
                d_G, d_a, d_h0)
        flags = dict(RESET_AFTER=call.reset_after, ACT=call.act, REVERSE=call.reverse, HAS_D_OUT=d_out is not None,
                     HAS_D_HN=d_hn is not None, HAS_M_REC=m_rec is not None, ZONE=call.zone,
                     HAS_LEN=lengths is not None, BLOCK_B=BLOCK_B)
        xhat, rstd = ln_saved if call.layer_norm else (r, r)
        if call.wide:
            scratch = (r.new_empty(2, B, H), r.new_empty(B, H))
            kernels.gru_backward_wide_kernel[call.grid](
                *args, _or(g_hh, r), xhat, rstd, d_P, *scratch, T, B, H, call.keep_eval, **flags,
                LAYER_NORM=call.layer_norm, BLOCK_N=call.block, BLOCK_K=call.block)
        else:
            kernels.gru_backward_kernel[call.grid](
                *args, _or(g_hh, r), xhat, rstd, d_P, T, B, H, call.keep_eval, **flags,
                LAYER_NORM=call.layer_norm, RESIDENT=call.resident, HP=call.HP, num_warps=call.num_warps)
        need_G, need_h0, need_w, need_b, need_g = ctx.needs_input_grad[:5]
        d_w_hh = d_b_hh = d_g_hh = None
        if need_w or need_b or need_g:
            rows = T * B
            h_in = (h_prev if m_rec is None else h_prev * m_rec).view(rows, H)  # what the products read
            if call.reset_after:  # gh = W_hh h_in + b_hh (layer norm: LN(W_hh h_in) g_hh + b_hh)
                d_gh = torch.cat((d_G[..., : 2 * H], d_a), -1).view(rows, 3 * H)  # [da_r | da_z | da]
                if need_w:  # layer norm: the kernel took d_gh through the norm to dP = d(W_hh h_in)
                    d_w_hh = (d_P.view(rows, 3 * H) if call.layer_norm else d_gh).T @ h_in
                if need_b:
                    d_b_hh = d_gh.sum(0)
                if need_g:
                    d_g_hh = (d_gh * ln_saved[0].view(rows, 3 * H)).sum(0)
            elif need_w:  # W_h[rz] reads h_in, W_hn reads rh = r * h_in
                flat = d_G.view(rows, 3 * H)
                d_w_hh = torch.cat((flat[:, : 2 * H].T @ h_in, flat[:, 2 * H:].T @ aux.view(rows, H)))
        return (d_G if need_G else None, d_h0 if need_h0 else None, d_w_hh, d_b_hh, d_g_hh,
                None, None, None, None, None, None)


def _check(x: Tensor) -> None:
    if x.dtype not in SUPPORTED_DTYPES:
        kinds = ", ".join(str(d).replace("torch.", "") for d in SUPPORTED_DTYPES)
        raise GrunetError(f"impl='triton': expected {kinds} input, got {str(x.dtype).replace('torch.', '')} "
                          "(float64 runs on the CPU kernels or the reference loop)")
    if not runs_on(x):
        raise GrunetError(f"impl='triton': expected a CUDA tensor (or a CPU tensor with TRITON_INTERPRET=1), got "
                          f"a {x.device.type} tensor")
    reason = available()
    if reason is not None:
        raise GrunetError(f"impl='triton': expected the Triton kernel to be available, got: {reason}")


@torch.compiler.disable  # torch.compile runs the layer as it is (a graph break): see the module docstring
def gru_layer(
    x: Tensor,
    h0: Optional[Tensor],
    weights: LayerWeights,
    spec: CellSpec = CellSpec(),
    masks: Masks = NO_MASKS,
    lengths: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """One GRU layer over x (T, B, I) from h0 (B, H) -> (output (T, B, H), h_n (B, H)); see module docstring."""
    _check(x)
    if x.shape[0] == 0 or x.shape[1] == 0:  # nothing to launch over (an empty grid or time loop)
        return reference_layer(x, h0, weights, spec, masks, lengths)
    x, weights = masked_inputs(x, weights, masks)
    dtype = x.dtype
    f32 = torch.float32
    T, B = x.shape[0], x.shape[1]
    H = weights.w_hh.shape[1]
    # half inputs: everything in float32 inside; autograd casts the gradients back to each input's dtype
    x32 = x.to(f32)
    w_ih, w_hh = weights.w_ih.to(f32), weights.w_hh.to(f32).contiguous()
    b_ih = weights.b_ih.to(f32) if weights.b_ih is not None else None
    b_hh = weights.b_hh.to(f32) if (spec.reset_after and weights.b_hh is not None) else None
    # the input side of every step in one product: G = x W_ih^T + b_ih (reset-before: b_ih is the one bias b;
    # layer norm: G = LN(x W_ih^T) g_ih + b_ih)
    x_flat = x32.reshape(T * B, -1)
    if spec.layer_norm:
        G = F.layer_norm(x_flat @ w_ih.T, (3 * H,), weights.g_ih.to(f32), b_ih, LAYER_NORM_EPS)
    elif b_ih is not None:
        G = torch.addmm(b_ih, x_flat, w_ih.T)
    else:
        G = x_flat @ w_ih.T
    G = G.view(T, B, 3 * H)
    g_hh = weights.g_hh.to(f32) if spec.layer_norm else None
    h0_32 = h0.to(f32).contiguous() if h0 is not None else None
    m_rec = masks.recurrent.to(device=x.device, dtype=f32).contiguous() if masks.recurrent is not None else None
    zone = masks.zoneout.to(device=x.device, dtype=f32).contiguous() if masks.zoneout is not None else None
    if lengths is not None:
        lengths = lengths.to(device=x.device, dtype=torch.int64).contiguous()
    call = _Call(spec, masks, T, B, H)
    kernels = _kernels(not x.is_cuda)
    # inference (grad off, or nothing requires grad) saves no activations
    store = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (G, h0_32, w_hh, b_hh, g_hh))
    out, h_n = _TritonGRU.apply(G.contiguous(), h0_32, w_hh, b_hh, g_hh, m_rec, zone, lengths, call, kernels, store)
    return out.to(dtype), h_n.to(dtype)
