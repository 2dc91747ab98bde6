"""The fused CPU kernel (grunet.kernels.cpu) against the reference loop and torch.nn.GRU.

Values and every gradient (x, h0, each weight and bias) over random shapes, both variants, the three
recurrent activations, lengths, reverse, threads; multi-layer and bidirectional through grunet.GRU; a spy
proving the kernel ran; the no-grad path; the fallbacks when the kernel cannot be built; and 200 steps of
the tutorial model's training giving the reference loop's loss curve.
"""
import itertools
import warnings
import zlib

import pytest
import torch

import grunet
import grunet.kernels as kernels
from grunet.errors import GrunetError
from grunet.kernels import KernelUnavailable
from grunet import reference

from conftest import fused_kernel_or_skip, positional

cpu = pytest.importorskip("grunet.kernels.cpu")
reference_layer = positional(reference.gru_layer)
fused_layer = positional(lambda *args: cpu.gru_layer(*args))  # looked up at call time (a test replaces it)

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
ACTIVATIONS = ["sigmoid", "hard_sigmoid_keras2", "hard_sigmoid_keras3"]


@pytest.fixture(scope="module", autouse=True)
def built():
    return fused_kernel_or_skip()


def assert_close(a, b, tol, what):
    """Max abs error <= tol, relative to the values' scale where that exceeds 1 (summed gradients)."""
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    if not a.numel():
        return
    err, scale = (a - b).abs().max().item(), max(1.0, a.abs().max().item())
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol} * {scale:.3g}"


def layer_inputs(T, B, I, H, dtype, reset_after, bias, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, I, dtype=dtype, generator=g)
    h0 = torch.randn(B, H, dtype=dtype, generator=g)
    w_ih = torch.randn(3 * H, I, dtype=dtype, generator=g) / I ** 0.5
    w_hh = torch.randn(3 * H, H, dtype=dtype, generator=g) / H ** 0.5
    b_ih = torch.randn(3 * H, dtype=dtype, generator=g) if bias else None
    b_hh = torch.randn(3 * H, dtype=dtype, generator=g) if bias and reset_after else None
    g_out = torch.randn(T, B, H, dtype=dtype, generator=g)
    g_h = torch.randn(B, H, dtype=dtype, generator=g)
    return [x, h0, w_ih, w_hh, b_ih, b_hh], (g_out, g_h)


def run_layer(fn, tensors, upstream, **kw):
    """Output, h_n and the gradient of every tensor input under the loss <out, g_out> + <h_n, g_h>."""
    leaves = [t.clone().requires_grad_() if t is not None else None for t in tensors]
    out, h_n = fn(*leaves, **kw)
    ((out * upstream[0]).sum() + (h_n * upstream[1]).sum()).backward()
    return [out.detach(), h_n.detach()] + [t.grad for t in leaves if t is not None]


NAMES = ["out", "h_n", "dx", "dh0", "dw_ih", "dw_hh", "db_ih", "db_hh"]
SHAPES = [(1, 1, 1, 1), (5, 3, 4, 7), (9, 40, 5, 20), (4, 20, 3, 70)]  # T, B, I, H; the last two split the batch
LAYER_CASES = list(itertools.product(
    [torch.float32, torch.float64], [True, False], ACTIVATIONS, [False, True], [False, True], range(len(SHAPES))))


@pytest.mark.parametrize("dtype,reset_after,activation,use_lengths,reverse,shape", LAYER_CASES)
def test_layer_equals_reference_values_and_all_gradients(dtype, reset_after, activation, use_lengths, reverse, shape):
    T, B, I, H = SHAPES[shape]
    seed = zlib.crc32(repr((shape, reset_after, activation, use_lengths, reverse)).encode())
    tensors, upstream = layer_inputs(T, B, I, H, dtype, reset_after, True, seed)
    lengths = torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(seed)) if use_lengths else None
    kw = dict(reset_after=reset_after, activation_name=activation, lengths=lengths, reverse=reverse)
    expected = run_layer(reference_layer, tensors, upstream, **kw)
    got = run_layer(fused_layer, tensors, upstream, **kw)
    assert len(got) == len(expected)
    for name, a, b in zip(NAMES, expected, got):
        assert_close(a, b, TOL[dtype], name)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("reset_after,bias", [(True, True), (True, False), (False, True), (False, False)])
