"""The contract of one GRU layer call: what every implementation (reference loop, fused kernel) is given.

grunet.GRU describes each call of one layer and direction with three named things and hands them unchanged
through grunet.kernels.layer_function to the implementation it picks:

    CellSpec      the math, frozen: variant, recurrent activation, direction and the cell options
    LayerWeights  the parameters of that layer and direction (torch.nn.GRU layout, rows r | z | n)
    Masks         the random masks of a training call, drawn from torch's generator in Python, so that one
                  seed gives the same run on every implementation; every mask is None in eval mode. In a
                  data-parallel step (global_batch) every process draws the global batch's masks and keeps
                  its rows, so that N processes train as one

An implementation is a function ``layer(x (T,B,I), h0 (B,H) or None, weights, spec, masks, lengths)
-> (output (T,B,H), h_n (B,H))``, differentiable through autograd. A new cell option is a field here, a line
in grunet.reference.gru_step, the kernels' gate pass, and tests.

The cell options (reset-after form unless said; x: input, h: previous state, h~: the plain GRU's new state):

    layer_norm (reset-after only), LN over the whole 3H vector, no shift, eps 1e-5 as nn.LayerNorm:
        gx = LN(W_ih x) * g_ih + b_ih            gh = LN(W_hh h) * g_hh + b_hh
        r = sigma(gx_r + gh_r)   z = sigma(gx_z + gh_z)   n = tanh(gx_n + r * gh_n)
    input_dropout p (Keras's `dropout`): x_t -> m_x * x_t, m_x (B, I) ~ Bernoulli(1 - p) / (1 - p), one
        mask per sequence and feature, the same at every step
    recurrent_dropout p (Keras 2's `recurrent_dropout`): W_hh h -> W_hh (m_h * h) in every product that reads
        h (reset-before: W_hn (r * (m_h * h))), m_h (B, H) ~ Bernoulli(1 - p) / (1 - p) fixed over time; the
        state update z * h + (1 - z) * n uses h itself
    weight_dropout p (DropConnect on W_hh, as AWD-LSTM): W_hh -> m_w * W_hh, m_w (3H, H) ~ Bernoulli(1 - p)
        / (1 - p), one mask per forward call
    zoneout p (Krueger et al. 2017): training h' = h + m_t * (h~ - h), m_t (B, H) ~ Bernoulli(1 - p) per
        sequence, unit and step; eval h' = p h + (1 - p) h~

``dropout`` (between stacked layers) keeps torch.nn.GRU's meaning and is not part of a layer call.
"""
from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch import Tensor

from .errors import GrunetError, expect

ACTIVATIONS = ("sigmoid", "hard_sigmoid_keras2", "hard_sigmoid_keras3")
LAYER_NORM_EPS = 1e-5
PROBABILITIES = ("recurrent_dropout", "input_dropout", "weight_dropout", "zoneout")


@dataclass(frozen=True)
class CellSpec:
    """What one layer call computes. Checked on construction, so an implementation may trust it."""

    reset_after: bool = True
    activation: str = "sigmoid"
    reverse: bool = False
    layer_norm: bool = False
    recurrent_dropout: float = 0.0
    input_dropout: float = 0.0
    weight_dropout: float = 0.0
    zoneout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("reset_after", "reverse", "layer_norm"):
            value = getattr(self, name)
            expect(isinstance(value, bool), name, "True or False", repr(value))
        if self.activation not in ACTIVATIONS:
            hint = (" ('hard_sigmoid' differs between Keras 2 and 3: name the version)"
                    if self.activation == "hard_sigmoid" else "")
            raise GrunetError(f"recurrent_activation: expected one of {sorted(ACTIVATIONS)}, "
                              f"got {self.activation!r}{hint}")
        for name in PROBABILITIES:
            p = getattr(self, name)
            expect(isinstance(p, (int, float)) and not isinstance(p, bool) and math.isfinite(p) and 0 <= p < 1,
                   name, "a probability in [0, 1)", repr(p))
        if self.layer_norm and not self.reset_after:
            raise GrunetError("layer_norm: expected reset_after=True (the layer-normalised GRU normalises W_hh h, "
                              "which the reset-before form never forms), got reset_after=False")

        # the same call in the other direction, made once here: torch.compile traces direction() on every
        # forward, and a construction (with its checks) would break its graph
        flipped = copy.copy(self)
        object.__setattr__(flipped, "reverse", not self.reverse)
        object.__setattr__(flipped, "_flipped", self)
        object.__setattr__(self, "_flipped", flipped)

    def direction(self, reverse: bool) -> "CellSpec":
        return self if reverse == self.reverse else self._flipped

    @property
    def plain(self) -> bool:
        """No cell option: the GRU of torch.nn.GRU / Keras, which every implementation has always run."""
        return not (self.layer_norm or self.recurrent_dropout or self.input_dropout or self.weight_dropout
                    or self.zoneout)


