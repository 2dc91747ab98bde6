"""The Triton GRU kernel against the reference loop: values and every gradient, in Triton's interpreter on CPU
tensors (TRITON_INTERPRET=1, no GPU needed) and, where CUDA exists, compiled on the GPU.

Shapes stay tiny on CPU: the interpreter runs every kernel operation in numpy."""
from __future__ import annotations

import pytest
import torch

from grunet import reference
from grunet.contract import CellSpec, LayerWeights, Masks
from grunet.errors import GrunetError

pytest.importorskip("triton")
from grunet.kernels.gpu import triton_layer  # noqa: E402

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    """CPU tensors run in Triton's interpreter for these tests only (triton_layer reads the variable at each
    call and keeps an interpreted copy of its kernels, whatever imported triton before)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def assert_close(a, b, tol, what):
    """Max abs error <= tol, relative to the values' scale where that exceeds 1 (summed gradients)."""
    assert a.shape == b.shape, f"{what}: shapes {tuple(a.shape)} vs {tuple(b.shape)}"
    a, b = a.detach().float(), b.detach().float()
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    err = float((a - b).abs().max()) if a.numel() else 0.0
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol} * {scale:.3g}"


def layer_case(T, B, I, H, spec, seed, *, lengths=False, h0=True, training=True, dtype=torch.float32,
               device="cpu"):
    """Random x, h0, weights with requires_grad, the call's masks and lengths (one row of length 1, so that
    padding shows)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return ((torch.rand(*shape, generator=g) - 0.5) * 2 * scale).to(device, dtype).requires_grad_()

    x = rnd(T, B, I, scale=2.0)
    state = rnd(B, H) if h0 else None
    b_hh = rnd(3 * H) if spec.reset_after else None
    gains = (None, None)
    if spec.layer_norm:  # gains away from 1
        gains = tuple((1 + rnd(3 * H, scale=0.5).detach()).requires_grad_() for _ in range(2))
    w = LayerWeights(rnd(3 * H, I), rnd(3 * H, H, scale=0.8), rnd(3 * H), b_hh, *gains)
    n = None
    if lengths:
        n = torch.randint(1, T + 1, (B,), generator=g)
        n[0] = 1
        n = n.to(device)
    torch.manual_seed(seed)
    masks = Masks.draw(spec, training, T, B, I, H, x)
    return x, state, w, masks, n


def leaves(x, h0, w):
    return [t for t in (x, h0, w.w_ih, w.w_hh, w.b_ih, w.b_hh, w.g_ih, w.g_hh) if t is not None]


NAMES = ("output", "h_n", "dx", "dh0", "dw_ih", "dw_hh", "db_ih", "db_hh", "dg_ih", "dg_hh")


def run(layer, x, h0, w, spec, masks, lengths, upstream):
    """Outputs and the gradients of a fixed random projection of both outputs, in float32."""
    out, h_n = layer(x, h0, w, spec, masks, lengths)
    loss = (out.float() * upstream[0]).sum() + (h_n.float() * upstream[1]).sum()
    grads = torch.autograd.grad(loss, leaves(x, h0, w))
    return [out, h_n, *grads]


def compare(x, h0, w, spec, masks, lengths, tol, reference_inputs=None):
    """The Triton layer against the reference (run on ``reference_inputs`` when given: float32 copies)."""
    T, B, H = x.shape[0], x.shape[1], w.w_hh.shape[1]
    g = torch.Generator().manual_seed(7)
    upstream = (torch.randn(T, B, H, generator=g).to(x.device), torch.randn(B, H, generator=g).to(x.device))
    got = run(triton_layer.gru_layer, x, h0, w, spec, masks, lengths, upstream)
    ref_args = reference_inputs or (x, h0, w)
    want = run(reference.gru_layer, *ref_args, spec, masks, lengths, upstream)
    names = [*NAMES[:2], *(n for n, t in zip(NAMES[2:], (x, h0, w.w_ih, w.w_hh, w.b_ih, w.b_hh, w.g_ih, w.g_hh))
                           if t is not None)]
    assert len(got) == len(want) == len(names)
    for name, a, b in zip(names, got, want):
        assert_close(a, b, tol, name)
    return got


CASES = {
    # name: (CellSpec fields, lengths, h0)
    "reset_after": (dict(), False, True),
    "reset_before": (dict(reset_after=False), False, True),
    "reset_after_keras2": (dict(activation="hard_sigmoid_keras2"), False, True),
    "reset_before_keras2": (dict(reset_after=False, activation="hard_sigmoid_keras2"), False, True),
    "reset_after_keras3": (dict(activation="hard_sigmoid_keras3"), False, True),
    "reset_before_keras3": (dict(reset_after=False, activation="hard_sigmoid_keras3"), False, True),
    "reset_after_reverse": (dict(reverse=True), False, True),
    "reset_before_reverse": (dict(reset_after=False, reverse=True), False, True),
    "reset_after_lengths": (dict(), True, True),
    "reset_before_lengths": (dict(reset_after=False), True, True),
    "reset_after_lengths_reverse": (dict(reverse=True), True, True),
    "reset_before_lengths_reverse_keras2": (dict(reset_after=False, reverse=True,
                                                 activation="hard_sigmoid_keras2"), True, True),
    "reset_after_no_h0": (dict(), False, False),
    "reset_before_no_h0_lengths": (dict(reset_after=False), True, False),
    "reset_after_recurrent_dropout": (dict(recurrent_dropout=0.3), False, True),
    "reset_before_recurrent_dropout": (dict(reset_after=False, recurrent_dropout=0.3), False, True),
    "reset_after_zoneout": (dict(zoneout=0.25), False, True),
    "reset_before_zoneout_reverse": (dict(reset_after=False, zoneout=0.25, reverse=True), False, True),
    "reset_after_all_options_lengths": (dict(recurrent_dropout=0.3, zoneout=0.25, input_dropout=0.2,
                                             weight_dropout=0.4), True, True),
    "reset_before_all_options_lengths_reverse": (dict(reset_after=False, recurrent_dropout=0.3, zoneout=0.25,
                                                      input_dropout=0.2, weight_dropout=0.4, reverse=True), True, True),
    "layer_norm": (dict(layer_norm=True), False, True),
    "layer_norm_keras3_reverse_no_h0": (dict(layer_norm=True, activation="hard_sigmoid_keras3", reverse=True),
                                        False, False),
    "layer_norm_all_options_lengths": (dict(layer_norm=True, recurrent_dropout=0.3, zoneout=0.25,
                                            input_dropout=0.2, weight_dropout=0.4), True, True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference_in_training(name):
    fields, lengths, h0 = CASES[name]
    spec = CellSpec(**fields)
    x, state, w, masks, n = layer_case(5, 3, 4, 7, spec, seed=len(name), lengths=lengths, h0=h0)
    if spec.recurrent_dropout or spec.zoneout:  # the masks really mask something
        assert masks.recurrent is None or bool((masks.recurrent == 0).any())
        assert masks.zoneout is None or bool((masks.zoneout == 0).any())
    compare(x, state, w, spec, masks, n, 1e-5)


@pytest.mark.parametrize("fields", [dict(zoneout=0.3), dict(reset_after=False, zoneout=0.3, recurrent_dropout=0.4)],
                         ids=["reset_after", "reset_before"])
def test_eval_mode_cell_options(fields):
    """Eval: no masks; zoneout mixes with 1 - p, recurrent dropout is off."""
    spec = CellSpec(**fields)
    x, state, w, masks, n = layer_case(4, 2, 3, 5, spec, seed=3, lengths=True, training=False)
    assert masks == Masks()
    compare(x, state, w, spec, masks, n, 1e-5)


def test_several_programs_and_padded_units():
    """B = 18 needs two programs of 16 rows; H = 20 pads to 32 units inside the kernel."""
    spec = CellSpec(reset_after=False, zoneout=0.2, recurrent_dropout=0.2)
    x, state, w, masks, n = layer_case(3, 18, 5, 20, spec, seed=11, lengths=True)
    compare(x, state, w, spec, masks, n, 1e-5)


@pytest.mark.parametrize("name", ["reset_after_all_options_lengths", "reset_before_all_options_lengths_reverse",
                                  "layer_norm_all_options_lengths"])
def test_weights_read_at_every_step(name, monkeypatch):
    """The register kernels with W_hh read from memory at every step (layers above RESIDENT_UNITS)."""
    monkeypatch.setattr(triton_layer, "RESIDENT_UNITS", 8)
    fields, lengths, h0 = CASES[name]
    spec = CellSpec(**fields)
    x, state, w, masks, n = layer_case(4, 3, 4, 20, spec, seed=len(name), lengths=lengths, h0=h0)
    compare(x, state, w, spec, masks, n, 1e-5)


WIDE_CASES = ["reset_after", "reset_before_keras2", "reset_after_lengths_reverse", "reset_before_no_h0_lengths",
              "reset_after_all_options_lengths", "reset_before_all_options_lengths_reverse", "layer_norm",
              "layer_norm_all_options_lengths"]


@pytest.mark.parametrize("name", WIDE_CASES)
def test_wide_kernels_match_reference(name, monkeypatch):
    """The kernels for wide layers (state in a buffer, products in column tiles), sent H = 20 in tiles of 16
    so that the last tile of each gate is partial."""
    monkeypatch.setattr(triton_layer, "REGISTER_UNITS", 8)
    monkeypatch.setattr(triton_layer, "WIDE_BLOCK", 16)
    fields, lengths, h0 = CASES[name]
    spec = CellSpec(**fields)
    x, state, w, masks, n = layer_case(4, 3, 4, 20, spec, seed=len(name), lengths=lengths, h0=h0)
    compare(x, state, w, spec, masks, n, 1e-5)
    spec_eval = CellSpec(**{**fields, "zoneout": 0.3})  # eval: zoneout mixes with 1 - p
    x, state, w, masks, n = layer_case(3, 2, 3, 20, spec_eval, seed=1, lengths=lengths, training=False)
    with torch.no_grad():
        got = triton_layer.gru_layer(x, state, w, spec_eval, masks, n)
        want = reference.gru_layer(x, state, w, spec_eval, masks, n)
    for name_, a, b in zip(NAMES, got, want):
        assert_close(a, b, 1e-5, name_)


class LaunchSpy:
    """Stands for the kernels module and records each launch's kernel name and STORE flag."""

    def __init__(self, kernels):
        self.kernels, self.launches = kernels, []

    def __getattr__(self, name):
        kernel = getattr(self.kernels, name)
        spy = self

        class Grid:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    spy.launches.append((name, kwargs.get("STORE")))
                    return kernel[grid](*args, **kwargs)

                return launch

        return Grid()


