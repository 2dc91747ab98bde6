"""grunet.GRU / GRUCell as drop-ins: the behaviours PyTorch's own nn.GRU tests check, run side by side with torch.

Argument checks, no broadcasting in the cell, empty batches, dropout between layers, initial states,
weight_norm and parametrizations, flat weights, devices and dtypes, PackedSequence, deepcopy and pickling.
"""
import copy
import io
import pickle
import pydoc
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import grunet
from grunet.errors import GrunetError

IMPLS = ["reference", "fused"]


def twins(*args, impl="reference", dtype=torch.float64, seed=0, **kwargs):
    torch.manual_seed(seed)
    ref = nn.GRU(*args, dtype=dtype, **kwargs)
    ours = grunet.GRU(*args, dtype=dtype, impl=impl, **kwargs)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def assert_close(a, b, tol=1e-10):
    assert a.shape == b.shape
    if a.numel():
        assert (a - b).abs().max().item() <= tol


# ------------------------------------------------------------------------------------------- constructor arguments
@pytest.mark.parametrize("cls", [grunet.GRU, grunet.GRUCell], ids=lambda c: c.__name__)
@pytest.mark.parametrize("args,kwargs,pattern", [
    ((4, True), {}, r"hidden_size: expected an integer >= 1, got True \(bool\)"),
    ((True, 4), {}, r"input_size: expected an integer >= 1, got True \(bool\)"),
    ((4, 5.0), {}, r"hidden_size: expected an integer >= 1, got 5.0 \(float\)"),
    ((4, "5"), {}, r"hidden_size: expected an integer >= 1, got '5' \(str\)"),
    ((4, 5), {"bias": "False"}, r"bias: expected True or False, got 'False' \(str\)"),
    ((4, 5), {"bias": 1}, r"bias: expected True or False, got 1 \(int\)"),
    ((4, 5), {"reset_after": None}, r"reset_after: expected True or False, got None"),
    ((4, 5), {"recurrent_activation": torch.sigmoid}, r"recurrent_activation: expected a name such as 'sigmoid'"),
    ((4, 5), {"dtype": torch.int64}, r"dtype: expected a floating-point torch.dtype or None, got torch.int64"),
    ((4, 5), {"dtype": "float32"}, r"dtype: expected a floating-point torch.dtype or None, got 'float32'"),
    ((4, 5), {"init": ["torch"]}, r"init: expected one of \['torch', 'keras'\], got \['torch'\]"),
])
def test_wrong_argument_types_are_refused_as_type_errors(cls, args, kwargs, pattern):
    with pytest.raises(TypeError if "expected one of" not in pattern else ValueError, match=pattern) as caught:
        cls(*args, **kwargs)
    assert isinstance(caught.value, GrunetError) and "\n" not in str(caught.value)


@pytest.mark.parametrize("kwargs,pattern,torch_refuses", [
    ({"num_layers": True}, r"num_layers: expected an integer >= 1, got True \(bool\)", False),
    ({"num_layers": 0}, r"num_layers: expected an integer >= 1, got 0", True),
    ({"batch_first": "False"}, r"batch_first: expected True or False, got 'False' \(str\)", True),
    ({"batch_first": 0}, r"batch_first: expected True or False, got 0 \(int\)", True),
    ({"bidirectional": "yes"}, r"bidirectional: expected True or False, got 'yes' \(str\)", False),
    ({"dropout": True}, r"dropout: expected a number in \[0, 1\], got True \(bool\)", True),
    ({"dropout": "0.5"}, r"dropout: expected a number in \[0, 1\], got '0.5' \(str\)", True),
    ({"dropout": float("nan")}, r"dropout: expected a number in \[0, 1\], got nan", True),
    ({"proj_size": 3}, r"proj_size: expected 0: a GRU has no projection \(PyTorch supports proj_size only for LSTM\), got 3", True),
    ({"proj_size": True}, r"proj_size: expected 0 \(a GRU has no projection\), got True \(bool\)", True),
    ({"device": "no-such-device"}, r"device: expected a torch.device or a name such as 'cpu', got 'no-such-device'", True),
])
def test_gru_arguments_checked_like_nn_gru_or_stricter(kwargs, pattern, torch_refuses):
    with pytest.raises(GrunetError, match=pattern) as caught:
        grunet.GRU(4, 5, num_layers=2, **kwargs) if "num_layers" not in kwargs else grunet.GRU(4, 5, **kwargs)
    assert "\n" not in str(caught.value)
    # torch refuses these too (TypeError for types, ValueError for ranges); num_layers=True and a
    # non-bool bidirectional only grunet refuses (stricter)
    if torch_refuses:
        with pytest.raises((TypeError, ValueError, RuntimeError)):
            nn.GRU(4, 5, num_layers=2, **kwargs) if "num_layers" not in kwargs else nn.GRU(4, 5, **kwargs)