@dataclass(frozen=True)
class LayerWeights:
    """Parameters of one layer and direction. reset-before: ``b_ih`` is the one bias, ``b_hh`` is None.
    ``g_ih``, ``g_hh`` (3H,): the layer-norm gains, None without layer_norm."""

    w_ih: Tensor
    w_hh: Tensor
    b_ih: Optional[Tensor] = None
    b_hh: Optional[Tensor] = None
    g_ih: Optional[Tensor] = None
    g_hh: Optional[Tensor] = None

    @property
    def gru(self) -> tuple:
        """(w_ih, w_hh, b_ih, b_hh): the plain GRU's tensors, for code that reads only those (converters)."""
        return self.w_ih, self.w_hh, self.b_ih, self.b_hh


def bernoulli(q: float, shape: tuple, like: Tensor) -> Tensor:
    """A tensor of ``shape`` with ``like``'s dtype and device, each value 1 with probability ``q`` (0 < q < 1,
    rounded to a multiple of 2^-32) and else 0, from torch's default generator on that device.

    Each 64-bit draw of the generator gives two values (its two 32-bit halves compared with a threshold):
    zoneout's (T, B, H) mask takes half the draws and about 60% of the time of ``Tensor.bernoulli_``, which
    draws one number per value.
    """
    if torch.jit.is_tracing():  # jit.trace and the TorchScript ONNX exporter: ONNX's Bernoulli operator
        return torch.bernoulli(torch.full(shape, q, dtype=like.dtype, device=like.device))
    n = math.prod(shape)
    threshold = round(q * 2**32)  # u < round(q 2^32) for u uniform on [0, 2^32)
    if threshold >= 2**32:  # q within 2^-33 of 1
        return torch.ones(shape, dtype=like.dtype, device=like.device)
    # out-of-place arithmetic only: torch.compile and torch.jit.trace take it as it is
    words = torch.randint(-2**63, 2**63 - 1, ((n + 1) // 2,), dtype=torch.int64, device=like.device)
    low = (words & 0xFFFFFFFF) < threshold  # the low 32 bits, uniform on [0, 2^32)
    high = (words >> 32) < threshold - 2**31  # the high 32 bits, signed: uniform on [-2^31, 2^31)
    return torch.stack((low, high), -1).view(-1)[:n].view(shape).to(like.dtype)


@dataclass(frozen=True)
class Masks:
    """The masks of one training call (shapes for x (T, B, I), hidden size H); None where an option is off.

    input (B, I), recurrent (B, H), weight (3H, H): values 0 or 1 / (1 - p).
    zoneout (T, B, H): values 0 or 1, the share of the new state taken at each step (1: updated).
    """

    input: Optional[Tensor] = None
    recurrent: Optional[Tensor] = None
    weight: Optional[Tensor] = None
    zoneout: Optional[Tensor] = None

    @staticmethod
    def draw(spec: CellSpec, training: bool, T: int, B: int, I: int, H: int, like: Tensor) -> "Masks":
        """Masks for one call, from torch's default generator on ``like``'s device (None in eval)."""
        if not training:
            return NO_MASKS
        rows = _batch_rows if _batch_rows is not None else BatchRows(0, B)
        expect(rows.start + B <= rows.total, "batch", f"at most the {rows.total - rows.start} rows left of the "
               f"global batch after row {rows.start}", B)
        share = slice(rows.start, rows.start + B)

        def keep(p: float, *shape: int, scaled: bool = True) -> Optional[Tensor]:
            if not p:
                return None
            m = bernoulli(1 - p, shape, like)
            return m.div_(1 - p) if scaled else m

        def rows_of(m: Optional[Tensor], dim: int) -> Optional[Tensor]:
            return None if m is None else m[(slice(None),) * dim + (share,)].contiguous()

        return Masks(input=rows_of(keep(spec.input_dropout, rows.total, I), 0),
                     recurrent=rows_of(keep(spec.recurrent_dropout, rows.total, H), 0),
                     weight=keep(spec.weight_dropout, 3 * H, H),
                     zoneout=rows_of(keep(spec.zoneout, T, rows.total, H, scaled=False), 1))


NO_MASKS = Masks()


@dataclass(frozen=True)
class BatchRows:
    """Where a call's batch sits in the global batch of a data-parallel step: rows start..start+B of total.

    Each process draws the masks of the whole global batch (its generator is in the same state as every
    other's) and keeps its own rows, so that N processes draw exactly the masks of one process."""

    start: int
    total: int


_batch_rows: Optional[BatchRows] = None


@contextmanager
def global_batch(rows: BatchRows) -> Iterator[None]:
    """Within the block, Masks.draw takes the calls' batches as ``rows`` of the global batch."""
    global _batch_rows
    previous, _batch_rows = _batch_rows, rows
    try:
        yield
    finally:
        _batch_rows = previous


def zoneout_keep(spec: CellSpec, masks: Masks, t: int):
    """The share of the new state taken at step t: the training mask, else its mean 1 - p (eval), else 1."""
    if masks.zoneout is not None:
        return masks.zoneout[t]
    return 1.0 - spec.zoneout if spec.zoneout else None
