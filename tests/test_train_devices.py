"""Runs across devices: the RNG states a checkpoint keeps (the GPU's generator when a run used one), and a
CUDA run resumed on the CPU and back (where a GPU exists)."""
from __future__ import annotations

import csv

import pytest
import torch

from grunet.cli import main
from grunet.train_state import plain_rng_states, set_rng_states

ARGS = ["--steps", "40", "--eval-every", "20", "--units", "12", "--progress", "lines", "--layer-norm",
        "--reset-after", "--zoneout", "0.1"]


def test_states_of_a_gpu_run_restore_the_cpu_generators_on_a_cpu():
    torch.manual_seed(5)
    states = plain_rng_states()
    states = {**states, "cuda": torch.zeros(16, dtype=torch.uint8)}  # as written by a run on a GPU
    expected = torch.rand(3)
    torch.manual_seed(99)
    set_rng_states(states, "checkpoint")
    if not torch.cuda.is_available():  # no GPU here: its state is kept in the file and not needed
        assert torch.equal(torch.rand(3), expected)


def rows(path):
    with open(path) as f:
        return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in csv.DictReader(f)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_resumes_on_cpu_and_back(tmp_path):
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main(["train", "--device", "cuda", "--out", str(whole), *ARGS]) == 0
    assert main(["train", "--device", "cuda", "--out", str(part), *ARGS[:1], "20", *ARGS[2:]]) == 0
    assert main(["train", "--resume", str(part), "--device", "cpu", "--steps", "30"]) == 0
    assert main(["train", "--resume", str(part), "--device", "cuda", "--steps", "40"]) == 0
    got, want = rows(part / "metrics.csv"), rows(whole / "metrics.csv")
    assert [r["step"] for r in got][-1] == [r["step"] for r in want][-1]
    assert abs(float(got[-1]["loss"]) - float(want[-1]["loss"])) < 0.05  # other generators on the CPU part


def test_resume_may_name_the_device_and_a_missing_gpu_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--threads", "1", *ARGS[:1], "20", *ARGS[2:]]) == 0
    assert main(["train", "--resume", str(out), "--device", "cpu", "--steps", "40"]) == 0
    assert [r["step"] for r in rows(out / "metrics.csv")][-1] == "39"
    if not torch.cuda.is_available():
        capsys.readouterr()
        assert main(["train", "--resume", str(out), "--device", "cuda", "--steps", "60"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == ["grunet train: error: --device: expected a visible CUDA device, got none (torch sees no GPU)"]
