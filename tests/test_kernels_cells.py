"""The fused CPU kernel's cell options (layer norm, recurrent dropout, zoneout, with input and weight dropout)
against the reference loop: values and every gradient, training (one set of masks given to both) and eval,
gradcheck, and the same through grunet.GRU."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import grunet
from grunet import reference
from grunet.contract import CellSpec, LayerWeights, Masks

cpu = pytest.importorskip("grunet.kernels.cpu")


@pytest.fixture(scope="module")
def built():
    try:
        return cpu.load()
    except Exception as e:  # noqa: BLE001 - no compiler here: nothing to test
        pytest.skip(f"kernel unavailable: {e}")


TOL = {torch.float32: 1e-5, torch.float64: 1e-10}

OPTIONS = {
    "layer_norm": dict(layer_norm=True),
    "recurrent_dropout": dict(recurrent_dropout=0.3),
    "zoneout": dict(zoneout=0.25),
    "all": dict(layer_norm=True, recurrent_dropout=0.3, zoneout=0.25, input_dropout=0.2, weight_dropout=0.4),
}


def assert_close(a, b, tol, what):
    """Max abs error <= tol, relative to the values' scale where that exceeds 1 (summed gradients)."""
    assert a.shape == b.shape, f"{what}: shapes {tuple(a.shape)} vs {tuple(b.shape)}"
    a, b = a.detach(), b.detach()
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    err = float((a - b).abs().max()) if a.numel() else 0.0
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol} * {scale:.3g}"