def test_proj_size_zero_positional_like_nn_gru():
    g = grunet.GRU(4, 5, 1, True, False, 0.0, False, 0)
    assert g.proj_size == 0 and g.bias is True and g.batch_first is False


def test_batch_first_string_false_does_not_run_batch_first():
    with pytest.raises(GrunetError):
        grunet.GRU(3, 4, batch_first="False")
    g = grunet.GRU(3, 4, batch_first=False)
    out, h_n = g(torch.randn(7, 2, 3))
    assert out.shape == (7, 2, 4) and h_n.shape == (1, 2, 4)
    assert "batch_first" not in repr(g)


def test_dropout_with_one_layer_warns_like_nn_gru():
    with pytest.warns(UserWarning, match="dropout"):
        grunet.GRU(3, 4, dropout=0.5)
    with pytest.warns(UserWarning, match="dropout"):
        nn.GRU(3, 4, dropout=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grunet.GRU(3, 4, num_layers=2, dropout=0.5)


# ------------------------------------------------------------------------------------------- wrong inputs
def test_wrong_shapes_raise_what_torch_code_catches():
    """torch raises RuntimeError for a wrong-shape input, h0 or hx: code that catches it catches grunet's too."""
    g, cell = grunet.GRU(4, 5, num_layers=2), grunet.GRUCell(4, 5)
    x = torch.randn(3, 2, 4)
    calls = {
        "input": (lambda: g(torch.randn(3, 2, 6)), r"^input: expected last dimension input_size=4, got shape \(3, 2, 6\)$"),
        "h0": (lambda: g(x, torch.zeros(1, 2, 5)), r"^h0: expected shape \(2, 2, 5\) .*, got \(1, 2, 5\)$"),
        "h0 2-D": (lambda: g(x, torch.zeros(2, 5)), r"^h0: expected shape \(2, 2, 5\) .*, got \(2, 5\)$"),
        "cell input": (lambda: cell(torch.randn(3, 6)), r"^input: expected last dimension input_size=4, got shape \(3, 6\)$"),
        "cell hx": (lambda: cell(torch.randn(3, 4), torch.randn(3, 6)), r"^hx: expected shape \(3, 5\) .*, got \(3, 6\)$"),
        "zero-length": (lambda: g(torch.randn(0, 2, 4)), r"^input: expected a sequence of length >= 1, got shape \(0, 2, 4\)$"),
    }
    for what, (call, pattern) in calls.items():
        try:
            call()
        except RuntimeError as e:  # what torch's callers catch
            assert isinstance(e, (GrunetError, ValueError)), what
            import re
            assert re.search(pattern, str(e)), f"{what}: {e}"
        else:
            pytest.fail(f"{what}: no error")
    with pytest.raises(RuntimeError):  # torch agrees on the zero-length sequence
        nn.GRU(4, 5)(torch.randn(0, 2, 4))


def test_cell_state_of_wrong_type_is_one_line():
    cell = grunet.GRUCell(4, 5)
    for hx in ([0.0] * 5, 0.5, "h"):
        with pytest.raises(GrunetError, match=r"^hx: expected a torch.Tensor or None, got (list|float|str)$"):
            cell(torch.randn(2, 4), hx)
    with pytest.raises(GrunetError, match=r"^input: expected a torch.Tensor, got list$"):
        cell([[0.0] * 4], None)


@pytest.mark.parametrize("lengths", [torch.tensor([True, True]), [True, False], torch.tensor([1.0, 2.0])])
def test_lengths_must_be_integers_not_bools(lengths):
    with pytest.raises(GrunetError, match=r"^lengths: expected integer values, got torch\.(bool|float32)$"):
        grunet.GRU(4, 5)(torch.randn(3, 2, 4), lengths=lengths)


def test_lengths_of_any_integer_dtype_or_list():
    g = grunet.GRU(4, 5, impl="reference", dtype=torch.float64)
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    expected = g(x, lengths=torch.tensor([3, 1]))
    for lengths in ([3, 1], torch.tensor([3, 1], dtype=torch.int32), torch.tensor([3, 1], dtype=torch.uint8)):
        for a, b in zip(expected, g(x, lengths=lengths)):
            assert torch.equal(a, b)
    with pytest.raises(GrunetError, match=r"^lengths: expected a 1-D integer tensor or list of 2 lengths, got "):
        g(x, lengths=[[3], [1, 2]])


def test_cell_does_not_broadcast_like_nn_gru_cell():
    for cls in (nn.GRUCell, grunet.GRUCell):
        cell = cls(10, 20)
        for x, hx in ((torch.randn(3, 10), torch.randn(1, 20)), (torch.randn(1, 10), torch.randn(3, 20)),
                      (torch.randn(10), torch.randn(3, 20)), (torch.randn(3, 10), torch.randn(20))):
            with pytest.raises(RuntimeError):
                cell(x, hx)


def test_device_and_dtype_mismatches_are_refused():
    g = grunet.GRU(3, 4, device="meta")
    assert g.weight_ih_l0.device.type == "meta"
    with pytest.raises(GrunetError, match=r"^input: expected device meta .*, got cpu$"):
        g(torch.randn(2, 1, 3))
    g = grunet.GRU(3, 4)
    with pytest.raises(GrunetError, match=r"^input: expected dtype torch.float32"):
        g(torch.randn(2, 1, 3, dtype=torch.float64))
    with pytest.raises(GrunetError, match=r"^h0: expected dtype torch.float32 on device cpu, got torch.float64"):
        g(torch.randn(2, 1, 3), torch.zeros(1, 1, 4, dtype=torch.float64))
    cell = grunet.GRUCell(3, 4)
    with pytest.raises(GrunetError, match=r"^input: expected dtype torch.float32"):
        cell(torch.randn(2, 3, dtype=torch.float64))


# ------------------------------------------------------------------------------------------- the nn.GRU surface
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True)])
def test_flat_weights_and_all_weights_as_nn_gru(bias, layers, bidirectional):
    ref, ours = twins(3, 4, num_layers=layers, bidirectional=bidirectional, bias=bias)
    assert ours._flat_weights_names == ref._flat_weights_names
    assert ours._all_weights == ref._all_weights
    assert [[tuple(p.shape) for p in ps] for ps in ours.all_weights] == \
           [[tuple(p.shape) for p in ps] for ps in ref.all_weights]
    for a, b in zip(ref._flat_weights, ours._flat_weights):
        assert torch.equal(a, b)
    assert all(p is getattr(ours, n) for p, n in zip(ours._flat_weights, ours._flat_weights_names))
    assert ours.mode == ref.mode == "GRU" and ours.proj_size == ref.proj_size == 0


