"""The results table: finished grunet train runs grouped by recipe x dataset x view, with the final test
accuracy over their seeds (mean ± standard deviation, range), the parameters and the training time.

    python scripts/results.py runs/fashion-tuned-seed* runs/sample-tuned-seed* ...
    python scripts/results.py runs/fashion-pixels-tuned runs/fashion-permuted-tuned --curves docs/pixel-views.png

Reads each run directory's config.json and summary.json; prints a Markdown table. ``--curves PNG`` also draws
each run's test, validation and training-batch accuracy against its steps (metrics.csv), one line per run, in one figure.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path


def row_key(config: dict) -> tuple:
    return config.get("recipe", "tutorial"), config["dataset"], config["view"], config["steps"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--curves", metavar="PNG", help="also draw the runs' accuracy curves into PNG")
    args = p.parse_args()
    if args.curves:
        draw_curves([Path(r) for r in args.runs if (Path(r) / "metrics.csv").is_file()], Path(args.curves))
    groups: dict[tuple, list[dict]] = {}
    for run in map(Path, args.runs):
        if not (run / "summary.json").is_file():
            print(f"skipped {run}: no summary.json", file=sys.stderr)
            continue
        config = json.loads((run / "config.json").read_text())
        summary = json.loads((run / "summary.json").read_text())
        groups.setdefault(row_key(config), []).append(summary)
    print("| recipe | dataset | view | steps | seeds | final test accuracy: mean ± std (range) | "
          "best.pt's test accuracy | parameters | time per run |")
    print("|---|---|---|---:|---:|---|---:|---:|---:|")
    for (recipe, dataset, view, steps), runs in groups.items():
        final = [s["final_test_accuracy"] for s in runs]
        best = [s["best_test_accuracy"] for s in runs]
        std = statistics.stdev(final) if len(final) > 1 else 0.0
        print(f"| {recipe} | {dataset} | {view} | {steps:,} | {len(runs)} | {statistics.fmean(final):.4f} ± {std:.4f} "
              f"({min(final):.4f}–{max(final):.4f}) | {statistics.fmean(best):.4f} | {runs[0]['parameters']:,} | "
              f"{statistics.fmean(s['seconds'] for s in runs) / 60:.1f} min |")
    return 0


def draw_curves(runs: list[Path], png: Path) -> None:
    """Test (solid), validation (dotted) and training-batch (dashed) accuracy against steps, one colour per
    run: a training curve level with the test curve says the run underfits (more steps would help)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    for run, color in zip(runs, ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02")):
        config = json.loads((run / "config.json").read_text())
        with open(run / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        steps = [int(r["step"]) for r in rows]
        label = f"{config['dataset']} {config['view']} ({config.get('recipe', 'tutorial')}, seed {config['seed']})"
        ax.plot(steps, [float(r["test_accuracy"]) for r in rows], color=color, linewidth=1.8,
                label=f"{label}: test")
        ax.plot(steps, [float(r["train_accuracy"]) for r in rows], color=color, linewidth=1.0, linestyle="--",
                label=f"{label}: training batches")
        if rows and rows[0].get("val_accuracy"):
            ax.plot(steps, [float(r["val_accuracy"]) for r in rows], color=color, linewidth=1.2, linestyle=":",
                    label=f"{label}: validation")
    ax.set_xlabel("training step")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