def layer_case(T, B, I, H, dtype, spec, seed, use_lengths, training=True):
    """Random x, h0, weights (gains away from 1) with requires_grad, lengths and the call's masks."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: (torch.rand(*s, generator=g, dtype=dtype) - 0.5).requires_grad_()  # noqa: E731
    x, h0 = rnd(T, B, I), rnd(B, H)
    b_hh = rnd(3 * H) if spec.reset_after else None
    gains = (rnd(3 * H), rnd(3 * H)) if spec.layer_norm else (None, None)
    if spec.layer_norm:
        gains = tuple((1 + v.detach()).requires_grad_() for v in gains)
    w = LayerWeights(rnd(3 * H, I), rnd(3 * H, H), rnd(3 * H), b_hh, *gains)
    lengths = torch.randint(1, T + 1, (B,), generator=g) if use_lengths else None
    torch.manual_seed(seed)
    masks = Masks.draw(spec, training, T, B, I, H, x)
    return x, h0, w, masks, lengths


def leaves(x, h0, w):
    return {"x": x, "h0": h0, **{k: getattr(w, k) for k in ("w_ih", "w_hh", "b_ih", "b_hh", "g_ih", "g_hh")
                                   if getattr(w, k) is not None}}


def run(layer, case, spec, seed=0):
    x, h0, w, masks, lengths = case
    out, h_n = layer(x, h0, w, spec, masks, lengths)
    g = torch.Generator().manual_seed(seed + 1)
    loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum() + \
        (h_n * torch.randn(h_n.shape, generator=g, dtype=out.dtype)).sum()
    inputs = leaves(x, h0, w)
    grads = torch.autograd.grad(loss, list(inputs.values()))
    return {"out": out.detach(), "h_n": h_n.detach(), **{f"d{k}": v for k, v in zip(inputs, grads)}}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("use_lengths,reverse", [(False, False), (True, True), (True, False)])
def test_fused_cells_equal_reference_values_and_all_gradients(built, dtype, training, reset_after, option,
                                                              use_lengths, reverse):
    if OPTIONS[option].get("layer_norm") and not reset_after:
        pytest.skip("layer_norm is reset-after only")
    spec = CellSpec(reset_after=reset_after, reverse=reverse, **OPTIONS[option])
    T, B, I, H = 7, 5, 4, 11  # H = 11: padded gate blocks in both dtypes
    ref = run(reference.gru_layer, layer_case(T, B, I, H, dtype, spec, 3, use_lengths, training), spec)
    fused = run(cpu.gru_layer, layer_case(T, B, I, H, dtype, spec, 3, use_lengths, training), spec)
    assert ref.keys() == fused.keys()
    for name in ref:
        assert_close(fused[name], ref[name], TOL[dtype], name)


@pytest.mark.parametrize("option", ["layer_norm", "recurrent_dropout", "zoneout", "all"])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_float64(built, option, reset_after, training):
    if OPTIONS[option].get("layer_norm") and not reset_after:
        pytest.skip("layer_norm is reset-after only")
    spec = CellSpec(reset_after=reset_after, **OPTIONS[option])
    x, h0, w, masks, lengths = layer_case(4, 3, 2, 3, torch.float64, spec, 5, True, training)
    names = [k for k in ("w_ih", "w_hh", "b_ih", "b_hh", "g_ih", "g_hh") if getattr(w, k) is not None]

    def f(x, h0, *params):
        return cpu.gru_layer(x, h0, LayerWeights(**dict(zip(names, params))), spec, masks, lengths)

    assert torch.autograd.gradcheck(f, (x, h0, *[getattr(w, k) for k in names]))


@pytest.mark.parametrize("option", list(OPTIONS))
def test_fused_path_runs_the_kernel_not_the_reference(built, monkeypatch, option):
    """supports() says yes, and neither the forward nor the backward falls back to the reference loop."""
    spec = CellSpec(**OPTIONS[option])
    assert cpu.supports(spec)
    assert grunet.kernels.layer_function("fused", torch.zeros(1, 1, 1), spec) is cpu.gru_layer
    calls = []

    class Spy(TorchDispatchMode):  # the kernel's operators as the dispatcher sees them, arguments by name
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace == "grunet":
                names = [a.name for a in func._schema.arguments]
                calls.append((func.__name__, dict(zip(names, args), **(kwargs or {}))))
            return func(*args, **(kwargs or {}))

    monkeypatch.setattr(cpu, "reference_layer", lambda *a, **k: pytest.fail("fell back to the reference"))
    monkeypatch.setattr(reference, "gru_step", lambda *a, **k: pytest.fail("ran the reference step"))
    case = layer_case(5, 3, 2, 4, torch.float32, spec, 1, True)
    with Spy():
        out = run(cpu.gru_layer, case, spec)
    assert [name for name, _ in calls] == ["gru_layer_train.default", "gru_layer_backward.default"]
    assert all(torch.isfinite(v).all() for v in out.values())
    call = calls[0][1]
    assert call["layer_norm"] == spec.layer_norm and call["zoneout"] == pytest.approx(spec.zoneout)
    assert (call["g_ih"] is not None) == spec.layer_norm
    assert (call["recurrent_mask"] is not None) == bool(spec.recurrent_dropout)
    assert (call["zoneout_mask"] is not None) == bool(spec.zoneout)


def test_eval_mode_uses_no_masks_and_the_zoneout_mean(built):
    """In eval every mask is off; zoneout keeps p of the old state: h' = p h + (1 - p) h~."""
    spec = CellSpec(zoneout=0.25, recurrent_dropout=0.5)
    x, h0, w, masks, _ = layer_case(3, 2, 2, 4, torch.float64, spec, 2, False, training=False)
    assert masks == Masks()
    with torch.no_grad():
        out, _ = cpu.gru_layer(x, h0, w, spec, masks)
        plain = reference.gru_step(x[0], h0, w, CellSpec())
    assert_close(out[0], 0.25 * h0 + 0.75 * plain, 1e-12, "h_1")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_grad_training_forward_applies_the_masks(built, dtype):
    """Training mode under no_grad (masks drawn, nothing kept for a backward) equals the reference."""
    spec = CellSpec(**OPTIONS["all"])
    case = layer_case(6, 9, 3, 5, dtype, spec, 4, True)
    with torch.no_grad():
        a = reference.gru_layer(*case[:3], spec, *case[3:])
        b = cpu.gru_layer(*case[:3], spec, *case[3:])
    for name, u, v in zip(("out", "h_n"), b, a):
        assert_close(u, v, TOL[dtype], name)


