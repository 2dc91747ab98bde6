"""grunet.GRU / GRUCell against torch.nn.GRU / GRUCell: values and every gradient, state dicts, lengths."""
import itertools

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import grunet
from grunet.errors import GrunetError

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def pair(I, H, layers, bidirectional, batch_first, dtype, bias=True, seed=0, impl="reference"):
    torch.manual_seed(seed)
    ref = torch.nn.GRU(I, H, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first,
                       bias=bias, dtype=dtype)
    ours = grunet.GRU(I, H, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first,
                      bias=bias, dtype=dtype, impl=impl)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def assert_close(a, b, tol, what):
    """Max abs error <= tol, relative to the values' scale where that exceeds 1 (summed gradients)."""
    if not a.numel():
        return
    err, scale = (a - b).abs().max().item(), max(1.0, a.abs().max().item())
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol} * {scale:.3g}"


CASES = list(itertools.product(
    ["reference", "fused"],  # impl
    [torch.float32, torch.float64],  # dtype
    [(1, 1, 1, 1), (7, 3, 5, 4), (28, 50, 28, 75)],  # T, B, I, H
    [1, 2],  # layers
    [False, True],  # bidirectional
    [False, True],  # batch_first
))


@pytest.mark.parametrize("impl,dtype,shape,layers,bidirectional,batch_first", CASES)
def test_equals_torch_gru_values_and_all_gradients(impl, dtype, shape, layers, bidirectional, batch_first):
    T, B, I, H = shape
    ref, ours = pair(I, H, layers, bidirectional, batch_first, dtype, impl=impl)
    D = 2 if bidirectional else 1
    x = torch.randn(*((B, T, I) if batch_first else (T, B, I)), dtype=dtype)
    h0 = torch.randn(layers * D, B, H, dtype=dtype)
    results = []
    for model in (ref, ours):
        xi, hi = x.clone().requires_grad_(), h0.clone().requires_grad_()
        out, h_n = model(xi, hi)
        # a loss that weights every output and state element differently
        g_out = torch.linspace(-1, 1, out.numel(), dtype=dtype).reshape(out.shape)
        g_h = torch.linspace(1, -0.5, h_n.numel(), dtype=dtype).reshape(h_n.shape)
        ((out * g_out).sum() + (h_n * g_h).sum()).backward()
        grads = {name: p.grad for name, p in model.named_parameters()}
        results.append((out, h_n, xi.grad, hi.grad, grads))
    tol = TOL[dtype]
    (o1, h1, gx1, gh1, gp1), (o2, h2, gx2, gh2, gp2) = results
    assert_close(o1, o2, tol, "output")
    assert_close(h1, h2, tol, "h_n")
    assert_close(gx1, gx2, tol, "d input")
    assert_close(gh1, gh2, tol, "d h0")
    assert gp1.keys() == gp2.keys()
    for name in gp1:
        assert_close(gp1[name], gp2[name], tol, f"d {name}")


@pytest.mark.parametrize("bias", [True, False])
def test_state_dicts_load_both_ways(bias):
    torch.manual_seed(1)
    ref = torch.nn.GRU(6, 5, num_layers=2, bidirectional=True, bias=bias)
    ours = grunet.GRU(6, 5, num_layers=2, bidirectional=True, bias=bias)
    assert {k: v.shape for k, v in ref.state_dict().items()} == {k: v.shape for k, v in ours.state_dict().items()}
    ours.load_state_dict(ref.state_dict())
    back = torch.nn.GRU(6, 5, num_layers=2, bidirectional=True, bias=bias)
    back.load_state_dict(ours.state_dict())
    for k, v in ref.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)


def test_reset_before_has_one_bias_per_gate_and_no_nn_gru_twin():
    g = grunet.GRU(28, 75, reset_after=False)
    assert sorted(k for k, _ in g.named_parameters()) == ["bias_l0", "weight_hh_l0", "weight_ih_l0"]
    assert sum(p.numel() for p in g.parameters()) == 23_400
    assert sum(p.numel() for p in grunet.GRU(28, 75).parameters()) == 23_625
    with pytest.raises(RuntimeError):
        torch.nn.GRU(28, 75).load_state_dict(g.state_dict())


@pytest.mark.parametrize("reset_after", [True, False])
def test_reset_before_layer_against_equations(reset_after):
    """Whole module (batch_first, 1 layer) against a NumPy loop of the equations (README, "The equations")."""
    from test_reference import np_step

    torch.manual_seed(3)
    g = grunet.GRU(4, 6, batch_first=True, reset_after=reset_after, dtype=torch.float64)
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    out, h_n = g(x)
    w = [None if t is None else t.detach().numpy() for t in g.layer_weights(0).gru]
    h = np.zeros((2, 6))
    for t in range(5):
        h = np_step(x[:, t].numpy(), h, *w, reset_after, "sigmoid")
        np.testing.assert_allclose(out[:, t].detach().numpy(), h, atol=1e-12)
    np.testing.assert_allclose(h_n[0].detach().numpy(), h, atol=1e-12)


