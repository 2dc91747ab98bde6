"""grunet eval: accuracy, per-class accuracy and the confusion matrix of a model on a dataset split."""
from __future__ import annotations

import argparse

import torch

from ..checkpoint import load_model, resolve
from ..data import CLASS_NAMES, DATASETS, VIEWS, load_split, to_sequences
from ..errors import GrunetError
from ..metrics import confusion_matrix


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="RUN_DIR|CHECKPOINT", help="a run directory (its best.pt) or a .pt checkpoint")
    p.add_argument("--dataset", choices=DATASETS, help="default: the dataset the model was trained on")
    p.add_argument("--split", choices=["test", "train"], default="test")
    p.add_argument("--data-dir", help="directory with the dataset's IDX files")
    p.add_argument("--view", choices=VIEWS, help="default: the model's own")
    p.add_argument("--batch-size", type=int, default=1000)
    p.description = ((p.description or "") + ". The first line names the checkpoint file scored and its training "
                     "step (a run directory's best.pt, else last.pt).")


def format_report(matrix: torch.Tensor, names: list[str]) -> str:
    total = int(matrix.sum())
    correct = int(matrix.diag().sum())
    lines = [f"accuracy: {correct / total:.4f} ({correct:,} of {total:,})", "", "per class:"]
    for i, name in enumerate(names):
        n = int(matrix[i].sum())
        lines.append(f"  {i} {name:<12} {int(matrix[i, i]) / n if n else float('nan'):.4f}  ({n:,})")
    lines += ["", "confusion matrix (rows: true class, columns: predicted):",
              "      " + "".join(f"{j:>6}" for j in range(len(names)))]
    lines += [f"{i:>6}" + "".join(f"{int(v):>6}" for v in row) for i, row in enumerate(matrix)]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise GrunetError(f"--batch-size: expected an integer >= 1, got {args.batch_size}")
    model, ckpt = load_model(args.model)
    data = ckpt.get("data", {})
    dataset = args.dataset or data.get("dataset") or "mnist-sample"
    view = args.view or data.get("view") or "rows"
    images, labels = load_split(dataset, args.split, data_dir=args.data_dir)
    x = to_sequences(images, view, permutation_seed=data.get("permutation_seed", 0))
    y = torch.as_tensor(labels)
    with torch.no_grad():
        predictions = torch.cat([model(x[i:i + args.batch_size]).argmax(1) for i in range(0, len(x), args.batch_size)])
    names = CLASS_NAMES[dataset]
    step = ckpt.get("progress", {}).get("step") if isinstance(ckpt.get("progress"), dict) else None
    print(f"checkpoint {resolve(args.model)}: " + (f"{step:,} training steps done" if isinstance(step, int)
                                                   else "no training step recorded (a converted model)"))
    print(f"{dataset} {args.split}, view {view}")
    print(format_report(confusion_matrix(y, predictions, len(names)), names))
    return 0
