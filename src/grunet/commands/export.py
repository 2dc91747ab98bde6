"""grunet export CHECKPOINT OUT.onnx: a trained or converted model as an ONNX graph (GRU operator)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..convert.onnx_export import OPSET, OPSET_MAX, OPSET_MIN, check_opset
from ..errors import expect


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="grunet checkpoint (.pt) or run directory")
    p.add_argument("output", metavar="OUT", help="ONNX file to write (.onnx)")
    p.add_argument("--opset", type=int, default=OPSET,
                   help=f"ONNX opset, {OPSET_MIN} to {OPSET_MAX} (default {OPSET})")


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_model
    from ..convert import export_onnx

    expect(Path(args.output).suffix.lower() == ".onnx", "OUT", "a path ending in .onnx", repr(args.output))
    expect(OPSET_MIN <= args.opset <= OPSET_MAX, "--opset",
           f"an integer from {OPSET_MIN} to {OPSET_MAX} (the opsets the exporter supports)", args.opset)
    check_opset(args.opset)
    model, _ = load_model(args.checkpoint)
    export_onnx(model, args.output, opset=args.opset)
    print(f"wrote {args.output} (ONNX opset {args.opset}, input (batch, time, {model.input_shape[1]}), "
          f"outputs {model.output_kind})")
    return 0
