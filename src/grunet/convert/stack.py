"""StackModel: a Keras-style stack of GRU and Dense layers, the common form of every converted model.

Input is batch-first x (B, T, I) as in Keras. Each layer reads the previous layer's output:
    GRU k  (grunet.GRU, one layer, optionally bidirectional; D = 2 if bidirectional else 1)
        return_sequences=True:   y = output              (B, T, D*U)   directions concatenated, forward first
        return_sequences=False:  y = [h_T fwd, h_1 bwd]   (B, D*U)      the final state of each direction
    Dense  y = act(x W^T + b)    on the last axis, so it also reads sequences (B, T, F) step by step;
           act in linear | relu | tanh | sigmoid | softmax (softmax over the last axis)
The output is whatever the last layer gives: probabilities when it is a softmax Dense (``output_kind``
"probabilities"), else "logits". ``predict_proba`` returns probabilities either way.

Config (``architecture_config()``, saved in checkpoints as kind "keras_stack"):
    {"input_shape": [T or None, I],
     "layers": [{"type": "gru", "name", "units", "reset_after", "recurrent_activation", "use_bias",
                 "return_sequences", "bidirectional"},
                {"type": "dense", "name", "units", "activation", "use_bias"}, ...]}
Parameters: ``layers.{i}.*``, a grunet.GRU's own names (weight_ih_l0[_reverse], ...) or nn.Linear's.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Optional, Union

import torch
from torch import Tensor, nn

from ..errors import GrunetError, expect
from ..layers import GRU
from ..reference import ACTIVATIONS

DENSE_ACTIVATIONS = ("linear", "relu", "tanh", "sigmoid", "softmax")


@dataclass
class GRUSpec:
    name: str
    units: int
    reset_after: bool = True
    recurrent_activation: str = "sigmoid"
    use_bias: bool = True
    return_sequences: bool = False
    bidirectional: bool = False

    kind = "gru"

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1


@dataclass
class DenseSpec:
    name: str
    units: int
    activation: str = "linear"
    use_bias: bool = True

    kind = "dense"


LayerSpec = Union[GRUSpec, DenseSpec]
_SPECS = {"gru": GRUSpec, "dense": DenseSpec}
_TYPES = {"name": str, "units": int, "reset_after": bool, "recurrent_activation": str, "use_bias": bool,
          "return_sequences": bool, "bidirectional": bool, "activation": str}


def spec_from_dict(d: dict, where: str) -> LayerSpec:
    expect(isinstance(d, dict), where, "a dict with a 'type'", type(d).__name__)
    kind = d.get("type")
    expect(kind in _SPECS, f"{where} type", f"one of {sorted(_SPECS)}", repr(kind))
    cls = _SPECS[kind]
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known - {"type"})
    expect(not unknown, where, f"keys from {sorted(known | {'type'})}", f"unknown {unknown}")
    missing = sorted({"name", "units"} - set(d))
    expect(not missing, where, "the keys 'name' and 'units'", f"none for {missing}")
    for key, value in d.items():
        if key in _TYPES:
            want = _TYPES[key]
            ok = isinstance(value, want) and (want is not int or not isinstance(value, bool))
            expect(ok, f"{where} {key}", want.__name__, repr(value))
    spec = cls(**{k: v for k, v in d.items() if k != "type"})
    check_spec(spec)
    return spec


def spec_to_dict(spec: LayerSpec) -> dict:
    return {"type": spec.kind, **asdict(spec)}


def check_spec(spec: LayerSpec) -> None:
    where = f"layer {spec.name!r}"
    expect(spec.units >= 1, f"{where} units", "an integer >= 1", spec.units)
    if isinstance(spec, GRUSpec):
        expect(spec.recurrent_activation in ACTIVATIONS, f"{where} recurrent_activation",
               f"one of {sorted(ACTIVATIONS)}", repr(spec.recurrent_activation))
    else:
        expect(spec.activation in DENSE_ACTIVATIONS, f"{where} activation", f"one of {list(DENSE_ACTIVATIONS)}",
               repr(spec.activation))


def _dense_activation(name: str, y: Tensor) -> Tensor:
    if name == "relu":
        return torch.relu(y)
    if name == "tanh":
        return torch.tanh(y)
    if name == "sigmoid":
        return torch.sigmoid(y)
    if name == "softmax":
        return torch.softmax(y, dim=-1)
    return y


class StackModel(nn.Module):
    """forward(x (B, T, I)) -> the last layer's output; see the module docstring."""

    def __init__(self, input_shape: tuple[Optional[int], int], specs: list[LayerSpec], impl: str = "auto") -> None:
        super().__init__()
        expect(isinstance(input_shape, (tuple, list)) and len(input_shape) == 2, "input_shape",
               "(T or None, I)", repr(input_shape))
        steps, features = input_shape
        expect(steps is None or (isinstance(steps, int) and steps >= 1), "input_shape T", "None or an integer >= 1",
               repr(steps))
        expect(isinstance(features, int) and features >= 1, "input_shape I", "an integer >= 1", repr(features))
        expect(len(specs) >= 1, "layers", "at least one GRU or Dense layer", "none")
        names = [s.name for s in specs]
        dup = sorted({n for n in names if names.count(n) > 1})
        expect(not dup, "layers", "unique layer names", f"repeated {dup}")
        self.input_shape = (steps, features)
        self.specs = list(specs)
        self.impl = impl
        self.layers = nn.ModuleList()
        width, sequence = features, True
        for spec in self.specs:
            check_spec(spec)
            if isinstance(spec, GRUSpec):
                if not sequence:
                    raise GrunetError(f"layer {spec.name!r} (GRU): expected a sequence input (B, T, F), got a vector "
                                      f"(B, {width}): the GRU before it has return_sequences=False")
                self.layers.append(GRU(width, spec.units, bias=spec.use_bias, batch_first=True,
                                       bidirectional=spec.bidirectional, reset_after=spec.reset_after,
                                       recurrent_activation=spec.recurrent_activation, impl=impl))
                width, sequence = spec.units * spec.directions, spec.return_sequences
            else:
                self.layers.append(nn.Linear(width, spec.units, bias=spec.use_bias))
                width = spec.units
        self.output_size = width
        last = self.specs[-1]
        self.output_kind = "probabilities" if isinstance(last, DenseSpec) and last.activation == "softmax" else "logits"

    def forward(self, x: Tensor) -> Tensor:
        expect(isinstance(x, Tensor) and x.dim() == 3, "x", "a (B, T, I) tensor",
               tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__)
        y = x
        for spec, layer in zip(self.specs, self.layers):
            if isinstance(spec, GRUSpec):
                out, h_n = layer(y)
                y = out if spec.return_sequences else torch.cat(list(h_n), dim=1)
            else:
                y = _dense_activation(spec.activation, layer(y))
        return y

    @torch.no_grad()
    def predict_proba(self, x: Tensor) -> Tensor:
        y = self(x)
        return y if self.output_kind == "probabilities" else torch.softmax(y, dim=-1)

    @classmethod
    def from_config(cls, config: dict, impl: str = "auto") -> "StackModel":
        expect(isinstance(config, dict), "keras_stack config", "a dict", type(config).__name__)
        unknown = sorted(set(config) - {"input_shape", "layers"})
        expect(not unknown, "keras_stack config", "keys ['input_shape', 'layers']", f"unknown {unknown}")
        expect("input_shape" in config and "layers" in config, "keras_stack config", "keys 'input_shape' and 'layers'",
               sorted(config))
        layers = config["layers"]
        expect(isinstance(layers, list), "keras_stack config layers", "a list", type(layers).__name__)
        specs = [spec_from_dict(d, f"keras_stack layer {i}") for i, d in enumerate(layers)]
        return cls(tuple(config["input_shape"]), specs, impl=impl)

    def architecture_config(self) -> dict:
        return {"input_shape": list(self.input_shape), "layers": [spec_to_dict(s) for s in self.specs]}

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}, output_kind={self.output_kind!r}"


