"""StackModel: a Keras-style chain of layers, the common form of every converted model.

Input is batch-first x (B, T, I) as in Keras, or token ids (B, T) when the first layer is an Embedding
(then ``input_shape`` is (T or None, None)). Each layer reads the previous layer's output:
    GRU k  (grunet.GRU, one layer, optionally bidirectional; D = 2 if bidirectional else 1)
        return_sequences=True:   y = merge(forward outputs, backward outputs)      (B, T, W)
        return_sequences=False:  y = merge(h_T forward, h_1 backward)               (B, W)
        merge_mode: concat (W = D*U, forward first) | sum | mul | ave (W = U)
    Dense       y = act(x W^T + b) on the last axis, so it also reads sequences (B, T, F) step by step;
                act in linear | relu | tanh | sigmoid | softmax (softmax over the last axis)
    Activation  y = act(x), the same activations
    Dropout, SpatialDropout1D   y = x (they act only in training)
    Flatten     y = x.reshape(B, -1): a sequence (B, T, F) becomes (B, T*F) (T must be fixed); a vector stays
    Masking     m_t = any_f(x[:, t, f] != mask_value);  y = x * m
    Embedding   y = E[ids] (nn.Embedding); mask_zero: m_t = ids[:, t] != 0
A mask m (B, T) starts at Masking or Embedding(mask_zero) and flows through Dense, Activation, Dropout and
GRUs with return_sequences; a GRU without return_sequences and Flatten end it. A GRU that reads a mask
follows Keras: a masked step leaves the state as it was (h_t = h_{t-1}); its output there is the previous
output (zeros before the first valid step), and zeros inside a Bidirectional with return_sequences.
The backward direction runs from the last step to the first, skipping masked steps, so pre- and
post-padding, holes and all-padding rows give Keras's numbers.
The output is whatever the last layer gives: probabilities when the last layer that changes values is a
softmax (``output_kind`` "probabilities"), else "logits". ``predict_proba`` returns probabilities either way.

Config (``architecture_config()``, saved in checkpoints as kind "keras_stack"):
    {"input_shape": [T or None, I or None],
     "layers": [{"type": "gru", "name", "units", "reset_after", "recurrent_activation", "use_bias",
                 "return_sequences", "bidirectional", "merge_mode", and grunet.GRU's cell options
                 "input_dropout", "recurrent_dropout", "weight_dropout", "zoneout", "layer_norm" (absent: off)},
                {"type": "dense", "name", "units", "activation", "use_bias"},
                {"type": "activation", "name", "activation"}, {"type": "dropout", "name", "rate", "spatial"},
                {"type": "flatten", "name"}, {"type": "masking", "name", "mask_value"},
                {"type": "embedding", "name", "input_dim", "output_dim", "mask_zero"}, ...]}
Sizes are bounded (MAX_PARAMETERS, MAX_LAYERS) before anything is allocated.
Parameters: ``layers.{i}.*``, a grunet.GRU's own names (weight_ih_l0[_reverse], ...), nn.Linear's or
nn.Embedding's (weight).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..contract import NO_MASKS, PROBABILITIES, CellSpec, Masks, zoneout_keep
from ..errors import GrunetError, expect
from ..layers import GRU
from ..reference import ACTIVATIONS, gru_step, masked_inputs

DENSE_ACTIVATIONS = ("linear", "relu", "tanh", "sigmoid", "softmax")
MERGE_MODES = ("concat", "sum", "mul", "ave")
MAX_PARAMETERS = 1 << 30  # 4 GiB of float32: far above any GRU classifier, far below what would hang a machine
MAX_LAYERS = 256
MAX_SIZE = 1 << 24        # units, input width, vocabulary, steps: one number, each
CELL_OPTIONS = ("layer_norm", *PROBABILITIES)


@dataclass
class GRUSpec:
    name: str
    units: int
    reset_after: bool = True
    recurrent_activation: str = "sigmoid"
    use_bias: bool = True
    return_sequences: bool = False
    bidirectional: bool = False
    merge_mode: str = "concat"
    # grunet.GRU's cell options (grunet.contract); Keras has input_dropout (its `dropout`) and recurrent_dropout
    input_dropout: float = 0.0
    recurrent_dropout: float = 0.0
    weight_dropout: float = 0.0
    zoneout: float = 0.0
    layer_norm: bool = False

    kind = "gru"

    @property
    def cell_options(self) -> dict:
        return {name: getattr(self, name) for name in CELL_OPTIONS}

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def width(self) -> int:
        return self.units * self.directions if self.merge_mode == "concat" else self.units


@dataclass
class DenseSpec:
    name: str
    units: int
    activation: str = "linear"
    use_bias: bool = True

    kind = "dense"


@dataclass
class ActivationSpec:
    name: str
    activation: str = "linear"

    kind = "activation"


@dataclass
class DropoutSpec:
    name: str
    rate: float = 0.0
    spatial: bool = False  # SpatialDropout1D (whole channels) rather than Dropout; both identity at inference

    kind = "dropout"


@dataclass
class FlattenSpec:
    name: str

    kind = "flatten"


@dataclass
class MaskingSpec:
    name: str
    mask_value: float = 0.0

    kind = "masking"


@dataclass
class EmbeddingSpec:
    name: str
    input_dim: int
    output_dim: int
    mask_zero: bool = False

    kind = "embedding"


LayerSpec = Union[GRUSpec, DenseSpec, ActivationSpec, DropoutSpec, FlattenSpec, MaskingSpec, EmbeddingSpec]
_SPECS = {cls.kind: cls for cls in (GRUSpec, DenseSpec, ActivationSpec, DropoutSpec, FlattenSpec, MaskingSpec,
                                   EmbeddingSpec)}
_TYPES = {"name": str, "units": int, "reset_after": bool, "recurrent_activation": str, "use_bias": bool,
          "return_sequences": bool, "bidirectional": bool, "activation": str, "merge_mode": str, "rate": float,
          "spatial": bool, "mask_value": float, "input_dim": int, "output_dim": int, "mask_zero": bool,
          "input_dropout": float, "recurrent_dropout": float, "weight_dropout": float, "zoneout": float,
          "layer_norm": bool}
_REQUIRED = {"gru": ("units",), "dense": ("units",), "embedding": ("input_dim", "output_dim")}


def _type_ok(value, want: type) -> bool:
    if want is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, want) and (want is not int or not isinstance(value, bool))


def spec_from_dict(d: dict, where: str) -> LayerSpec:
    expect(isinstance(d, dict), where, "a dict with a 'type'", type(d).__name__)
    kind = d.get("type")
    expect(isinstance(kind, str) and kind in _SPECS, f"{where} type", f"one of {sorted(_SPECS)}", repr(kind)[:80])
    cls = _SPECS[kind]
    known = {f.name for f in fields(cls)}
    unknown = sorted(str(k)[:40] for k in set(d) - known - {"type"})
    expect(not unknown, where, f"keys from {sorted(known | {'type'})}", f"unknown {unknown[:5]}")
    required = ("name",) + _REQUIRED.get(kind, ())
    missing = [k for k in required if k not in d]
    expect(not missing, where, f"the keys {list(required)}", f"none for {missing}")
    for key, value in d.items():
        if key in _TYPES:
            expect(_type_ok(value, _TYPES[key]), f"{where} {key}", _TYPES[key].__name__, repr(value)[:80])
    spec = cls(**{k: (float(v) if _TYPES.get(k) is float else v) for k, v in d.items() if k != "type"})
    check_spec(spec)
    return spec


def spec_to_dict(spec: LayerSpec) -> dict:
    return {"type": spec.kind, **asdict(spec)}


def _size(value, what: str) -> None:
    expect(isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_SIZE, what,
           f"an integer in [1, {MAX_SIZE}]", repr(value)[:80])


def check_spec(spec: LayerSpec) -> None:
    where = f"layer {str(spec.name)[:80]!r}"
    expect(isinstance(spec.name, str) and 0 < len(spec.name) <= 256, "layer name", "a string of 1 to 256 characters",
           repr(spec.name)[:80])
    if isinstance(spec, GRUSpec):
        _size(spec.units, f"{where} units")
        expect(spec.recurrent_activation in ACTIVATIONS, f"{where} recurrent_activation",
               f"one of {sorted(ACTIVATIONS)}", repr(spec.recurrent_activation)[:80])
        expect(spec.merge_mode in MERGE_MODES, f"{where} merge_mode", f"one of {list(MERGE_MODES)}",
               repr(spec.merge_mode)[:80])
        expect(spec.bidirectional or spec.merge_mode == "concat", f"{where} merge_mode",
               "'concat' for a one-direction GRU", repr(spec.merge_mode))
        try:  # the cell options, checked as grunet.GRU checks them
            CellSpec(reset_after=spec.reset_after, **spec.cell_options)
        except GrunetError as e:
            raise GrunetError(f"{where} {e}") from None
    elif isinstance(spec, DenseSpec):
        _size(spec.units, f"{where} units")
        expect(spec.activation in DENSE_ACTIVATIONS, f"{where} activation", f"one of {list(DENSE_ACTIVATIONS)}",
               repr(spec.activation)[:80])
    elif isinstance(spec, ActivationSpec):
        expect(spec.activation in DENSE_ACTIVATIONS, f"{where} activation", f"one of {list(DENSE_ACTIVATIONS)}",
               repr(spec.activation)[:80])
    elif isinstance(spec, DropoutSpec):
        expect(0.0 <= spec.rate < 1.0, f"{where} rate", "a number in [0, 1)", repr(spec.rate))
    elif isinstance(spec, MaskingSpec):
        expect(not math.isinf(spec.mask_value), f"{where} mask_value", "a finite number", repr(spec.mask_value))
    elif isinstance(spec, EmbeddingSpec):
        _size(spec.input_dim, f"{where} input_dim")
        _size(spec.output_dim, f"{where} output_dim")


def parameter_count(input_shape: tuple, specs: list[LayerSpec]) -> int:
    """The number of weights ``specs`` need on inputs of ``input_shape``, computed without allocating."""
    steps, width = input_shape
    total = 0
    for spec in specs:
        if isinstance(spec, GRUSpec):
            U = spec.units
            per_direction = 3 * U * ((width or 0) + U) + (3 * U * (2 if spec.reset_after else 1) if spec.use_bias else 0)
            per_direction += 2 * 3 * U if spec.layer_norm else 0
            total += spec.directions * per_direction
            width = spec.width
        elif isinstance(spec, DenseSpec):
            total += (width or 0) * spec.units + (spec.units if spec.use_bias else 0)
            width = spec.units
        elif isinstance(spec, EmbeddingSpec):
            total += spec.input_dim * spec.output_dim
            width = spec.output_dim
        elif isinstance(spec, FlattenSpec) and steps is not None:
            width = (width or 0) * steps
    return total


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


def _merge(mode: str, forward: Tensor, backward: Tensor) -> Tensor:
    if mode == "sum":
        return forward + backward
    if mode == "mul":
        return forward * backward
    if mode == "ave":
        return (forward + backward) / 2
    return torch.cat([forward, backward], dim=-1)


def masked_gru(layer: GRU, spec: GRUSpec, x: Tensor, mask: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Keras's masked GRU over x (B, T, F) with mask (B, T): (outputs per direction (B, T, U), final states).

    Step by step with the reference equations: a masked step keeps the state; the output there is the
    previous output, or zeros in a Bidirectional with return_sequences (Keras's zero_output_for_mask).
    The cell options act as in grunet.GRU: masks drawn per direction in training, zoneout's mean in eval.
    """
    zero_output = spec.bidirectional and spec.return_sequences
    outputs, finals = [], []
    B, T, F_ = x.shape
    for suffix in ("", "_reverse")[: spec.directions]:
        weights = layer.layer_weights(0, suffix)
        masks = Masks.draw(layer.cell, layer.training, T, B, F_, spec.units, x) if not layer.cell.plain else NO_MASKS
        xs, weights = masked_inputs(x.transpose(0, 1), weights, masks)  # time-major, as the masks are drawn
        xs = xs.transpose(0, 1)
        h = x.new_zeros(B, spec.units)
        out: list[Optional[Tensor]] = [None] * T
        for t in (range(T - 1, -1, -1) if suffix else range(T)):
            h_new = gru_step(xs[:, t], h, weights, layer.cell, recurrent_mask=masks.recurrent,
                             keep=zoneout_keep(layer.cell, masks, t))
            valid = mask[:, t].unsqueeze(1)
            h = torch.where(valid, h_new, h)
            out[t] = torch.where(valid, h_new, torch.zeros_like(h_new)) if zero_output else h
        outputs.append(torch.stack(out, 1))
        finals.append(h)
    return outputs, finals


