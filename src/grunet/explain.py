"""Gate traces: what a trained GRU classifier does at every time step while it reads one sequence.

For one input x (T, I) and one layer k / direction of the model's GRU, ``gate_trace`` returns per step t:

    r_t, z_t, n_t  (T, U)   reset gate, update gate, candidate state (grunet.reference.gru_step)
    h_t            (T, U)   the state after step t (h_{-1} = h0 = 0)
    delta_t        (T, U)   h_t - h_{t-1}
    dh_t           (T,)     ||h_t - h_{t-1}||_2, the L2 norm over the U units of the state change
    p_t            (T, C)   softmax(Dense(h_t^top)): the class probabilities had the sequence ended after step t

Update-gate convention (Keras / PyTorch, as everywhere in grunet):
    h_t = z_t * h_{t-1} + (1 - z_t) * n_t
so z is the share of the old state that is kept and 1 - z the share of new information let in, which is
what tutorials writing h_t = (1 - z) h_{t-1} + z n_t call "the update gate".

The probabilities come from the whole model, whatever layer's gates are shown. For grunet's unidirectional
SequenceClassifier p_t is the Dense head on the top layer's h_t, which equals the model's output on the
prefix x[:t+1]. A bidirectional model's reverse direction reads the sequence from its end, and a converted
model (StackModel) may hold any supported layers after its GRUs, so there p_t is the model's output on the
prefix x[:t+1] (the whole model re-run on every prefix; ``GateTrace.prefix_runs`` is then True).
p_{T-1} is always the model's prediction.
Every gate comes from the reference equations (grunet.reference), never from a fused kernel.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

from .contract import CellSpec, LayerWeights
from .errors import GrunetError, expect
from .layers import GRU
from .reference import gru_layer_gates

CONVENTION = ("convention (Keras/PyTorch): h_t = z * h_(t-1) + (1 - z) * n_t, so z is the share of the old "
              "state kept and 1 - z the share of new information let in (the tutorial's 'update gate')")
DIRECTIONS = ("forward", "reverse")


@dataclass
class GateTrace:
    """Arrays (numpy, float64) of one sequence through one layer and direction; see the module docstring."""

    x: np.ndarray  # (T, I) the input sequence
    r: np.ndarray  # (T, U)
    z: np.ndarray  # (T, U)
    n: np.ndarray  # (T, U)
    h: np.ndarray  # (T, U)
    delta: np.ndarray  # (T, U) h_t - h_{t-1}
    dh: np.ndarray  # (T,)  ||h_t - h_{t-1}||_2
    probabilities: np.ndarray  # (T, C)
    layer: int
    num_layers: int
    direction: str
    bidirectional: bool  # the shown layer reads in both directions
    prefix_runs: bool  # the probabilities come from the whole model re-run on every prefix (see above)
    reset_after: bool
    recurrent_activation: str

    @property
    def new_information(self) -> np.ndarray:
        """1 - z: the share of the candidate state let in (the tutorial's update gate)."""
        return 1.0 - self.z

    @property
    def prediction(self) -> int:
        return int(self.probabilities[-1].argmax())


@dataclass(frozen=True)
class GRULayer:
    """One GRU layer of a classifier: layer ``k`` of the recurrent module ``module`` (grunet.GRU or nn.GRU)."""

    module: nn.Module
    k: int

    @property
    def bidirectional(self) -> bool:
        return bool(self.module.bidirectional)


def gru_layers(model: nn.Module) -> list[GRULayer]:
    """Every GRU layer of a classifier, input to output: the layers of its GRU modules in registration order,
    which is the order they read the sequence in grunet's SequenceClassifier and in converted StackModels
    (whatever other layers stand between them: Dense, Dropout, Masking, ...)."""
    modules = [m for m in model.modules() if isinstance(m, (GRU, nn.GRU))]
    if not modules:
        other = next((type(m).__name__ for m in model.modules() if isinstance(m, nn.RNNBase)), None)
        raise GrunetError(f"model: expected a GRU classifier (gate traces exist only for GRUs), got "
                          f"{type(model).__name__}" + (f" with {other} (an {'LSTM' if other == 'LSTM' else 'other'} "
                                                      f"model)" if other else " without any GRU"))
    return [GRULayer(m, k) for m in modules for k in range(m.num_layers)]


def gru_of(model: nn.Module) -> nn.Module:
    """The first GRU module of a classifier (raises GrunetError when it has none)."""
    return gru_layers(model)[0].module


def _weights(rnn: nn.Module, k: int, suffix: str) -> tuple[LayerWeights, CellSpec]:
    """The weights and the cell of layer k, direction suffix (torch.nn.GRU: reset-after, sigmoid)."""
    if isinstance(rnn, GRU):
        return rnn.layer_weights(k, suffix), rnn.cell
    names = [f"weight_ih_l{k}{suffix}", f"weight_hh_l{k}{suffix}"]
    if rnn.bias:
        names += [f"bias_ih_l{k}{suffix}", f"bias_hh_l{k}{suffix}"]
    return LayerWeights(*(getattr(rnn, n) for n in names)), CellSpec()


def _layer_traces(rnn: nn.Module, x: Tensor) -> list[list[dict[str, Tensor]]]:
    """traces[k][d] = {h, r, z, n} (T, 1, U) of layer k, direction d, in time order, from x (T, 1, I)."""
    D = 2 if rnn.bidirectional else 1
    traces = []
    inputs = x
    for k in range(rnn.num_layers):
        per_direction = []
        for d in range(D):
            weights, cell = _weights(rnn, k, ("", "_reverse")[d])
            seq = inputs.flip(0) if d == 1 else inputs
            h0 = torch.zeros(1, rnn.hidden_size, dtype=x.dtype, device=x.device)
            trace = gru_layer_gates(seq, h0, weights, cell)
            if d == 1:  # back to time order: trace["h"][t] is then the reverse state after reading x[t:]
                trace = {key: value.flip(0) for key, value in trace.items()}
            per_direction.append(trace)
        traces.append(per_direction)
        inputs = torch.cat([t["h"] for t in per_direction], 2)  # dropout is off in eval
    return traces


def _module_input(model: nn.Module, rnn: nn.Module, x: Tensor) -> Tensor:
    """What ``rnn`` reads when ``model`` runs on the one sequence x (T, I): (T, 1, F) in time order. Caught
    with a hook, so any layers before it (Dense, Embedding, Masking, another GRU...) act as the model has them."""
    if getattr(model, "rnn", None) is rnn:  # SequenceClassifier: its GRU reads the input itself
        return x.unsqueeze(1)
    seen: list[Tensor] = []

    def capture(module, args, kwargs):
        expect(not any(kwargs.get(key) is not None for key in ("lengths", "mask")), "model",
               "a GRU reading whole sequences", f"{type(model).__name__} passing a mask or lengths to its GRU")
        seen.append(args[0])

    handle = rnn.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        model(x.unsqueeze(0))
    finally:
        handle.remove()
    expect(len(seen) == 1 and isinstance(seen[0], Tensor), "model", "a GRU that reads the sequence once",
           f"{len(seen)} calls")
    inp = seen[0]
    inp = inp.transpose(0, 1) if getattr(rnn, "batch_first", False) else inp
    return inp.detach()


def _probabilities(model: nn.Module, x: Tensor) -> Tensor:
    """(T, C): the model's class probabilities on every prefix x[:t+1] (the whole model re-run per prefix)."""
    proba = getattr(model, "predict_proba", None)
    run = proba if callable(proba) else (lambda v: torch.softmax(model(v), dim=-1))
    rows = []
    for t in range(len(x)):
        p = run(x[: t + 1].unsqueeze(0))
        expect(p.dim() == 2 and p.shape[0] == 1, "model", "a classifier with output (batch, classes)",
               f"output of shape {tuple(p.shape)}")
        rows.append(p)
    return torch.cat(rows)


def _input_size(model: nn.Module, first: nn.Module) -> int:
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, (tuple, list)) and len(shape) == 2 and isinstance(shape[1], int):
        return shape[1]
    return first.input_size


