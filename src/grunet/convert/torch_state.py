"""torch.nn.GRU state dicts in and out of grunet.GRU (reset-after with sigmoid gates only).

grunet's reset-after GRU stores nn.GRU's names and shapes (weight_ih_l{k}[_reverse] (3H, I),
weight_hh_l{k}[_reverse] (3H, H), bias_ih / bias_hh (3H,), rows r | z | n), so the tensors pass unchanged.
nn.GRU computes only  n = tanh(W_in x + b_in + r * (W_hn h + b_hn))  with sigmoid gates: a reset-before GRU
(r applied to h before W_hn, one bias per gate) or a hard-sigmoid one has no nn.GRU form and is refused, and
so is one with layer_norm or zoneout; the dropouts act in training only and nn.GRU's outputs are the same.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Mapping, Union

import torch
from torch import Tensor, nn

from ..errors import GrunetError, expect
from ..layers import GRU

_KEY = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh)_l(\d+)(_reverse)?$")
_NO_RESET_BEFORE = ("torch.nn.GRU has no reset-before form (it applies the reset gate after W_hn h + b_hn) and no "
                    "single bias per gate")


def to_torch_state_dict(gru: GRU) -> "OrderedDict[str, Tensor]":
    """A state dict that ``torch.nn.GRU(...).load_state_dict`` takes, equal to ``gru``'s tensors bit for bit."""
    expect(isinstance(gru, GRU), "gru", "a grunet.GRU", type(gru).__name__)
    if not gru.reset_after:
        raise GrunetError(f"gru: expected a reset-after GRU, got reset_after=False: {_NO_RESET_BEFORE}")
    if gru.recurrent_activation != "sigmoid":
        raise GrunetError(f"gru: expected recurrent_activation 'sigmoid', got {gru.recurrent_activation!r}: "
                          "torch.nn.GRU has sigmoid gates only")
    # layer norm and zoneout change the outputs: nn.GRU with these weights would compute something else
    for option, value in (("layer_norm", gru.cell.layer_norm), ("zoneout", gru.cell.zoneout)):
        if value:
            raise GrunetError(f"gru: expected a GRU without {option}, got {option}={value}: torch.nn.GRU has no "
                              f"{option}")
    return OrderedDict((k, v.detach().clone()) for k, v in gru.state_dict().items())


def from_torch_state_dict(state: Union[Mapping[str, Tensor], nn.GRU], *, batch_first: bool = False,
                          reset_after: bool = True, impl: str = "auto") -> GRU:
    """A grunet.GRU holding the weights of an nn.GRU state dict (or module); sizes come from the shapes."""
    if isinstance(state, nn.GRU):
        batch_first = state.batch_first
        state = state.state_dict()
    if not reset_after:
        raise GrunetError(f"reset_after: expected True for an nn.GRU state dict, got False: {_NO_RESET_BEFORE}")
    expect(isinstance(state, Mapping), "state dict", "a mapping of nn.GRU parameter names to tensors",
           type(state).__name__)
    if any(re.match(r"^bias_l\d+", k) for k in state):
        raise GrunetError(f"state dict: expected nn.GRU keys (bias_ih_l0, bias_hh_l0, ...), got a reset-before "
                          f"grunet GRU's bias_l0: {_NO_RESET_BEFORE}")
    parsed = {}
    for key, value in state.items():
        m = _KEY.match(key)
        if m is None:
            raise GrunetError(f"state dict: expected only nn.GRU keys weight_ih_l{{k}}, weight_hh_l{{k}}, bias_ih_l{{k}}, "
                              f"bias_hh_l{{k}} (optionally _reverse), got {key!r}")
        expect(isinstance(value, Tensor), f"state dict {key}", "a tensor", type(value).__name__)
        parsed[key] = (m.group(1), int(m.group(2)), bool(m.group(3)))
    expect("weight_ih_l0" in state, "state dict", "the key weight_ih_l0", f"keys {sorted(state)}")
    w = state["weight_ih_l0"]
    expect(w.dim() == 2 and w.shape[0] % 3 == 0 and w.shape[0] > 0, "state dict weight_ih_l0",
           "a (3H, I) tensor", tuple(w.shape))
    hidden, features = w.shape[0] // 3, w.shape[1]
    num_layers = 1 + max(k for _, k, _ in parsed.values())
    bidirectional = any(rev for _, _, rev in parsed.values())
    bias = any(name.startswith("bias") for name, _, _ in parsed.values())
    gru = GRU(features, hidden, num_layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional,
              reset_after=True, impl=impl).to(dtype=w.dtype)
    own = gru.state_dict()
    missing = sorted(set(own) - set(state))
    expect(not missing, "state dict", f"every key of nn.GRU({features}, {hidden}, num_layers={num_layers}, "
           f"bias={bias}, bidirectional={bidirectional})", f"no {missing}")
    for key, value in state.items():
        expect(tuple(value.shape) == tuple(own[key].shape), f"state dict {key}", f"shape {tuple(own[key].shape)}",
               tuple(value.shape))
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value)
    return gru
