"""Weight averaging: an exponential moving average (EMA) of the weights over the training steps.

After every update, average <- average + (1 - d) * (weights - average), with d = min(decay, (1 + n) / (10 + n))
after n updates: the usual warm-up of the decay, so the average does not remember the random initial
weights for ~1 / (1 - decay) steps. Evaluations and checkpoints use the averaged weights (what eval, predict
and export then load); the training weights travel beside them in the checkpoint so that a resumed run goes
on exactly.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from .errors import expect


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model, self.decay, self.updates = model, decay, 0
        self.average = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        current = self.model.state_dict()
        floats = [k for k, v in self.average.items() if v.is_floating_point()]
        torch._foreach_lerp_([self.average[k] for k in floats], [current[k].detach() for k in floats], 1 - d)
        for k, v in self.average.items():
            if not v.is_floating_point():
                v.copy_(current[k])

    @contextmanager
    def averaged(self):
        """The model holds the averaged weights inside the block, its training weights again after it."""
        training = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.average)
        try:
            yield self.model
        finally:
            self.model.load_state_dict(training)

    def state_dict(self) -> dict:
        """The training weights and the count of updates (the average itself is the checkpoint's model)."""
        return {"training_weights": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
                "updates": self.updates}

    def load_state_dict(self, state, average: dict, where: str) -> None:
        """``average``: the checkpoint's model weights (checked against the model already)."""
        expect(isinstance(state, dict) and isinstance(state.get("training_weights"), dict), f"{where} ema",
               "the training weights and the count of updates", type(state).__name__)
        updates = state.get("updates")
        expect(isinstance(updates, int) and not isinstance(updates, bool) and updates >= 0, f"{where} ema updates",
               "an integer >= 0", repr(updates))
        self.model.load_state_dict(state["training_weights"])
        self.average = {k: v.detach().clone() for k, v in average.items()}
        self.updates = updates