@pytest.mark.parametrize("option", list(OPTIONS))
def test_gru_module_fused_equals_reference_under_one_seed(built, option):
    """grunet.GRU bidirectional, two layers, batch_first, lengths: training outputs and every parameter's
    gradient, with the masks each implementation draws from the same seed."""
    kw = dict(num_layers=2, bidirectional=True, batch_first=True, dtype=torch.float64, **OPTIONS[option])
    torch.manual_seed(0)
    ref_model = grunet.GRU(3, 6, impl="reference", **kw)
    fused_model = grunet.GRU(3, 6, impl="fused", **kw)
    fused_model.load_state_dict(ref_model.state_dict())
    with torch.no_grad():
        for name, p in ref_model.named_parameters():
            if name.startswith("layer_norm"):
                p.uniform_(0.5, 1.5)
        fused_model.load_state_dict(ref_model.state_dict())
    x = torch.randn(4, 8, 3, dtype=torch.float64)
    lengths = torch.tensor([8, 3, 5, 1])
    results = []
    for model in (ref_model, fused_model):
        torch.manual_seed(7)
        out, h_n = model(x, lengths=lengths)
        (out.square().sum() + h_n.sum()).backward()
        results.append((out.detach(), h_n.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (o1, h1, g1), (o2, h2, g2) = results
    assert_close(o2, o1, 1e-10, "out")
    assert_close(h2, h1, 1e-10, "h_n")
    assert g1.keys() == g2.keys()
    if option in ("layer_norm", "all"):
        assert any(n.startswith("layer_norm_hh_l1_reverse") for n in g1)
    for n in g1:
        assert_close(g2[n], g1[n], 1e-10, n)
    ref_model.eval(), fused_model.eval()
    with torch.no_grad():
        assert_close(fused_model(x, lengths=lengths)[0], ref_model(x, lengths=lengths)[0], 1e-10, "eval out")


def test_bench_layer_norm_loop_is_the_same_math():
    """The hand-written PyTorch loop the bench times against computes grunet's layer-normalised GRU."""
    from grunet.bench import LayerNormGRULoop

    torch.manual_seed(3)
    gru = grunet.GRU(3, 5, batch_first=True, layer_norm=True, impl="reference", dtype=torch.float64)
    loop = LayerNormGRULoop(3, 5).double()
    with torch.no_grad():
        for p in gru.parameters():
            p.uniform_(-0.8, 0.8)
        loop.ih.weight.copy_(gru.weight_ih_l0), loop.hh.weight.copy_(gru.weight_hh_l0)
        loop.ln_ih.weight.copy_(gru.layer_norm_ih_l0), loop.ln_ih.bias.copy_(gru.bias_ih_l0)
        loop.ln_hh.weight.copy_(gru.layer_norm_hh_l0), loop.ln_hh.bias.copy_(gru.bias_hh_l0)
        x = torch.randn(2, 6, 3, dtype=torch.float64)
        assert_close(loop(x)[0], gru(x)[0], 1e-12, "out")


def test_bench_writes_the_cell_option_rows(built, tmp_path):
    from grunet.bench import CELL_CASES
    from grunet.cli import main

    path = tmp_path / "RESULTS.md"
    assert main(["bench", "--quick", "--skip", "train,sweep,inference,keras", "--repeats", "1", "--impls",
                 "torch,fused", "--results", str(path)]) == 0
    text = path.read_text()
    assert "## Cell options: training step of the tutorial model" in text
    rows = {line.split("|")[1].strip(): line.split("|")[2:5] for line in text.splitlines()
            if line.startswith("| ") and line.split("|")[1].strip() in CELL_CASES}
    assert rows.keys() == CELL_CASES.keys()
    assert all(float(ms) > 0 for ms, _, _ in rows.values())
    assert rows["plain GRU, fused"][1].strip() == "+0%"
    assert rows["layer_norm, PyTorch loop (nn.LayerNorm)"][2].strip().endswith("x")


def test_operator_backward_takes_what_the_training_forward_saved(built):
    """grunet::gru_layer_train -> grunet::gru_layer_backward gives autograd's gradients (layer norm: the saved
    tensors hold its normalised rows; without it those are empty), and the fake implementation gives the
    saved tensors the kernel's shapes."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    ops = torch.ops.grunet
    for spec in (CellSpec(layer_norm=True, zoneout=0.3), CellSpec(reset_after=False)):
        x, h0, w, masks, lengths = layer_case(5, 4, 3, 6, torch.float64, spec, 8, True)
        args = list(cpu.call_arguments(x, h0, w, spec, masks, lengths))
        args[-1] = 2  # chunks
        with torch.no_grad():  # the operators below autograd, as the Autograd kernel calls them
            out, h_n, *saved = ops.gru_layer_train(*args)
        assert (saved[4].numel() == 0) == (not spec.layer_norm)
        with FakeTensorMode(allow_non_fake_inputs=True):
            fake = ops.gru_layer_train(*args)
        assert [tuple(t.shape) for t in fake] == [tuple(t.shape) for t in (out, h_n, *saved)]
        dout, dh = torch.randn_like(out), torch.randn_like(h_n)
        (x_, h0_, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh, m_h, m_z, lens, reset_after, act, reverse, layer_norm,
         zoneout, chunks) = args
        with torch.no_grad():
            grads = ops.gru_layer_backward(dout, dh, w_ih, w_hh, g_ih, g_hh, m_h, m_z, lens, *saved, reset_after, act,
                                           reverse, layer_norm, zoneout, b_ih is not None, b_hh is not None, True,
                                           True, True, chunks, x.shape[0])
        names = ["x", "h0", "w_ih", "w_hh", "b_ih", "b_hh", "g_ih", "g_hh"]
        inputs = leaves(x, h0, w)
        out2, h2 = cpu.gru_layer(x, h0, w, spec, masks, lengths)
        assert_close(out, out2, 0, "out")
        expected = dict(zip(inputs, torch.autograd.grad([out2, h2], list(inputs.values()), [dout, dh])))
        for name, g in zip(names, grads):
            if name in expected:
                assert_close(g, expected[name], 1e-10, name)
            else:
                assert g.numel() == 0, name


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("training", [True, False])
def test_batch_split_over_threads_equals_reference(built, option, training):
    """B = 40 at two threads: the kernel splits the batch into chunks (chunk-major saved rows, per-chunk
    gain and weight gradients summed after the loop)."""
    spec = CellSpec(reverse=True, **OPTIONS[option])
    T, B, I, H = 6, 40, 3, 11
    assert built.batch_chunks(B, H, 2) == 2
    cpu.set_threads(2)
    try:
        ref = run(reference.gru_layer, layer_case(T, B, I, H, torch.float64, spec, 9, True, training), spec)
        fused = run(cpu.gru_layer, layer_case(T, B, I, H, torch.float64, spec, 9, True, training), spec)
    finally:
        cpu.set_threads(None)
    for name in ref:
        assert_close(fused[name], ref[name], 1e-10, name)


@pytest.mark.parametrize("H", [1, 2, 3, 16, 17])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zoneout_mask_read_in_place_for_any_hidden_size(built, H, dtype):
    """The kernel reads zoneout's (T, B, H) mask rows in place, Hp units at a time, and pads only the last
    rows (for H = 1 a padded row spans up to 16 mask rows): every hidden size gives the reference's values and
    gradients, with the layer norm's whole-row passes too."""
    spec = CellSpec(zoneout=0.3, layer_norm=True, recurrent_dropout=0.2)
    T, B, I = 5, 3, 2
    ref = run(reference.gru_layer, layer_case(T, B, I, H, dtype, spec, 4, True), spec)
    fused = run(cpu.gru_layer, layer_case(T, B, I, H, dtype, spec, 4, True), spec)
    for name in ref:
        assert_close(fused[name], ref[name], TOL[dtype], name)
