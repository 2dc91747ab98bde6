"""The CUDA dispatch (grunet.kernels.gpu): which cells go to cuDNN and which to the Triton kernel, the cuDNN
wrapper checked on CPU (torch._VF.gru runs PyTorch's CPU kernel there) against the reference loop on values
and every gradient, and impl="triton"'s one-line refusals. Tests that need a GPU are marked and run where
CUDA exists."""
from __future__ import annotations

import types

import pytest
import torch

import grunet
from grunet import kernels, reference
from grunet.contract import NO_MASKS, CellSpec, LayerWeights, Masks
from grunet.errors import GrunetError
from grunet.kernels import gpu
from grunet.kernels.gpu import cudnn

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def case(T=7, B=5, I=3, H=6, dtype=torch.float64, biases=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=dtype).requires_grad_()  # noqa: E731
    w = LayerWeights(rnd(3 * H, I), rnd(3 * H, H), rnd(3 * H) if biases else None, rnd(3 * H) if biases else None)
    return rnd(T, B, I), rnd(B, H), w


def values_and_grads(layer, x, h0, w, spec, masks, lengths):
    out, h_n = layer(x, h0, w, spec, masks, lengths)
    inputs = [t for t in (x, h0, w.w_ih, w.w_hh, w.b_ih, w.b_hh) if t is not None]
    weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    grads = torch.autograd.grad((out * weight).sum() + (h_n * h_n).sum(), inputs)
    return [out, h_n, *grads]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [None, [7, 2, 5, 1, 7]])
@pytest.mark.parametrize("with_h0", [True, False])
@pytest.mark.parametrize("biases", [True, False])
def test_cudnn_path_equals_reference_values_and_gradients(reverse, lengths, with_h0, biases):
    x, h0, w = case(biases=biases)
    h0 = h0 if with_h0 else None
    spec = CellSpec(reverse=reverse)
    lengths = None if lengths is None else torch.tensor(lengths)
    ours = values_and_grads(cudnn.gru_layer, x, h0, w, spec, NO_MASKS, lengths)
    ref = values_and_grads(reference.gru_layer, x, h0, w, spec, NO_MASKS, lengths)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        assert float((a - b).abs().max()) < 1e-12


def test_cudnn_path_takes_input_and_weight_dropout_as_every_implementation():
    x, h0, w = case()
    spec = CellSpec(input_dropout=0.3, weight_dropout=0.2)
    torch.manual_seed(3)
    masks = Masks.draw(spec, True, 7, 5, 3, 6, x)
    assert cudnn.computes(spec)
    ours = values_and_grads(cudnn.gru_layer, x, h0, w, spec, masks, None)
    ref = values_and_grads(reference.gru_layer, x, h0, w, spec, masks, None)
    assert max(float((a - b).abs().max()) for a, b in zip(ours, ref)) < 1e-12


@pytest.mark.parametrize("spec,exact", [
    (CellSpec(), True),
    (CellSpec(reverse=True, input_dropout=0.1, weight_dropout=0.1), True),
    (CellSpec(reset_after=False), False),
    (CellSpec(activation="hard_sigmoid_keras2"), False),
    (CellSpec(layer_norm=True), False),
    (CellSpec(recurrent_dropout=0.2), False),
    (CellSpec(zoneout=0.1), False),
])
def test_cudnn_takes_exactly_the_cells_it_computes(spec, exact):
    assert cudnn.computes(spec) is exact


