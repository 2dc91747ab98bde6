"""The reference equations against a NumPy step written here from the equations in the README, and gradcheck."""
import numpy as np
import pytest
import torch

from conftest import positional

from grunet import reference
from grunet.contract import LayerWeights
from grunet.errors import GrunetError

gru_layer = positional(reference.gru_layer)


def np_sigma(name, a):
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-a))
    if name == "hard_sigmoid_keras2":
        return np.clip(0.2 * a + 0.5, 0.0, 1.0)
    return np.clip(a / 6.0 + 0.5, 0.0, 1.0)


def np_step(x, h, w_ih, w_hh, b_ih, b_hh, reset_after, act):
    """Straight from the equations, gate by gate, with separate matrices per gate."""
    H = h.shape[1]
    W_ir, W_iz, W_in = w_ih[:H], w_ih[H:2 * H], w_ih[2 * H:]
    W_hr, W_hz, W_hn = w_hh[:H], w_hh[H:2 * H], w_hh[2 * H:]
    if reset_after:
        b_ir, b_iz, b_in = b_ih[:H], b_ih[H:2 * H], b_ih[2 * H:]
        b_hr, b_hz, b_hn = b_hh[:H], b_hh[H:2 * H], b_hh[2 * H:]
        r = np_sigma(act, x @ W_ir.T + b_ir + h @ W_hr.T + b_hr)
        z = np_sigma(act, x @ W_iz.T + b_iz + h @ W_hz.T + b_hz)
        n = np.tanh(x @ W_in.T + b_in + r * (h @ W_hn.T + b_hn))
    else:
        b_r, b_z, b_n = b_ih[:H], b_ih[H:2 * H], b_ih[2 * H:]
        r = np_sigma(act, x @ W_ir.T + h @ W_hr.T + b_r)
        z = np_sigma(act, x @ W_iz.T + h @ W_hz.T + b_z)
        n = np.tanh(x @ W_in.T + (r * h) @ W_hn.T + b_n)
    return z * h + (1 - z) * n


def weights(I, H, reset_after, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: (torch.rand(*s, generator=g, dtype=dtype) * 2 - 1) * 0.7  # noqa: E731
    return mk(3 * H, I), mk(3 * H, H), mk(3 * H), (mk(3 * H) if reset_after else None)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("act", ["sigmoid", "hard_sigmoid_keras2", "hard_sigmoid_keras3"])
@pytest.mark.parametrize("reverse", [False, True])
def test_layer_matches_numpy_equations(reset_after, act, reverse):
    T, B, I, H = 6, 3, 4, 5
    w_ih, w_hh, b_ih, b_hh = weights(I, H, reset_after)
    x = torch.randn(T, B, I, dtype=torch.float64) * 2
    h0 = torch.randn(B, H, dtype=torch.float64) * 0.5
    out, h_n = gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh, reset_after=reset_after,
                                   activation_name=act, reverse=reverse)
    h = h0.numpy()
    expected = np.zeros((T, B, H))
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        h = np_step(x[t].numpy(), h, w_ih.numpy(), w_hh.numpy(), b_ih.numpy(),
                    None if b_hh is None else b_hh.numpy(), reset_after, act)
        expected[t] = h
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(h_n.numpy(), h, rtol=0, atol=1e-12)


def test_variants_differ_with_same_weights():
    """reset-before is a different function, not a renaming (guards against a silently shared path)."""
    w_ih, w_hh, b_ih, _ = weights(4, 5, True)
    x, h0 = torch.randn(5, 2, 4, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    a, _ = gru_layer(x, h0, w_ih, w_hh, b_ih, None, reset_after=True)
    b, _ = gru_layer(x, h0, w_ih, w_hh, b_ih, None, reset_after=False)
    assert (a - b).abs().max() > 1e-3


def test_hard_sigmoid_formulas():
    x = torch.tensor([-4.0, -2.5, -1.0, 0.0, 1.0, 2.5, 4.0])
    assert torch.allclose(reference.hard_sigmoid_keras2(x), torch.tensor([0.0, 0.0, 0.3, 0.5, 0.7, 1.0, 1.0]))
    k3 = torch.tensor([0.0, 1 / 12, 1 / 3, 0.5, 2 / 3, 11 / 12, 1.0])
    assert torch.allclose(reference.hard_sigmoid_keras3(x), k3)


def test_ambiguous_or_unknown_activation_is_refused():
    with pytest.raises(GrunetError, match="name the version"):
        reference.activation("hard_sigmoid")
    with pytest.raises(GrunetError, match="recurrent_activation: expected one of .*got 'relu'"):
        reference.activation("relu")


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("use_lengths", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck(reset_after, use_lengths, reverse):
    T, B, I, H = 4, 3, 3, 4
    params = [p.requires_grad_() for p in weights(I, H, reset_after) if p is not None]
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([4, 2, 3]) if use_lengths else None

    def f(x, h0, *p):
        b_hh = p[3] if reset_after else None
        out, h_n = gru_layer(x, h0, p[0], p[1], p[2], b_hh, reset_after=reset_after,
                                       lengths=lengths, reverse=reverse)
        return out, h_n

    assert torch.autograd.gradcheck(f, (x, h0, *params))


def test_gates_trace_matches_layer():
    w_ih, w_hh, b_ih, b_hh = weights(3, 4, True)
    x, h0 = torch.randn(5, 2, 3, dtype=torch.float64), torch.zeros(2, 4, dtype=torch.float64)
    out, _ = gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh)
    trace = reference.gru_layer_gates(x, h0, LayerWeights(w_ih, w_hh, b_ih, b_hh))
    assert torch.equal(trace["h"], out)
    # h_t = z h_{t-1} + (1 - z) n, recomputed from the traced gates
    h_prev = torch.cat([h0[None], out[:-1]])
    assert torch.allclose(trace["z"] * h_prev + (1 - trace["z"]) * trace["n"], out, atol=1e-14)