def test_reset_before_flat_weights_name_its_one_bias():
    g = grunet.GRU(3, 4, bidirectional=True, reset_after=False)
    assert g._flat_weights_names == ["weight_ih_l0", "weight_hh_l0", "bias_l0",
                                     "weight_ih_l0_reverse", "weight_hh_l0_reverse", "bias_l0_reverse"]


def test_flatten_parameters_on_cpu_is_a_no_op_that_published_models_can_call():
    class Tagger(nn.Module):  # the pattern of many published models
        def __init__(self, rnn):
            super().__init__()
            self.rnn = rnn

        def forward(self, x):
            self.rnn.flatten_parameters()
            return self.rnn(x)[0]

    ref, ours = twins(3, 4, num_layers=2, impl="fused")
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    assert_close(Tagger(ref)(x), Tagger(ours)(x), 1e-12)
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in before.items())


def test_type_based_code_has_a_way_in():
    g, cell = grunet.GRU(3, 4), grunet.GRUCell(3, 4)
    assert isinstance(g, grunet.GRU_TYPES) and isinstance(nn.GRU(3, 4), grunet.GRU_TYPES)
    assert isinstance(cell, grunet.GRU_CELL_TYPES) and isinstance(nn.GRUCell(3, 4), grunet.GRU_CELL_TYPES)
    assert not isinstance(g, nn.GRU)  # on purpose: torch.compile does not trace into nn.GRU instances
    model = nn.Sequential(grunet.GRU(3, 4), nn.Linear(4, 2))
    initialised = []
    for m in model.modules():
        if isinstance(m, grunet.GRU_TYPES):
            for name in m._flat_weights_names:
                nn.init.zeros_(getattr(m, name))
            initialised.append(m)
    assert initialised == [model[0]] and all(torch.count_nonzero(p) == 0 for p in model[0].parameters())