@torch.no_grad()
def gate_trace(model: nn.Module, x, *, layer: Optional[int] = None, direction: str = "forward") -> GateTrace:
    """Gates, state changes and running class probabilities of ``model`` on one sequence x (T, I).

    ``model``: a GRU classifier: grunet's SequenceClassifier, a converted StackModel (GRU layers, stacked or
    bidirectional, with Dense and the other layers conversion supports) or any module holding GRUs whose
    forward takes (B, T, I) and returns (B, classes).
    ``layer``: 0-based over all GRU layers of the model, default the last; negative counts from the end.
    ``direction``: 'forward' or 'reverse' (bidirectional layers only; the reverse direction's step t has read
    x[t:], and its h_{t-1} in dh is the state after x[t+1:], i.e. dh measures the change made by reading x[t])."""
    layers = gru_layers(model)
    x = torch.as_tensor(x)
    size = _input_size(model, layers[0].module)
    expect(x.dim() == 2 and x.shape[-1] == size and x.shape[0] >= 1, "input",
           f"one sequence of shape (T, {size})", f"shape {tuple(x.shape)}")
    weight = next(layers[0].module.parameters())
    x = x.to(dtype=weight.dtype, device=weight.device)
    L = len(layers)
    k = L - 1 if layer is None else layer
    expect(isinstance(k, int) and -L <= k < L, "--layer", f"a GRU layer index in [0, {L - 1}] (or -1 for the last)",
           repr(layer))
    k = k % L
    chosen = layers[k]
    expect(direction in DIRECTIONS, "--direction", f"one of {list(DIRECTIONS)}", repr(direction))
    expect(direction == "forward" or chosen.bidirectional, "--direction",
           f"'forward' for a unidirectional GRU layer (layer {k})", repr(direction))
    d = DIRECTIONS.index(direction)
    was_training = model.training
    model.eval()
    try:
        rnn = chosen.module
        traces = _layer_traces(rnn, _module_input(model, rnn, x))
        dense = getattr(model, "dense", None)
        simple_head = (isinstance(dense, nn.Linear) and getattr(model, "rnn", None) is rnn and len(layers) == rnn.num_layers
                       and not rnn.bidirectional)
        if simple_head:  # SequenceClassifier: logits = Dense(h_T), so the head on every h_t is the prefix's output
            probabilities = torch.softmax(dense(traces[-1][0]["h"][:, 0]), dim=1)
        else:
            probabilities = _probabilities(model, x)
    finally:
        model.train(was_training)
    trace = {key: value[:, 0].double().cpu().numpy() for key, value in traces[chosen.k][d].items()}
    h = trace["h"]
    zero = np.zeros((1, h.shape[1]))
    h_before = np.vstack([zero, h[:-1]]) if d == 0 else np.vstack([h[1:], zero])  # the state before reading x[t]
    delta = h - h_before
    _, cell = _weights(rnn, chosen.k, ("", "_reverse")[d])
    return GateTrace(x=x.double().cpu().numpy(), r=trace["r"], z=trace["z"], n=trace["n"], h=h, delta=delta,
                     dh=np.linalg.norm(delta, axis=1), probabilities=probabilities.double().cpu().numpy(),
                     layer=k, num_layers=L, direction=direction, bidirectional=chosen.bidirectional,
                     prefix_runs=not simple_head, reset_after=cell.reset_after, recurrent_activation=cell.activation)


