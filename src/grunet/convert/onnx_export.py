"""export_onnx: a StackModel (or GRU SequenceClassifier) as an ONNX graph built with onnx.helper.

Graph (dynamic "batch" and "time" axes; input "input" (batch, time, I), output "output"):
    Transpose(input, [1, 0, 2])                             -> x (T, B, I): the GRU operator's layout 0
    per GRU layer:  GRU(x, W, R, B)                         -> Y (T, D, B, U), Y_h (D, B, U)
        W (D, 3U, I), R (D, 3U, U): rows z | r | h;  B (D, 6U) = [Wb, Rb] (layout.torch_to_onnx)
        linear_before_reset = 1 for reset-after, 0 for reset-before (one bias in Wb, Rb = 0)
        activations [f, Tanh] per direction, f = Sigmoid, or HardSigmoid(alpha, beta) = clip(alpha x + beta):
            hard_sigmoid_keras2 alpha 0.2, beta 0.5; hard_sigmoid_keras3 alpha 1/6, beta 0.5
        return_sequences: Transpose(Y, [0, 2, 1, 3]) + Reshape [0, 0, -1]  -> (T, B, D*U)
        else:             Transpose(Y_h, [1, 0, 2]) + Reshape [0, -1]      -> (B, D*U)
        merge_mode sum | mul | ave: Gather each direction (Y axis 1, Y_h axis 0), then Add | Mul | Add + Div 2
    per Dense layer: MatMul(x, W^T) + Add(b), then Relu | Tanh | Sigmoid | Softmax(axis -1); Activation: the op alone
    Dropout, SpatialDropout1D: no node (identity at inference)
    Flatten of a sequence: Transpose [1, 0, 2] + Reshape [0, -1] -> (B, T*F); of a vector: no node
    a sequence output goes back to batch-first with Transpose [1, 0, 2].
A GRU with layer_norm or zoneout (no such thing in the GRU operator) is refused by name; its dropouts act in
training only and leave no trace in the inference graph. Masking and Embedding are refused by name (the GRU operator has no per-step mask; token-id inputs are not
exported). Opsets OPSET_MIN..OPSET_MAX are supported (each checked with onnxruntime in the tests); the IR
version is the lowest that the opset needs.
"""
from __future__ import annotations

import os
from typing import Union

import numpy as np
from torch import nn

from ..errors import GrunetError, expect, require
from ..fileio import write_bytes
from .layout import torch_to_onnx
from .stack import (ActivationSpec, DenseSpec, EmbeddingSpec, FlattenSpec, GRUSpec, MaskingSpec, StackModel,
                    as_stack)

OPSET, OPSET_MIN, OPSET_MAX, IR_VERSION_MIN = 17, 14, 23, 8
HARD_SIGMOID = {"hard_sigmoid_keras2": (0.2, 0.5), "hard_sigmoid_keras3": (1.0 / 6.0, 0.5)}
DENSE_OPS = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid"}


def _onnx():
    return require("onnx", "export ONNX", "convert")


def check_opset(opset) -> int:
    """``opset`` if the exporter supports it, else one GrunetError line with the supported range."""
    ok = isinstance(opset, int) and not isinstance(opset, bool) and OPSET_MIN <= opset <= OPSET_MAX
    expect(ok, "opset", f"an integer from {OPSET_MIN} to {OPSET_MAX} (the opsets this exporter supports)",
           repr(opset)[:40])
    return opset


def check_exportable(stack: StackModel) -> None:
    for spec in stack.specs:
        for option in ("layer_norm", "zoneout"):  # dropouts act in training only: the inference graph is exact
            value = getattr(spec, option, None)
            if value:
                raise GrunetError(f"layer {spec.name!r} (GRU): expected a GRU without {option} for ONNX (the ONNX "
                                  f"GRU operator has no {option}), got {option}={value}")
        if isinstance(spec, (MaskingSpec, EmbeddingSpec)):
            kind = "Masking" if isinstance(spec, MaskingSpec) else "Embedding"
            raise GrunetError(f"layer {spec.name!r} ({kind}): expected layers the ONNX export supports (GRU, "
                              f"Bidirectional, Dense, Activation, Dropout, Flatten), got {kind} (not exported: the "
                              "ONNX GRU operator has no per-step mask and the graph's input is a float sequence)")