@pytest.mark.parametrize("cls", [grunet.GRU, grunet.GRUCell], ids=lambda c: c.__name__)
def test_help_shows_arguments_inputs_outputs_parameters_and_equations(cls):
    text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
    for needle in ("input_size", "hidden_size", "bias", "Inputs", "Output", "weight_ih", "weight_hh",
                   "reset-after", "reset-before", "sigma(W_ir x", "tanh(W_in x", "(1 - z", "recurrent_activation"):
        assert needle in text, needle
    if cls is grunet.GRU:
        for needle in ("batch_first", "bidirectional", "dropout", "proj_size", "lengths", "h_n", "bias_l{k}",
                       "flatten_parameters", "GRU_TYPES", "impl"):
            assert needle in text, needle


# ------------------------------------------------------------------------------------------- behaviours
@pytest.mark.parametrize("impl", IMPLS)
def test_empty_batch_like_nn_gru(impl):
    ref, ours = twins(3, 4, num_layers=2, bidirectional=True, impl=impl)
    x = torch.zeros(5, 0, 3, dtype=torch.float64, requires_grad=True)
    for m in (ref, ours):
        out, h_n = m(x)
        assert out.shape == (5, 0, 8) and h_n.shape == (4, 0, 4)
        (out.sum() + h_n.sum()).backward()
        assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in m.parameters())
    cell = grunet.GRUCell(3, 4)
    assert cell(torch.zeros(0, 3)).shape == (0, 4)


