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
    per Dense layer: MatMul(x, W^T) + Add(b), then Relu | Tanh | Sigmoid | Softmax(axis -1)
    a sequence output goes back to batch-first with Transpose [1, 0, 2].
"""
from __future__ import annotations

import os
from typing import Union

import numpy as np
from torch import nn

from ..errors import require
from ..fileio import write_bytes
from .layout import torch_to_onnx
from .stack import GRUSpec, StackModel, as_stack

OPSET, IR_VERSION = 17, 8
HARD_SIGMOID = {"hard_sigmoid_keras2": (0.2, 0.5), "hard_sigmoid_keras3": (1.0 / 6.0, 0.5)}
DENSE_OPS = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid"}


def _onnx():
    return require("onnx", "export ONNX", "convert")


def build_onnx(model: nn.Module, opset: int = OPSET):
    """The onnx.ModelProto of ``model`` (checked with onnx.checker)."""
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    stack: StackModel = as_stack(model)
    nodes, inits = [], []

    def const(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    features = stack.input_shape[1]
    x = node("Transpose", ["input"], "input_time_major", perm=[1, 0, 2])
    sequence = True  # x is (T, B, F) while True, (B, F) after a GRU without return_sequences
    for spec, layer in zip(stack.specs, stack.layers):
        name = spec.name
        if isinstance(spec, GRUSpec):
            Ws, Rs, Bs = [], [], []
            for suffix in ("", "_reverse")[: spec.directions]:
                w_ih, w_hh, b_ih, b_hh = (None if t is None else t.detach().cpu().numpy().astype(np.float32)
                                          for t in layer.layer_weights(0, suffix))
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
            if spec.return_sequences:
                t = node("Transpose", [Y], f"{name}.Y_tbdu", perm=[0, 2, 1, 3])
                x = node("Reshape", [t, const(f"{name}.shape", np.array([0, 0, -1], np.int64))], f"{name}.out")
            else:
                t = node("Transpose", [Y_h], f"{name}.Y_h_bdu", perm=[1, 0, 2])
                x = node("Reshape", [t, const(f"{name}.shape", np.array([0, -1], np.int64))], f"{name}.out")
            sequence = spec.return_sequences
        else:
            weight = layer.weight.detach().cpu().numpy().astype(np.float32)
            x = node("MatMul", [x, const(f"{name}.kernel", weight.T)], f"{name}.matmul")
            if layer.bias is not None:
                bias = layer.bias.detach().cpu().numpy().astype(np.float32)
                x = node("Add", [x, const(f"{name}.bias", bias)], f"{name}.linear")
            if spec.activation == "softmax":
                x = node("Softmax", [x], f"{name}.softmax", axis=-1)
            elif spec.activation in DENSE_OPS:
                x = node(DENSE_OPS[spec.activation], [x], f"{name}.{spec.activation}")
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
    proto.ir_version = IR_VERSION
    proto.doc_string = f"output_kind={stack.output_kind}"
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(model: nn.Module, path: Union[str, os.PathLike], opset: int = OPSET) -> None:
    """Write ``model`` (StackModel or GRU SequenceClassifier) as an ONNX file at ``path``."""
    write_bytes(path, build_onnx(model, opset).SerializeToString())