def test_inference_keeps_nothing_and_matches(monkeypatch):
    """Without grad the forward saves no activations and gives the same numbers; with grad it saves them."""
    spec = CellSpec(reset_after=False, activation="hard_sigmoid_keras2", zoneout=0.1)
    x, state, w, masks, n = layer_case(6, 4, 3, 9, spec, seed=5, lengths=True, training=False)
    spies = []
    real = triton_layer._kernels

    def spied(interpreted):
        spies.append(LaunchSpy(real(interpreted)))
        return spies[-1]

    monkeypatch.setattr(triton_layer, "_kernels", spied)
    with torch.no_grad():
        out, h_n = triton_layer.gru_layer(x, state, w, spec, masks, n)
        want_out, want_h = reference.gru_layer(x, state, w, spec, masks, n)
    assert out.grad_fn is None and h_n.grad_fn is None
    assert spies[-1].launches == [("gru_forward_kernel", False)]
    triton_layer.gru_layer(x, state, w, spec, masks, n)[1].sum().backward()
    assert spies[-1].launches == [("gru_forward_kernel", True), ("gru_backward_kernel", None)]
    assert_close(out, want_out, 1e-5, "output")
    assert_close(h_n, want_h, 1e-5, "h_n")
    # padding outputs exact zeros
    for b, length in enumerate(n.tolist()):
        assert bool((out[length:, b] == 0).all())


