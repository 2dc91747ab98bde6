"""The fused kernel as a PyTorch operator (torch.ops.grunet.gru_layer): torch.compile without graph breaks,
torch.export, torch.func (vmap, jacrev), batched gradients, double backward, and what TorchScript and the
ONNX exporter make of a model holding grunet.GRU. Every case for both variants and with a cell option."""
from __future__ import annotations

import io

import pytest
import torch
from conftest import fused_kernel_or_skip

import grunet
from grunet.errors import GrunetError

cpu = pytest.importorskip("grunet.kernels.cpu")

VARIANTS = [True, False]  # reset_after
# input and weight dropout: random masks that reach the compiled graph as tensors (training mode)
OPTIONS = [{}, {"input_dropout": 0.25, "weight_dropout": 0.2}]
# the options computed inside the recurrence (masks drawn per call, gains as parameters)
RECURRENT_OPTIONS = {"layer_norm": True, "recurrent_dropout": 0.2, "zoneout": 0.15}


@pytest.fixture(scope="module", autouse=True)
def built():
    return fused_kernel_or_skip()


class Classifier(torch.nn.Module):
    """A user's model: a stacked bidirectional grunet.GRU, batch-first, lengths, a linear head."""

    def __init__(self, reset_after=True, dtype=torch.float32, impl="fused", **options):
        super().__init__()
        self.gru = grunet.GRU(3, 5, num_layers=2, bidirectional=True, batch_first=True, reset_after=reset_after,
                              impl=impl, dtype=dtype, **options)
        self.head = torch.nn.Linear(10, 4, dtype=dtype)

    def forward(self, x, lengths):
        out, h_n = self.gru(x, lengths=lengths)
        return self.head(out.sum(1)) + h_n.sum(0).sum(-1, keepdim=True)


def inputs(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 6, 3, generator=g, dtype=dtype), torch.tensor([6, 2, 5, 1])


def outputs_and_grads(model, x, lengths, seed=7):
    torch.manual_seed(seed)  # the same dropout masks for eager and compiled
    y = model(x, lengths)
    grads = torch.autograd.grad((y * torch.arange(1.0, 5.0)).sum(), list(model.parameters()))
    return [y, *grads]


def assert_all_close(a, b, tol):
    assert len(a) == len(b)
    for i, (u, v) in enumerate(zip(a, b)):
        assert u.shape == v.shape, i
        assert (u - v).abs().max().item() <= tol, (i, (u - v).abs().max().item())


def kernel_ops(graph_module) -> set:
    return {str(n.target) for n in graph_module.graph.nodes if "grunet" in str(n.target)}


# ----------------------------------------------------------------------------------------------------
# torch.compile
@pytest.mark.parametrize("reset_after", VARIANTS)
@pytest.mark.parametrize("options", OPTIONS, ids=["plain", "dropouts"])
def test_compile_has_no_graph_break_and_gives_eager_outputs_and_gradients(reset_after, options):
    torch.manual_seed(0)
    model = Classifier(reset_after, **options)
    x, lengths = inputs()
    explained = torch._dynamo.explain(model)(x, lengths)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    assert any("grunet.gru_layer" in kernel for g in explained.graphs for kernel in kernel_ops(g))
    eager = outputs_and_grads(model, x, lengths)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    assert_all_close(outputs_and_grads(compiled, x, lengths), eager, 1e-6)
    model.eval()
    with torch.no_grad():
        assert_all_close([compiled(x, lengths)], [model(x, lengths)], 1e-6)


@pytest.mark.parametrize("option", [*RECURRENT_OPTIONS, "all"])
def test_compile_with_the_recurrent_cell_options(option):
    """Layer norm, recurrent dropout and zoneout run the fused kernel through the operator: no graph break,
    the operator in the graph, eager's outputs and gradients (the same seed, the same masks), and an
    exported program in training and eval mode."""
    options = RECURRENT_OPTIONS if option == "all" else {option: RECURRENT_OPTIONS[option]}
    torch.manual_seed(8)
    model = Classifier(True, impl="fused", **options)
    x, lengths = inputs(seed=8)
    explained = torch._dynamo.explain(model)(x, lengths)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert any("grunet.gru_layer" in kernel for g in explained.graphs for kernel in kernel_ops(g))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    assert_all_close(outputs_and_grads(compiled, x, lengths), outputs_and_grads(model, x, lengths), 1e-6)
    for training in (True, False):
        model.train(training)
        program = torch.export.export(model, (x, lengths))
        assert kernel_ops(program.graph_module) == {"grunet.gru_layer.default"}
        torch.manual_seed(3)
        expected = model(x, lengths)
        torch.manual_seed(3)
        assert_all_close([program.module()(x, lengths)], [expected], 1e-6)


