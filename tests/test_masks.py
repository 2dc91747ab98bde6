"""grunet.contract's masks: drawn from torch's generator (a seed reproduces them), each value kept with
probability 1 - p, scaled as the option says, and none in eval."""
from __future__ import annotations

import math

import pytest
import torch

from grunet.contract import CellSpec, Masks, bernoulli

T, B, I, H = 28, 50, 28, 75


@pytest.mark.parametrize("q", [0.9, 0.75, 0.5, 0.1, 0.013])
def test_bernoulli_keeps_each_value_with_probability_q(q):
    torch.manual_seed(0)
    n = 400_000
    m = bernoulli(q, (n,), torch.empty(0))
    assert m.dtype == torch.float32 and m.shape == (n,)
    assert set(torch.unique(m).tolist()) <= {0.0, 1.0}
    sigma = math.sqrt(q * (1 - q) / n)
    assert abs(float(m.mean()) - q) < 5 * sigma
    # neighbours (the two halves of one 64-bit draw) are independent: P(both) = q^2
    pairs = m[0::2] * m[1::2]
    assert abs(float(pairs.mean()) - q * q) < 5 * math.sqrt(q * q * (1 - q * q) / (n // 2))


def test_bernoulli_edges_and_odd_sizes():
    like = torch.empty(0)
    assert bool(bernoulli(1 - 2**-40, (7, 3), like).eq(1).all())  # q rounds to 1: every value kept
    assert bool(bernoulli(2**-40, (1001,), like).eq(0).all())  # q rounds to 0
    assert bernoulli(0.5, (3, 5, 7), like).shape == (3, 5, 7)  # an odd count: the last draw's half unused


def test_masks_follow_the_seed_and_differ_between_calls():
    spec = CellSpec(recurrent_dropout=0.25, zoneout=0.1, input_dropout=0.2, weight_dropout=0.3)
    like = torch.empty(0, dtype=torch.float64)
    torch.manual_seed(7)
    a, b = Masks.draw(spec, True, T, B, I, H, like), Masks.draw(spec, True, T, B, I, H, like)
    torch.manual_seed(7)
    again = Masks.draw(spec, True, T, B, I, H, like)
    for name in ("input", "recurrent", "weight", "zoneout"):
        assert torch.equal(getattr(a, name), getattr(again, name)), name
        assert not torch.equal(getattr(a, name), getattr(b, name)), name
        assert getattr(a, name).dtype == torch.float64


def test_mask_values_shapes_and_rates():
    spec = CellSpec(recurrent_dropout=0.25, zoneout=0.1, input_dropout=0.2, weight_dropout=0.3)
    torch.manual_seed(1)
    m = Masks.draw(spec, True, T, B, I, H, torch.empty(0))
    for name, p, shape, kept in [("input", 0.2, (B, I), 1 / 0.8), ("recurrent", 0.25, (B, H), 1 / 0.75),
                                 ("weight", 0.3, (3 * H, H), 1 / 0.7), ("zoneout", 0.1, (T, B, H), 1.0)]:
        v = getattr(m, name)
        assert v.shape == shape, name
        values = torch.unique(v)
        assert torch.allclose(values, torch.tensor([0.0, kept])), name
        rate = float((v != 0).float().mean())
        assert abs(rate - (1 - p)) < 5 * math.sqrt(p * (1 - p) / v.numel()), name


def test_no_masks_in_eval_or_without_options():
    spec = CellSpec(recurrent_dropout=0.25, zoneout=0.1)
    assert Masks.draw(spec, False, T, B, I, H, torch.empty(0)) == Masks()
    none = Masks.draw(CellSpec(), True, T, B, I, H, torch.empty(0))
    assert (none.input, none.recurrent, none.weight, none.zoneout) == (None, None, None, None)


def test_masks_under_jit_trace_are_drawn_by_the_traced_graph():
    """A traced training model keeps drawing masks when it runs (ONNX's Bernoulli for the exporter)."""
    spec = CellSpec(zoneout=0.5)
    traced = torch.jit.trace(lambda x: Masks.draw(spec, True, 3, 4, 2, 5, x).zoneout * x, (torch.ones(3, 4, 5),),
                             check_trace=False)
    a, b = traced(torch.ones(3, 4, 5)), traced(torch.ones(3, 4, 5))
    assert set(torch.unique(a).tolist()) == {0.0, 1.0} and not torch.equal(a, b)
