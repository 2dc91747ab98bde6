"""grunet bench: time torch.nn.GRU, grunet's reference loop and its fused kernel in one process.

(a) the tutorial model's training step, (b) a sweep of forward+backward over batch x hidden x length,
(c) inference throughput on 10,000 sequences; (a) and (c) also in Keras 3 when it is importable; (d) the
tutorial training step with each cell option (recurrent dropout, zoneout, layer norm fused vs the reference
loop vs a hand-written PyTorch loop). Medians of --repeats after warm-up; ratios vs torch.nn.GRU.
The timing logic is in grunet.bench.
"""
from __future__ import annotations

import argparse

import torch

from .. import bench
from ..fileio import write_text
from ..errors import expect


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=15, help="timed repeats per case; the median is reported")
    p.add_argument("--quick", action="store_true", help="a small sweep and fewer repeats")
    p.add_argument("--impls", default=None,
                   help="comma list of torch, reference, fused, auto, triton (default: torch,reference,fused on "
                        "cpu; torch,reference,auto,triton on cuda)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: where every case runs (the cells "
                   "and Keras parts are CPU only)")
    p.add_argument("--skip", default="", help="comma list of parts to skip: train, sweep, inference, cells, keras")
    p.add_argument("--adam", default="fused,default", metavar="LIST",
                   help="comma list of torch.optim.Adam implementations (default, foreach, fused) to time the "
                        "training step with, one row each, the same for every impl (default: fused, as grunet "
                        "train uses, then PyTorch's default); Keras is timed once")
    p.add_argument("--max-call-seconds", type=float, default=2.0,
                   help="sweep: skip an implementation whose single call takes longer (default 2)")
    p.add_argument("--results", default=None, metavar="PATH", help="also write the tables to this Markdown file")


def run(args: argparse.Namespace) -> int:
    cuda = args.device.startswith("cuda")
    expect(args.device == "cpu" or cuda, "--device", "'cpu' or 'cuda[:N]'", repr(args.device))
    expect(not cuda or torch.cuda.is_available(), "--device", "a visible CUDA device", "none (torch sees no GPU)")
    impls = [i for i in (args.impls or ",".join(bench.CUDA_IMPLS if cuda else bench.IMPLS)).split(",") if i]
    for i in impls:
        expect(i in bench.KNOWN_IMPLS, "--impls", f"names from {list(bench.KNOWN_IMPLS)}", repr(i))
    expect("torch" in impls, "--impls", "to include torch (the baseline of every ratio)", args.impls)
    expect(args.repeats >= 1, "--repeats", "an integer >= 1", args.repeats)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = min(args.repeats, 5) if args.quick else args.repeats
    skip = set(args.skip.split(",")) | ({"cells", "keras"} if cuda else set())
    bench.set_device(args.device)
    adams = [a for a in args.adam.split(",") if a]
    for a in adams:
        expect(a in bench.ADAM_OPTIONS, "--adam", f"names from {list(bench.ADAM_OPTIONS)}", repr(a))
    expect(len(adams) > 0, "--adam", "at least one Adam implementation", repr(args.adam))
    if "fused" in impls and not cuda:  # build outside the timings, and say how long it took
        from ..kernels import cpu

        cpu.load()
        print(f"fused kernel loaded in {cpu.build.build_seconds:.1f} s")
    info = bench.machine()
    if cuda:
        info["device"] = torch.cuda.get_device_name(torch.device(args.device))
    info["optimizer"] = ", ".join("torch.optim.Adam" + ("" if a == "default" else f"({a}=True)") for a in adams) + \
        " (training step; the row names say which)"
    print("  ".join(f"{k}: {v}" for k, v in info.items()))
    use_keras = "keras" not in skip
    keras = bench.load_keras()[1] if use_keras else "keras: skipped (--skip keras)"
    print(keras)
    sections = []
    keras_rows: list = []
    if "train" not in skip:
        rows = [bench.training_step(repeats, impls, keras=use_keras and i == 0, adam=a) for i, a in enumerate(adams)]
        sections.append(("Training step (forward + backward + Adam) of the tutorial model", rows))
        print(bench.table(rows, impls), flush=True)
        keras_rows += rows
    if "sweep" not in skip:
        rows = []
        for B, H, T in bench.sweep_shapes(args.quick):
            rows.append(bench.sweep_case(B, H, T, max(3, repeats // 3), impls, max_call_s=args.max_call_seconds))
            print(bench.table(rows[-1:], impls).splitlines()[-1], flush=True)
        sections.append(("Forward + backward of one GRU layer (I=28)", rows))
    if "inference" not in skip:
        rows = [bench.inference(repeats, impls, keras=use_keras)]
        sections.append(("Inference of the tutorial model (no grad)", rows))
        print(bench.table(rows, impls), flush=True)
        keras_rows += rows
    if any("keras" in r.ms for r in keras_rows):
        print(bench.keras_table(keras_rows), flush=True)
    cells = None
    if "cells" not in skip and "fused" in impls:
        cells = bench.cells_table(bench.cells_training_step(repeats))
        print(cells, flush=True)
    if args.results:
        text = ["# grunet benchmark results", "",
                "Written by `grunet bench`. Medians after warm-up; ratios are torch.nn.GRU time / other time "
                "(> 1 = faster than torch.nn.GRU), all measured in the same process on the same data.", ""]
        text += [f"- {k}: {v}" for k, v in info.items()] + [f"- {keras}", ""]
        for title, rows in sections:
            text += [f"## {title}", "", bench.table(rows, impls), ""]
        if any("keras" in r.ms for r in keras_rows):
            text += ["## Against Keras 3 (ratio = Keras time / other time, > 1 = faster than Keras)", "",
                     bench.keras_table(keras_rows), ""]
        if cells:
            text += ["## Cell options: training step of the tutorial model", "", cells, ""]
        write_text(args.results, "\n".join(text))
        print(f"wrote {args.results}")
    return 0
