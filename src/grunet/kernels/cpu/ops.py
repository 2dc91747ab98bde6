"""What Python adds to the operators of the fused CPU GRU (gru_ops.cpp, gru_autograd.cpp).

    fake implementations  the output shapes of grunet::gru_layer, gru_layer_train and gru_layer_backward
                          without computing them: torch.compile and torch.export trace with these (the
                          saved tensors' layout comes from the kernel: ext.saved_columns)
    double backward       grunet::gru_layer_double_backward, the gradients recomputed with the reference
                          loop inside autograd (gains and masks included), so that create_graph=True gives
                          differentiable gradients (the fused backward is not itself differentiable)
    ONNX symbolic         the plain cell as the ONNX GRU operator; the cell options ONNX lacks are refused

``register(ext)`` runs once, after the extension (which defines the operators) is loaded.
"""
from __future__ import annotations

from types import ModuleType
from typing import Optional

import torch
from torch import Tensor

from ...contract import CellSpec, LayerWeights, Masks
from ...errors import GrunetError

ACTIVATION_NAMES = ("sigmoid", "hard_sigmoid_keras2", "hard_sigmoid_keras3")  # by the kernel's activation code

_library: Optional[torch.library.Library] = None  # keeps the Python registrations alive


def _empty(like: Tensor) -> Tensor:
    """What an operator returns for a gradient nobody asked for (an operator returns tensors, never None)."""
    return like.new_empty((0,))


def double_backward(dout: Optional[Tensor], dh_n: Optional[Tensor], x: Tensor, h0: Optional[Tensor], w_ih: Tensor,
                    w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor], g_ih: Optional[Tensor],
                    g_hh: Optional[Tensor], recurrent_mask: Optional[Tensor], zoneout_mask: Optional[Tensor],
                    lengths: Optional[Tensor], reset_after: bool, activation: int, reverse: bool, layer_norm: bool,
                    zoneout: float):
    """(dx, dh0, dw_ih, dw_hh, db_ih, db_hh, dg_ih, dg_hh) of the layer by the reference loop, themselves
    differentiable. x and w_hh arrive after input and weight dropout, so the reference gets the two masks
    the time loop reads and no others."""
    from ...reference import gru_layer

    spec = CellSpec(reset_after=reset_after, activation=ACTIVATION_NAMES[activation], reverse=reverse,
                    layer_norm=layer_norm, zoneout=zoneout)
    masks = Masks(recurrent=recurrent_mask, zoneout=zoneout_mask)
    inputs = (x, h0, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh)
    wanted = [t for t in inputs if t is not None and t.requires_grad]
    with torch.enable_grad():
        out, h_n = gru_layer(x, h0, LayerWeights(w_ih, w_hh, b_ih, b_hh, g_ih, g_hh), spec, masks, lengths)
        pairs = [(y, g) for y, g in ((out, dout), (h_n, dh_n)) if g is not None]
        grads = torch.autograd.grad([y for y, _ in pairs], wanted, [g for _, g in pairs], create_graph=True,
                                    allow_unused=True, materialize_grads=True) if wanted else ()
    by_input = dict(zip(map(id, wanted), grads))
    return tuple(by_input.get(id(t), _empty(w_hh)) if t is not None else _empty(w_hh) for t in inputs)


def register(ext: ModuleType) -> None:
    """Register the Python parts of the operators (once per process)."""
    global _library
    if _library is not None:
        return
    torch.onnx.register_custom_op_symbolic("grunet::gru_layer", onnx_gru_layer, ONNX_OPSET)
    _library = torch.library.Library("grunet", "IMPL")
    _library.impl("gru_layer_double_backward", double_backward, "CompositeImplicitAutograd")

    @torch.library.register_fake("grunet::gru_layer", lib=_library)
    def _(x, h0, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh, recurrent_mask, zoneout_mask, lengths, reset_after, activation,
          reverse, layer_norm, zoneout, threads):
        T, B, _ = x.shape
        H = w_hh.shape[1]
        return x.new_empty((T, B, H)), x.new_empty((B, H))

    @torch.library.register_fake("grunet::gru_layer_train", lib=_library)
    def _(x, h0, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh, recurrent_mask, zoneout_mask, lengths, reset_after, activation,
          reverse, layer_norm, zoneout, chunks):
        T, B, _ = x.shape
        I, H = w_ih.shape[1], w_hh.shape[1]
        # the layout is the kernel's (Saved::columns in gru_cpu.h): T*B rows each, an empty tensor where absent
        saved = [x.new_empty((T * B, c)) if c else x.new_empty((0,))
                 for c in ext.saved_columns(int(I), int(H), x.dtype == torch.float64, layer_norm)]
        return (x.new_empty((T, B, H)), x.new_empty((B, H)), *saved)

    @torch.library.register_fake("grunet::gru_layer_backward", lib=_library)
    def _(dout, dh_n, w_ih, w_hh, g_ih, g_hh, recurrent_mask, zoneout_mask, lengths, xs, gates, aux, hprev, xhat_x,
          xhat_h, rstd, reset_after, activation, reverse, layer_norm, zoneout, has_b_ih, has_b_hh, need_dx, need_dh0,
          need_weights, chunks, T):
        H, I = w_hh.shape[1], w_ih.shape[1]
        B = hprev.shape[0] // T if T else 0
        none = hprev.new_empty((0,))
        return (hprev.new_empty((T, B, I)) if need_dx else none,
                hprev.new_empty((B, H)) if need_dh0 else none,
                hprev.new_empty((3 * H, I)) if need_weights else none,
                hprev.new_empty((3 * H, H)) if need_weights else none,
                hprev.new_empty((3 * H,)) if need_weights and has_b_ih else none,
                hprev.new_empty((3 * H,)) if need_weights and has_b_hh and reset_after else none,
                hprev.new_empty((3 * H,)) if need_weights and layer_norm else none,
                hprev.new_empty((3 * H,)) if need_weights and layer_norm else none)


