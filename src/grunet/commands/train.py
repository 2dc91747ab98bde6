"""grunet train: the tutorial's experiment (defaults = the recipe), a run directory, resume."""
from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import fields
from pathlib import Path

from ..data import DATASETS, VIEWS
from ..errors import GrunetError
from ..model import CELLS
from ..train import MAX_STEPS, TrainConfig, config_differences, read_config
from ..train import run as train_run

DEFAULTS = TrainConfig()


def add_arguments(p: argparse.ArgumentParser) -> None:
    # every default is None here so that the options a user typed can be told from the recipe's defaults
    d = DEFAULTS
    p.add_argument("--dataset", choices=DATASETS, help=f"default {d.dataset} (bundled, works offline)")
    p.add_argument("--data-dir", help="directory with the dataset's IDX files (.gz or raw)")
    p.add_argument("--cache-dir", help="download cache (default $GRUNET_DATA or ~/.cache/grunet)")
    p.add_argument("--view", choices=VIEWS, help=f"how an image becomes a sequence (default {d.view}: 28 steps x 28)")
    p.add_argument("--permutation-seed", type=int, help="seed of the fixed pixel order of --view permuted")
    p.add_argument("--units", type=int, help=f"recurrent units (default {d.units})")
    p.add_argument("--layers", type=int, help=f"stacked recurrent layers (default {d.layers})")
    p.add_argument("--bidirectional", action="store_true", default=None)
    variant = p.add_mutually_exclusive_group()
    variant.add_argument("--reset-before", dest="reset_after", action="store_false", default=None,
                         help="original Keras GRU, one bias per gate (default, as in the tutorial)")
    variant.add_argument("--reset-after", dest="reset_after", action="store_true", default=None,
                         help="cuDNN / PyTorch / Keras >= 2.4 GRU")
    p.add_argument("--recurrent-activation", choices=["sigmoid", "hard_sigmoid_keras2", "hard_sigmoid_keras3"])
    p.add_argument("--layer-norm", action="store_true", default=None,
                   help="layer-normalised GRU: W_ih x and W_hh h normalised, each with its own gain (needs --reset-after)")
    p.add_argument("--recurrent-dropout", type=float, metavar="P",
                   help="Keras's recurrent dropout: one mask per sequence on h where it enters W_hh (default 0)")
    p.add_argument("--input-dropout", type=float, metavar="P",
                   help="Keras's dropout: one mask per sequence on the input features (default 0)")
    p.add_argument("--weight-dropout", type=float, metavar="P",
                   help="DropConnect on W_hh, one mask per batch (default 0)")
    p.add_argument("--zoneout", type=float, metavar="P",
                   help="zoneout: each unit keeps its old state with probability P at each step (default 0)")
    p.add_argument("--cell", choices=CELLS, help="gru (default) or lstm (torch.nn.LSTM, the baseline)")
    p.add_argument("--init", choices=["keras", "torch"], help="weight initialisation (default keras)")
    p.add_argument("--impl", choices=["auto", "reference", "fused", "torch"],
                   help="GRU implementation (default auto); torch = torch.nn.GRU as a baseline (needs --reset-after)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help=f"training steps (default {d.steps:,})")
    length.add_argument("--epochs", type=float, help="training length in passes over the training set")
    p.add_argument("--batch-size", type=int, help=f"default {d.batch_size}")
    p.add_argument("--lr", type=float, help=f"Adam learning rate (default {d.lr})")
    p.add_argument("--shuffle", action="store_true", default=None,
                   help="new order at each pass (default: consecutive slices, as the tutorial)")
    p.add_argument("--eval-every", type=int, help=f"evaluate the test set every N steps (default {d.eval_every})")
    p.add_argument("--seed", type=int, help=f"default {d.seed}")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--device", help="cpu (default) or cuda")
    p.add_argument("--out", help="run directory (default runs/<date>-<dataset>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR (optionally with a new --steps)")
    p.add_argument("--report", action="store_true", help="write the HTML report (grunet report) at the end")
    p.add_argument("--progress", choices=["auto", "bar", "lines"], default="auto",
                   help="a progress bar on a terminal, plain lines otherwise (default auto)")


def asked_settings(args: argparse.Namespace) -> dict:
    """The TrainConfig fields given on the command line (None = not given)."""
    names = {f.name for f in fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def run(args: argparse.Namespace) -> int:
    asked = asked_settings(args)
    if args.cache_dir:
        os.environ["GRUNET_DATA"] = args.cache_dir
    if args.resume:
        out = Path(args.resume)
        if args.out and Path(args.out).resolve() != out.resolve():
            raise GrunetError(f"--out: expected nothing or the --resume directory {out}, got {args.out}")
        if not (out / "config.json").is_file():
            raise GrunetError(f"--resume: expected a run directory holding config.json, got {out}")
        config = read_config(out)
        new_steps = asked.pop("steps", None)
        if args.epochs is not None:
            raise GrunetError("--epochs: expected --steps N to extend a resumed run, got --epochs")
        differences = config_differences(config, asked)
        if differences:
            raise GrunetError("--resume: options differ from the run's config.json: " + "; ".join(differences)
                              + " (only --steps may change)")
        if new_steps is not None:  # the trainer checks it against the steps done, then records it
            config.steps = new_steps
    else:
        config = TrainConfig(**asked).validate()  # every option in range before anything is read or made
        if args.epochs is not None:
            from ..data import load_split

            if not (math.isfinite(args.epochs) and args.epochs > 0):
                raise GrunetError(f"--epochs: expected a finite number > 0, got {args.epochs}")
            n = len(load_split(config.dataset, "train", data_dir=config.data_dir)[1])
            steps = round(args.epochs * (n // config.batch_size))
            if steps > MAX_STEPS:
                raise GrunetError(f"--epochs: expected at most {MAX_STEPS:,} steps' worth, got {args.epochs} "
                                  f"({steps:.3g} steps of {config.batch_size})")
            config.steps = max(1, steps)
        out = Path(args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{config.dataset}")
    progress = {"auto": None, "bar": True, "lines": False}[args.progress]
    result = train_run(config, out, resume=bool(args.resume), progress=progress)
    if result.exit_code == 0 and args.report:
        from ..report import write_report

        print(f"report: {write_report(out)}")
    return result.exit_code