def trace_dict(trace: GateTrace, class_names) -> dict:
    """The trace as plain JSON values: what ``grunet explain --json`` prints and ``grunet serve``'s
    /api/trace answers (one structure for both):

        {"prediction": k, "probabilities": [C], "steps": [T x {"z": [U], "r": [U], "dh": x, "probabilities":
        [C]}], "layer", "num_layers", "direction", "bidirectional", "units", "reset_after",
        "recurrent_activation", "class_names", "convention"}
    """
    steps = [{"z": trace.z[t].tolist(), "r": trace.r[t].tolist(), "dh": float(trace.dh[t]),
              "probabilities": trace.probabilities[t].tolist()} for t in range(len(trace.z))]
    return {"prediction": trace.prediction, "probabilities": trace.probabilities[-1].tolist(), "steps": steps,
            "layer": trace.layer, "num_layers": trace.num_layers, "direction": trace.direction,
            "bidirectional": trace.bidirectional, "units": int(trace.z.shape[1]), "reset_after": trace.reset_after,
            "recurrent_activation": trace.recurrent_activation, "class_names": [str(c) for c in class_names],
            "convention": CONVENTION}


# ----------------------------------------------------------------------------------------------------
# the terminal table
SHADES = " .:-=+*#%@"


def sparkline(values: np.ndarray, width: int = 28) -> str:
    """One character per value in [0, 1] (darker = larger); at most ``width`` characters (values averaged)."""
    v = np.clip(np.asarray(values, dtype=np.float64).ravel(), 0.0, 1.0)
    if len(v) > width:
        v = np.array([chunk.mean() for chunk in np.array_split(v, width)])
    return "".join(SHADES[min(int(round(a * (len(SHADES) - 1))), len(SHADES) - 1)] for a in v)