# ----------------------------------------------------------------------------------------------------
# ONNX (torch.onnx.export(..., dynamo=False), the TorchScript-based exporter): the layer is the ONNX GRU
# operator with one direction. ONNX orders the gate rows z | r | h where grunet has r | z | n, and takes the
# biases as one (6H,) vector [Wb, Rb]; reset-before has one bias, which goes to Wb (Rb = 0).
ONNX_OPSET = 14  # the lowest opset grunet's own ONNX export writes
ONNX_HARD_SIGMOID = {1: (0.2, 0.5), 2: (1.0 / 6.0, 0.5)}  # activation code -> (alpha, beta) of HardSigmoid


def onnx_gru_layer(g, x, h0, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh, recurrent_mask, zoneout_mask, lengths, reset_after,
                   activation, reverse, layer_norm, zoneout, threads):
    from torch.onnx import symbolic_helper as sh

    # ONNX's GRU has no layer norm, zoneout or recurrent dropout: refuse rather than write another function
    refused = [name for name, used in (("layer_norm", sh._parse_arg(layer_norm, "b")),
                                       ("zoneout", sh._parse_arg(zoneout, "f") or not sh._is_none(zoneout_mask)),
                                       ("recurrent_dropout", not sh._is_none(recurrent_mask))) if used]
    if refused:
        raise GrunetError(f"torch.onnx.export: expected a GRU the ONNX GRU operator computes, got one with "
                          f"{', '.join(refused)} (ONNX has no such operator; export with torch.export instead)")
    reset_after, reverse = sh._parse_arg(reset_after, "b"), sh._parse_arg(reverse, "b")
    activation = sh._parse_arg(activation, "i")
    H = sh._get_tensor_sizes(w_hh)[1]
    zrn = g.op("Constant", value_t=torch.cat([torch.arange(H, 2 * H), torch.arange(H), torch.arange(2 * H, 3 * H)]))

    def onnx_rows(w):  # r | z | n rows -> z | r | h, with the direction axis in front
        return sh._unsqueeze_helper(g, g.op("Gather", w, zrn, axis_i=0), [0])

    inputs = [x, onnx_rows(w_ih), onnx_rows(w_hh)]
    if not sh._is_none(b_ih):
        wb = g.op("Gather", b_ih, zrn, axis_i=0)
        rb = g.op("Gather", b_hh, zrn, axis_i=0) if reset_after and not sh._is_none(b_hh) else \
            g.op("Sub", wb, wb)  # zeros of wb's shape and type
        inputs.append(sh._unsqueeze_helper(g, g.op("Concat", wb, rb, axis_i=0), [0]))
    else:
        inputs.append(None)
    inputs.append(None if sh._is_none(lengths) else g.op("Cast", lengths, to_i=6))  # int32, as ONNX asks
    inputs.append(None if sh._is_none(h0) else sh._unsqueeze_helper(g, h0, [0]))
    while inputs[-1] is None:  # trailing optional inputs are left out, the others named as missing
        inputs.pop()
    inputs = [sh._optional_input_placeholder_tensor(g) if v is None else v for v in inputs]
    attrs = {"hidden_size_i": H, "linear_before_reset_i": int(reset_after),
             "direction_s": "reverse" if reverse else "forward"}
    if activation in ONNX_HARD_SIGMOID:
        alpha, beta = ONNX_HARD_SIGMOID[activation]
        attrs.update(activations_s=["HardSigmoid", "Tanh"], activation_alpha_f=[alpha], activation_beta_f=[beta])
    y, y_h = g.op("GRU", *inputs, outputs=2, **attrs)  # Y (T, 1, B, H), Y_h (1, B, H)
    return sh._squeeze_helper(g, y, [1]), sh._squeeze_helper(g, y_h, [0])