class StackModel(nn.Module):
    """forward(x (B, T, I), or ids (B, T) after an Embedding) -> the last layer's output; see the module docstring."""

    def __init__(self, input_shape: tuple[Optional[int], Optional[int]], specs: list[LayerSpec],
                 impl: str = "auto") -> None:
        super().__init__()
        expect(isinstance(input_shape, (tuple, list)) and len(input_shape) == 2, "input_shape",
               "(T or None, I)", repr(input_shape)[:80])
        steps, features = input_shape
        expect(steps is None or (isinstance(steps, int) and not isinstance(steps, bool) and 1 <= steps <= MAX_SIZE),
               "input_shape T", f"None or an integer in [1, {MAX_SIZE}]", repr(steps)[:80])
        expect(isinstance(specs, (list, tuple)) and 1 <= len(specs) <= MAX_LAYERS, "layers",
               f"1 to {MAX_LAYERS} layers", len(specs) if isinstance(specs, (list, tuple)) else type(specs).__name__)
        for spec in specs:
            expect(type(spec) in _SPECS.values(), "layer", "a grunet.convert layer spec", type(spec).__name__)
            check_spec(spec)
        embeds = isinstance(specs[0], EmbeddingSpec)
        if embeds:
            expect(features is None, "input_shape I", "None (the first layer is an Embedding: inputs are token ids)",
                   repr(features))
        else:
            expect(isinstance(features, int) and not isinstance(features, bool) and 1 <= features <= MAX_SIZE,
                   "input_shape I", f"an integer in [1, {MAX_SIZE}]", repr(features)[:80])
        later = [s.name for s in specs[1:] if isinstance(s, EmbeddingSpec)]
        expect(not later, "layers", "an Embedding only as the first layer", f"Embedding {later}")
        names = [s.name for s in specs]
        dup = sorted({n for n in names if names.count(n) > 1})
        expect(not dup, "layers", "unique layer names", f"repeated {dup[:5]}")
        n_params = parameter_count((steps, features), specs)
        expect(n_params <= MAX_PARAMETERS, "layers", f"at most {MAX_PARAMETERS:,} parameters", f"{n_params:,}")
        self.input_shape = (steps, features)
        self.specs = list(specs)
        self.impl = impl
        self.layers = nn.ModuleList()
        width, sequence = features, True
        for spec in self.specs:
            what = f"layer {spec.name!r} ({type(spec).__name__[:-4]})"
            if isinstance(spec, (GRUSpec, MaskingSpec)) or (isinstance(spec, FlattenSpec) and sequence):
                if not sequence:
                    raise GrunetError(f"{what}: expected a sequence input (B, T, F), got a vector (B, {width}): "
                                      "a GRU before it has return_sequences=False, or a Flatten")
            if isinstance(spec, GRUSpec):
                self.layers.append(GRU(width, spec.units, bias=spec.use_bias, batch_first=True,
                                       bidirectional=spec.bidirectional, reset_after=spec.reset_after,
                                       recurrent_activation=spec.recurrent_activation, impl=impl,
                                       **spec.cell_options))
                width, sequence = spec.width, spec.return_sequences
            elif isinstance(spec, DenseSpec):
                self.layers.append(nn.Linear(width, spec.units, bias=spec.use_bias))
                width = spec.units
            elif isinstance(spec, EmbeddingSpec):
                self.layers.append(nn.Embedding(spec.input_dim, spec.output_dim))
                width = spec.output_dim
            else:
                if isinstance(spec, FlattenSpec) and sequence:
                    expect(steps is not None, what, "a fixed number of steps T in input_shape to flatten (B, T, F)",
                           "T = None")
                    width, sequence = steps * width, False
                self.layers.append(nn.Identity())
        self.output_size = width
        self.output_sequence = sequence
        deciding = [s for s in self.specs if isinstance(s, (DenseSpec, ActivationSpec, GRUSpec))]
        last = deciding[-1] if deciding else None
        softmax = getattr(last, "activation", None) == "softmax"
        self.output_kind = "probabilities" if softmax else "logits"

    @property
    def uses_mask(self) -> bool:
        return any(isinstance(s, MaskingSpec) or (isinstance(s, EmbeddingSpec) and s.mask_zero) for s in self.specs)

    def _check_input(self, x) -> None:
        if self.specs and isinstance(self.specs[0], EmbeddingSpec):
            ok = isinstance(x, Tensor) and x.dim() == 2 and not x.is_floating_point() and not x.is_complex()
            expect(ok, "x", "token ids: a (B, T) integer tensor",
                   f"{tuple(x.shape)} {x.dtype}" if isinstance(x, Tensor) else type(x).__name__)
            if x.numel():
                lo, hi = int(x.min()), int(x.max())
                dim = self.specs[0].input_dim
                expect(lo >= 0 and hi < dim, "x", f"token ids in [0, {dim - 1}]", f"ids from {lo} to {hi}")
        else:
            expect(isinstance(x, Tensor) and x.dim() == 3, "x", "a (B, T, I) tensor",
                   tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        y, mask = x, None
        for spec, layer in zip(self.specs, self.layers):
            if isinstance(spec, GRUSpec):
                if mask is not None:
                    outs, finals = masked_gru(layer, spec, y, mask)
                    parts = outs if spec.return_sequences else finals
                else:
                    out, h_n = layer(y)
                    parts = list(out.split(spec.units, dim=-1)) if spec.return_sequences else list(h_n)
                y = parts[0] if len(parts) == 1 else _merge(spec.merge_mode, parts[0], parts[1])
                mask = mask if spec.return_sequences else None
            elif isinstance(spec, DenseSpec):
                y = _dense_activation(spec.activation, layer(y))
            elif isinstance(spec, ActivationSpec):
                y = _dense_activation(spec.activation, y)
            elif isinstance(spec, FlattenSpec):
                y, mask = y.reshape(y.shape[0], -1), None
            elif isinstance(spec, MaskingSpec):
                mask = (y != spec.mask_value).any(dim=-1)
                y = y * mask.unsqueeze(-1).to(y.dtype)
            elif isinstance(spec, EmbeddingSpec):
                mask = (y != 0) if spec.mask_zero else None
                y = layer(y)
            # Dropout, SpatialDropout1D: the identity at inference
        return y

    def _as_input(self, x):
        """NumPy arrays (any float or int dtype, as Keras users pass them) -> a tensor of the model's dtype."""
        if isinstance(x, Tensor):
            return x
        expect(isinstance(x, (np.ndarray, list, tuple)), "x", "a tensor or a NumPy array", type(x).__name__)
        a = np.asarray(x)
        if self.specs and isinstance(self.specs[0], EmbeddingSpec):
            expect(a.dtype.kind in "iu", "x", "integer token ids", f"dtype {a.dtype}")
            return torch.from_numpy(a.astype(np.int64))
        expect(a.dtype.kind in "fiub", "x", "a numeric array", f"dtype {a.dtype}")
        p = next(self.parameters(), None)
        dtype = p.dtype if p is not None else torch.float32
        return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)

    @torch.no_grad()
    def predict_proba(self, x):
        """Class probabilities; ``x`` a tensor or a NumPy array (then NumPy comes back)."""
        numpy_in = not isinstance(x, Tensor)
        y = self(self._as_input(x))
        p = y if self.output_kind == "probabilities" else torch.softmax(y, dim=-1)
        return p.cpu().numpy() if numpy_in else p

    @classmethod
    def from_config(cls, config: dict, impl: str = "auto") -> "StackModel":
        expect(isinstance(config, dict), "keras_stack config", "a dict", type(config).__name__)
        unknown = sorted(str(k)[:40] for k in set(config) - {"input_shape", "layers"})
        expect(not unknown, "keras_stack config", "keys ['input_shape', 'layers']", f"unknown {unknown[:5]}")
        expect("input_shape" in config and "layers" in config, "keras_stack config", "keys 'input_shape' and 'layers'",
               sorted(config))
        layers, shape = config["layers"], config["input_shape"]
        expect(isinstance(layers, list), "keras_stack config layers", "a list", type(layers).__name__)
        expect(len(layers) <= MAX_LAYERS, "keras_stack config layers", f"at most {MAX_LAYERS}", len(layers))
        expect(isinstance(shape, list) and len(shape) == 2, "keras_stack config input_shape", "[T or None, I or None]",
               repr(shape)[:80])
        specs = [spec_from_dict(d, f"keras_stack layer {i}") for i, d in enumerate(layers)]
        return cls(tuple(shape), specs, impl=impl)

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
                return_sequences=k < cfg.num_layers - 1, bidirectional=cfg.bidirectional, **cfg.cell_options)
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
