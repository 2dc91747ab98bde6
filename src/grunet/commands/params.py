"""grunet params: the parameter count of a GRU (and Dense head), gate by gate, with the formula."""
from __future__ import annotations

import argparse
import math

from ..contract import PROBABILITIES
from ..errors import GrunetError, expect
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
    p.add_argument("--layer-norm", action="store_true",
                   help="layer-normalised GRU: adds its two gains of 3U per layer and direction (needs --reset-after)")
    for option in PROBABILITIES:  # grunet train's flags, so that its command line can be pasted here
        p.add_argument("--" + option.replace("_", "-"), type=float, default=0.0, metavar="P",
                       help="accepted as grunet train takes it; adds no parameters")


def run(args: argparse.Namespace) -> int:
    if args.layer_norm and not args.reset_after:
        raise GrunetError("--layer-norm: expected --reset-after (the layer-normalised GRU is reset-after only), "
                          "got --reset-before (the default)")
    for option in PROBABILITIES:
        p = getattr(args, option)
        expect(math.isfinite(p) and 0 <= p < 1, "--" + option.replace("_", "-"), "a number in [0, 1)", p)
    counts = count_params(args.input, args.units, reset_after=args.reset_after, num_layers=args.layers,
                          bidirectional=args.bidirectional, dense=args.dense, layer_norm=args.layer_norm)
    print(counts.table())
    options = [option for option in PROBABILITIES if getattr(args, option)]
    if options:
        print(f"{', '.join(options)}: no parameters")
    return 0
