"""grunet.GRU.flatten_parameters: on CUDA, each layer and direction of the cell cuDNN computes gets its
parameters into one buffer in cuDNN's layout, so torch._VF.gru reads them in place; elsewhere nothing changes.
The CPU tests check that nothing changes on CPU and which layers and directions would be flattened (with the
CUDA calls replaced by a recorder); the CUDA tests check the buffers themselves, that torch copies nothing
(no "not part of single contiguous chunk" warning) and the numbers against torch.nn.GRU and the reference."""
from __future__ import annotations

import io
import warnings
from contextlib import contextmanager

import pytest
import torch
from torch.nn.utils import parametrizations, parametrize, prune

import grunet
from grunet.kernels.gpu import cudnn

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
COPY_WARNING = "not part of single contiguous chunk"


def values_and_grads(gru, x, h0, lengths=None):
    """{name: tensor} of the output, h_n and the gradients of x, h0 and every parameter."""
    x, h0 = x.detach().requires_grad_(), h0.detach().requires_grad_()
    out, h_n = gru(x, h0) if lengths is None else gru(x, h0, lengths=lengths)
    weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view_as(out)
    names, params = zip(*gru.named_parameters())
    grads = torch.autograd.grad((out * weight).sum() + (h_n * h_n).sum(), [x, h0, *params])
    return {"output": out.detach(), "h_n": h_n.detach(), **dict(zip(("x", "h0") + names, grads))}


def storages(gru) -> set:
    return {p.untyped_storage().data_ptr() for p in gru.parameters()}


# ---- CPU ---------------------------------------------------------------------------------------------
def test_on_cpu_flatten_parameters_changes_nothing_and_calls_no_cudnn(monkeypatch):
    def refuse(*args):
        raise AssertionError("torch._cudnn_rnn_flatten_weight called on CPU")

    monkeypatch.setattr(torch, "_cudnn_rnn_flatten_weight", refuse)
    gru = grunet.GRU(3, 4, num_layers=2, bidirectional=True).double()
    params = dict(gru.named_parameters())
    before = {n: (p, p.data_ptr(), p.detach().clone()) for n, p in params.items()}
    gru.flatten_parameters()
    gru.to("cpu")
    for n, p in gru.named_parameters():
        obj, ptr, value = before[n]
        assert p is obj and p.data_ptr() == ptr and torch.equal(p, value)
    assert len(storages(gru)) == len(params)  # each parameter keeps a storage of its own

    torch_gru = torch.nn.GRU(3, 4, num_layers=2, bidirectional=True).double()
    torch_gru.load_state_dict(gru.state_dict())
    x, h0 = torch.randn(5, 2, 3, dtype=torch.float64), torch.randn(4, 2, 4, dtype=torch.float64)
    ours, theirs = values_and_grads(gru, x, h0), values_and_grads(torch_gru, x, h0)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert float((ours[name] - theirs[name]).abs().max()) < 1e-12, name


@pytest.fixture
def recorded(monkeypatch):
    """The CUDA conditions granted to CPU tensors (cuDNN accepts every tensor) and the cuDNN call recorded:
    (parameters, input width, hidden size) per flattened layer and direction."""
    calls = []
    monkeypatch.setattr(torch.backends.cudnn, "is_acceptable", lambda tensor: True)
    monkeypatch.setattr(cudnn, "flatten", lambda params, width, hidden: calls.append((params, width, hidden)))
    return calls


def test_each_layer_and_direction_is_flattened_on_its_own_with_its_input_width(recorded):
    """Construction and every _apply (.double() here) flatten each layer and direction, with its parameters
    in cuDNN's order and that layer's input width; load_state_dict copies in place and flattens nothing."""
    gru = grunet.GRU(3, 4, num_layers=2, bidirectional=True)
    construction = list(recorded)
    recorded.clear()
    gru.double()
    converted = list(recorded)
    expected = [(f"l{k}{s}", width) for k, width in ((0, 3), (1, 8)) for s in ("", "_reverse")]
    for calls in (construction, converted):
        assert len(calls) == 4
        for (params, width, hidden), (layer, want_width) in zip(calls, expected):
            names = [f"weight_ih_{layer}", f"weight_hh_{layer}", f"bias_ih_{layer}", f"bias_hh_{layer}"]
            assert len(params) == 4 and all(p is getattr(gru, n) for p, n in zip(params, names))
            assert (width, hidden) == (want_width, 4)
    assert all(p.dtype == torch.float64 for params, _, _ in converted for p in params)
    recorded.clear()
    gru.load_state_dict(gru.state_dict())
    assert recorded == []

    grunet.GRU(3, 4, bias=False)
    (params, width, _), = recorded
    assert len(params) == 2 and width == 3  # no biases: the two weights, as nn.GRU(bias=False)


