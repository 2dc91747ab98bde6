"""The learning rate at each training step: linear warm-up, then constant, cosine or one-cycle decay.

A pure function of the step number, so a resumed run follows the same schedule without any stored state
(extending a run with a larger --steps stretches the decay from that point on, as config.json records).

    constant   lr after the warm-up (the tutorial: no warm-up, lr throughout)
    cosine     lr * (1 + cos(pi * t)) / 2, t going from 0 after the warm-up to 1 at the last step
    onecycle   warm-up from lr / 25 (when --warmup-steps is 0: 30% of the steps), then cosine to lr / 1e4
               (Smith's one-cycle policy, as torch.optim.lr_scheduler.OneCycleLR shapes it)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import expect

LR_SCHEDULES = ("constant", "cosine", "onecycle")
ONECYCLE_START, ONECYCLE_END, ONECYCLE_WARMUP = 1 / 25, 1e-4, 0.3


@dataclass(frozen=True)
class LearningRate:
    lr: float  # the peak rate
    schedule: str = "constant"
    warmup_steps: int = 0
    steps: int = 1  # the run's total of steps

    def __post_init__(self) -> None:
        expect(self.schedule in LR_SCHEDULES, "--lr-schedule", f"one of {list(LR_SCHEDULES)}", repr(self.schedule))

    def at(self, step: int) -> float:
        """The rate of training step ``step`` (0-based)."""
        warmup = self.warmup_steps
        if self.schedule == "onecycle" and warmup == 0:
            warmup = max(1, round(ONECYCLE_WARMUP * self.steps))
        start = ONECYCLE_START if self.schedule == "onecycle" else 0.0
        if step < warmup:  # step 0 already moves the weights: the ramp reaches lr at step `warmup`
            return self.lr * (start + (1 - start) * (step + 1) / (warmup + 1))
        if self.schedule == "constant":
            return self.lr
        end = ONECYCLE_END if self.schedule == "onecycle" else 0.0
        t = (step - warmup) / max(1, self.steps - warmup)
        return self.lr * (end + (1 - end) * (1 + math.cos(math.pi * min(t, 1.0))) / 2)
