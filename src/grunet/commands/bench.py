"""grunet bench: time torch.nn.GRU, grunet's reference loop and its fused kernel in one process.

(a) the tutorial model's training step, (b) a sweep of forward+backward over batch x hidden x length,
(c) inference throughput on 10,000 sequences. Medians of --repeats after warm-up; ratios vs torch.nn.GRU.
The timing logic is in grunet.bench.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile

import torch

from .. import bench
from ..errors import expect


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=15, help="timed repeats per case; the median is reported")
    p.add_argument("--quick", action="store_true", help="a small sweep and fewer repeats")
    p.add_argument("--impls", default=",".join(bench.IMPLS), help="comma list of torch, reference, fused")
    p.add_argument("--skip", default="", help="comma list of parts to skip: train, sweep, inference")
    p.add_argument("--max-call-seconds", type=float, default=2.0,
                   help="sweep: skip an implementation whose single call takes longer (default 2)")
    p.add_argument("--results", default=None, metavar="PATH", help="also write the tables to this Markdown file")


def run(args: argparse.Namespace) -> int:
    impls = [i for i in args.impls.split(",") if i]
    for i in impls:
        expect(i in bench.IMPLS, "--impls", f"names from {list(bench.IMPLS)}", repr(i))
    expect("torch" in impls, "--impls", "to include torch (the baseline of every ratio)", args.impls)
    expect(args.repeats >= 1, "--repeats", "an integer >= 1", args.repeats)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = min(args.repeats, 5) if args.quick else args.repeats
    skip = set(args.skip.split(","))
    if "fused" in impls:  # build outside the timings, and say how long it took
        from ..kernels import cpu

        cpu.load()
        print(f"fused kernel loaded in {cpu.build.build_seconds:.1f} s")
    info = bench.machine()
    print("  ".join(f"{k}: {v}" for k, v in info.items()))
    keras = "keras: not installed, not timed"
    if importlib.util.find_spec("keras") is not None:
        try:
            import keras  # noqa: F401  (needs a backend: jax, tensorflow or torch)

            keras = "keras: importable, but its timing is not implemented in this version"
        except Exception as e:  # e.g. the default tensorflow backend is not installed
            keras = f"keras: installed but not importable ({type(e).__name__}: {e}), not timed"
    print(keras)
    sections = []
    if "train" not in skip:
        rows = [bench.training_step(repeats, impls)]
        sections.append(("Training step (forward + backward + Adam) of the tutorial model", rows))
        print(bench.table(rows, impls), flush=True)
    if "sweep" not in skip:
        rows = []
        for B, H, T in bench.sweep_shapes(args.quick):
            rows.append(bench.sweep_case(B, H, T, max(3, repeats // 3), impls, max_call_s=args.max_call_seconds))
            print(bench.table(rows[-1:], impls).splitlines()[-1], flush=True)
        sections.append(("Forward + backward of one GRU layer (I=28)", rows))
    if "inference" not in skip:
        rows = [bench.inference(repeats, impls)]
        sections.append(("Inference of the tutorial model (no grad)", rows))
        print(bench.table(rows, impls), flush=True)
    if args.results:
        text = ["# grunet benchmark results", "",
                "Written by `grunet bench`. Medians after warm-up; ratios are torch.nn.GRU time / other time "
                "(> 1 = faster than torch.nn.GRU), all measured in the same process on the same data.", ""]
        text += [f"- {k}: {v}" for k, v in info.items()] + [f"- {keras}", ""]
        for title, rows in sections:
            text += [f"## {title}", "", bench.table(rows, impls), ""]
        directory = os.path.dirname(os.path.abspath(args.results))
        os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=directory, delete=False, suffix=".tmp") as f:
            f.write("\n".join(text))
        os.replace(f.name, args.results)
        print(f"wrote {args.results}")
    return 0
