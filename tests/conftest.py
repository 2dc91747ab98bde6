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


# ---- process groups (tests/test_distributed.py) -------------------------------------------------------
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS's choice)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(nproc: int, port: int, *args: str, launcher: tuple = ()) -> list:
    """``python -m torch.distributed.run`` on 127.0.0.1:port (c10d rendezvous) running ``grunet *args``."""
    import sys

    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", f"--nproc-per-node={nproc}",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", *launcher, "-m", "grunet", *args]


def ranks_of(marker: str) -> dict:
    """{rank: pid} of the processes whose environment holds ``marker`` (NAME=VALUE) and a RANK: the workers
    torchrun started for one test (its agent holds the marker but no RANK)."""
    from pathlib import Path

    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker.encode() in env:
            for entry in env:
                if entry.startswith(b"RANK="):
                    found[int(entry[5:])] = int(d.name)
    return found


def wait_for(condition, timeout_s: float, what: str) -> None:
    """Poll ``condition()`` until it holds; fail the test after ``timeout_s`` (a bound, not a timing)."""
    import time

    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def finished_run(settings: dict, out):
    """A grunet train run of ``settings`` (TrainConfig's fields) in ``out``, silent, that must end well."""
    from grunet.train import TrainConfig, run

    assert run(TrainConfig(**settings), out, print_fn=lambda s: None, progress=False).exit_code == 0
    return out