def test_threads_and_no_bias(threads, reset_after, bias):
    T, B, I, H = 6, 37, 4, 9
    tensors, upstream = layer_inputs(T, B, I, H, torch.float64, reset_after, bias, seed=threads)
    lengths = torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(5))
    kw = dict(reset_after=reset_after, activation_name="sigmoid", lengths=lengths, reverse=False)
    expected = run_layer(reference_layer, tensors, upstream, **kw)
    cpu.set_threads(threads)
    try:
        got = run_layer(fused_layer, tensors, upstream, **kw)
    finally:
        cpu.set_threads(None)
    for name, a, b in zip(NAMES, expected, got):
        assert_close(a, b, 1e-10, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("used", ["h_n", "out"])
@pytest.mark.parametrize("threads", [1, 2])
def test_gradients_when_one_output_is_unused(dtype, reset_after, used, threads):
    # the backward then gets None for the unused output (no zeros materialised); tutorial shape, 1 chunk
    # (1400 rows: the weight gradients' K is split in blocks) or 2 chunks
    T, B, I, H = 28, 50, 28, 75
    tensors, (g_out, g_h) = layer_inputs(T, B, I, H, dtype, reset_after, True, seed=11)
    kw = dict(reset_after=reset_after, activation_name="sigmoid", lengths=None, reverse=False)

    def grads(fn):
        leaves = [t.clone().requires_grad_() if t is not None else None for t in tensors]
        out, h_n = fn(*leaves, **kw)
        ((h_n * g_h).sum() if used == "h_n" else (out * g_out).sum()).backward()
        return [t.grad for t in leaves if t is not None]

    cpu.set_threads(threads)
    try:
        got = grads(fused_layer)
    finally:
        cpu.set_threads(None)
    for name, a, b in zip(NAMES[2:], grads(reference_layer), got):
        assert_close(a, b, TOL[dtype], name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("h0_kind", ["zero, with grad", "zero, no grad", "half zero", "none"])
@pytest.mark.parametrize("threads", [1, 2])
def test_zero_initial_state(dtype, reset_after, reverse, h0_kind, threads):
    # h0 = 0 (a fresh state) lets the kernel skip step 0's W_hh h product and those rows of dW_hh, and
    # dh0's product when h0 needs no gradient; a state zero in one chunk only must not take those shortcuts;
    # h0 = None (what grunet.GRU passes without hx) means zeros
    T, B, I, H = 7, 40, 5, 21
    tensors, upstream = layer_inputs(T, B, I, H, dtype, reset_after, True, seed=21)
    if h0_kind == "half zero":
        tensors[1][: B // 2] = 0
    elif h0_kind == "none":
        tensors[1] = None
    else:
        tensors[1] = torch.zeros(B, H, dtype=dtype)
    lengths = torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(4))
    kw = dict(reset_after=reset_after, activation_name="sigmoid", lengths=lengths, reverse=reverse)

    def run(fn):
        leaves = [t.clone().requires_grad_(i != 1 or h0_kind != "zero, no grad") if t is not None else None
                  for i, t in enumerate(tensors)]
        out, h_n = fn(*leaves, **kw)
        ((out * upstream[0]).sum() + (h_n * upstream[1]).sum()).backward()
        return [out.detach(), h_n.detach()] + [t.grad for t in leaves if t is not None]

    cpu.set_threads(threads)
    try:
        got = run(fused_layer)
    finally:
        cpu.set_threads(None)
    expected = run(reference_layer)
    if h0_kind == "none":  # no dh0 in either list; the reference itself against an explicit zero state
        with torch.no_grad():
            zero = reference_layer(tensors[0], torch.zeros(B, H, dtype=dtype), *tensors[2:], **kw)
        assert_close(zero[1], expected[1], TOL[dtype], "h_n with h0 = zeros")
        expected, got = expected[:3] + [None] + expected[3:], got[:3] + [None] + got[3:]
    for name, a, b in zip(NAMES, expected, got):
        if (h0_kind == "zero, no grad" or h0_kind == "none") and name == "dh0":
            assert a is None and b is None
            continue
        assert_close(a, b, TOL[dtype], name)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("frozen", [(0,), (2, 4), (3, 5), (1, 2, 3)])
@pytest.mark.parametrize("h0_given", [True, False])
def test_gradients_of_a_subset_of_inputs(reset_after, frozen, h0_given):
    # the C++ autograd function maps autograd's edges (x, h0 when given, w_ih, w_hh, then the biases given)
    # to its outputs: frozen inputs get no gradient, the others the reference's
    tensors, upstream = layer_inputs(6, 9, 4, 7, torch.float64, reset_after, True, seed=31)
    if not h0_given:
        tensors[1] = None
    kw = dict(reset_after=reset_after, activation_name="sigmoid", lengths=None, reverse=False)

    def run(fn):
        leaves = [None if t is None else t.clone().requires_grad_(i not in frozen) for i, t in enumerate(tensors)]
        out, h_n = fn(*leaves, **kw)
        ((out * upstream[0]).sum() + (h_n * upstream[1]).sum()).backward()
        return [None if t is None else t.grad for t in leaves]

    for i, (a, b) in enumerate(zip(run(reference_layer), run(fused_layer))):
        if tensors[i] is None:
            continue
        if i in frozen:
            assert a is None and b is None, NAMES[2 + i]
        else:
            assert_close(a, b, 1e-10, NAMES[2 + i])


def test_double_backward_runs_the_reference_loop():
    """create_graph=True: the fused backward hands over to grunet::gru_layer_double_backward (the reference
    loop in autograd), so second derivatives are the reference's."""
    tensors, upstream = layer_inputs(3, 2, 2, 3, torch.float64, True, True, seed=1)

    def second(layer):
        leaves = [t.clone().requires_grad_() for t in tensors]
        out, h_n = layer(*leaves, reset_after=True, activation_name="sigmoid", lengths=None, reverse=False)
        (g,) = torch.autograd.grad(h_n.sum(), leaves[2], create_graph=True)
        return torch.autograd.grad(g.square().sum(), leaves)

    for a, b in zip(second(fused_layer), second(reference_layer)):
        assert_close(a, b, 1e-10, "second derivative")


POISON_SCRIPT = """
import itertools, sys, torch
sys.path.insert(0, sys.argv[1])
from test_kernels_cpu import NAMES, TOL, assert_close, cpu, fused_layer, layer_inputs, reference_layer, run_layer
for dtype, reset_after, reverse, lengths, threads, shape, h0 in itertools.product(
        [torch.float32, torch.float64], [True, False], [False, True], [False, True], [1, 2],
        [(28, 50, 28, 75), (5, 9, 3, 16), (3, 6, 5, 260)], ["given", "zero", "none"]):
    T, B, I, H = shape
    tensors, upstream = layer_inputs(T, B, I, H, dtype, reset_after, True, seed=7)
    if h0 == "zero":
        tensors[1] = torch.zeros_like(tensors[1])
    elif h0 == "none":
        tensors[1] = None
    names = NAMES if tensors[1] is not None else NAMES[:3] + NAMES[4:]  # no dh0 without h0
    lens = torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(3)) if lengths else None
    kw = dict(reset_after=reset_after, activation_name="sigmoid", lengths=lens, reverse=reverse)
    cpu.set_threads(threads)
    for name, a, b in zip(names, run_layer(reference_layer, tensors, upstream, **kw),
                          run_layer(fused_layer, tensors, upstream, **kw)):
        assert_close(a, b, TOL[dtype], name)
    with torch.no_grad():
        out, h_n = fused_layer(*tensors, **kw)
    ref_out, ref_h = reference_layer(*tensors, **kw)
    assert_close(ref_out, out, TOL[dtype], "no-grad out")
    assert_close(ref_h, h_n, TOL[dtype], "no-grad h_n")
print("ok")
"""


def test_no_value_is_read_before_it_is_written(tmp_path):
    # GRUNET_POISON_BUFFERS fills every buffer the kernel takes (pooled or fresh) and its packed weights
    # with NaN: a padding unit or scratch value read before it is written would turn up as NaN here
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, GRUNET_POISON_BUFFERS="1")
    r = subprocess.run([sys.executable, "-c", POISON_SCRIPT, str(Path(__file__).parent)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


@pytest.mark.parametrize("reset_after", [True, False])
def test_wide_layer_weight_gradients_through_blas(reset_after):
    # H > 256: the weight gradients go through BLAS instead of small_gemm_tn (and dG's padded rows)
    T, B, I, H = 3, 20, 5, 260
    tensors, upstream = layer_inputs(T, B, I, H, torch.float64, reset_after, True, seed=3)
    kw = dict(reset_after=reset_after, activation_name="sigmoid", lengths=None, reverse=False)
    expected = run_layer(reference_layer, tensors, upstream, **kw)
    got = run_layer(fused_layer, tensors, upstream, **kw)
    for name, a, b in zip(NAMES, expected, got):
        assert_close(a, b, 1e-10, name)


# grunet.GRU with impl='fused' against torch.nn.GRU (stacked, bidirectional, batch_first): tests/test_layers.py


@pytest.mark.parametrize("reset_after,activation", [(False, "sigmoid"), (False, "hard_sigmoid_keras2"),
                                                    (True, "hard_sigmoid_keras3")])
def test_gru_module_variants_with_lengths_equal_reference(reset_after, activation):
    T, B, I, H = 8, 6, 5, 7
    kw = dict(num_layers=2, bidirectional=True, batch_first=True, reset_after=reset_after,
              recurrent_activation=activation, dtype=torch.float64)
    torch.manual_seed(1)
    ref = grunet.GRU(I, H, impl="reference", **kw)
    ours = grunet.GRU(I, H, impl="fused", **kw)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(B, T, I, dtype=torch.float64)
    lengths = torch.tensor([8, 1, 5, 3, 8, 2])
    results = []
    for model in (ref, ours):
        xi = x.clone().requires_grad_()
        out, h_n = model(xi, lengths=lengths)
        (out.sin().sum() + h_n.cos().sum()).backward()
        results.append([out, h_n, xi.grad] + [p.grad for p in model.parameters()])
    for name, a, b in zip(["out", "h_n", "dx"] + [n for n, _ in ref.named_parameters()], *results):
        assert_close(a, b, 1e-10, name)


# ----------------------------------------------------------------------------------------------------
# the dispatch really runs the kernel; no-grad path; fallbacks
@pytest.fixture
def spy(monkeypatch):
    """Counts calls of grunet.kernels.cpu.gru_layer, which the dispatch returns for impl fused/auto."""
    calls = []
    real = cpu.gru_layer

    def wrapped(x, h0, weights, spec, masks, lengths):
        calls.append(spec)
        return real(x, h0, weights, spec, masks, lengths)

    monkeypatch.setattr(cpu, "gru_layer", wrapped)
    return calls


@pytest.mark.parametrize("impl", ["fused", "auto"])
def test_spy_proves_fused_kernel_ran(spy, impl):
    model = grunet.GRU(3, 4, num_layers=2, bidirectional=True, impl=impl)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto must not fall back here
        out, _ = model(torch.randn(5, 2, 3))
    out.sum().backward()
    assert len(spy) == 4  # 2 layers x 2 directions
    assert [spec.reverse for spec in spy] == [False, True, False, True]


def test_reference_impl_does_not_use_the_kernel(spy):
    grunet.GRU(3, 4, impl="reference")(torch.randn(5, 2, 3))
    assert spy == []


@pytest.fixture
def ext_spy():
    """Records, per call of the kernel's operators below autograd, whether it was the training forward
    (grunet::gru_layer_train, which keeps the gates for its backward) or the inference one (gru_layer)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    flags = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.grunet.gru_layer_train.default, torch.ops.grunet.gru_layer.default):
                flags.append(func is torch.ops.grunet.gru_layer_train.default)
            return func(*args, **(kwargs or {}))

    with Spy():
        yield flags


@pytest.mark.parametrize("reset_after", [True, False])
def test_no_grad_path_keeps_no_gates_and_equals_grad_path(ext_spy, reset_after):
    torch.manual_seed(2)
    model = grunet.GRU(6, 9, num_layers=2, reset_after=reset_after, impl="fused", dtype=torch.float64)
    x = torch.randn(30, 20, 6, dtype=torch.float64)
    lengths = torch.randint(1, 31, (20,))
    out_grad, h_grad = model(x, lengths=lengths)
    assert ext_spy == [True, True] and out_grad.grad_fn is not None
    with torch.no_grad():
        out_ng, h_ng = model(x, lengths=lengths)
    assert ext_spy[2:] == [False, False] and out_ng.grad_fn is None
    for p in model.parameters():
        p.requires_grad_(False)
    out_nr, h_nr = model(x, lengths=lengths)  # nothing requires grad: inference path too
    assert ext_spy[4:] == [False, False]
    for out, h in ((out_ng, h_ng), (out_nr, h_nr)):
        assert_close(out, out_grad.detach(), 1e-12, "out")
        assert_close(h, h_grad.detach(), 1e-12, "h_n")


def test_inference_blocks_of_steps_equal_reference():
    """Long sequences run the no-grad forward in several blocks of steps, forward and reverse."""
    T, B, I, H = 300, 3, 2, 600  # 1M / (3H) rows per block -> several blocks of steps
    tensors, _ = layer_inputs(T, B, I, H, torch.float64, True, True, seed=3)
    for reverse in (False, True):
        with torch.no_grad():
            a = reference_layer(*tensors, reverse=reverse)
            b = fused_layer(*tensors, reverse=reverse)
        for name, u, v in zip(["out", "h_n"], a, b):
            assert_close(u, v, 1e-10, name)


def _fail_load():
    raise KernelUnavailable("simulated build failure")


def test_fused_raises_and_auto_warns_once_when_the_kernel_cannot_load(monkeypatch):
    monkeypatch.setattr(cpu, "load", _fail_load)
    monkeypatch.setattr(kernels, "_warned", set())
    model = grunet.GRU(3, 4, impl="fused")
    x = torch.randn(5, 2, 3)
    with pytest.raises(GrunetError, match="simulated build failure"):
        model(x)
    auto = grunet.GRU(3, 4, impl="auto")
    auto.load_state_dict(model.state_dict())
    with pytest.warns(UserWarning, match="simulated build failure") as record:
        out, _ = auto(x)
        auto(x)
    assert len([w for w in record if "grunet" in str(w.message)]) == 1
    ref = grunet.GRU(3, 4, impl="reference")
    ref.load_state_dict(model.state_dict())
    torch.testing.assert_close(out, ref(x)[0])


def test_load_without_compiler_raises_kernel_unavailable(monkeypatch):
    build = cpu.build
    monkeypatch.setattr(build, "_module", None)
    monkeypatch.setattr(build, "_error", None)
    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    with pytest.raises(KernelUnavailable, match="no C\\+\\+ compiler"):
        build.load()


def test_cache_key_follows_sources_and_flags(monkeypatch):
    build = cpu.build
    key = build.cache_key()
    assert key == build.cache_key()
    monkeypatch.setattr(build, "CFLAGS", build.CFLAGS + ["-DGRUNET_TEST"])
    assert build.cache_key() != key


def test_unsupported_dtype_uses_reference():
    tensors, _ = layer_inputs(3, 2, 2, 3, torch.float32, True, True, seed=0)
    tensors = [t.to(torch.bfloat16) for t in tensors]
    out, h = fused_layer(*tensors)
    ref_out, ref_h = reference_layer(*tensors)
    assert torch.equal(out, ref_out) and torch.equal(h, ref_h)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_refuses_a_dtype_the_kernel_does_not_run_and_auto_falls_back(dtype, monkeypatch):
    monkeypatch.setattr(kernels, "_warned", set())
    x = torch.randn(5, 2, 3).to(dtype)
    fused = grunet.GRU(3, 4, impl="fused").to(dtype)
    with pytest.raises(GrunetError) as refused:
        fused(x)
    name = str(dtype).replace("torch.", "")
    assert str(refused.value) == ("impl='fused': expected float32 or float64 input on cpu (impl='auto' runs other "
                                  f"dtypes in the reference loop), got {name}")
    auto = grunet.GRU(3, 4, impl="auto").to(dtype)
    ref = grunet.GRU(3, 4, impl="reference").to(dtype)
    auto.load_state_dict(fused.state_dict())
    ref.load_state_dict(fused.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the reference loop without a warning: the dtype was the user's choice
        out, h = auto(x)
    ref_out, ref_h = ref(x)
    assert out.dtype == dtype and torch.equal(out, ref_out) and torch.equal(h, ref_h)


def test_fused_names_the_device_it_has_no_kernel_for():
    x = torch.empty(3, 2, 4, device="meta")
    with pytest.raises(GrunetError) as refused:
        kernels.layer_function("fused", x)
    assert str(refused.value) == ("impl: 'fused' was asked for, but the fused kernel is unavailable: no fused GRU "
                                  "kernel for device type 'meta' (there is one for: cpu, cuda)")
    assert kernels.layer_function("auto", x) is reference.gru_layer


def test_build_says_once_what_it_does_and_where_only_when_it_builds(monkeypatch, tmp_path, capsys):
    from torch.utils import cpp_extension

    build = cpu.build
    monkeypatch.setattr(build, "_module", None)
    monkeypatch.setattr(build, "_error", None)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    names = []

    def compile_and_load(name, **kwargs):  # what a build leaves in the cache: the library
        names.append(name)
        (tmp_path / name / f"{name}.so").write_bytes(b"")
        return "module"

    monkeypatch.setattr(cpp_extension, "load", compile_and_load)
    assert build.load() == "module"
    err = capsys.readouterr().err
    assert err == (f"grunet: compiling the fused CPU kernel (once, one to two minutes); cached in "
                   f"{tmp_path / names[0]}\n")
    monkeypatch.setattr(build, "_module", None)  # the next process loads the library from the cache
    assert build.load() == "module"
    assert capsys.readouterr().err == "" and names == [names[0]] * 2


# ----------------------------------------------------------------------------------------------------
def tutorial_losses(impl, steps=200):
    """The seed recipe's model (GRU(75) on 28 rows of 28 pixels, Dense(10), Adam 1e-3, batch 50) on
    seeded random digits; the loss of every step."""
    torch.manual_seed(0)
    gru = grunet.GRU(28, 75, batch_first=True, impl=impl)
    head = torch.nn.Linear(75, 10)
    opt = torch.optim.Adam(list(gru.parameters()) + list(head.parameters()), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    images = torch.rand(500, 28, 28, generator=g)
    labels = torch.randint(0, 10, (500,), generator=g)
    losses = []
    for step in range(steps):
        i = (step * 50) % 500
        out, _ = gru(images[i:i + 50])
        loss = torch.nn.functional.cross_entropy(head(out[:, -1]), labels[i:i + 50])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return torch.tensor(losses)


def test_tutorial_training_loss_curve_equals_reference():
    fused, ref = tutorial_losses("fused"), tutorial_losses("reference")
    assert fused[-1] < fused[0]  # it learns (the labels repeat every 10 batches)
    torch.testing.assert_close(fused, ref, rtol=1e-4, atol=1e-5)


def test_bench_command_writes_results(tmp_path):
    from grunet.cli import main

    path = tmp_path / "RESULTS.md"
    code = main(["bench", "--quick", "--skip", "sweep,inference,keras", "--repeats", "1", "--impls", "torch,fused",
                 "--results", str(path)])
    assert code == 0
    text = path.read_text()
    assert "fused vs torch" in text and "torch: " in text
    # one training-step row per Adam implementation (fused, as grunet train uses, then PyTorch's default)
    rows = [line for line in text.splitlines() if line.startswith("| train step B=50 T=28 I=28 H=75")]
    assert [r.split("|")[1].strip().rsplit(" ", 1)[1] for r in rows] == ["fused", "default"]
    for r in rows:
        torch_ms, fused_ms = (float(c) for c in r.split("|")[2:4])
        assert torch_ms > 0 and fused_ms > 0


def test_bench_rejects_an_unknown_adam(tmp_path, capsys):
    from grunet.cli import main

    assert main(["bench", "--adam", "fused,adamw", "--skip", "train,sweep,inference,keras"]) == 2
    err = capsys.readouterr().err
    assert "--adam" in err and "'adamw'" in err and "default" in err


def test_bench_times_keras_when_importable(tmp_path):
    """With Keras 3 importable (on JAX when KERAS_BACKEND is unset), the training step is also timed in Keras."""
    import grunet.bench as bench

    keras, info = bench.load_keras()  # sets KERAS_BACKEND=jax before the import where it can
    if keras is None:
        pytest.skip(info)
    from grunet.cli import main

    path = tmp_path / "RESULTS.md"
    code = main(["bench", "--quick", "--skip", "sweep,inference", "--repeats", "1", "--impls", "torch,fused",
                 "--adam", "fused", "--results", str(path)])
    assert code == 0
    text = path.read_text()
    assert "Against Keras 3" in text and "fused vs keras" in text and "Adam(fused=True)" in text


INFERENCE_CASES = list(itertools.product(
    [torch.float32, torch.float64], [True, False], ACTIVATIONS, [False, True], [False, True], [(7, 150, 28, 75), (6, 70, 5, 16), (3, 9, 4, 300)]))


@pytest.mark.parametrize("dtype,reset_after,activation,use_lengths,reverse,shape", INFERENCE_CASES)
def test_inference_path_equals_reference(dtype, reset_after, activation, use_lengths, reverse, shape):
    """The no-grad forward (padded gate blocks, blocks of rows; the last shape takes the big-weights loop)
    over several row blocks and both threads, against the reference loop."""
    T, B, I, H = shape
    seed = zlib.crc32(repr(("inference", shape, reset_after, activation, use_lengths, reverse)).encode())
    tensors, _ = layer_inputs(T, B, I, H, dtype, reset_after, True, seed)
    lengths = torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(seed)) if use_lengths else None
    kw = dict(reset_after=reset_after, activation_name=activation, lengths=lengths, reverse=reverse)
    with torch.no_grad():
        expected = reference_layer(*tensors, **kw)
        got = fused_layer(*tensors, **kw)
    for name, a, b in zip(["out", "h_n"], expected, got):
        assert_close(a, b, TOL[dtype], name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_strided_batch_first_input_equals_contiguous(dtype):
    """x is read through its strides (a batch-first view, transposed): same values and gradients."""
    T, B, I, H = 6, 40, 5, 20
    tensors, upstream = layer_inputs(T, B, I, H, dtype, True, True, seed=11)
    strided = [tensors[0].transpose(0, 1).contiguous().transpose(0, 1)] + tensors[1:]
    assert not strided[0].is_contiguous()
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            expected = run_layer(fused_layer, tensors, upstream) if grad else fused_layer(*tensors)
            got = run_layer(fused_layer, strided, upstream) if grad else fused_layer(*strided)
        for name, a, b in zip(NAMES, expected, got):
            assert_close(a, b, 1e-12, name)


# ----------------------------------------------------------------------------------------------------
# Non-finite values: NaN and +-inf must come out where torch.nn.GRU (and, for the variants torch lacks, the
# reference loop) puts them, in values and every gradient, through the training forward, the backward
# and the no-grad path. With lengths the oracle runs each sequence alone over its own steps (what
# torch.nn.GRU does with packed sequences): a padded step takes no part, whatever it holds.
def torch_layer(x, h0, w_ih, w_hh, b_ih, b_hh, *, reverse=False, **_):
    """torch.nn.GRU (reset-after, sigmoid) with the given tensors as its parameters."""
    gru = torch.nn.GRU(w_ih.shape[1], w_hh.shape[1], dtype=x.dtype)
    params = {"weight_ih_l0": w_ih, "weight_hh_l0": w_hh, "bias_ih_l0": b_ih, "bias_hh_l0": b_hh}
    out, h_n = torch.func.functional_call(gru, params, (x.flip(0) if reverse else x,
                                                        None if h0 is None else h0.unsqueeze(0)))
    return (out.flip(0) if reverse else out), h_n[0]


def each_sequence_alone(fn):
    """fn applied to each sequence of the batch over its first lengths[b] steps, outputs zero-padded."""
    def layer(x, h0, *weights, lengths=None, **kw):
        T, B = x.shape[:2]
        outs, states = [], []
        for b in range(B):
            L = T if lengths is None else int(lengths[b])
            out, h_n = fn(x[:L, b:b + 1], None if h0 is None else h0[b:b + 1], *weights, **kw)
            outs.append(torch.cat([out, out.new_zeros(T - L, 1, out.shape[2])]))
            states.append(h_n)
        return torch.cat(outs, 1), torch.cat(states, 0)
    return layer


def assert_same_nonfinite(expected, got, tol, what):
    """The same NaN, +inf and -inf positions, and the finite values within tol (as in assert_close)."""
    assert expected.shape == got.shape, what
    for name, mask in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        e, g = mask(expected), mask(got)
        assert torch.equal(e, g), f"{what}: {name} at {int(e.sum())} positions expected, got {int(g.sum())}"
    finite = torch.isfinite(expected)
    assert_close(expected[finite], got[finite], tol, what)


# (T, B, I, H) = (5, 3, 4, 6); lengths [5, 2, 4]: (t=1, b=1) is a step of sequence 1, (t=3, b=1) padding
NONFINITE_LENGTHS = torch.tensor([5, 2, 4])
PLACES = {  # name -> (tensor index in layer_inputs' list or "dout"/"dh_n", index in it)
    "x": (0, (1, 1, 2)), "x padded step": (0, (3, 1, 2)), "h0": (1, (1, 3)),
    **{f"{w} {gate}": (i, (g * 6 + 4, 1) if w.startswith("w") else (g * 6 + 4,))
       for i, w in ((2, "w_ih"), (3, "w_hh"), (4, "b_ih"), (5, "b_hh")) for g, gate in enumerate("rzn")},
    "dout": ("dout", (1, 1, 2)), "dout padded step": ("dout", (3, 1, 2)), "dh_n": ("dh_n", (1, 2)),
}
VALUES = {"nan": float("nan"), "+inf": float("inf"), "-inf": float("-inf")}


def nonfinite_case(dtype, reset_after, place, value, h0_kind="random", seed=3):
    tensors, upstream = layer_inputs(5, 3, 4, 6, dtype, reset_after, True, seed)
    which, index = PLACES[place]
    if which == "dout":
        upstream[0][index] = VALUES[value]
    elif which == "dh_n":
        upstream[1][index] = VALUES[value]
    else:
        tensors[which][index] = VALUES[value]
    if h0_kind == "zero" and place != "h0":
        tensors[1].zero_()
    elif h0_kind == "none" and place != "h0":
        tensors[1] = None
    return tensors, upstream


def check_nonfinite(oracle, tensors, upstream, tol, **kw):
    names = [n for n, t in zip(NAMES, [0, 0] + tensors) if t is not None]
    expected = run_layer(each_sequence_alone(oracle), tensors, upstream, **kw)
    got = run_layer(fused_layer, tensors, upstream, **kw)
    for name, a, b in zip(names, expected, got):
        assert_same_nonfinite(a, b, tol, name)
    with torch.no_grad():  # the inference path
        inferred = fused_layer(*tensors, **kw)
    for name, a, b in zip(names, expected, inferred):
        assert_same_nonfinite(a, b, tol, f"{name} without grad")


NONFINITE_TORCH_CASES = [
    (dtype, place, value, h0_kind, use_lengths, reverse)
    for dtype in (torch.float32, torch.float64) for place in PLACES for value in VALUES
    for h0_kind, use_lengths, reverse in (("random", False, False), ("random", True, False),
                                          ("random", False, True), ("random", True, True),
                                          ("zero", False, False), ("none", True, True))
    if not (h0_kind != "random" and place == "h0")]  # no h0 to put a value in


@pytest.mark.parametrize("dtype,place,value,h0_kind,use_lengths,reverse", NONFINITE_TORCH_CASES)
def test_nonfinite_values_propagate_as_in_torch_gru(dtype, place, value, h0_kind, use_lengths, reverse):
    """NaN, +inf or -inf in one element of x, h0, each gate block of each weight and bias, or the upstream
    gradient; a zero or absent h0 (the kernel's shortcuts for a fresh state must not hide 0 * NaN)."""
    tensors, upstream = nonfinite_case(dtype, True, place, value, h0_kind)
    check_nonfinite(torch_layer, tensors, upstream, TOL[dtype],
                    lengths=NONFINITE_LENGTHS if use_lengths else None, reverse=reverse)


NONFINITE_VARIANT_CASES = [
    (dtype, reset_after, activation, place, value, both)
    for dtype in (torch.float32, torch.float64)
    for reset_after, activation in ((True, "hard_sigmoid_keras2"), (False, "sigmoid"), (False, "hard_sigmoid_keras3"))
    for place in PLACES for value in VALUES for both in (False, True)
    # an infinite upstream gradient is where the two ways of writing h' differ: torch's (h - n) z + n,
    # which the kernel follows, gives inf (h - n); the reference's z h + (1 - z) n gives inf h - inf n
    if not (PLACES[place][0] in ("dout", "dh_n") and value != "nan")
    and not (place.startswith("b_hh") and not reset_after)]  # reset-before has one bias


@pytest.mark.parametrize("dtype,reset_after,activation,place,value,lengths_and_reverse", NONFINITE_VARIANT_CASES)
def test_nonfinite_values_propagate_as_in_reference(dtype, reset_after, activation, place, value,
                                                    lengths_and_reverse):
    """The variants torch.nn.GRU lacks (reset-before, hard sigmoid) against the reference loop."""
    tensors, upstream = nonfinite_case(dtype, reset_after, place, value)
    check_nonfinite(reference_layer, tensors, upstream, TOL[dtype], reset_after=reset_after,
                    activation_name=activation, lengths=NONFINITE_LENGTHS if lengths_and_reverse else None,
                    reverse=lengths_and_reverse)


@pytest.mark.parametrize("dtype,scale", [(torch.float32, 1e38), (torch.float32, -1e38), (torch.float64, 1e38),
                                         (torch.float64, 1e300), (torch.float64, -1e300)])
@pytest.mark.parametrize("reset_after", [True, False])
def test_huge_initial_state_as_in_torch_gru(dtype, scale, reset_after):
    """h0 = +-1e38: the products overflow to +-inf in float32 (float64: 1e300 does), and sigmoid(-inf) = 0
    times an infinite difference (h - n) is NaN, as in torch."""
    tensors, upstream = layer_inputs(5, 3, 4, 6, dtype, reset_after, True, seed=5)
    tensors[1] = torch.full_like(tensors[1], scale)
    oracle = torch_layer if reset_after else reference_layer
    check_nonfinite(oracle, tensors, upstream, TOL[dtype], reset_after=reset_after)


@pytest.mark.parametrize("place", ["x", "h0", "w_hh z", "b_ih n", "dout", "dh_n"])
@pytest.mark.parametrize("shape,threads", [((4, 40, 3, 20), 2), ((3, 6, 4, 300), 1)])
def test_nonfinite_values_in_split_batches_and_wide_layers(place, shape, threads):
    """Two chunks of the batch on two threads, and a layer wide enough for BLAS and the big-weights
    inference loop."""
    T, B, I, H = shape
    tensors, upstream = layer_inputs(T, B, I, H, torch.float32, True, True, seed=9)
    which, _ = PLACES[place]
    index = {"x": (1, B - 2, 1), "h0": (B - 2, 3), "w_hh z": (H + 4, 1), "b_ih n": (2 * H + 4,),
             "dout": (1, B - 2, 2), "dh_n": (B - 2, 2)}[place]
    if which == "dout":
        upstream[0][index] = float("nan")
    elif which == "dh_n":
        upstream[1][index] = float("nan")
    else:
        tensors[which][index] = float("nan")
    cpu.set_threads(threads)
    try:
        check_nonfinite(torch_layer, tensors, upstream, TOL[torch.float32])
    finally:
        cpu.set_threads(None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activations_at_extreme_and_nonfinite_inputs(dtype, activation):
    """sigmoid, hard sigmoid and tanh of +-inf, NaN, and of values past exp's overflow: through a
    one-unit layer whose gates see exactly a chosen value (weights 1 and 0, no recurrence)."""
    a = torch.tensor([float("nan"), float("inf"), -float("inf"), 100.0, -100.0, 88.5, -88.5, 90.0, -90.0,
                      710.0, -710.0, 1e-8, -1e-8, 0.0, 3.0, -3.0], dtype=dtype)
    x = a.view(1, -1, 1)
    w_ih = torch.tensor([[0.0], [0.0], [1.0]], dtype=dtype)  # r = z = sigma(0), n = tanh(x)
    w_hh = torch.zeros(3, 1, dtype=dtype)
    for w, name in ((torch.tensor([[1.0], [1.0], [0.0]], dtype=dtype), "sigma"), (w_ih, "tanh")):
        tensors = [x, torch.zeros(a.numel(), 1, dtype=dtype), w, w_hh, None, None]
        upstream = (torch.ones(1, a.numel(), 1, dtype=dtype), torch.zeros(a.numel(), 1, dtype=dtype))
        check_nonfinite(reference_layer, tensors, upstream, TOL[dtype], activation_name=activation)