def format_trace(trace: GateTrace, class_names, max_rows: int = 60) -> str:
    """A compact per-step table; sequences longer than ``max_rows`` steps show every k-th step."""
    T = len(trace.z)
    every = max(1, -(-T // max_rows))
    width = max(5, min(28, trace.x.shape[1]))
    lines = [f"{'step':>4} |{'input':<{width}}| {'mean z':>6}  {'1-z':>5}  {'z<0.5':>5}  {'mean r':>6}  "
             f"{'|dh|':>6}  {'top':<10}{'p':>6}"]
    for t in range(T):
        if t % every and t != T - 1:
            continue
        z, r, p = trace.z[t], trace.r[t], trace.probabilities[t]
        c = int(p.argmax())
        name = str(c) if str(class_names[c]) == str(c) else f"{c} {class_names[c]}"
        lines.append(f"{t:>4} |{sparkline(trace.x[t], width):<{width}}| {z.mean():>6.3f}  {1 - z.mean():>5.3f}  "
                     f"{(z < 0.5).mean():>5.2f}  {r.mean():>6.3f}  {trace.dh[t]:>6.3f}  {name[:10]:<10}{p[c]:>6.3f}")
    if every > 1:
        lines.append(f"(every {every}th of {T} steps shown, and the last)")
    return "\n".join(lines)


def legend(trace: GateTrace) -> str:
    variant = "reset-after" if trace.reset_after else "reset-before"
    return "\n".join([
        f"layer {trace.layer} of {trace.num_layers} (0-based), {trace.direction} direction, {trace.z.shape[1]} units, "
        f"{variant}, recurrent activation {trace.recurrent_activation}",
        CONVENTION + ".",
        "mean z, 1-z, mean r: averages over the units; z<0.5: fraction of units letting in more new than old state.",
        ("|dh| = ||h_t - h_(t-1)||_2, the L2 norm over the units of the state change at step t (h_(-1) = 0)."
         if trace.direction == "forward" else
         "|dh| = ||h_t - h_(t+1)||_2, the L2 norm over the units of the state change made by reading step t "
         "(the reverse direction reads from the end; h_(T) = 0)."),
        "top, p: the most probable class and its probability " + (
            "from softmax(Dense(h_t)) of the top layer" if not trace.prefix_runs
            else "of the whole model run on steps 0..t") + ", the prediction had the input ended after step t.",
    ])