def test_unbatched_input_like_nn_gru():
    ref, ours = pair(3, 4, 2, True, False, torch.float64)
    x, h0 = torch.randn(5, 3, dtype=torch.float64), torch.randn(4, 4, dtype=torch.float64)
    for args in ((x,), (x, h0)):
        o1, h1 = ref(*args)
        o2, h2 = ours(*args)
        assert o2.shape == o1.shape == (5, 8) and h2.shape == h1.shape == (4, 4)
        assert_close(o1, o2, 1e-12, "unbatched output")
        assert_close(h1, h2, 1e-12, "unbatched h_n")


# ------------------------------------------------------------------------------------------------ lengths
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_padded_batch_with_lengths_equals_each_sequence_alone(reset_after, bidirectional, batch_first):
    torch.manual_seed(4)
    g = grunet.GRU(3, 5, num_layers=2, bidirectional=bidirectional, batch_first=batch_first,
                   reset_after=reset_after, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 4, 1])
    T, B = 6, 4
    x = torch.randn(B, T, 3, dtype=torch.float64)
    x_in = x if batch_first else x.transpose(0, 1)
    h0 = torch.randn(2 * (2 if bidirectional else 1), B, 5, dtype=torch.float64)
    out, h_n = g(x_in, h0, lengths=lengths)
    out = out if batch_first else out.transpose(0, 1)
    for b in range(B):
        L = int(lengths[b])
        xb = x[b:b + 1, :L] if batch_first else x[b:b + 1, :L].transpose(0, 1)
        ob, hb = g(xb, h0[:, b:b + 1].contiguous())
        ob = ob if batch_first else ob.transpose(0, 1)
        assert_close(out[b, :L], ob[0], 1e-12, f"output of sequence {b}")
        assert_close(h_n[:, b], hb[:, 0], 1e-12, f"h_n of sequence {b}")
        assert torch.count_nonzero(out[b, L:]) == 0, "outputs past the end must be zero"


@pytest.mark.parametrize("bidirectional", [False, True])
def test_lengths_and_packed_sequence_equal_nn_gru_packed(bidirectional):
    ref, ours = pair(4, 6, 2, bidirectional, True, torch.float64)
    x = torch.randn(5, 7, 4, dtype=torch.float64)
    lengths = torch.tensor([7, 3, 5, 1, 7])
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    o_ref, h_ref = ref(packed)
    o_ref, _ = pad_packed_sequence(o_ref, batch_first=True, total_length=7)
    o_len, h_len = ours(x, lengths=lengths)
    assert_close(o_ref, o_len, 1e-12, "output with lengths")
    assert_close(h_ref, h_len, 1e-12, "h_n with lengths")
    o_pk, h_pk = ours(packed)
    assert torch.equal(o_pk.batch_sizes, packed.batch_sizes)
    o_pk, _ = pad_packed_sequence(o_pk, batch_first=True, total_length=7)
    assert_close(o_ref, o_pk, 1e-12, "packed output")
    assert_close(h_ref, h_pk, 1e-12, "packed h_n")


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("use_lengths", [False, True])
def test_module_gradcheck(reset_after, use_lengths):
    torch.manual_seed(5)
    g = grunet.GRU(3, 3, num_layers=2, bidirectional=True, reset_after=reset_after, dtype=torch.float64)
    names, params = zip(*g.named_parameters())
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([4, 2]) if use_lengths else None

    def f(x, h0, *ps):
        state = dict(zip(names, ps))
        return torch.func.functional_call(g, state, (x, h0), {"lengths": lengths})

    assert torch.autograd.gradcheck(f, (x, h0, *[p.detach().requires_grad_() for p in params]))