def test_double_backward_with_the_recurrent_cell_options():
    """create_graph=True through the operator with gains and masks equals the reference's second order."""
    from grunet.contract import CellSpec, LayerWeights, Masks
    from grunet.reference import gru_layer as reference_layer

    spec = CellSpec(layer_norm=True, recurrent_dropout=0.3, zoneout=0.2)
    g = torch.Generator().manual_seed(9)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_()  # noqa: E731
    T, B, I, H = 3, 2, 2, 3
    tensors = [r(T, B, I), r(B, H), r(3 * H, I), r(3 * H, H), r(3 * H), r(3 * H), r(3 * H), r(3 * H)]
    torch.manual_seed(9)
    masks = Masks.draw(spec, True, T, B, I, H, tensors[0])

    def second_order(impl):
        x, h0, *w = tensors
        out, h_n = impl(x, h0, LayerWeights(*w), spec, masks, torch.tensor([3, 2]))
        first = torch.autograd.grad(out.square().sum() + h_n.sum(), tensors, create_graph=True)
        return [*first, *torch.autograd.grad(sum(d.square().sum() for d in first), tensors)]

    assert_all_close(second_order(cpu.gru_layer), second_order(reference_layer), 1e-10)


def test_compile_follows_a_new_batch_size():
    """A second batch size recompiles with a symbolic batch (torch's automatic dynamic shapes)."""
    torch.manual_seed(9)
    model = Classifier(False)
    compiled = torch.compile(model, backend="aot_eager")
    for B in (4, 3, 2):
        x, lengths = torch.randn(B, 6, 3), torch.arange(B) + 1
        assert_all_close(outputs_and_grads(compiled, x, lengths), outputs_and_grads(model, x, lengths), 1e-6)


def test_compiled_model_checks_lengths_in_the_graph():
    """While tracing, lengths have no values to check: the graph checks them when it runs."""
    model = Classifier(True)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x, lengths = inputs()
    compiled(x, lengths)
    with pytest.raises(RuntimeError, match=r"lengths: expected values in \[1, 6\]"):
        compiled(x, torch.tensor([6, 7, 1, 1]))
    with pytest.raises(RuntimeError, match=r"lengths: expected values in \[1, 6\]"):
        compiled(x, torch.tensor([6, 0, 1, 1]))


def test_compile_with_inductor_matches_eager():
    torch.manual_seed(1)
    model = Classifier(True)
    x, lengths = inputs(seed=1)
    compiled = torch.compile(model, backend="inductor", fullgraph=True)
    assert_all_close(outputs_and_grads(compiled, x, lengths), outputs_and_grads(model, x, lengths), 1e-5)


# ----------------------------------------------------------------------------------------------------
# torch.export
@pytest.mark.parametrize("reset_after", VARIANTS)
@pytest.mark.parametrize("training", [True, False])
def test_export_gives_a_program_that_runs_and_matches(reset_after, training, tmp_path):
    torch.manual_seed(2)
    model = Classifier(reset_after, **OPTIONS[1]).train(training)
    x, lengths = inputs(seed=2)
    program = torch.export.export(model, (x, lengths))
    assert kernel_ops(program.graph_module) == {"grunet.gru_layer.default"}
    x2, lengths2 = torch.randn_like(x), torch.tensor([3, 6, 1, 4])  # other values, the same shapes
    torch.manual_seed(3)
    expected = model(x2, lengths2)
    torch.manual_seed(3)
    assert_all_close([program.module()(x2, lengths2)], [expected], 1e-6)
    if not training:  # a saved program loads and runs (the operator is registered by importing grunet's kernel)
        path = tmp_path / "gru.pt2"
        torch.export.save(program, path)
        assert_all_close([torch.export.load(path).module()(x2, lengths2)], [expected], 1e-6)


