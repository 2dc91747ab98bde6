"""grunet predict: class and probabilities of PNG/JPEG digit images, prepared the way MNIST was made."""
from __future__ import annotations

import argparse

import numpy as np
import torch

from ..checkpoint import load_model
from ..data import CLASS_NAMES, to_sequences
from ..images import load_digit

IMAGE_HELP = "PNG or JPEG files (any size, either polarity, transparent or not)"
PREPARATION = ("Each image is prepared the way MNIST's digits were made: transparency composited over white "
               "(over black for light strokes), grayscale, dark ink on light paper inverted to bright on dark, "
               "cropped to the ink, thin strokes widened, fitted into a 20x20 box keeping the aspect ratio and "
               "centred by its centre of mass in 28x28.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="CHECKPOINT", help="a .pt checkpoint or a run directory")
    p.add_argument("images", metavar="IMAGE", nargs="+", help=IMAGE_HELP)
    p.description = (f"{p.description}. {PREPARATION}" if p.description else PREPARATION)


def run(args: argparse.Namespace) -> int:
    model, ckpt = load_model(args.model)
    data = ckpt.get("data", {})
    names = CLASS_NAMES[data.get("dataset") or "mnist"]
    images = np.stack([load_digit(path) for path in args.images])  # all are read before any is printed
    x = to_sequences(images, data.get("view") or "rows", permutation_seed=data.get("permutation_seed", 0))
    with torch.no_grad():
        probabilities = model.predict_proba(x)
    for path, p in zip(args.images, probabilities):
        k = int(p.argmax())
        print(f"{path}: {k} ({names[k]}) p={float(p[k]):.4f}  [" + " ".join(f"{float(v):.3f}" for v in p) + "]")
    return 0
