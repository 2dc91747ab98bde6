"""How grunet train scales over processes on one machine: samples/s of P processes x T threads each.

    python benchmarks/scaling.py [--steps-tutorial 600] [--steps-large 60] [--layouts 1x2,1x1,2x1]

Each case is a real ``grunet train`` run (``torchrun --nproc-per-node P -m grunet train`` for P > 1) on the
bundled mnist-sample data; samples/s is summary.json's: global batch x steps / seconds in training steps
(evaluation excluded, the per-step all-reduce of the loss window and stop requests included). The models:
the tutorial's (GRU(75), batch 50) and a larger one (GRU(256), batch 256). The all-reduce times are medians
over 2 processes of gloo on 127.0.0.1: one of each model's gradients (DistributedDataParallel's per-step
reduction, one bucket at these sizes) and the few numbers grunet adds per step.

Prints a Markdown table; the machine should be otherwise idle (every process competes for its cores).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = {"tutorial": (75, 50), "large": (256, 256)}  # name -> (units, global batch)
TIMEOUT_S = 1200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", f"--nproc-per-node={nproc}",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}"]


def samples_per_s(processes: int, threads: int, units: int, batch: int, steps: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        train = ["train", "--units", str(units), "--batch-size", str(batch), "--steps", str(steps),
                 "--eval-every", str(steps), "--threads", str(threads), "--progress", "lines", "--out", str(out)]
        launcher = torchrun(processes) + ["-m", "grunet"] if processes > 1 else [sys.executable, "-m", "grunet"]
        subprocess.run(launcher + train, check=True, capture_output=True, timeout=TIMEOUT_S)
        return json.loads((out / "summary.json").read_text())["samples_per_s"]


def parameters(units: int) -> int:
    """The tutorial classifier's parameters: reset-before GRU (one bias per gate) on 28 inputs, Dense(10)."""
    return 3 * (28 * units + units * units + units) + units * 10 + 10


def allreduce_ms() -> dict:
    """Run this file under torchrun in --allreduce mode; rank 0 prints the medians as JSON."""
    result = subprocess.run(torchrun(2) + [__file__, "--allreduce"], check=True, capture_output=True, text=True,
                            timeout=TIMEOUT_S, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(result.stdout.strip().splitlines()[-1])


def _allreduce_worker() -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    sizes = {f"gradients ({name}, {parameters(units):,} floats)": (parameters(units), torch.float32)
             for name, (units, _) in MODELS.items()}
    sizes["loss window + stop requests (5 doubles)"] = (5, torch.float64)
    medians = {}
    for name, (n, dtype) in sizes.items():
        t = torch.zeros(n, dtype=dtype)
        times = []
        for i in range(300):
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(t)
            if i >= 50:  # after warm-up
                times.append(time.perf_counter() - start)
        medians[name] = round(statistics.median(times) * 1e3, 3)
    if dist.get_rank() == 0:
        print(json.dumps(medians))
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps-tutorial", type=int, default=600)
    p.add_argument("--steps-large", type=int, default=60)
    p.add_argument("--layouts", default="1x2,1x1,2x1", help="processes x threads per process, comma list")
    p.add_argument("--allreduce", action="store_true", help=argparse.SUPPRESS)  # the torchrun worker mode
    args = p.parse_args()
    if args.allreduce:
        return _allreduce_worker()
    layouts = [tuple(int(v) for v in layout.split("x")) for layout in args.layouts.split(",")]
    steps = {"tutorial": args.steps_tutorial, "large": args.steps_large}
    print(f"| model | {' | '.join(f'{p} proc x {t} thr' for p, t in layouts)} | "
          f"{layouts[-1][0]}x{layouts[-1][1]} / 1x1 |")
    print("|---" * (len(layouts) + 2) + "|")
    for name, (units, batch) in MODELS.items():
        rates = {layout: samples_per_s(*layout, units, batch, steps[name]) for layout in layouts}
        base = rates.get((1, 1))
        ratio = f"{rates[layouts[-1]] / base:.2f}x" if base else "-"
        print(f"| {name}: GRU({units}), batch {batch} | "
              f"{' | '.join(f'{rates[layout]:,.0f} samples/s' for layout in layouts)} | {ratio} |", flush=True)
    print()
    print("| all-reduce over 2 processes (gloo, 127.0.0.1) | median ms |")
    print("|---|---|")
    for name, ms in allreduce_ms().items():
        print(f"| {name} | {ms} |")


if __name__ == "__main__":
    main()