def build_onnx(model: nn.Module, opset: int = OPSET):
    """The onnx.ModelProto of ``model`` (checked with onnx.checker)."""
    check_opset(opset)
    stack: StackModel = as_stack(model)
    check_exportable(stack)
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []

    def const(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.array(array, order="C"), name))  # keeps 0-d scalars 0-d
        return name

    def node(op: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def activation(name: str, x: str, layer: str) -> str:
        if name == "softmax":
            return node("Softmax", [x], f"{layer}.softmax", axis=-1)
        if name in DENSE_OPS:
            return node(DENSE_OPS[name], [x], f"{layer}.{name}")
        return x

    features = stack.input_shape[1]
    x = node("Transpose", ["input"], "input_time_major", perm=[1, 0, 2])
    sequence = True  # x is (T, B, F) while True, (B, F) after a GRU without return_sequences
    for spec, layer in zip(stack.specs, stack.layers):
        name = spec.name
        if isinstance(spec, GRUSpec):
            Ws, Rs, Bs = [], [], []
            for suffix in ("", "_reverse")[: spec.directions]:
                w_ih, w_hh, b_ih, b_hh = (None if t is None else t.detach().cpu().numpy().astype(np.float32)
                                          for t in layer.layer_weights(0, suffix).gru)
                W, R, B = torch_to_onnx(w_ih, w_hh, b_ih, b_hh, spec.reset_after)
                Ws.append(W), Rs.append(R), Bs.append(B)
            inputs = [x, const(f"{name}.W", np.stack(Ws)), const(f"{name}.R", np.stack(Rs))]
            if spec.use_bias:
                inputs.append(const(f"{name}.B", np.stack(Bs)))
            attrs = {"hidden_size": spec.units, "linear_before_reset": int(spec.reset_after),
                     "direction": "bidirectional" if spec.bidirectional else "forward"}
            if spec.recurrent_activation == "sigmoid":
                attrs["activations"] = ["Sigmoid", "Tanh"] * spec.directions
            else:
                alpha, beta = HARD_SIGMOID[spec.recurrent_activation]
                attrs["activations"] = ["HardSigmoid", "Tanh"] * spec.directions
                attrs["activation_alpha"] = [alpha] * spec.directions  # consumed only by HardSigmoid
                attrs["activation_beta"] = [beta] * spec.directions
            Y, Y_h = f"{name}.Y", f"{name}.Y_h"
            nodes.append(helper.make_node("GRU", inputs, [Y, Y_h], name=name, **attrs))
            if spec.merge_mode != "concat":
                source, axis = (Y, 1) if spec.return_sequences else (Y_h, 0)
                fwd = node("Gather", [source, const(f"{name}.index_fwd", np.array(0, np.int64))], f"{name}.fwd",
                           axis=axis)
                bwd = node("Gather", [source, const(f"{name}.index_bwd", np.array(1, np.int64))], f"{name}.bwd",
                           axis=axis)
                op = "Mul" if spec.merge_mode == "mul" else "Add"
                x = node(op, [fwd, bwd], f"{name}.{spec.merge_mode}")
                if spec.merge_mode == "ave":
                    x = node("Div", [x, const(f"{name}.two", np.array(2.0, np.float32))], f"{name}.ave_out")
            elif spec.return_sequences:
                t = node("Transpose", [Y], f"{name}.Y_tbdu", perm=[0, 2, 1, 3])
                x = node("Reshape", [t, const(f"{name}.shape", np.array([0, 0, -1], np.int64))], f"{name}.out")
            else:
                t = node("Transpose", [Y_h], f"{name}.Y_h_bdu", perm=[1, 0, 2])
                x = node("Reshape", [t, const(f"{name}.shape", np.array([0, -1], np.int64))], f"{name}.out")
            sequence = spec.return_sequences
        elif isinstance(spec, DenseSpec):
            weight = layer.weight.detach().cpu().numpy().astype(np.float32)
            x = node("MatMul", [x, const(f"{name}.kernel", weight.T)], f"{name}.matmul")
            if layer.bias is not None:
                bias = layer.bias.detach().cpu().numpy().astype(np.float32)
                x = node("Add", [x, const(f"{name}.bias", bias)], f"{name}.linear")
            x = activation(spec.activation, x, name)
        elif isinstance(spec, ActivationSpec):
            x = activation(spec.activation, x, name)
        elif isinstance(spec, FlattenSpec) and sequence:
            t = node("Transpose", [x], f"{name}.batch_major", perm=[1, 0, 2])
            x = node("Reshape", [t, const(f"{name}.shape", np.array([0, -1], np.int64))], f"{name}.out")
            sequence = False
        # Dropout, SpatialDropout1D, Flatten of a vector: the identity
    if sequence:
        x = node("Transpose", [x], "output", perm=[1, 0, 2])
        out_shape = ["batch", "time", stack.output_size]
    else:
        x = node("Identity", [x], "output")
        out_shape = ["batch", stack.output_size]
    graph = helper.make_graph(
        nodes, "grunet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", "time", features])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)],
        initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="grunet")
    # the IR version an opset needs (opset 21 needs IR 10); older runtimes read older IR versions
    proto.ir_version = max(IR_VERSION_MIN, helper.find_min_ir_version_for([helper.make_opsetid("", opset)]))
    proto.doc_string = f"output_kind={stack.output_kind}"
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(model: nn.Module, path: Union[str, os.PathLike], opset: int = OPSET) -> None:
    """Write ``model`` (StackModel or GRU SequenceClassifier) as an ONNX file at ``path``."""
    write_bytes(path, build_onnx(model, opset).SerializeToString())  # atomic: nothing half-written