def test_only_h_n_gets_a_gradient():
    """A classifier reads h_n alone: the output's gradient arrives as None."""
    spec = CellSpec()
    x, state, w, masks, n = layer_case(4, 2, 3, 6, spec, seed=2)
    grads = []
    for layer in (triton_layer.gru_layer, reference.gru_layer):
        _, h_n = layer(x, state, w, spec, masks, n)
        grads.append(torch.autograd.grad(h_n.sum(), leaves(x, state, w)))
    for name, a, b in zip(NAMES[2:], *grads):
        assert_close(a, b, 1e-5, name)


def test_under_torch_compile():
    """torch.compile leaves the layer out of its graph and runs it as in eager mode: same values and gradients."""
    spec = CellSpec(zoneout=0.2)
    x, state, w, masks, n = layer_case(3, 2, 3, 5, spec, seed=8, lengths=True)

    def loss(x, state):
        out, h_n = triton_layer.gru_layer(x, state, w, spec, masks, n)
        return (out * out).sum() + h_n.sum()

    torch._dynamo.reset()
    compiled = torch.compile(loss, backend="aot_eager")
    got = compiled(x, state)
    got_grads = torch.autograd.grad(got, (x, state))
    want = loss(x, state)
    want_grads = torch.autograd.grad(want, (x, state))
    assert_close(got, want, 1e-6, "loss")
    for name, a, b in zip(("dx", "dh0"), got_grads, want_grads):
        assert_close(a, b, 1e-6, name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_inputs_against_float32_reference(dtype):
    """Half inputs run in float32 inside: close to the float32 reference on the half values, outputs and
    gradients in the input's dtype."""
    spec = CellSpec(reset_after=False, recurrent_dropout=0.2)
    x, state, w, masks, n = layer_case(4, 3, 4, 6, spec, seed=9, lengths=True, dtype=dtype)
    as32 = lambda t: None if t is None else t.detach().float().requires_grad_()  # noqa: E731
    ref_inputs = (as32(x), as32(state), LayerWeights(*(as32(t) for t in (w.w_ih, w.w_hh, w.b_ih, w.b_hh))))
    got = compare(x, state, w, spec, masks, n, 2e-2, reference_inputs=ref_inputs)
    assert all(t.dtype == dtype for t in got)


def test_refuses_what_it_does_not_compute(monkeypatch):
    spec = CellSpec()
    x, state, w, masks, n = layer_case(2, 2, 3, 4, spec, seed=1)
    with pytest.raises(GrunetError, match="float64"):
        triton_layer.gru_layer(x.double(), state, w, spec, masks, n)
    assert triton_layer.supports(CellSpec(layer_norm=True, zoneout=0.5, recurrent_dropout=0.1))
    assert triton_layer.runs_on(x) and triton_layer.available() is None
    monkeypatch.delenv("TRITON_INTERPRET")
    assert not triton_layer.runs_on(x)
    if not torch.cuda.is_available():
        assert "TRITON_INTERPRET" in triton_layer.available()
        with pytest.raises(GrunetError, match="CUDA"):
            triton_layer.gru_layer(x, state, w, spec, masks, n)


@cuda
@pytest.mark.parametrize("fields", [dict(), dict(reset_after=False, activation="hard_sigmoid_keras2"),
                                    dict(recurrent_dropout=0.25, zoneout=0.1, reverse=True), dict(layer_norm=True)],
                         ids=["reset_after", "reset_before_keras2", "options_reverse", "layer_norm"])
@pytest.mark.parametrize("H", [48, 75, 256])
def test_cuda_matches_reference(fields, H):
    """Compiled on the GPU with lengths: the register kernels (48 units), the tutorial's shape and a wide layer
    (the wide kernels)."""
    spec = CellSpec(**fields)
    x, state, w, masks, n = layer_case(28, 50, 28, H, spec, seed=H, lengths=True, device="cuda")
    compare(x, state, w, spec, masks, n, 1e-4)


@cuda
def test_cuda_bf16():
    spec = CellSpec()
    x, state, w, masks, n = layer_case(28, 50, 28, 128, spec, seed=4, dtype=torch.bfloat16, device="cuda")
    as32 = lambda t: None if t is None else t.detach().float().requires_grad_()  # noqa: E731
    ref_inputs = (as32(x), as32(state), LayerWeights(*(as32(t) for t in (w.w_ih, w.w_hh, w.b_ih, w.b_hh))))
    compare(x, state, w, spec, masks, n, 3e-2, reference_inputs=ref_inputs)


# ----------------------------------------------------------------------------------------------------
# Compiled for a Hopper GPU without one: Triton's compiler and the ptxas it ships run on any machine, so the
# kernels' compiled form (not only the interpreter's) is checked here, with the shared memory it needs.
SHARED_MEMORY_LIMIT = 227 * 1024  # what one block may use on an H100 / H200 (sm_90)


def compile_for_hopper(kernel, constants, num_warps):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import ASTSource

    types = {"T": "i32", "B": "i32", "H": "i32", "keep_eval": "fp32", "eps": "fp32", "Len": "*i64"}
    signature = {name: "constexpr" if name in constants else types.get(name, "*fp32") for name in kernel.arg_names}
    source = ASTSource(kernel, signature, constexprs=constants)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})


