"""grunet params: the parameter count of a GRU (and Dense head), gate by gate, with the formula."""
from __future__ import annotations

import argparse

from ..params import count_params


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", type=int, default=28, help="input features per step (default 28: one MNIST row)")
    p.add_argument("--units", type=int, default=75, help="GRU units (default 75)")
    variant = p.add_mutually_exclusive_group()
    variant.add_argument("--reset-before", dest="reset_after", action="store_false",
                         help="original Keras GRU: reset gate before the recurrent matmul, one bias per gate "
                              "(default, as grunet train's model, the tutorial's)")
    variant.add_argument("--reset-after", dest="reset_after", action="store_true",
                         help="cuDNN / PyTorch / Keras >= 2.4 GRU, two biases per gate")
    p.set_defaults(reset_after=False)  # what grunet train builds unless told --reset-after
    p.add_argument("--layers", type=int, default=1, help="stacked GRU layers (default 1)")
    p.add_argument("--bidirectional", action="store_true")
    p.add_argument("--dense", type=int, default=None, metavar="N", help="add a Dense(N) head on the last output")


def run(args: argparse.Namespace) -> int:
    counts = count_params(args.input, args.units, reset_after=args.reset_after, num_layers=args.layers,
                          bidirectional=args.bidirectional, dense=args.dense)
    print(counts.table())
    return 0
