"""grunet predict: class and probabilities of PNG/JPEG digit images."""
from __future__ import annotations

import argparse

import numpy as np
import torch

from ..checkpoint import load_model
from ..data import CLASS_NAMES, to_sequences
from ..images import load_digit


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="CHECKPOINT", help="a .pt checkpoint or a run directory")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="PNG or JPEG files")


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
