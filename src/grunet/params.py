"""Parameter counts of GRU layers, gate by gate, and a Keras-like summary of any model.

Per layer and direction, U units, I inputs (I = U * directions for stacked layers k >= 1), three gates
(update z, reset r, candidate n), each with U*I input weights, U*U recurrent weights and
U biases (reset-before, one bias per gate) or 2U (reset-after, input and recurrent bias):
    reset-before: 3 * (U*I + U*U + U)
    reset-after:  3 * (U*I + U*U + 2U)
A layer-normalised GRU (reset-after only) adds its two gains g_ih and g_hh of 3U each, U per gate for each:
    layer norm:   3 * (U*I + U*U + 2U + 2U)
The tutorial model, GRU(75) on 28 inputs: 23,400 (reset-before) or 23,625 (reset-after), 24,075 with layer
norm; Dense(10) on 75 features: 75*10 + 10 = 760. The other cell options (dropouts, zoneout) add no parameters.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import nn

from .contract import PROBABILITIES, CellSpec
from .errors import expect

GATES = ("update z", "reset r", "candidate n")


@dataclass
class LayerCount:
    """Counts for one layer and one direction, per gate."""

    layer: int
    direction: str  # "forward" | "reverse"
    input_size: int
    units: int
    reset_after: bool
    layer_norm: bool = False
    input_weights: int = field(init=False)  # per gate: U*I
    recurrent_weights: int = field(init=False)  # per gate: U*U
    biases: int = field(init=False)  # per gate: U or 2U
    gains: int = field(init=False)  # per gate: 2U with layer norm (that gate's rows of g_ih and g_hh), else 0

    def __post_init__(self) -> None:
        U, I = self.units, self.input_size
        self.input_weights, self.recurrent_weights = U * I, U * U
        self.biases = 2 * U if self.reset_after else U
        self.gains = 2 * U if self.layer_norm else 0

    @property
    def per_gate(self) -> int:
        return self.input_weights + self.recurrent_weights + self.biases + self.gains

    @property
    def total(self) -> int:
        return 3 * self.per_gate

    def formula(self) -> str:
        U, I = self.units, self.input_size
        bias_sym, bias_num = ("2U", f"2*{U}") if self.reset_after else ("U", f"{U}")
        gain_sym, gain_num, gain_val = (" + 2U", f" + 2*{U}", f" + {self.gains:,}") if self.layer_norm else ("", "", "")
        return (f"3 * (U*I + U*U + {bias_sym}{gain_sym}) = 3 * ({U}*{I} + {U}*{U} + {bias_num}{gain_num}) "
                f"= 3 * ({self.input_weights:,} + {self.recurrent_weights:,} + {self.biases:,}{gain_val}) "
                f"= {self.total:,}")


@dataclass
class ParamCount:
    layers: list[LayerCount]
    dense: Optional[tuple[int, int]] = None  # (in_features, out_features)

    @property
    def gru_total(self) -> int:
        return sum(layer.total for layer in self.layers)

    @property
    def dense_total(self) -> int:
        return 0 if self.dense is None else self.dense[0] * self.dense[1] + self.dense[1]

    @property
    def total(self) -> int:
        return self.gru_total + self.dense_total

    def table(self) -> str:
        """The per-gate breakdown, the formula with numbers, and the totals, as text."""
        norm = self.layers[0].layer_norm
        gains_head = f"{'LN gains':>10}" if norm else ""
        lines = [f"{'layer':<7}{'direction':<10}{'gate':<13}{'input W':>10}{'recurrent W':>13}{'biases':>8}"
                 f"{gains_head}{'total':>10}"]
        for c in self.layers:
            for gate in GATES:
                gains = f"{c.gains:>10,}" if norm else ""
                lines.append(f"{c.layer:<7}{c.direction:<10}{gate:<13}{c.input_weights:>10,}"
                             f"{c.recurrent_weights:>13,}{c.biases:>8,}{gains}{c.per_gate:>10,}")
        lines.append("")
        variant = "reset-after (two biases per gate)" if self.layers[0].reset_after else "reset-before (one bias per gate)"
        if norm:
            variant += ", layer-normalised (two gains per gate: g_ih, g_hh)"
        lines.append(f"GRU, {variant}, per layer and direction:")
        for c in self.layers:
            lines.append(f"  layer {c.layer} {c.direction}: {c.formula()}")
        lines.append(f"GRU total: {self.gru_total:,}")
        if self.dense is not None:
            i, o = self.dense
            lines.append(f"Dense({o}) on {i} features: {i}*{o} + {o} = {self.dense_total:,}")
            lines.append(f"Total: {self.gru_total:,} + {self.dense_total:,} = {self.total:,}")
        return "\n".join(lines)


def count_params(
    input_size: int,
    hidden_size: int,
    *,
    reset_after: bool = True,
    num_layers: int = 1,
    bidirectional: bool = False,
    dense: Optional[int] = None,
    layer_norm: bool = False,
) -> ParamCount:
    """Gate-by-gate parameter counts of a GRU (and an optional Dense(dense) head on its last output);
    ``layer_norm`` counts the gains of grunet.GRU(layer_norm=True) (reset-after only)."""
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
        expect(isinstance(value, int) and value >= 1, name, "an integer >= 1", repr(value))
    expect(dense is None or (isinstance(dense, int) and dense >= 1), "dense", "None or an integer >= 1", repr(dense))
    CellSpec(reset_after=reset_after, layer_norm=layer_norm)  # refuses a bad flag and layer norm on reset-before
    D = 2 if bidirectional else 1
    layers = []
    for k in range(num_layers):
        width = input_size if k == 0 else hidden_size * D
        for direction in ("forward", "reverse")[:D]:
            layers.append(LayerCount(k, direction, width, hidden_size, reset_after, layer_norm))
    return ParamCount(layers, None if dense is None else (hidden_size * D, dense))


# ----------------------------------------------------------------------------------------------------
def _shape_of(value) -> str:
    if isinstance(value, torch.Tensor):
        return str(tuple(value.shape))
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_shape_of(v) for v in value) + "]"
    return type(value).__name__


@dataclass
class SummaryRow:
    name: str
    type: str
    output_shape: str
    params: int
    trainable: int


def summary_rows(model: nn.Module, input_shape: Sequence[int], dtype=torch.float32) -> list[SummaryRow]:
    """Run ``model`` once on zeros of ``input_shape`` and record, for every module that owns parameters
    directly or has no children, its output shape and its own parameter count (so the rows sum to
    sum(p.numel() for p in model.parameters()))."""
    rows: list[SummaryRow] = []
    hooks = []
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if name and (own or not list(module.children())):
            def hook(mod, args, output, name=name, own=own):
                rows.append(SummaryRow(name, type(mod).__name__, _shape_of(output), sum(p.numel() for p in own),
                                       sum(p.numel() for p in own if p.requires_grad)))
            hooks.append(module.register_forward_hook(hook))
    try:
        device = next(model.parameters()).device if any(True for _ in model.parameters()) else None
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(*input_shape, dtype=dtype, device=device))
        model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    seen = {r.name for r in rows}
    # parameters of modules that the forward pass did not reach still count, as Keras counts them
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if name and own and name not in seen:
            rows.append(SummaryRow(name, type(module).__name__, "(not called)", sum(p.numel() for p in own),
                                   sum(p.numel() for p in own if p.requires_grad)))
    if list(model.parameters(recurse=False)):
        own = list(model.parameters(recurse=False))
        rows.append(SummaryRow("(root)", type(model).__name__, "", sum(p.numel() for p in own),
                               sum(p.numel() for p in own if p.requires_grad)))
    return rows


def cell_options(model: nn.Module) -> list[tuple[str, str]]:
    """(module name, "layer_norm, recurrent_dropout=0.25, ...") for each GRU of ``model`` with cell options:
    they change what the layer computes, and the rows above show only its shapes and counts."""
    found = []
    for name, module in model.named_modules():
        spec = getattr(module, "cell", None)
        if isinstance(spec, CellSpec) and not spec.plain:
            parts = (["layer_norm"] if spec.layer_norm else []) + [
                f"{option}={getattr(spec, option):g}" for option in PROBABILITIES if getattr(spec, option)]
            found.append((name or "(root)", ", ".join(parts)))
    return found


def summary(model: nn.Module, input_shape: Sequence[int], dtype=torch.float32, print_fn=print) -> str:
    """Print (and return) a Keras-like table: layer (type), output shape, parameter count, totals."""
    rows = summary_rows(model, input_shape, dtype)
    width = max([30] + [len(f"{r.name} ({r.type})") + 2 for r in rows])
    shape_w = max([26] + [len(r.output_shape) + 2 for r in rows])
    rule = "=" * (width + shape_w + 12)
    lines = [f"Model: {type(model).__name__}, input {tuple(input_shape)}", rule,
             f"{'Layer (type)':<{width}}{'Output Shape':<{shape_w}}{'Param #':>12}", rule]
    lines += [f"{f'{r.name} ({r.type})':<{width}}{r.output_shape:<{shape_w}}{r.params:>12,}" for r in rows]
    total, trainable = sum(r.params for r in rows), sum(r.trainable for r in rows)
    lines += [rule, f"Total params: {total:,}", f"Trainable params: {trainable:,}",
              f"Non-trainable params: {total - trainable:,}", rule]
    lines += [f"{name} cell options: {options}" for name, options in cell_options(model)]
    text = "\n".join(lines)
    if print_fn is not None:
        print_fn(text)
    return text