def test_cuda_cells_route_to_cudnn_then_triton_then_reference(monkeypatch):
    calls = []
    fake = types.SimpleNamespace(SUPPORTED_DTYPES=(torch.float32,), available=lambda: None,
                                 gru_layer=lambda *a: calls.append("triton") or ("t", "t"))
    monkeypatch.setattr(gpu, "triton_module", lambda: fake)
    monkeypatch.setattr(gpu.cudnn, "gru_layer", lambda *a: calls.append("cudnn") or ("c", "c"))
    x, h0, w = case(dtype=torch.float32)
    gpu.gru_layer(x, h0, w, CellSpec())
    gpu.gru_layer(x, h0, w, CellSpec(reset_after=False))
    assert calls == ["cudnn", "triton"]
    # float64 (the Triton kernel runs float32 and halves) and a missing triton: the reference loop
    x64, h64, w64 = case()
    out, _ = gpu.gru_layer(x64, h64, w64, CellSpec(zoneout=0.2))
    ref, _ = reference.gru_layer(x64, h64, w64, CellSpec(zoneout=0.2))
    assert torch.equal(out, ref) and calls == ["cudnn", "triton"]
    monkeypatch.setattr(gpu, "triton_module", lambda: None)
    assert gpu.supports(CellSpec()) and not gpu.supports(CellSpec(layer_norm=True))
    assert "pip install 'grunet[gpu]'" in gpu.triton_unavailable()


def test_cuda_is_a_kernel_device_and_triton_an_impl():
    assert kernels.kernel_module("cuda") is gpu
    assert "triton" in kernels.IMPLS
    assert grunet.GRU(3, 4, impl="triton").impl == "triton"


def test_impl_triton_refuses_with_one_line_where_it_cannot_run(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.randn(4, 2, 3)
    monkeypatch.setattr(gpu, "triton_module", lambda: None)
    with pytest.raises(GrunetError, match=r"^impl='triton': the Triton kernel needs triton"):
        kernels.layer_function("triton", x)
    fake = types.SimpleNamespace(SUPPORTED_DTYPES=(torch.float32,), available=lambda: None,
                                 runs_on=lambda t: t.is_cuda, gru_layer=None)
    monkeypatch.setattr(gpu, "triton_module", lambda: fake)
    with pytest.raises(GrunetError) as e:
        kernels.layer_function("triton", x)
    assert str(e.value) == ("impl='triton': expected a CUDA tensor (or TRITON_INTERPRET=1 for CPU tensors), "
                            "got a cpu tensor")
    fake.runs_on = lambda t: True
    with pytest.raises(GrunetError, match=r"expected float32 input, got float64"):
        kernels.layer_function("triton", x.double())


@cuda
@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_on_cuda_equals_reference_and_torch(reset_after):
    torch.manual_seed(0)
    gru = grunet.GRU(28, 75, batch_first=True, reset_after=reset_after).cuda()
    x = torch.randn(50, 28, 28, device="cuda")
    out, h_n = gru(x)
    ref = grunet.GRU(28, 75, batch_first=True, reset_after=reset_after, impl="reference").cuda()
    ref.load_state_dict(gru.state_dict())
    out_ref, _ = ref(x)
    assert float((out - out_ref).abs().max()) < 1e-4
    if reset_after:
        torch_gru = torch.nn.GRU(28, 75, batch_first=True).cuda()
        torch_gru.load_state_dict(gru.state_dict())
        assert float((out - torch_gru(x)[0]).abs().max()) < 1e-5


def test_gru_module_with_impl_triton_in_the_interpreter_equals_reference(monkeypatch):
    """Through grunet.GRU and the dispatch: a stacked bidirectional reset-before GRU with lengths, zoneout and
    recurrent dropout, impl="triton" on CPU tensors in Triton's interpreter against impl="reference"."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    options = dict(num_layers=2, bidirectional=True, reset_after=False, zoneout=0.2, recurrent_dropout=0.3)
    torch.manual_seed(0)
    triton_gru = grunet.GRU(3, 5, impl="triton", **options)
    reference_gru = grunet.GRU(3, 5, impl="reference", **options)
    reference_gru.load_state_dict(triton_gru.state_dict())
    x = torch.randn(6, 4, 3)
    lengths = torch.tensor([6, 3, 1, 5])
    results = []
    for gru in (triton_gru, reference_gru):
        torch.manual_seed(11)  # the same masks
        out, h_n = gru(x, lengths=lengths)
        grads = torch.autograd.grad(out.sum() + (h_n ** 2).sum(), list(gru.parameters()))
        results.append([out, h_n, *grads])
    for a, b in zip(*results):
        assert float((a - b).abs().max()) < 1e-5
