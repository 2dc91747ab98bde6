"""PyTorch's own test entries for nn.GRU and nn.GRUCell, run with grunet's classes.

torch ships ``torch.testing._internal.common_modules.module_db``: for each module, the constructor arguments
and inputs its test suite runs (``module_inputs_func``) and the inputs that must fail (``module_error_inputs_func``).
Each entry here is built twice, as torch's class and as grunet's with torch's weights; outputs and every
gradient (input, initial state, parameters) must agree, and every error input must fail in grunet too with
the exception type torch's tests expect. The messages differ by design: grunet's say
"THING: expected X, got Y" on one line.
"""
import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

import grunet
from grunet.errors import GrunetError

pytest.importorskip("expecttest", reason="torch's common_modules imports expecttest: pip install -e '.[test]'")
from torch.testing._internal.common_modules import ModuleErrorEnum, module_db  # noqa: E402

INFOS = {info.module_cls: info for info in module_db if info.module_cls in (nn.GRU, nn.GRUCell)}
TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def test_module_db_has_the_gru_entries():
    assert set(INFOS) == {nn.GRU, nn.GRUCell}


def grunet_twin(cls, constructor, impl):
    """grunet's module for torch's constructor arguments (GRU also gets an impl)."""
    if cls is nn.GRU:
        return grunet.GRU(*constructor.args, **constructor.kwargs, impl=impl)
    return grunet.GRUCell(*constructor.args, **constructor.kwargs)


def clone(value):
    """A fresh leaf of each input, so that each module's gradients are its own."""
    if isinstance(value, PackedSequence):
        data = value.data.detach().clone().requires_grad_(value.data.requires_grad)
        return PackedSequence(data, value.batch_sizes, value.sorted_indices, value.unsorted_indices)
    if isinstance(value, Tensor):
        return value.detach().clone().requires_grad_(value.requires_grad)
    return value


def leaves(args):
    return [a.data if isinstance(a, PackedSequence) else a for a in args
            if isinstance(a, (Tensor, PackedSequence)) and (a.data if isinstance(a, PackedSequence) else a).requires_grad]


def flat(outputs):
    """The output tensors in order: (output or its PackedSequence's data, h_n), or the cell's h'."""
    if isinstance(outputs, Tensor):
        return [outputs]
    return [o.data if isinstance(o, PackedSequence) else o for o in outputs]


def run(module, args, kwargs, seed):
    """Forward, then the gradients of a loss that weights every output element differently."""
    args = [clone(a) for a in args]
    outputs = flat(module(*args, **kwargs))
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outputs)
    wrt = leaves(args) + list(module.parameters())
    grads = torch.autograd.grad(loss, wrt, allow_unused=True) if loss.requires_grad else [None] * len(wrt)
    return outputs, grads


def assert_close(a, b, tol, what):
    assert a.shape == b.shape, f"{what}: shape {tuple(b.shape)}, torch {tuple(a.shape)}"
    if a.numel():
        err = (a - b).abs().max().item()
        assert err <= tol * max(1.0, a.abs().max().item()), f"{what}: max abs error {err:.3g}"


CASES = [(cls, impl) for cls in (nn.GRU, nn.GRUCell) for impl in (("reference", "fused") if cls is nn.GRU else (None,))]


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cls,impl", CASES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_module_db_inputs_match_torch_values_and_gradients(cls, impl, dtype, training):
    info = INFOS[cls]
    samples = info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True, training=training,
                                      with_packed_sequence=True)
    assert len(samples) >= 2
    for i, sample in enumerate(samples):
        torch.manual_seed(i)
        ref = cls(*sample.constructor_input.args, **sample.constructor_input.kwargs).to(dtype).train(training)
        ours = grunet_twin(cls, sample.constructor_input, impl).to(dtype).train(training)
        ours.load_state_dict(ref.state_dict())
        args, kwargs = sample.forward_input.args, sample.forward_input.kwargs
        what = f"sample {i} {sample.constructor_input.kwargs or sample.constructor_input.args}"
        (out_ref, grads_ref), (out_ours, grads_ours) = run(ref, args, kwargs, i), run(ours, args, kwargs, i)
        assert len(out_ref) == len(out_ours)
        for k, (a, b) in enumerate(zip(out_ref, out_ours)):
            assert_close(a, b, TOL[dtype], f"{what}: output {k}")
        names = [f"input {k}" for k in range(len(grads_ref) - len(list(ref.parameters())))]
        names += [n for n, _ in ref.named_parameters()]
        for name, a, b in zip(names, grads_ref, grads_ours):
            assert (a is None) == (b is None), f"{what}: d {name}"
            if a is not None:
                assert_close(a, b, TOL[dtype], f"{what}: d {name}")
        # torch's own check for unbatched inputs: the same as a batch of one
        if sample.reference_fn is not None and not isinstance(args[0], PackedSequence):
            expected = flat(sample.reference_fn(ours, *[clone(a) for a in args], **kwargs))
            for k, (a, b) in enumerate(zip(expected, flat(ours(*[clone(a) for a in args], **kwargs)))):
                assert_close(a, b, TOL[dtype], f"{what}: unbatched output {k} against a batch of one")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cls", [nn.GRU, nn.GRUCell], ids=lambda c: c.__name__)
def test_module_db_error_inputs_fail_with_torchs_exception_types(cls, dtype):
    info = INFOS[cls]
    errors = info.module_error_inputs_func(info, device="cpu", dtype=dtype, requires_grad=False, training=False)
    assert len(errors) >= 3
    for error in errors:
        sample = error.module_error_input
        constructor = sample.constructor_input
        # the list is shared with nn.RNNCell: GRUCell(10, 20, 'relu') passes 'relu' as bias, which grunet
        # refuses when constructing (GrunetTypeError is a RuntimeError too) where torch fails in forward
        with pytest.raises(error.error_type) as caught:
            module = grunet_twin(cls, constructor, "reference")
            assert error.error_on is ModuleErrorEnum.FORWARD_ERROR, f"{error.error_regex}: construction passed"
            module(*sample.forward_input.args, **sample.forward_input.kwargs)
        assert isinstance(caught.value, GrunetError), f"{error.error_regex}: got {caught.value!r}"
        message = str(caught.value)
        assert "\n" not in message and ": expected " in message and ", got " in message, message