def test_export_with_a_dynamic_batch_and_length():
    torch.manual_seed(4)
    model = Classifier(True)
    x, lengths = inputs(seed=4)
    batch, time = torch.export.Dim("batch", min=2, max=1024), torch.export.Dim("time", min=2, max=4096)
    program = torch.export.export(model, (x, lengths), dynamic_shapes=({0: batch, 1: time}, {0: batch}))
    x2, lengths2 = torch.randn(7, 9, 3), torch.randint(1, 10, (7,), generator=torch.Generator().manual_seed(4))
    assert_all_close(outputs_and_grads(program.module(), x2, lengths2), outputs_and_grads(model, x2, lengths2), 1e-6)


# ----------------------------------------------------------------------------------------------------
# torch.func and batched gradients (float64, small shapes)
def layer_tensors(reset_after, seed=4, T=3, B=2, I=2, H=3):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return [r(T, B, I), r(B, H), r(3 * H, I), r(3 * H, H), r(3 * H), r(3 * H) if reset_after else None]


def run(impl, reset_after, lengths=None, reverse=False):
    """The layer as a function of (x, h0, w_ih, w_hh, b_ih[, b_hh]) -> (out, h_n) through ``impl``."""
    from grunet.contract import NO_MASKS, CellSpec, LayerWeights

    spec = CellSpec(reset_after=reset_after, reverse=reverse)

    def f(x, h0, w_ih, w_hh, b_ih, b_hh=None):
        return impl(x, h0, LayerWeights(w_ih, w_hh, b_ih, b_hh), spec, NO_MASKS, lengths)

    return f


def reference():
    from grunet.reference import gru_layer

    return gru_layer


@pytest.mark.parametrize("reset_after", VARIANTS)
def test_gradcheck_with_batched_gradients(reset_after):
    tensors = [t.requires_grad_() for t in layer_tensors(reset_after) if t is not None]
    f = run(cpu.gru_layer, reset_after, lengths=torch.tensor([3, 2]), reverse=True)
    assert torch.autograd.gradcheck(f, tensors, check_batched_grad=True)


@pytest.mark.parametrize("reset_after", VARIANTS)
def test_vmap_and_jacrev_equal_the_reference(reset_after):
    tensors = [t for t in layer_tensors(reset_after) if t is not None]
    fused, ref = run(cpu.gru_layer, reset_after), run(reference(), reset_after)
    xs = torch.randn(4, *tensors[0].shape, dtype=torch.float64)  # a batch of inputs, mapped over
    mapped = torch.func.vmap(lambda x: fused(x, *tensors[1:]))(xs)
    looped = [torch.stack(v) for v in zip(*[ref(x, *tensors[1:]) for x in xs])]
    assert_all_close(list(mapped), looped, 1e-12)
    for argnums in (0, 2, 3):  # x, w_ih, w_hh
        jac = torch.func.jacrev(lambda *a: fused(*a)[1], argnums=argnums)(*tensors)
        expected = torch.func.jacrev(lambda *a: ref(*a)[1], argnums=argnums)(*tensors)
        assert_all_close([jac], [expected], 1e-12)


@pytest.mark.parametrize("reset_after", VARIANTS)
def test_double_backward_equals_the_reference(reset_after):
    def second_order(impl):
        tensors = [t.requires_grad_() if t is not None else None for t in layer_tensors(reset_after, seed=5)]
        leaves = [t for t in tensors if t is not None]
        out, h_n = run(impl, reset_after, lengths=torch.tensor([2, 3]))(*tensors)
        first = torch.autograd.grad(out.square().sum() + h_n.sum(), leaves, create_graph=True)
        return [*first, *torch.autograd.grad(sum(g.square().sum() for g in first), leaves)]

    assert_all_close(second_order(cpu.gru_layer), second_order(reference()), 1e-10)
    tensors = [t.requires_grad_() for t in layer_tensors(reset_after, seed=6, T=2, H=2) if t is not None]
    assert torch.autograd.gradgradcheck(run(cpu.gru_layer, reset_after), tensors)


def test_double_backward_through_the_module():
    torch.manual_seed(5)
    fused = grunet.GRU(2, 3, impl="fused", dtype=torch.float64)
    ref = grunet.GRU(2, 3, impl="reference", dtype=torch.float64)
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)

    def penalty(model):  # a gradient penalty, as WGAN-GP writes it
        (gx,) = torch.autograd.grad(model(x)[0].sum(), x, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), [x, *model.parameters()])

    assert_all_close(penalty(fused), penalty(ref), 1e-10)