@pytest.mark.parametrize("impl", IMPLS)
def test_zero_initial_state_equals_none_and_gets_its_gradient(impl):
    ref, ours = twins(3, 4, num_layers=2, impl=impl)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    h0 = torch.zeros(2, 2, 4, dtype=torch.float64, requires_grad=True)
    out_none, h_none = ours(x)
    out_zero, h_zero = ours(x, h0)
    assert_close(out_none, out_zero, 0) and assert_close(h_none, h_zero, 0)
    h0_ref = h0.detach().clone().requires_grad_()
    (out_zero.sum() + h_zero.pow(2).sum()).backward()
    o, h = ref(x, h0_ref)
    (o.sum() + h.pow(2).sum()).backward()
    assert_close(h0.grad, h0_ref.grad, 1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_dropout_between_layers_matches_nn_gru_at_the_extremes(impl):
    """p = 1 zeros the second layer's input in training for both; eval ignores dropout."""
    ref, ours = twins(3, 4, num_layers=3, dropout=1.0, impl=impl)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    for training in (True, False):
        ref.train(training), ours.train(training)
        for a, b in zip(ref(x), ours(x)):
            assert_close(a, b, 1e-12)
    ref.eval(), ours.eval()
    nodrop_ref, _ = twins(3, 4, num_layers=3, impl=impl)
    assert_close(ours(x)[0], nodrop_ref(x)[0], 1e-12)  # same seed, same weights: eval has no dropout


def test_dropout_state_survives_pickling_and_can_be_changed():
    g = grunet.GRU(3, 4, num_layers=2, dropout=0.5, impl="reference")
    x = torch.randn(5, 2, 3)
    for m in (g, pickle.loads(pickle.dumps(g))):
        assert m.dropout == 0.5
        m.train()
        torch.manual_seed(0)
        a = m(x)[0]
        torch.manual_seed(1)
        assert not torch.equal(a, m(x)[0])
        m.eval()
        assert torch.equal(m(x)[0], m(x)[0])
    g.dropout = 0.0  # as torch's test_RNN_change_dropout: the attribute is read at every call
    g.train()
    assert torch.equal(g(x)[0], g.eval()(x)[0])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("style", ["parametrizations", "hook"])
def test_weight_norm_on_weight_hh(impl, style):
    ref, ours = twins(3, 4, num_layers=2, impl=impl)
    for m in (ref, ours):
        if style == "parametrizations":
            nn.utils.parametrizations.weight_norm(m, "weight_hh_l0")
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.nn.utils.weight_norm is deprecated
                nn.utils.weight_norm(m, "weight_hh_l0")
    assert sorted(n for n, _ in ours.named_parameters()) == sorted(n for n, _ in ref.named_parameters())
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    grads = []
    for m in (ref, ours):
        with torch.no_grad():  # a changed magnitude must reach the computation
            for name, p in m.named_parameters():
                if name.endswith(("original0", "weight_hh_l0_g")):
                    p.mul_(1.5)
        out, h_n = m(x)
        (out.pow(2).sum() + h_n.sum()).backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
        assert len(m._flat_weights) == len(m._flat_weights_names)
    assert_close(ref(x)[0], ours(x)[0], 1e-12)
    assert_close(ref._flat_weights[1], ours._flat_weights[1], 1e-12)
    for name in grads[0]:
        assert_close(grads[0][name], grads[1][name], 1e-10)


def test_state_dict_round_trip_keeps_the_numbers():
    for kwargs in ({}, {"reset_after": False}, {"bias": False, "bidirectional": True, "num_layers": 2}):
        a = grunet.GRU(3, 4, **kwargs, dtype=torch.float64)
        buffer = io.BytesIO()
        torch.save(a.state_dict(), buffer)
        buffer.seek(0)
        b = grunet.GRU(3, 4, **kwargs, dtype=torch.float64)
        b.load_state_dict(torch.load(buffer, weights_only=True))
        x = torch.randn(5, 2, 3, dtype=torch.float64)
        assert torch.equal(a(x)[0], b(x)[0])


@pytest.mark.parametrize("cls", [grunet.GRU, grunet.GRUCell], ids=lambda c: c.__name__)
def test_deepcopy_and_pickle_give_independent_equal_modules(cls):
    m = cls(3, 4, dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64)
    for twin in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert type(twin) is cls and repr(twin) == repr(m)
        out_m, out_t = m(x), twin(x)
        assert torch.equal(out_m[0] if cls is grunet.GRU else out_m, out_t[0] if cls is grunet.GRU else out_t)
        with torch.no_grad():
            next(twin.parameters()).add_(1)
        assert not torch.equal(next(twin.parameters()), next(m.parameters()))
        if cls is grunet.GRU:
            assert twin._flat_weights_names == m._flat_weights_names
            assert twin._flat_weights[0] is twin.weight_ih_l0


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_packed_sequence_values_and_gradients_like_nn_gru(impl, enforce_sorted):
    ref, ours = twins(3, 4, num_layers=2, bidirectional=True, impl=impl)
    lengths = torch.tensor([6, 4, 4, 1]) if enforce_sorted else torch.tensor([4, 6, 1, 4])
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    results = []
    for m in (ref, ours):
        xi = x.clone().requires_grad_()
        out, h_n = m(pack_padded_sequence(xi, lengths, enforce_sorted=enforce_sorted))
        padded, _ = pad_packed_sequence(out)
        (padded.pow(2).sum() + h_n.sum()).backward()
        results.append((padded, h_n, xi.grad, [p.grad for p in m.parameters()]))
    (o1, h1, g1, p1), (o2, h2, g2, p2) = results
    assert_close(o1, o2, 1e-12), assert_close(h1, h2, 1e-12), assert_close(g1, g2, 1e-12)
    for a, b in zip(p1, p2):
        assert_close(a, b, 1e-10)


def test_unbatched_cell_and_layer_with_states():
    torch.manual_seed(2)
    ref, ours = nn.GRUCell(3, 4, dtype=torch.float64), grunet.GRUCell(3, 4, dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    x, h = torch.randn(3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    assert_close(ref(x, h), ours(x, h), 1e-14)
    assert ours(x, h).shape == (4,)
    ref, ours = twins(3, 4, num_layers=2, batch_first=True)
    x, h0 = torch.randn(5, 3, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    for a, b in zip(ref(x, h0), ours(x, h0)):
        assert_close(a, b, 1e-12)
    with pytest.raises(RuntimeError):  # an unbatched input with a batched state: both refuse
        ours(x, h0.unsqueeze(1))
    with pytest.raises(RuntimeError):
        ref(x, h0.unsqueeze(1))


def test_cell_without_bias_has_none_biases_like_nn_gru_cell():
    ref, ours = nn.GRUCell(3, 4, bias=False), grunet.GRUCell(3, 4, bias=False)
    assert ref.bias_ih is None and ours.bias_ih is None and ours.bias_hh is None
    assert sorted(ref.state_dict()) == sorted(ours.state_dict()) == ["weight_hh", "weight_ih"]
    ours.load_state_dict(ref.state_dict())
    x, h = torch.randn(2, 3), torch.randn(2, 4)
    assert_close(ref(x, h), ours(x, h), 1e-6)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
def test_half_precision_close_to_double(dtype, tol):
    """The reference loop in half precision stays within the format's rounding of the float64 result."""
    torch.manual_seed(3)
    g = grunet.GRU(3, 4, num_layers=2, impl="reference", dtype=torch.float64)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    expected = g(x)[0]
    half = copy.deepcopy(g).to(dtype)
    assert half.weight_ih_l0.dtype == dtype
    out = half(x.to(dtype))[0]
    assert out.dtype == dtype
    assert (out.double() - expected).abs().max().item() <= tol
    assert g.double()(x)[0].dtype == torch.float64


@pytest.mark.parametrize("impl", IMPLS)
def test_module_to_double_like_nn_gru(impl):
    torch.manual_seed(4)
    ref, ours = nn.GRU(3, 4), grunet.GRU(3, 4, impl=impl)
    ours.load_state_dict(ref.state_dict())
    ref.double(), ours.double()
    assert ours._flat_weights[0].dtype == torch.float64
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    assert_close(ref(x)[0], ours(x)[0], 1e-12)


def test_higher_order_gradients_with_the_reference_loop():
    """torch's module tests run gradgradcheck; grunet's reference loop supports it, and the fused kernel's
    backward hands create_graph=True over to the reference loop."""
    torch.manual_seed(5)
    g = grunet.GRU(2, 2, impl="reference", dtype=torch.float64)
    x = torch.randn(3, 1, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x: g(x)[0], (x,))
    fused = grunet.GRU(2, 2, impl="fused", dtype=torch.float64)
    assert torch.autograd.gradgradcheck(lambda x: fused(x)[0], (x,))