@pytest.mark.parametrize("options", [dict(reset_after=False), dict(recurrent_activation="hard_sigmoid_keras3"),
                                     dict(layer_norm=True), dict(recurrent_dropout=0.2), dict(zoneout=0.1)])
def test_cells_cudnn_does_not_compute_are_not_flattened(recorded, options):
    grunet.GRU(3, 4, num_layers=2, **options).double().flatten_parameters()
    assert recorded == []


@pytest.mark.parametrize("change", ["weight_norm", "parametrization", "pruning", "bias None", "tied",
                                    "mixed dtypes"])
def test_replaced_parameters_leave_every_layer_unflattened(recorded, change):
    gru = grunet.GRU(3, 4, num_layers=2)
    assert len(recorded) == 2
    recorded.clear()
    if change == "weight_norm":
        parametrizations.weight_norm(gru, "weight_hh_l1")
    elif change == "parametrization":
        parametrize.register_parametrization(gru, "weight_ih_l0", torch.nn.Identity())
    elif change == "pruning":
        prune.random_unstructured(gru, "weight_hh_l0", amount=0.5)
    elif change == "bias None":
        gru.bias_hh_l1 = None
    elif change == "tied":  # one tensor under two names cannot sit in two buffers
        gru.weight_hh_l1 = gru.weight_hh_l0
    else:
        gru.bias_ih_l1.data = gru.bias_ih_l1.data.double()
    gru.flatten_parameters()
    if change != "mixed dtypes":  # .double() would make them one dtype again
        gru.double()
    assert recorded == []


def test_flattenable_takes_distinct_tensors_of_one_dtype_that_cudnn_accepts(monkeypatch):
    w, b = torch.randn(12, 3), torch.randn(12)
    assert not cudnn.flattenable([w, b])  # CPU tensors: cuDNN takes none
    monkeypatch.setattr(torch.backends.cudnn, "is_acceptable", lambda tensor: True)
    assert cudnn.flattenable([w, b])
    assert not cudnn.flattenable([w, b.double()])
    assert not cudnn.flattenable([w, b, w])
    assert not cudnn.flattenable([w, None])
    assert not cudnn.flattenable([])


# ---- CUDA --------------------------------------------------------------------------------------------
def assert_flat(gru) -> None:
    """Each layer and direction's parameters are contiguous views of one storage of their own, in order and
    without overlap; no two layers and directions share one."""
    bases = []
    for params in gru.all_weights:
        base = params[0].untyped_storage().data_ptr()
        assert all(p.untyped_storage().data_ptr() == base and p.is_contiguous() for p in params)
        offsets = [p.storage_offset() for p in params]
        for p, start, following in zip(params, offsets, offsets[1:]):
            assert start + p.numel() <= following
        bases.append(base)
    assert len(set(bases)) == len(bases)


@contextmanager
def no_copy_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    assert [str(w.message) for w in caught if COPY_WARNING in str(w.message)] == []


def cuda_case(layers, bidirectional, B=5, T=7, I=3, H=6):
    g = torch.Generator().manual_seed(1)
    D = 2 if bidirectional else 1
    return (torch.randn(T, B, I, generator=g).cuda(), torch.randn(layers * D, B, H, generator=g).cuda())


@cuda
@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-10)], ids=["fp32", "fp64"])
@pytest.mark.parametrize("layers,bidirectional,bias", [(1, False, True), (2, True, True), (2, True, False)])
def test_flat_parameters_give_torch_and_reference_numbers_without_copies(layers, bidirectional, bias, dtype,
                                                                          tolerance):
    torch.manual_seed(0)
    options = dict(num_layers=layers, bidirectional=bidirectional, bias=bias, dtype=dtype)
    gru = grunet.GRU(3, 6, **options).cuda()
    assert_flat(gru)
    torch_gru = torch.nn.GRU(3, 6, **options).cuda()
    torch_gru.load_state_dict(gru.state_dict())
    reference = grunet.GRU(3, 6, impl="reference", **options).cuda()
    reference.load_state_dict(gru.state_dict())
    x, h0 = (t.to(dtype) for t in cuda_case(layers, bidirectional))
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # float32 products as the reference's
        with no_copy_warning():
            ours = values_and_grads(gru, x, h0)
        theirs, ref = values_and_grads(torch_gru, x, h0), values_and_grads(reference, x, h0)
    assert_flat(gru)
    assert ours.keys() == theirs.keys() == ref.keys()
    for name in ours:
        assert float((ours[name] - theirs[name]).abs().max()) < tolerance, name
        assert float((ours[name] - ref[name]).abs().max()) < tolerance, name