# ----------------------------------------------------------------------------------------------------
# TorchScript and ONNX
@pytest.mark.parametrize("make", [lambda: grunet.GRU(3, 4), lambda: grunet.GRUCell(3, 4), lambda: Classifier()],
                         ids=["GRU", "GRUCell", "model"])
def test_jit_script_refuses_in_one_line_naming_torch_export(make):
    with pytest.raises(GrunetError, match=r"^torch\.jit\.script: expected torch\.export\.export") as info:
        torch.jit.script(make())
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("reset_after", VARIANTS)
def test_jit_trace_records_the_operator_and_computes(reset_after):
    torch.manual_seed(6)
    model = Classifier(reset_after).eval()
    x, lengths = inputs(seed=6)
    traced = torch.jit.trace(model, (x, lengths), check_trace=False)
    assert "grunet::gru_layer" in str(traced.inlined_graph)
    x2, lengths2 = torch.randn_like(x), torch.tensor([1, 6, 3, 2])
    assert_all_close([traced(x2, lengths2)], [model(x2, lengths2)], 1e-6)  # not the traced constant


def onnx_session(model, args, **kwargs):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    buffer = io.BytesIO()
    torch.onnx.export(model, args, buffer, dynamo=False, opset_version=17, **kwargs)
    proto = onnx.load_from_string(buffer.getvalue())
    return proto, ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("reset_after", VARIANTS)
@pytest.mark.parametrize("activation", ["sigmoid", "hard_sigmoid_keras2"])
def test_onnx_export_writes_the_gru_operator_and_matches_onnxruntime(reset_after, activation):
    torch.manual_seed(7)
    model = Classifier(reset_after).eval()
    model.gru = grunet.GRU(3, 5, num_layers=2, bidirectional=True, batch_first=True, reset_after=reset_after,
                           recurrent_activation=activation, impl="fused")
    x, lengths = inputs(seed=7)
    proto, session = onnx_session(model, (x, lengths), input_names=["x", "lengths"])
    grus = [n for n in proto.graph.node if n.op_type == "GRU"]
    assert len(grus) == 4  # 2 layers x 2 directions
    for node in grus:
        attrs = {a.name: a for a in node.attribute}
        assert attrs["linear_before_reset"].i == int(reset_after)
    x2, lengths2 = torch.randn_like(x), torch.tensor([2, 6, 1, 5])
    (got,) = session.run(None, {"x": x2.numpy(), "lengths": lengths2.numpy()})
    with torch.no_grad():
        assert_all_close([torch.from_numpy(got)], [model(x2, lengths2)], 1e-5)


@pytest.mark.parametrize("reset_after", VARIANTS)
def test_onnx_export_with_an_initial_state_and_no_bias(reset_after):
    torch.manual_seed(8)
    model = grunet.GRU(3, 4, reset_after=reset_after, bias=False, bidirectional=True, impl="fused").eval()
    x, h0 = torch.randn(5, 2, 3), torch.randn(2, 2, 4)
    _, session = onnx_session(model, (x, h0), input_names=["x", "h0"])
    x2, h2 = torch.randn(5, 2, 3), torch.randn(2, 2, 4)
    got = session.run(None, {"x": x2.numpy(), "h0": h2.numpy()})
    with torch.no_grad():
        assert_all_close([torch.from_numpy(g) for g in got], list(model(x2, h2)), 1e-5)


@pytest.mark.parametrize("options", [{"layer_norm": True}, {"zoneout": 0.2}, {"recurrent_dropout": 0.2}],
                         ids=["layer_norm", "zoneout", "recurrent_dropout"])
def test_onnx_export_refuses_what_onnx_cannot_compute_by_name(options):
    """ONNX's GRU has no layer norm, zoneout or recurrent dropout (a mask in training): refused by name."""
    pytest.importorskip("onnx")
    (name,) = options
    model = grunet.GRU(3, 4, impl="fused", **options)
    # the exporter runs the model in eval mode unless told otherwise; a recurrent-dropout mask is a training one
    mode = torch.onnx.TrainingMode.TRAINING if name == "recurrent_dropout" else torch.onnx.TrainingMode.EVAL
    with pytest.raises(GrunetError, match=name):
        torch.onnx.export(model, (torch.randn(5, 2, 3),), io.BytesIO(), dynamo=False, opset_version=17, training=mode)
