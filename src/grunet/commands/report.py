"""grunet report: one self-contained HTML page of a training run (curves, confusion matrix, gates, ...)."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by grunet train")
    p.add_argument("--out", metavar="FILE.html",
                   help="where to write the page (default RUN_DIR/report/index.html; the PNGs go beside it, "
                        "in FILE_files/ for a named file)")


def run(args: argparse.Namespace) -> int:
    from ..report import write_report

    path = write_report(args.run_dir, args.out)
    print(f"report: {path}")
    return 0