# ------------------------------------------------------------------------------------------------ cell
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cell_equals_nn_gru_cell(dtype):
    torch.manual_seed(6)
    ref = torch.nn.GRUCell(5, 7, dtype=dtype)
    ours = grunet.GRUCell(5, 7, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    x, h = torch.randn(3, 5, dtype=dtype), torch.randn(3, 7, dtype=dtype)
    outs = []
    for m in (ref, ours):
        xi = x.clone().requires_grad_()
        y = m(xi, h)
        y.pow(2).sum().backward()
        outs.append((y, xi.grad, [p.grad for p in m.parameters()]))
    assert_close(outs[0][0], outs[1][0], TOL[dtype], "cell output")
    assert_close(outs[0][1], outs[1][1], TOL[dtype], "cell d input")
    for a, b in zip(outs[0][2], outs[1][2]):
        assert_close(a, b, TOL[dtype], "cell d weight")
    assert ours(x[0]).shape == (7,)


def test_cell_step_equals_layer_step():
    torch.manual_seed(7)
    cell = grunet.GRUCell(4, 5, reset_after=False, dtype=torch.float64)
    layer = grunet.GRU(4, 5, reset_after=False, dtype=torch.float64)
    layer.load_state_dict({"weight_ih_l0": cell.weight_ih, "weight_hh_l0": cell.weight_hh, "bias_l0": cell.bias})
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    out, _ = layer(x)
    h = torch.zeros(2, 5, dtype=torch.float64)
    for t in range(3):
        h = cell(x[t], h)
        assert_close(out[t], h, 1e-14, f"step {t}")


# ------------------------------------------------------------------------------------------------ init
def test_keras_init():
    torch.manual_seed(8)
    g = grunet.GRU(28, 75, reset_after=False, init="keras")
    w_ih, w_hh, b = g.weight_ih_l0.detach(), g.weight_hh_l0.detach(), g.bias_l0.detach()
    limit = (6 / (28 + 3 * 75)) ** 0.5  # glorot_uniform over Keras's (I, 3U) kernel
    assert w_ih.abs().max() <= limit and w_ih.abs().max() > 0.95 * limit
    assert torch.allclose(w_hh.T @ w_hh, torch.eye(75), atol=1e-5)  # orthogonal columns = Keras's rows
    assert torch.count_nonzero(b) == 0
    t = grunet.GRU(28, 75, init="torch")
    bound = 75 ** -0.5
    assert all(p.abs().max() <= bound and p.abs().max() > 0.9 * bound for p in t.parameters())


# ------------------------------------------------------------------------------------------------ errors
def test_bad_inputs_raise_value_errors_naming_the_argument():
    g = grunet.GRU(4, 5, num_layers=2)
    x = torch.randn(3, 2, 4)
    cases = [
        (lambda: g(torch.randn(2, 3, 4, 1)), r"input: expected a 2-D \(unbatched\) or 3-D tensor, got 4-D"),
        (lambda: g(torch.randn(3, 2, 6)), r"input: expected last dimension input_size=4, got shape \(3, 2, 6\)"),
        (lambda: g(x, torch.zeros(1, 2, 5)), r"h0: expected shape \(2, 2, 5\).*got \(1, 2, 5\)"),
        (lambda: g(x, torch.zeros(2, 2, 5, dtype=torch.float64)), r"h0: expected dtype torch.float32 on device cpu, got torch.float64 on cpu"),
        (lambda: g(x.double()), r"input: expected dtype torch.float32 .*got torch.float64"),
        (lambda: g(x, lengths=torch.tensor([3, 4])), r"lengths: expected values in \[1, 3\].*got min 3, max 4"),
        (lambda: g(x, lengths=torch.tensor([0, 2])), r"lengths: expected values in \[1, 3\]"),
        (lambda: g(x, lengths=torch.tensor([3, 2, 1])), r"lengths: expected a 1-D tensor of 2 lengths.*got shape \(3,\)"),
        (lambda: g(x, lengths=torch.tensor([3.0, 2.0])), r"lengths: expected integer values, got torch.float32"),
        (lambda: grunet.GRU(4, 5, recurrent_activation="relu"), r"recurrent_activation: expected one of"),
        (lambda: grunet.GRU(4, 5, impl="cuda"), r"impl: expected one of \['auto', 'reference', 'fused', 'triton'\], got 'cuda'"),
        (lambda: grunet.GRU(4, 5, init="he"), r"init: expected one of \['torch', 'keras'\], got 'he'"),
        (lambda: grunet.GRU(4, 0), r"hidden_size: expected an integer >= 1, got 0"),
        (lambda: grunet.GRU(4, 5, dropout=2), r"dropout: expected a number in \[0, 1\], got 2"),
        (lambda: grunet.GRUCell(4, 5)(torch.randn(2, 3)), r"input: expected last dimension input_size=4"),
    ]
    for call, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            call()
    assert issubclass(GrunetError, ValueError)


def test_dropout_between_layers_only_in_training():
    torch.manual_seed(9)
    g = grunet.GRU(3, 4, num_layers=2, dropout=0.5, impl="reference")
    x = torch.randn(5, 2, 3)
    g.eval()
    a, b = g(x)[0], g(x)[0]
    assert torch.equal(a, b)
    g.train()
    assert not torch.equal(g(x)[0], a)
