"""Helpers shared by the test files."""
import json
import zipfile

import pytest

from grunet.contract import NO_MASKS, CellSpec, LayerWeights


def positional(layer):
    """A layer function of the grunet.contract signature, called with the plain GRU's tensors and options:
    ``call(x, h0, w_ih, w_hh, b_ih, b_hh, *, reset_after, activation_name, lengths, reverse)``. The many
    parametrized kernel and reference tests build their cases that way."""

    def call(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, *, reset_after=True, activation_name="sigmoid",
             lengths=None, reverse=False):
        spec = CellSpec(reset_after=reset_after, activation=activation_name, reverse=reverse)
        return layer(x, h0, LayerWeights(w_ih, w_hh, b_ih, b_hh), spec, NO_MASKS, lengths)

    return call


def rewrite_keras_config(src, dst, edit):
    """Copy the Keras 3 archive ``src`` to ``dst`` with its config.json changed in place by ``edit(config)``."""
    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    config = json.loads(members["config.json"])
    edit(config)
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(dst, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)


def fused_kernel_or_skip():
    """The built (or cached) fused CPU extension; without a compiler the tests that need it are skipped."""
    from grunet.kernels import KernelUnavailable
    from grunet.kernels import cpu

    try:
        return cpu.load()
    except KernelUnavailable as e:  # pragma: no cover - depends on the machine
        pytest.skip(f"fused CPU kernel unavailable: {e}")