@cuda
def test_flat_parameters_with_lengths_equal_the_reference_without_copies():
    """The packed call (lengths) finds the buffers too; float64, where cuDNN and the reference agree closely."""
    torch.manual_seed(0)
    options = dict(num_layers=2, bidirectional=True, dtype=torch.float64)
    gru = grunet.GRU(3, 6, **options).cuda()
    reference = grunet.GRU(3, 6, impl="reference", **options).cuda()
    reference.load_state_dict(gru.state_dict())
    x, h0 = (t.double() for t in cuda_case(2, True))
    lengths = torch.tensor([7, 2, 5, 1, 7])
    with no_copy_warning():
        ours = values_and_grads(gru, x, h0, lengths)
    ref = values_and_grads(reference, x, h0, lengths)
    for name in ours:
        assert float((ours[name] - ref[name]).abs().max()) < 1e-10, name


@cuda
def test_parameters_made_on_cuda_are_flat():
    assert_flat(grunet.GRU(3, 6, num_layers=2, bidirectional=True, device="cuda"))


@cuda
def test_a_parameter_moved_out_makes_torch_copy_until_flattened_again():
    gru = grunet.GRU(3, 6).cuda()
    x, h0 = cuda_case(1, False)
    gru.weight_hh_l0.data = gru.weight_hh_l0.data.clone()  # a storage of its own: cuDNN must copy
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gru(x, h0)
    assert any(COPY_WARNING in str(w.message) for w in caught)
    gru.flatten_parameters()
    assert_flat(gru)
    with no_copy_warning():
        gru(x, h0)


@cuda
def test_optimizer_steps_and_state_dict_round_trips_keep_the_buffers():
    torch.manual_seed(0)
    gru = grunet.GRU(3, 6, num_layers=2, bidirectional=True).cuda()
    optimizer = torch.optim.Adam(gru.parameters(), lr=0.1)
    x, h0 = cuda_case(2, True)
    before = {n: p.detach().clone() for n, p in gru.named_parameters()}
    with no_copy_warning():
        for _ in range(2):
            optimizer.zero_grad()
            out, h_n = gru(x, h0)
            (out.square().sum() + h_n.square().sum()).backward()
            optimizer.step()
    assert_flat(gru)
    assert all(not torch.equal(before[n], p) for n, p in gru.named_parameters())  # every parameter moved

    saved = io.BytesIO()
    torch.save(gru.state_dict(), saved)
    saved.seek(0)
    loaded = grunet.GRU(3, 6, num_layers=2, bidirectional=True).cuda()
    loaded.load_state_dict(torch.load(saved, weights_only=True))
    assert_flat(loaded)
    assert all(torch.equal(p, gru.get_parameter(n)) for n, p in loaded.named_parameters())
    with no_copy_warning():
        out_loaded, _ = loaded(x, h0)
    assert float((out_loaded - gru(x, h0)[0]).detach().abs().max()) < 1e-6


@cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_dtype_conversions_flatten_again(dtype):
    torch.manual_seed(0)
    gru = grunet.GRU(3, 6, num_layers=2, bidirectional=True).cuda()
    reference = grunet.GRU(3, 6, num_layers=2, bidirectional=True, impl="reference").cuda()
    reference.load_state_dict(gru.state_dict())
    reference.double()
    expected = {n: p.detach().to(dtype) for n, p in gru.named_parameters()}
    gru.to(dtype)
    assert_flat(gru)
    assert all(p.dtype == dtype and torch.equal(p, expected[n]) for n, p in gru.named_parameters())
    x, h0 = cuda_case(2, True)
    with no_copy_warning():
        out, h_n = gru(x.to(dtype), h0.to(dtype))
        (out.float().square().sum() + h_n.float().square().sum()).backward()
    assert all(p.grad is not None and p.grad.dtype == dtype for p in gru.parameters())
    out_ref = reference(x.double(), h0.double())[0].detach()
    assert float((out.detach().double() - out_ref).abs().max()) < (1e-2 if dtype == torch.float16 else 1e-10)


@cuda
@pytest.mark.parametrize("options", [dict(reset_after=False), dict(zoneout=0.1), dict(layer_norm=True)])
def test_cells_of_the_triton_kernel_keep_their_parameters_apart_on_cuda(options):
    gru = grunet.GRU(3, 6, num_layers=2, **options).cuda()
    assert len(storages(gru)) == len(list(gru.parameters()))


@cuda
def test_a_parametrized_weight_leaves_the_module_unflattened_on_cuda():
    gru = grunet.GRU(3, 6, num_layers=2)
    parametrizations.weight_norm(gru, "weight_hh_l1")
    gru.cuda()
    assert len(storages(gru)) == len(list(gru.parameters()))