COMPILED_CASES = {
    # name: (CellSpec fields, training, the flags of the call that differ from a training call with h0)
    "reset_after_all_options": (dict(layer_norm=True, recurrent_dropout=0.2, zoneout=0.1), True, {}),
    "reset_before": (dict(reset_after=False, activation="hard_sigmoid_keras2", reverse=True), True, {}),
    "eval_inference": (dict(activation="hard_sigmoid_keras3", zoneout=0.3), False,
                       dict(STORE=False, HAS_H0=False, HAS_LEN=False, HAS_D_OUT=False)),
}


@pytest.mark.parametrize("H", [16, 64, 75, 512])
@pytest.mark.parametrize("name", list(COMPILED_CASES))
def test_kernels_compile_for_hopper_within_shared_memory(H, name, monkeypatch):
    """The kernels the layer picks for H compile to sm_90 machine code and fit one block's shared memory."""
    monkeypatch.delenv("TRITON_INTERPRET")
    import triton

    if "nvidia" not in getattr(triton.backends, "backends", {}):
        pytest.skip("this triton has no CUDA backend")
    fields, training, changes = COMPILED_CASES[name]
    spec = CellSpec(**fields)
    masks = Masks.draw(spec, training, 1, 1, 1, H, torch.ones(1))
    call = triton_layer._Call(spec, masks, 1, 1, H)
    kernels = triton_layer._kernels(False)
    common = dict(RESET_AFTER=call.reset_after, ACT=call.act, REVERSE=call.reverse,
                  HAS_M_REC=masks.recurrent is not None, ZONE=call.zone, HAS_LEN=changes.get("HAS_LEN", True),
                  LAYER_NORM=call.layer_norm, BLOCK_B=triton_layer.BLOCK_B)
    forward = dict(common, HAS_H0=changes.get("HAS_H0", True), HAS_B_HH=call.reset_after,
                   STORE=changes.get("STORE", True))
    backward = dict(common, HAS_D_OUT=changes.get("HAS_D_OUT", True), HAS_D_HN=True)
    if call.wide:
        tiles = dict(BLOCK_N=call.block, BLOCK_K=call.block)
        pairs = [(kernels.gru_forward_wide_kernel, dict(forward, **tiles), 4),
                 (kernels.gru_backward_wide_kernel, dict(backward, **tiles), 4)]
    else:
        tiles = dict(RESIDENT=call.resident, HP=call.HP)
        pairs = [(kernels.gru_forward_kernel, dict(forward, **tiles), call.num_warps),
                 (kernels.gru_backward_kernel, dict(backward, **tiles), call.num_warps)]
    assert call.wide == (H > 64)
    for kernel, constants, num_warps in pairs:
        compiled = compile_for_hopper(kernel, constants, num_warps)
        assert compiled.asm["cubin"], kernel.__name__
        assert 0 < compiled.metadata.shared <= SHARED_MEMORY_LIMIT, (kernel.__name__, compiled.metadata.shared)
