"""The ablation of grunet train's tuned recipe: the tuned recipe, the tuned recipe without each of its
components (one at a time, the rest kept), and the tutorial recipe, each over several seeds; then a Markdown
table of the final test accuracies (mean, standard deviation and range over the seeds), their difference to
the full tuned recipe, and the training time.

    python scripts/ablation.py --dataset fashion-mnist --steps 6000 --seeds 0 1 --out runs/ablation
    python scripts/ablation.py --out runs/ablation --table        # the table of the runs done so far
    python scripts/ablation.py --seeds 0 1 --threads 1 --parallel 2 --base=--lr-schedule=cosine,--warmup-steps=500 \
        --out runs/ablation-cosine                                  # around another base recipe

Each run is a plain ``grunet train`` in OUT/<variant>-seed<N>; a run whose summary.json exists is kept, so a
stopped ablation goes on where it was. ``--steps`` gives every variant the same reduced budget (the tuned
recipe's own length, 55,000 steps, is 6-7 minutes on 2 cores); the tutorial variant keeps the tutorial's
batch of 50, so at the same steps it sees fewer samples: it is the tutorial recipe as published, cut to the
budget.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# variant -> (what it changes, the options it adds to ``grunet train --recipe tuned``)
VARIANTS = {
    "tuned": ("the tuned recipe", []),
    "no-schedule": ("constant lr, no warm-up", ["--lr-schedule", "constant", "--warmup-steps", "0"]),
    "cosine": ("500 warm-up steps, cosine decay", ["--lr-schedule", "cosine", "--warmup-steps", "500"]),
    "no-clip": ("no gradient clipping", ["--clip-norm", "0"]),
    "no-shuffle": ("consecutive slices, no shuffling", []),  # --shuffle has no off switch: set in the file
    "no-shift": ("no shift augmentation", ["--shift", "0"]),
    "no-smoothing": ("no label smoothing", ["--label-smoothing", "0"]),
    "no-ema": ("no weight averaging", ["--ema", "0"]),
    "no-cell-options": ("plain GRU cell (no layer norm, dropout, zoneout)", []),
    "no-clip-shuffle": ("neither clipping nor shuffling", ["--clip-norm", "0"]),
    "no-clip-shuffle-ema": ("none of clipping, shuffling and EMA", ["--clip-norm", "0", "--ema", "0"]),
    "tutorial": ("the tutorial recipe (batch 50, Adam 1e-3, test-set selection)", []),
}


def command(variant: str, args, out: Path) -> list[str]:
    base = [sys.executable, "-m", "grunet", "train", "--dataset", args.dataset, "--view", args.view,
            "--out", str(out), "--progress", "lines", "--seed", str(out.name.rsplit("seed", 1)[1])]
    if args.threads:
        base += ["--threads", str(args.threads)]
    if args.steps:
        base += ["--steps", str(args.steps)]
    if variant == "tutorial":
        return base + ["--recipe", "tutorial", *(["--eval-every", str(args.eval_every)] if args.eval_every else [])]
    base += ["--recipe", "tuned", *(["--eval-every", str(args.eval_every)] if args.eval_every else [])]
    base += args.base  # the base recipe's changes; a variant's own options come after them and win
    if variant in OFF_IN_FILE:
        base += ["--config", str(_off_file(variant, out.parent))]
    return base + VARIANTS[variant][1]


# options without an off switch on the command line (flags), turned off through a --config file
OFF_IN_FILE = {
    "no-shuffle": {"shuffle": False},
    "no-clip-shuffle": {"shuffle": False},
    "no-clip-shuffle-ema": {"shuffle": False},
    "no-cell-options": {"layer_norm": False, "recurrent_dropout": 0.0, "input_dropout": 0.0, "weight_dropout": 0.0,
                        "zoneout": 0.0},
}


def _off_file(variant: str, root: Path) -> Path:
    path = root / f"{variant}.json"
    path.write_text(json.dumps(OFF_IN_FILE[variant]))
    return path


def train(variant: str, seed: int, args) -> Path:
    out = Path(args.out) / f"{variant}-seed{seed}"
    if (out / "summary.json").is_file():
        return out
    log = Path(args.out) / f"{variant}-seed{seed}.log"
    resume = out / "config.json"
    cmd = ([sys.executable, "-m", "grunet", "train", "--resume", str(out), "--progress", "lines"]
           if resume.is_file() else command(variant, args, out))
    with open(log, "a") as f:
        subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False, env={**os.environ})
    return out


def summaries(root: Path) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for path in sorted(root.glob("*-seed*/summary.json")):
        variant = path.parent.name.rsplit("-seed", 1)[0]
        found.setdefault(variant, []).append(json.loads(path.read_text()))
    return found


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4f} ± {std:.4f} ({min(values):.4f}–{max(values):.4f})"


def table(root: Path) -> str:
    found = summaries(root)
    if "tuned" not in found:
        return "no finished tuned runs yet"
    reference = statistics.fmean(s["final_test_accuracy"] for s in found["tuned"])
    lines = ["| variant | change | seeds | final test accuracy: mean ± std (range) | vs tuned | time per run |",
             "|---|---|---:|---|---:|---:|"]
    for variant, (words, _) in VARIANTS.items():
        runs = found.get(variant)
        if not runs:
            continue
        accuracies = [s["final_test_accuracy"] for s in runs]
        delta = statistics.fmean(accuracies) - reference
        seconds = statistics.fmean(s["seconds"] for s in runs)
        lines.append(f"| {variant} | {words} | {len(runs)} | {spread(accuracies)} | "
                     f"{'' if variant == 'tuned' else f'{delta:+.4f}'} | {seconds:.0f} s |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--view", default="rows")
    p.add_argument("--steps", type=int, help="every variant's steps (default: each recipe's own)")
    p.add_argument("--eval-every", type=int, help="evaluation interval (default: each recipe's own)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--threads", type=int, help="torch threads per run")
    p.add_argument("--base", type=lambda text: [a for a in text.split(",") if a], default=[],
                   help="grunet train options (comma-separated) added to every tuned variant: another base recipe")
    p.add_argument("--parallel", type=int, default=1, help="runs at once (each with --threads)")
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--table", action="store_true", help="only print the table of the runs done")
    args = p.parse_args()
    root = Path(args.out)
    if not args.table:
        root.mkdir(parents=True, exist_ok=True)
        jobs = [(v, s) for s in args.seeds for v in args.variants]
        with ThreadPoolExecutor(args.parallel) as pool:
            list(pool.map(lambda job: train(*job, args), jobs))
    print(table(root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
