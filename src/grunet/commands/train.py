"""grunet train: the tutorial's experiment (defaults = the recipe), a run directory, resume.

Under torchrun (``torchrun --nproc-per-node N -m grunet train ...``) each process joins the run's group
(grunet.distributed); ``--nproc N`` starts torchrun on this machine with the same arguments. A process
group that torchrun restarts (``--max-restarts``) after a failure resumes the run in --out from its last.pt.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

from ..data import DATASETS, VIEWS
from ..distributed import DEFAULT_TIMEOUT_S, SINGLE, Group, SharedError, launched_by_torchrun, process_group
from ..errors import GrunetError, expect
from ..model import CELLS
from ..train import MAX_STEPS, TrainConfig, check_batch_split, config_differences, read_config
from ..train import run as train_run
from ..recipes import RECIPES
from ..schedule import LR_SCHEDULES

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
    p.add_argument("--impl", choices=["auto", "reference", "fused", "triton", "torch"],
                   help="GRU implementation (default auto); torch = torch.nn.GRU as a baseline (needs --reset-after)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help=f"training steps (default {d.steps:,})")
    length.add_argument("--epochs", type=float, help="training length in passes over the training set")
    p.add_argument("--batch-size", type=int, help=f"default {d.batch_size}")
    p.add_argument("--lr", type=float, help=f"Adam learning rate (default {d.lr})")
    p.add_argument("--shuffle", action="store_true", default=None,
                   help="new order at each pass (default: consecutive slices, as the tutorial)")
    p.add_argument("--eval-every", type=int, help=f"evaluate the test set every N steps (default {d.eval_every})")
    p.add_argument("--recipe", choices=list(RECIPES),
                   help="tutorial (default: the tutorial's settings) or tuned (defaults chosen for accuracy; "
                        "the options below and --config override them)")
    p.add_argument("--config", metavar="FILE",
                   help="train options from a TOML or JSON file by their long names (lr = 0.003); the command "
                        "line overrides it")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES,
                   help="learning rate after the warm-up: constant (default), cosine or onecycle decay")
    p.add_argument("--warmup-steps", type=int, metavar="N", help="linear learning-rate warm-up (default 0)")
    p.add_argument("--clip-norm", type=float, metavar="C", help="clip the gradients' global norm to C (default 0: off)")
    p.add_argument("--shift", type=int, metavar="N",
                   help="augmentation: move each training image by up to N pixels in x and y (default 0)")
    p.add_argument("--label-smoothing", type=float, metavar="E", help="cross-entropy label smoothing (default 0)")
    p.add_argument("--ema", type=float, metavar="DECAY",
                   help="evaluate and save an exponential moving average of the weights (default 0: off)")
    p.add_argument("--validation", type=int, metavar="N",
                   help="hold out the last N training images; best.pt and --early-stop choose on them (default 0: "
                        "on the test set, as the tutorial)")
    p.add_argument("--early-stop", type=int, metavar="K",
                   help="stop after K evaluations without a better validation accuracy (default 0: never)")
    p.add_argument("--seed", type=int, help=f"default {d.seed}")
    p.add_argument("--threads", type=int,
                   help="torch threads per process (default: torch's choice; under torchrun cores / local processes)")
    p.add_argument("--nproc", type=int, metavar="N",
                   help="train with N processes on this machine: starts torchrun with the other arguments")
    p.add_argument("--dist-timeout", type=float, metavar="S", default=DEFAULT_TIMEOUT_S,
                   help=f"under torchrun: seconds a process waits for the others before the run stops "
                        f"(default {DEFAULT_TIMEOUT_S})")
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
    if args.nproc is not None:
        return launch(args)
    if args.cache_dir:  # every process reads the data set
        os.environ["GRUNET_DATA"] = args.cache_dir
    with process_group(_device_of(args), args.dist_timeout) as group:
        try:
            config, out, resume = group.from_main(lambda: _settings(args, group))
            progress = {"auto": None, "bar": True, "lines": False}[args.progress]
            result = train_run(config, out, resume=resume, progress=progress, group=group)
            if result.exit_code == 0 and args.report and group.is_main:
                from ..report import write_report

                print(f"report: {write_report(out)}")
            return result.exit_code
        except SharedError:
            if group.is_main:
                raise
            return 2  # rank 0 says it: one line for the run, not one per process


def _settings(args: argparse.Namespace, group: Group) -> tuple:
    """(config, run directory, resume?) from the command line and, when resuming, the run's config.json."""
    asked = asked_settings(args)
    if args.config is not None:
        if args.resume:
            raise GrunetError(f"--config: expected no --config with --resume (the run's config.json holds its "
                              f"settings), got --config {args.config}")
        from ..config_file import read_settings

        # the file's settings, then the command line's on top
        asked = {**read_settings(args.config), **asked}
    resume_dir = args.resume
    if not resume_dir and group.restart_count and args.out and (Path(args.out) / "config.json").is_file():
        # torchrun restarted the group after a failure: go on from the run's last.pt
        resume_dir = args.out
        print(f"torchrun restart {group.restart_count}: resuming {args.out}")
    if resume_dir:
        out = Path(resume_dir)
        if args.out and Path(args.out).resolve() != out.resolve():
            raise GrunetError(f"--out: expected nothing or the --resume directory {out}, got {args.out}")
        if not (out / "config.json").is_file():
            raise GrunetError(f"--resume: expected a run directory holding config.json, got {out}")
        config = read_config(out)
        new_steps = asked.pop("steps", None)
        new_device = asked.pop("device", None)  # a run may go on on another device (the checkpoint is on CPU)
        if args.epochs is not None:
            if args.resume:
                raise GrunetError("--epochs: expected --steps N to extend a resumed run, got --epochs")
            new_steps = _steps_of_epochs(config, args.epochs)
        differences = config_differences(config, asked)
        if differences:
            raise GrunetError("--resume: options differ from the run's config.json: " + "; ".join(differences)
                              + " (only --steps and --device may change)")
        if new_steps is not None:  # the trainer checks it against the steps done, then records it
            config.steps = new_steps
        if new_device is not None:
            config.device = new_device
            config.validate()
        return config, out, True
    from ..recipes import settings

    recipe = asked.get("recipe", DEFAULTS.recipe)
    # every option in range before anything is read or made
    config = TrainConfig(**settings(recipe, asked, DEFAULTS.to_dict())).validate()
    if args.epochs is not None:
        config.steps = _steps_of_epochs(config, args.epochs)
    return config, Path(args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{config.dataset}"), False


def _steps_of_epochs(config: TrainConfig, epochs: float) -> int:
    from ..data import load_split

    if not (math.isfinite(epochs) and epochs > 0):
        raise GrunetError(f"--epochs: expected a finite number > 0, got {epochs}")
    n = len(load_split(config.dataset, "train", data_dir=config.data_dir)[1]) - config.validation  # held out
    steps = round(epochs * (n // config.batch_size))
    if steps > MAX_STEPS:
        raise GrunetError(f"--epochs: expected at most {MAX_STEPS:,} steps' worth, got {epochs} "
                          f"({steps:.3g} steps of {config.batch_size})")
    return max(1, steps)


def _device_of(args: argparse.Namespace) -> str:
    """The device that chooses the group's backend (nccl for CUDA, gloo otherwise) before the settings are
    shared: the command line's, else the resumed run's, else cpu."""
    if args.device:
        return args.device
    run_dir = args.resume or args.out
    try:
        return str(json.loads((Path(run_dir) / "config.json").read_text()).get("device", "cpu"))
    except (TypeError, OSError, ValueError, AttributeError):
        return "cpu"


def launch(args: argparse.Namespace) -> int:
    """``grunet train --nproc N ...``: torchrun on this machine (a free port of its own) with N processes of
    ``grunet train ...`` (the same arguments but --nproc); its exit status is the command's."""
    expect(not launched_by_torchrun(), "--nproc", "a command started outside torchrun (torchrun chooses the "
           "processes itself)", f"--nproc {args.nproc} under torchrun")
    expect(1 <= args.nproc <= 1024, "--nproc", "a number of processes from 1 to 1024", args.nproc)
    # every option checked here, once, before torchrun starts: a bad one is one line, not one per process
    config, _, _ = _settings(args, SINGLE)
    check_batch_split(config.batch_size, args.nproc)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
               "-m", "grunet", "train", *_without_nproc(args._argv)]
    child = subprocess.Popen(command)
    forwarded = []

    def forward(signum, frame) -> None:
        forwarded.append(signum)
        child.send_signal(signum)

    # Ctrl-C reaches torchrun and its processes from the terminal itself; a SIGTERM sent to this command
    # is passed on, and torchrun passes it to every process, which stops after its step with last.pt
    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
                signal.SIGTERM: signal.signal(signal.SIGTERM, forward)}
    try:
        code = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    # torchrun says 1 for any failed process; a stop is 128 + the signal, as for one process
    return 128 + forwarded[0] if code and forwarded else code


def _without_nproc(argv: list[str]) -> list[str]:
    """The arguments after ``train`` with ``--nproc N`` (or ``--nproc=N``) left out."""
    argv = list(argv)
    argv = argv[argv.index("train") + 1:] if "train" in argv else argv
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            kept.append(a)
    return kept
