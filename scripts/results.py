"""The results table: finished grunet train runs grouped by recipe x dataset x view, with the final test
accuracy over their seeds (mean ± standard deviation, range), the parameters and the training time.

    python scripts/results.py runs/fashion-tuned-seed* runs/sample-tuned-seed* ...

Reads each run directory's config.json and summary.json; prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def row_key(config: dict) -> tuple:
    return config.get("recipe", "tutorial"), config["dataset"], config["view"], config["steps"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories")
    args = p.parse_args()
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


if __name__ == "__main__":
    sys.exit(main())
