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

The probabilities come from the top layer, whatever layer's gates are shown. For a unidirectional model p_t
is the Dense head on the top layer's h_t, which equals the model's output on the prefix x[:t+1]. A
bidirectional model's reverse direction reads the sequence from its end, so there p_t is the model's output
on the prefix x[:t+1] (the whole model re-run on every prefix). p_{T-1} is always the model's prediction.
Every gate comes from the reference equations (grunet.reference), never from a fused kernel.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

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
    bidirectional: bool
    reset_after: bool
    recurrent_activation: str

    @property
    def new_information(self) -> np.ndarray:
        """1 - z: the share of the candidate state let in (the tutorial's update gate)."""
        return 1.0 - self.z

    @property
    def prediction(self) -> int:
        return int(self.probabilities[-1].argmax())


def gru_of(model: nn.Module) -> nn.Module:
    """The recurrent layer of a SequenceClassifier when it is a GRU (grunet.GRU or torch.nn.GRU)."""
    rnn = getattr(model, "rnn", None)
    dense = getattr(model, "dense", None)
    if rnn is None or not isinstance(dense, nn.Linear):
        raise GrunetError(f"model: expected a GRU sequence classifier (recurrent layer .rnn, then .dense), "
                          f"got {type(model).__name__}")
    if not isinstance(rnn, (GRU, nn.GRU)):
        raise GrunetError(f"model: expected a GRU (gate traces exist only for GRUs), got {type(rnn).__name__} "
                          f"(an {'LSTM' if isinstance(rnn, nn.LSTM) else 'other'} model)")
    return rnn


def _weights(rnn: nn.Module, k: int, suffix: str):
    """(w_ih, w_hh, b_ih, b_hh, reset_after, activation name) of layer k, direction suffix."""
    if isinstance(rnn, GRU):
        return (*rnn.layer_weights(k, suffix), rnn.reset_after, rnn.recurrent_activation)
    w_ih, w_hh = getattr(rnn, f"weight_ih_l{k}{suffix}"), getattr(rnn, f"weight_hh_l{k}{suffix}")
    if not rnn.bias:
        return w_ih, w_hh, None, None, True, "sigmoid"
    return w_ih, w_hh, getattr(rnn, f"bias_ih_l{k}{suffix}"), getattr(rnn, f"bias_hh_l{k}{suffix}"), True, "sigmoid"


def _layer_traces(rnn: nn.Module, x: Tensor) -> list[list[dict[str, Tensor]]]:
    """traces[k][d] = {h, r, z, n} (T, 1, U) of layer k, direction d, in time order, from x (T, 1, I)."""
    D = 2 if rnn.bidirectional else 1
    traces = []
    inputs = x
    for k in range(rnn.num_layers):
        per_direction = []
        for d in range(D):
            w_ih, w_hh, b_ih, b_hh, reset_after, act = _weights(rnn, k, ("", "_reverse")[d])
            seq = inputs.flip(0) if d == 1 else inputs
            h0 = torch.zeros(1, rnn.hidden_size, dtype=x.dtype, device=x.device)
            trace = gru_layer_gates(seq, h0, w_ih, w_hh, b_ih, b_hh, reset_after=reset_after, activation_name=act)
            if d == 1:  # back to time order: trace["h"][t] is then the reverse state after reading x[t:]
                trace = {key: value.flip(0) for key, value in trace.items()}
            per_direction.append(trace)
        traces.append(per_direction)
        inputs = torch.cat([t["h"] for t in per_direction], 2)  # dropout is off in eval
    return traces


@torch.no_grad()
def gate_trace(model: nn.Module, x, *, layer: Optional[int] = None, direction: str = "forward") -> GateTrace:
    """Gates, state changes and running class probabilities of ``model`` on one sequence x (T, I).

    ``layer``: 0-based, default the last; negative counts from the end. ``direction``: 'forward' or
    'reverse' (bidirectional models only; the reverse direction's step t has read x[t:], and its h_{t-1}
    in dh is the state after x[t+1:], i.e. dh measures the change made by reading x[t])."""
    rnn = gru_of(model)
    x = torch.as_tensor(x)
    expect(x.dim() == 2 and x.shape[-1] == rnn.input_size and x.shape[0] >= 1, "input",
           f"one sequence of shape (T, {rnn.input_size})", f"shape {tuple(x.shape)}")
    weight = next(rnn.parameters())
    x = x.to(dtype=weight.dtype, device=weight.device)
    L = rnn.num_layers
    k = L - 1 if layer is None else layer
    expect(isinstance(k, int) and -L <= k < L, "--layer", f"a layer index in [0, {L - 1}] (or -1 for the last)",
           repr(layer))
    k = k % L
    expect(direction in DIRECTIONS, "--direction", f"one of {list(DIRECTIONS)}", repr(direction))
    expect(direction == "forward" or rnn.bidirectional, "--direction", "'forward' for a unidirectional GRU",
           repr(direction))
    d = DIRECTIONS.index(direction)

    traces = _layer_traces(rnn, x.unsqueeze(1))
    trace = {key: value[:, 0].double().cpu().numpy() for key, value in traces[k][d].items()}
    h = trace["h"]
    zero = np.zeros((1, h.shape[1]))
    h_before = np.vstack([zero, h[:-1]]) if d == 0 else np.vstack([h[1:], zero])  # the state before reading x[t]
    delta = h - h_before

    top = traces[-1]
    if not rnn.bidirectional:
        logits = model.dense(top[0]["h"][:, 0])  # (T, C): the head on every h_t
        probabilities = torch.softmax(logits, dim=1)
    else:  # the reverse direction depends on the future: re-run the whole model on every prefix
        was_training = model.training
        model.eval()
        probabilities = torch.cat([torch.softmax(model(x[: t + 1].unsqueeze(0)), dim=1) for t in range(len(x))])
        model.train(was_training)
    *_, reset_after, act = _weights(rnn, k, ("", "_reverse")[d])
    return GateTrace(x=x.double().cpu().numpy(), r=trace["r"], z=trace["z"], n=trace["n"], h=h, delta=delta,
                     dh=np.linalg.norm(delta, axis=1), probabilities=probabilities.double().cpu().numpy(),
                     layer=k, num_layers=L, direction=direction, bidirectional=bool(rnn.bidirectional),
                     reset_after=reset_after, recurrent_activation=act)


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
            "from softmax(Dense(h_t)) of the top layer" if not trace.bidirectional
            else "of the whole model run on steps 0..t") + ", the prediction had the input ended after step t.",
    ])
