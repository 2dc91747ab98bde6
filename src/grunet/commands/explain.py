"""grunet explain: the update and reset gates, state changes and running prediction of a GRU on one digit.

Any GRU classifier that grunet predict accepts: a trained SequenceClassifier or a converted Keras model.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from ..checkpoint import load_model
from ..data import CLASS_NAMES, DATASETS, load_split, to_sequences
from ..errors import GrunetError, require
from ..explain import DIRECTIONS, format_trace, gate_trace, legend, trace_dict


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="CHECKPOINT", help="a .pt checkpoint or a run directory (its best.pt)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--index", type=int, help="the N-th digit (0-based) of a dataset split")
    source.add_argument("--image", metavar="FILE", help="a PNG or JPEG digit image, prepared as grunet predict "
                        "prepares it (like MNIST: cropped to the ink, fitted to 20x20, centred by mass in 28x28)")
    p.add_argument("--split", choices=["test", "train"], default="test", help="with --index (default test)")
    p.add_argument("--dataset", choices=DATASETS, help="with --index; default the model's own")
    p.add_argument("--data-dir", help="directory with the dataset's IDX files")
    p.add_argument("--layer", type=int, help="GRU layer whose gates are shown, 0-based over all GRU layers of the "
                   "model, stacked or converted (default: the last)")
    p.add_argument("--direction", choices=DIRECTIONS, default="forward", help="bidirectional GRUs (default forward)")
    p.add_argument("--json", action="store_true", help="print the trace as JSON (the structure grunet serve's "
                   "/api/trace answers) instead of the table")
    p.add_argument("--png", metavar="FILE", help="also draw heatmaps of the gates beside the input into FILE "
                   "(needs matplotlib: pip install 'grunet[report]')")


def check_png(path: str) -> None:
    """Everything --png needs, checked before any work is done or printed: matplotlib and a writable place."""
    png = Path(path)
    if png.suffix.lower() != ".png":
        raise GrunetError(f"--png: expected a file name ending in .png, got {path}")
    if png.is_dir():
        raise GrunetError(f"--png: expected a file name, got {path}, which is a directory")
    parent = png.resolve().parent
    if not parent.is_dir():
        raise GrunetError(f"--png: expected a file in an existing directory, got {path}")
    if not os.access(parent, os.W_OK) or (png.exists() and not os.access(png, os.W_OK)):
        raise GrunetError(f"--png: expected a writable place for the file, got {path}, which cannot be written")
    require("matplotlib.figure", "draw the --png figure", "report")


def run(args: argparse.Namespace) -> int:
    if args.png:
        check_png(args.png)
    model, ckpt = load_model(args.model, impl="reference")  # the equations themselves; no kernel to build
    data = ckpt.get("data", {})
    view, seed = data.get("view") or "rows", data.get("permutation_seed", 0)
    if args.image:
        dataset = data.get("dataset") or "mnist"
        from ..images import load_digit

        image, label = np.array(load_digit(args.image)), None  # a writable copy
        source = f"image {args.image}"
    else:
        dataset = args.dataset or data.get("dataset") or "mnist-sample"
        images, labels = load_split(dataset, args.split, data_dir=args.data_dir)
        if not 0 <= args.index < len(images):
            raise GrunetError(f"--index: expected 0 <= N < {len(images):,} (the {dataset} {args.split} split's size), "
                              f"got {args.index}")
        image, label = images[args.index], int(labels[args.index])
        source = f"{dataset} {args.split} digit {args.index}, true class {label}"
    x = to_sequences(image[None], view, permutation_seed=seed)[0]
    trace = gate_trace(model, x, layer=args.layer, direction=args.direction)
    names = [str(c) for c in CLASS_NAMES.get(dataset, CLASS_NAMES["mnist"])]
    if args.json:
        print(json.dumps(trace_dict(trace, names)))
        return 0
    k = trace.prediction
    print(f"{source}; view {view}, {len(x)} steps")
    print(legend(trace))
    print()
    print(format_trace(trace, names))
    print()
    verdict = "" if label is None else ("  (correct)" if k == label else f"  (wrong: true class {label})")
    print(f"prediction: {k}{'' if names[k] == str(k) else f' ({names[k]})'} p={trace.probabilities[-1, k]:.4f}{verdict}")
    if args.png:
        from ..fileio import write_bytes
        from ..plots import explain_figure, png_bytes

        fig = explain_figure(trace, names, title=f"grunet explain: {source}",
                             image=image if view != "rows" else None, label=label)
        write_bytes(args.png, png_bytes(fig))
        print(f"heatmaps: {args.png}")
    return 0
