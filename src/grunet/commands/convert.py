"""grunet convert IN OUT: convert a model between grunet, Keras and ONNX, formats chosen by file extension.

Reads:  .keras (Keras 3 archive), .h5 (full Keras model, Keras 2 or 3), .weights.h5 (with --architecture),
        .pt (a grunet checkpoint or run directory: grunet.checkpoint.load_model)
Writes: .pt (grunet checkpoint), .keras (Keras 3), .h5 (Keras 2 full model), .onnx
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..convert.onnx_export import OPSET, OPSET_MAX, OPSET_MIN
from ..errors import GrunetError, expect

READS = (".keras", ".weights.h5", ".h5", ".pt")
WRITES = (".pt", ".keras", ".h5", ".onnx")


def _format(path: str, choices: tuple[str, ...], what: str) -> str:
    name = Path(path).name.lower()
    for ext in choices:
        if name.endswith(ext):
            return ext
    if what == "IN" and Path(path).is_dir():
        return ".pt"  # a run directory holds best.pt / last.pt
    raise GrunetError(f"{what} {path}: expected a file ending in one of {list(choices)}, got {Path(path).suffix or 'no extension'!r}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", metavar="IN", help=f"model to read ({', '.join(READS)} or a run directory)")
    p.add_argument("output", metavar="OUT", help=f"file to write ({', '.join(WRITES)})")
    p.add_argument("--architecture", default=None, metavar="CONFIG",
                   help="Keras config.json or .keras file giving the architecture of a .weights.h5 input")
    p.add_argument("--keras-version", default=None, metavar="V",
                   help="Keras version that wrote IN ('2' or '3'): decides what hard_sigmoid means "
                        "(default: read from the file)")
    p.add_argument("--opset", type=int, default=OPSET,
                   help=f"ONNX opset when OUT is .onnx, {OPSET_MIN} to {OPSET_MAX} (default {OPSET})")


def load(path: str, architecture=None, keras_version=None):
    from ..checkpoint import load_model
    from ..convert import from_keras

    fmt = _format(path, READS, "IN")
    if fmt == ".pt":
        return load_model(path)[0]
    return from_keras(path, architecture=architecture, keras_version=keras_version)


def save(model, path: str, opset: int = OPSET) -> str:
    from ..checkpoint import save_checkpoint
    from ..convert import export_onnx, to_keras, to_keras_h5

    fmt = _format(path, WRITES, "OUT")
    if fmt == ".pt":
        view = "rows" if tuple(model.input_shape) in ((28, 28), (None, 28)) else "pixels"
        save_checkpoint(path, model, data={"view": view})
        return "grunet checkpoint"
    if fmt == ".keras":
        to_keras(model, path)
        return "Keras 3 archive"
    if fmt == ".h5":
        to_keras_h5(model, path)
        return "Keras 2 full-model HDF5"
    export_onnx(model, path, opset=opset)
    return "ONNX model"


def run(args: argparse.Namespace) -> int:
    if Path(args.output).resolve() == Path(args.input).resolve():
        raise GrunetError(f"OUT {args.output}: expected a path other than IN, got the same file")
    _format(args.output, WRITES, "OUT")  # fail before reading anything
    expect(OPSET_MIN <= args.opset <= OPSET_MAX, "--opset",
           f"an integer from {OPSET_MIN} to {OPSET_MAX} (the opsets the exporter supports)", args.opset)
    model = load(args.input, args.architecture, args.keras_version)
    kind = save(model, args.output, args.opset)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.output} ({kind}, {type(model).__name__}, {n:,} parameters, outputs {model.output_kind})")
    return 0