def as_stack(model: nn.Module) -> StackModel:
    """A StackModel with the same weights (copied exactly) and outputs as ``model``.

    Accepts a StackModel (returned as is) or grunet's SequenceClassifier with a GRU cell: its L-layer GRU
    becomes L one-layer GRUs (return_sequences on all but the last) and its Dense a linear Dense (logits).
    """
    if isinstance(model, StackModel):
        return model
    from ..model import SequenceClassifier

    if not isinstance(model, SequenceClassifier):
        raise GrunetError(f"model: expected a grunet StackModel or SequenceClassifier, got {type(model).__name__}")
    cfg = model.config
    if cfg.cell != "gru":
        raise GrunetError(f"model: expected a SequenceClassifier with cell 'gru', got cell {cfg.cell!r} "
                          "(only GRU layers convert)")
    rnn = model.rnn
    specs: list[LayerSpec] = [
        GRUSpec(name="gru" if k == 0 else f"gru_{k}", units=cfg.hidden_size, reset_after=cfg.reset_after,
                recurrent_activation=cfg.recurrent_activation, use_bias=rnn.bias,
                return_sequences=k < cfg.num_layers - 1, bidirectional=cfg.bidirectional)
        for k in range(cfg.num_layers)
    ]
    specs.append(DenseSpec(name="dense", units=cfg.num_classes, activation="linear"))
    stack = StackModel((None, cfg.input_size), specs, impl=rnn.impl)
    state = {}
    for name, p in rnn.state_dict().items():  # weight_ih_l{k}{suffix} -> layers.{k}.weight_ih_l0{suffix}
        base, _, rest = name.rpartition("_l")
        k, _, suffix = rest.partition("_")
        state[f"layers.{int(k)}.{base}_l0{'_' + suffix if suffix else ''}"] = p.detach().clone()
    for name, p in model.dense.state_dict().items():
        state[f"layers.{cfg.num_layers}.{name}"] = p.detach().clone()
    stack.load_state_dict(state)
    return stack.train(model.training)
