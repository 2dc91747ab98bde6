"""The training loop of the tutorial experiment: recipe, evaluation, run directory, checkpoints, resume.

The seed recipe: digits read row by row (28 steps of 28 pixels / 255), GRU(75, Keras init)
-> Dense(10) -> softmax, categorical cross-entropy, Adam lr 1e-3, batches of 50 taken as consecutive
slices of the training set (back to 0 when the next slice would run past the end), 50,000 steps, and
after step i (0-based) with i % 100 == 0 the whole test set is evaluated and ``accuracy: 0.xxxx`` printed.

Run directory: config.json (every setting), metrics.csv (step, loss, train_accuracy, test_accuracy,
elapsed_s; loss and train accuracy are the means over the steps since the previous evaluation),
last.pt and best.pt (atomic; model, optimizer, RNG states, data position, step, metrics so far) and
summary.json at the end. The last step is always evaluated: its row ends metrics.csv and competes for
best.pt, so "final" and "best" in summary.json are rows of metrics.csv. A run stopped by Ctrl-C / SIGTERM
(even before its first step) saves last.pt after the step in flight; resuming it gives the same metrics.csv
(but elapsed_s) and the same weights as a run that was never stopped.

Under torchrun (grunet.distributed) N processes train one run: ``--batch-size`` stays the global batch, each
rank takes its contiguous share of every batch in the one-process order, DistributedDataParallel averages the
gradients (so the update is the one-process update), the test set is shared out, and rank 0 alone writes and
prints. One all-reduce of a few numbers per step carries the loss window and the stop requests: a signal to
any rank stops every rank after the same step. A checkpoint holds no trace of the number of processes (the
data position and RNG states are global, the same on every rank), so a run resumes on any number.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import random
import signal
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import numpy as np
import torch
from torch import nn

from . import __version__
from .checkpoint import architecture_of, check_state_dict, load_checkpoint, save_checkpoint
from .config import from_dict as config_from_dict
from .contract import PROBABILITIES, BatchRows, global_batch
from .data import DATASETS, VIEWS, load_split, to_sequences
from .augment import draw_shifts, shift_sequences
from .distributed import SINGLE, Group, GroupLost, run_device, threads_per_rank
from .ema import WeightAverage
from .errors import GrunetError, expect
from .fileio import write_json, write_text
from .memory import expect_fits
from .model import CELLS, MAX_LAYERS, ModelConfig, SequenceClassifier
from .progress import Progress
from .schedule import LR_SCHEDULES, LearningRate
from .run_dir import RunLock, check_new, check_writable, make_new
from .train_state import METRICS_FIELDS, Batches, check_progress, plain_rng_states, set_rng_states

CONFIG_VERSION = 1
CELL_OPTIONS = ("layer_norm", *PROBABILITIES)
TRAIN_IMPLS = ("auto", "reference", "fused", "triton", "torch")  # "torch": torch.nn.GRU, the baseline
MAX_SEED = 2**32 - 1  # NumPy's RandomState (the permutation, np.random) takes seeds below 2**32
MAX_STEPS = 10**12  # years of training at any speed; a bound that keeps every count in int64
MAX_THREADS = 4096
MAX_LR = 10.0  # Adam steps of size lr: beyond this every weight is noise after one step
# float32 bytes per parameter while training: the weight, its gradient and Adam's two moments
TRAINING_BYTES_PER_PARAMETER = 4 * 4


@dataclass
class TrainConfig:
    """Every setting of a run; saved as config.json. The defaults are the tutorial's recipe."""

    dataset: str = "mnist-sample"
    data_dir: Optional[str] = None
    view: str = "rows"
    permutation_seed: int = 0
    units: int = 75
    layers: int = 1
    bidirectional: bool = False
    reset_after: bool = False
    recurrent_activation: str = "sigmoid"
    cell: str = "gru"
    init: str = "keras"
    # the GRU cell options (grunet.contract); runs made before they existed load with these defaults
    layer_norm: bool = False
    recurrent_dropout: float = 0.0
    input_dropout: float = 0.0
    weight_dropout: float = 0.0
    zoneout: float = 0.0
    impl: str = "auto"
    steps: int = 50_000
    batch_size: int = 50
    lr: float = 1e-3
    shuffle: bool = False
    eval_every: int = 100
    eval_batch_size: int = 1000
    seed: int = 0
    threads: Optional[int] = None
    device: str = "cpu"
    # the accuracy options (grunet.recipes sets them for --recipe tuned); runs made before them load with
    # these defaults, which are the tutorial's plain training
    recipe: str = "tutorial"
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    clip_norm: float = 0.0  # 0: no clipping
    shift: int = 0
    label_smoothing: float = 0.0
    ema: float = 0.0  # 0: no weight averaging
    validation: int = 0  # the last N training images held out; 0: best.pt is chosen on the test set
    early_stop: int = 0  # 0: never

    def validate(self) -> "TrainConfig":
        """Every setting in range before anything is loaded, built or written (one line naming the option)."""
        expect(self.dataset in DATASETS, "--dataset", f"one of {list(DATASETS)}", repr(self.dataset))
        expect(self.view in VIEWS, "--view", f"one of {list(VIEWS)}", repr(self.view))
        expect(self.cell in CELLS, "--cell", f"one of {list(CELLS)}", repr(self.cell))
        expect(self.impl in TRAIN_IMPLS, "--impl", f"one of {list(TRAIN_IMPLS)}", repr(self.impl))
        limits = {"units": 2**31 - 1, "layers": MAX_LAYERS, "steps": MAX_STEPS, "batch_size": 2**31 - 1,
                  "eval_every": MAX_STEPS, "eval_batch_size": 2**31 - 1}
        for name, high in limits.items():
            _expect_int(getattr(self, name), f"--{name.replace('_', '-')}", 1, high)
        for name in ("seed", "permutation_seed"):
            _expect_int(getattr(self, name), f"--{name.replace('_', '-')}", 0, MAX_SEED)
        expect(isinstance(self.lr, (int, float)) and not isinstance(self.lr, bool) and math.isfinite(self.lr)
               and 0 < self.lr <= MAX_LR, "--lr", f"a number > 0 and <= {MAX_LR:g}", self.lr)
        if self.threads is not None:
            _expect_int(self.threads, "--threads", 1, MAX_THREADS)
        expect(isinstance(self.device, str) and (self.device == "cpu" or self.device.startswith("cuda")),
               "--device", "'cpu' or 'cuda[:N]'", repr(self.device))
        if self.device.startswith("cuda"):
            expect(torch.cuda.is_available(), "--device", "a visible CUDA device", "none (torch sees no GPU)")
        self._check_cell_options()
        self._check_accuracy_options()
        model = self.model_config(28 if self.view == "rows" else 1)  # the datasets' images are 28 x 28
        parameters = model.parameter_count()
        expect_fits(TRAINING_BYTES_PER_PARAMETER * parameters, "--units",
                    f"{parameters:,} parameters ({self.layers} layers of {self.units} units) to train")
        return self

    def _check_cell_options(self) -> None:
        """Each option named as the command line spells it, before grunet.contract.CellSpec sees them."""
        expect(isinstance(self.layer_norm, bool), "--layer-norm", "True or False", repr(self.layer_norm))
        for name in PROBABILITIES:
            p = getattr(self, name)
            expect(isinstance(p, (int, float)) and not isinstance(p, bool) and math.isfinite(p) and 0 <= p < 1,
                   _flag(name), "a number in [0, 1)", p)
        used = [name for name in CELL_OPTIONS if getattr(self, name)]
        if used and self.cell != "gru":
            raise GrunetError(f"{_flag(used[0])}: expected --cell gru (the cell options are grunet.GRU's), "
                              f"got --cell {self.cell}")
        if used and self.impl == "torch":
            raise GrunetError(f"{_flag(used[0])}: expected --impl auto, fused or reference (torch.nn.GRU has no "
                              f"cell options), got --impl torch")
        if self.layer_norm and not self.reset_after:
            raise GrunetError("--layer-norm: expected --reset-after (the layer-normalised GRU normalises W_hh h, "
                              "which the reset-before GRU never forms), got --reset-before (the default)")

    def _check_accuracy_options(self) -> None:
        from .augment import MAX_SHIFT
        from .recipes import RECIPES

        expect(self.recipe in RECIPES, "--recipe", f"one of {list(RECIPES)}", repr(self.recipe))
        expect(self.lr_schedule in LR_SCHEDULES, "--lr-schedule", f"one of {list(LR_SCHEDULES)}",
               repr(self.lr_schedule))
        _expect_int(self.warmup_steps, "--warmup-steps", 0, MAX_STEPS)
        _expect_int(self.shift, "--shift", 0, MAX_SHIFT)
        _expect_int(self.validation, "--validation", 0, 2**31 - 1)
        _expect_int(self.early_stop, "--early-stop", 0, MAX_STEPS)
        expect(_is_number(self.clip_norm) and 0 <= self.clip_norm <= 1e6, "--clip-norm",
               "a number >= 0 and <= 1e6 (0: no clipping)", self.clip_norm)
        expect(_is_number(self.label_smoothing) and 0 <= self.label_smoothing < 1, "--label-smoothing",
               "a number in [0, 1)", self.label_smoothing)
        expect(_is_number(self.ema) and 0 <= self.ema < 1, "--ema", "a decay in [0, 1) (0: no averaging)", self.ema)
        if self.early_stop:
            expect(self.validation > 0, "--early-stop", "--validation N (a stop chosen on the test set would "
                   "peek at it)", "--validation 0")

    def learning_rate(self) -> LearningRate:
        return LearningRate(self.lr, self.lr_schedule, self.warmup_steps, self.steps)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "TrainConfig":
        return config_from_dict(cls, d, where)

    def model_config(self, input_size: int) -> ModelConfig:
        return ModelConfig(input_size=input_size, hidden_size=self.units, num_classes=10, num_layers=self.layers,
                           bidirectional=self.bidirectional, reset_after=self.reset_after,
                           recurrent_activation=self.recurrent_activation, cell=self.cell, init=self.init,
                           layer_norm=self.layer_norm, **{name: getattr(self, name) for name in PROBABILITIES})

    def data_info(self) -> dict:
        return {"dataset": self.dataset, "view": self.view, "permutation_seed": self.permutation_seed}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _expect_int(value, what: str, low: int, high: int) -> None:
    expect(isinstance(value, int) and not isinstance(value, bool) and low <= value <= high, what,
           f"an integer from {low} to {high}", value)


def check_batch_split(batch_size: int, processes: int) -> None:
    """The global batch must split into equal shares, one per process."""
    expect(batch_size % processes == 0, "--batch-size",
           f"a multiple of the {processes} processes (each takes an equal share of the global batch)", batch_size)


def config_differences(saved: TrainConfig, asked: dict) -> list[str]:
    """'name: run has X, command asks Y' for each asked setting that differs from the saved run's."""
    return [f"{name}: the run has {getattr(saved, name)!r}, the command asks {value!r}"
            for name, value in asked.items() if getattr(saved, name) != value]


def rng_states() -> dict:
    return plain_rng_states()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> tuple[float, torch.Tensor]:
    """Accuracy and predicted classes of ``model`` on (x, y)."""
    was_training = model.training
    model.eval()
    predictions = torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return (predictions == y).double().mean().item(), predictions


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Turns SIGINT / SIGTERM into a flag that the loop checks between steps (main thread only)."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: dict = {}

    def __enter__(self) -> "StopRequest":
        if hasattr(signal, "SIGTERM") and _in_main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def counts(self) -> list[int]:
        """One count per signal of STOP_SIGNALS: 1 for the one received here; summed over the ranks."""
        return [int(self.signum == s) for s in STOP_SIGNALS]

    @staticmethod
    def agreed(counts: torch.Tensor) -> Optional[int]:
        """The signal the ranks stop for (SIGTERM before SIGINT), or None: the same answer on every rank."""
        for index in reversed(range(len(STOP_SIGNALS))):
            if counts[index] > 0:
                return int(STOP_SIGNALS[index])
        return None

    def __exit__(self, exc_type, *exc) -> None:
        for s, handler in self._previous.items():
            # a process whose group is lost is ending: torchrun's SIGTERM to the survivors must not cut
            # its one line short
            signal.signal(s, signal.SIG_IGN if exc_type is not None and issubclass(exc_type, GroupLost) else handler)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# ----------------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    exit_code: int  # 0 done, 130 / 143 stopped by SIGINT / SIGTERM
    summary: Optional[dict]
    out_dir: Path


def load_data(config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    train_images, train_labels = load_split(config.dataset, "train", data_dir=config.data_dir)
    test_images, test_labels = load_split(config.dataset, "test", data_dir=config.data_dir)
    expect(len(test_labels) >= 1, f"{config.dataset} test split", "at least one image", "none")
    seq = lambda images: to_sequences(images, config.view, permutation_seed=config.permutation_seed)  # noqa: E731
    return seq(train_images), torch.as_tensor(train_labels), seq(test_images), torch.as_tensor(test_labels)


def split_validation(x: torch.Tensor, y: torch.Tensor, n: int, batch_size: int, dataset: str) -> tuple:
    """(x_train, y_train, x_val, y_val): the last ``n`` training images held out (n = 0: an empty split)."""
    expect(n == 0 or n <= len(y) - batch_size, "--validation", f"at most {len(y) - batch_size:,} images (the {dataset} "
           f"training split's {len(y):,} less one batch of {batch_size})", n)
    cut = len(y) - n
    return x[:cut], y[:cut], x[cut:], y[cut:]


def write_metrics(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRICS_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def new_progress() -> dict:
    """The run's progress as stored in checkpoints; window = [loss sum, correct, seen] since the last
    scheduled evaluation."""
    return {"step": 0, "rows": [], "window": [0.0, 0, 0], "best": -1.0, "elapsed": 0.0, "train_seconds": 0.0,
            "since_best": 0}


@dataclass
class Trainer:
    """The pieces of one run that a checkpoint saves and restores."""

    config: TrainConfig
    out: Path
    model: nn.Module
    optimizer: torch.optim.Optimizer
    batches: Batches
    progress: dict
    group: Group = SINGLE
    # what a training step calls: the model itself, or its DistributedDataParallel wrapper in a process group
    step_model: Optional[nn.Module] = None
    ema: Optional[WeightAverage] = None  # --ema: the averaged weights that are evaluated and saved

    @property
    def schedule(self) -> LearningRate:
        return self.config.learning_rate()  # config.steps may grow when a run is extended

    def evaluated(self):
        """A context in which the model holds the weights that evaluations and checkpoints use."""
        return self.ema.averaged() if self.ema is not None else nullcontext(self.model)

    def save(self, name: str) -> None:
        """Rank 0 writes (every rank holds the same weights, optimizer, data position and RNG states). With
        --ema the checkpoint's model is the average (what eval, predict and export load) and the training
        weights are its "ema" entry."""
        if not self.group.is_main:
            return
        extra = {"ema": self.ema.state_dict()} if self.ema is not None else {}
        with self.evaluated():
            save_checkpoint(self.out / name, self.model, data=self.config.data_info(),
                            optimizer=self.optimizer.state_dict(), batches=self.batches.state_dict(),
                            rng=rng_states(), progress=self.progress, config=self.config.to_dict(), **extra)

    def restore(self, path: Path) -> None:
        """Everything from ``path`` (last.pt), each part checked against this run before it is used. Rank 0
        reads the file and hands it to the others: only its machine needs to hold the run directory."""
        ckpt = self.group.from_main(lambda: load_checkpoint(path))
        expected = architecture_of(self.model)
        expect(_with_defaults(ckpt["architecture"]) == expected, f"{path}", f"the architecture of the run's "
               f"config.json ({_short(expected)})", f"another one ({_short(ckpt['architecture'])})")
        check_state_dict(self.model.state_dict(), ckpt["model"], str(path))
        progress = check_progress(ckpt.get("progress"), f"{path} progress", MAX_STEPS)
        load_optimizer_state(self.optimizer, ckpt.get("optimizer"), f"{path} optimizer")
        self.batches.load_state_dict(ckpt.get("batches"), f"{path} batches")
        set_rng_states(ckpt.get("rng"), str(path))
        if self.ema is not None:
            ema = ckpt.get("ema")
            if isinstance(ema, dict):
                check_state_dict(self.model.state_dict(), ema.get("training_weights"), f"{path} ema training_weights")
            self.ema.load_state_dict(ema, ckpt["model"], str(path))
        else:
            self.model.load_state_dict(ckpt["model"])
        self.progress = progress


def _with_defaults(architecture):
    """A stored architecture with the keys its grunet did not write yet (the cell options) at their defaults,
    so that a run from before them resumes."""
    if not isinstance(architecture, dict) or not isinstance(architecture.get("config"), dict):
        return architecture
    defaults = {name: value for name, value in ModelConfig().to_dict().items() if name in CELL_OPTIONS}
    return {**architecture, "config": {**defaults, **architecture["config"]}}


def _short(architecture) -> str:
    if not isinstance(architecture, dict) or not isinstance(architecture.get("config"), dict):
        return repr(architecture)[:60]
    c = architecture["config"]
    return ", ".join(f"{k}={c[k]!r}" for k in ("cell", "hidden_size", "num_layers", "bidirectional", "reset_after",
                                               "input_size", *CELL_OPTIONS) if k in c)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state, where: str) -> None:
    """Adam's state_dict after checking that it belongs to these parameters (shapes, dtypes, settings)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    expect(isinstance(state, dict) and isinstance(state.get("state"), dict)
           and isinstance(state.get("param_groups"), list), where, "an optimizer state_dict", type(state).__name__)
    groups = state["param_groups"]
    expect(len(groups) == len(optimizer.param_groups) and all(isinstance(g, dict) for g in groups), where,
           f"{len(optimizer.param_groups)} parameter groups", len(groups))
    for g in groups:
        for key in ("lr", "eps", "weight_decay"):
            value = g.get(key)
            expect(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                   and value >= 0, f"{where} {key}", "a finite number >= 0", repr(value))
        betas = g.get("betas")
        expect(isinstance(betas, (list, tuple)) and len(betas) == 2
               and all(isinstance(b, float) and 0 <= b < 1 for b in betas), f"{where} betas",
               "two floats in [0, 1)", repr(betas))
    for key, s in state["state"].items():
        expect(isinstance(key, int) and 0 <= key < len(params) and isinstance(s, dict), f"{where} state",
               f"entries 0..{len(params) - 1} of dicts", repr(key))
        for name in ("exp_avg", "exp_avg_sq"):
            t, p = s.get(name), params[key]
            expect(isinstance(t, torch.Tensor) and t.shape == p.shape and t.dtype == p.dtype,
                   f"{where} state {key} {name}", f"a {p.dtype} tensor of shape {tuple(p.shape)}",
                   f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__)
        step = s.get("step")
        expect(isinstance(step, torch.Tensor) and step.numel() == 1 and step.is_floating_point(),
               f"{where} state {key} step", "a one-element float tensor", type(step).__name__)
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise GrunetError(f"{where}: expected a state Adam accepts, got one it refuses "
                          f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def read_config(out: Path) -> TrainConfig:
    try:
        saved = json.loads((out / "config.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise GrunetError(f"{out / 'config.json'}: expected the run's settings as JSON, got {e}") from None
    expect(isinstance(saved, dict), str(out / "config.json"), "a JSON object of settings", type(saved).__name__)
    for key in RECORDED:
        saved.pop(key, None)
    config = TrainConfig.from_dict(saved, where=str(out / "config.json"))
    try:
        return config.validate()
    except GrunetError as e:  # name the file, not the option a command line would have had
        raise GrunetError(f"{out / 'config.json'}: {e}") from None


# what config.json records beside the settings: not settings, since a run may resume with other values
RECORDED = ("grunet_version", "config_version", "world_size")


def write_config(out: Path, config: TrainConfig, world_size: int = 1) -> None:
    """config.json; ``world_size``: the processes that train the run (those of its latest part)."""
    write_json(out / "config.json", {"grunet_version": __version__, "config_version": CONFIG_VERSION,
                                     "world_size": world_size, **config.to_dict()})


class Data(NamedTuple):
    """The run's sequences and labels, on the run's device."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_val: Optional[torch.Tensor] = None  # --validation: the last N images of the training split
    y_val: Optional[torch.Tensor] = None


def run(
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    print_fn: Callable[[str], None] = print,
    progress: Optional[bool] = None,
    on_step: Optional[Callable[[int], None]] = None,
    group: Group = SINGLE,
) -> RunResult:
    """Train (or continue) the run in ``out_dir``. ``on_step(i)`` is called after each step (tests).

    With ``resume``, ``config`` is the run's config.json, except that ``steps`` may be larger than the
    steps done (it extends the run; config.json records the new total).

    In a process group (grunet.distributed, started by torchrun) every rank calls this with the same
    arguments: each takes its contiguous share of every global batch of ``config.batch_size``, the
    gradients are averaged by DistributedDataParallel (the mean of equal shares' means is the global
    batch's mean: the one-process update), the test set is shared out and the correct answers summed, and
    rank 0 alone writes the run directory and prints."""
    config.validate()
    check_batch_split(config.batch_size, group.world_size)
    out = Path(out_dir)
    if not group.is_main:
        print_fn, progress = _silent, False
    saved = group.from_main(lambda: _check_run_directory(config, out, resume))
    threads = threads_per_rank(group, config.threads) if group.backend else config.threads
    if threads:
        torch.set_num_threads(threads)
    data = group.agree(lambda: _load_data_on(config, torch.device(run_device(group, config.device))))
    trainer = _new_trainer(config, out, data, group)
    if not resume:  # only once the data and model are known to be good: no empty run left
        group.from_main(lambda: make_new(out))
    with ExitStack() as held:
        # the lock first: a second run on this directory is refused before anything is written
        group.from_main(lambda: _hold(held, RunLock(out)))
        stop = held.enter_context(StopRequest())
        # signals from here on: one that comes before the first checkpoint still leaves a resumable run
        # (before, there is no run to save and Ctrl-C stops a download or a build as usual)
        if resume:
            group.agree(lambda: _continue(trainer, saved, print_fn))
        else:
            group.from_main(lambda: _start(trainer, data, print_fn))
        return _train(trainer, data, stop, print_fn, progress, on_step)


def _hold(held: ExitStack, lock: RunLock) -> None:
    held.enter_context(lock)


def _silent(line: str) -> None:
    """The print function of ranks other than 0: one process speaks for the run."""


def _check_run_directory(config: TrainConfig, out: Path, resume: bool) -> Optional[TrainConfig]:
    """Before any data is loaded: a resumed run's config.json (which ``config`` may differ from in steps
    only) and a writable directory, or a directory free for a new run (checked again under the lock)."""
    if not resume:
        check_new(out)
        return None
    saved = read_config(out)
    differences = config_differences(saved, {k: v for k, v in config.to_dict().items() if k not in ("steps", "device")})
    expect(not differences, "--resume", "the run's settings", "; ".join(differences))
    check_writable(out)
    return saved


def _load_data_on(config: TrainConfig, device: torch.device) -> Data:
    x_train, y_train, x_test, y_test = load_data(config)
    x_train, y_train, x_val, y_val = split_validation(x_train, y_train, config.validation, config.batch_size,
                                                      config.dataset)
    return Data(*(t.to(device) for t in (x_train, y_train, x_test, y_test, x_val, y_val)))


def _new_trainer(config: TrainConfig, out: Path, data: Data, group: Group = SINGLE) -> Trainer:
    """The seeded model, its optimizer and the batch order at step 0 (a resumed run restores them later).
    Every rank seeds alike: the same weights, batch order and mask draws on each."""
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)
    device = data.x_train.device
    model = SequenceClassifier(config.model_config(data.x_train.shape[2]), impl=config.impl).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)  # one kernel for all params
    batches = Batches(len(data.x_train), config.batch_size, config.shuffle, config.seed)
    ema = WeightAverage(model, config.ema) if config.ema else None
    return Trainer(config, out, model, optimizer, batches, new_progress(), group, model, ema)


def _replicated(trainer: Trainer) -> nn.Module:
    """The model as a training step calls it: in a process group, DistributedDataParallel around it (made once
    the weights are final, resumed ones included, since it starts from rank 0's weights)."""
    from torch.nn.parallel import DistributedDataParallel

    if trainer.group.backend is None:
        return trainer.model
    device = next(trainer.model.parameters()).device
    return DistributedDataParallel(trainer.model, device_ids=[device] if device.type == "cuda" else None)


def _start(trainer: Trainer, data: Data, print_fn: Callable[[str], None]) -> None:
    """A new run: config.json, then the model summary."""
    from .params import summary

    check_new(trainer.out)  # another process may have started a run here meanwhile
    write_config(trainer.out, trainer.config, trainer.group.world_size)
    summary(trainer.model, (1, *data.x_train.shape[1:]), print_fn=print_fn)
    if trainer.config.layer_norm and data.x_train.shape[-1] == 1:
        # LN(x W_ih) over the gates of one feature x is sign(x) LN(W_ih): the pixel's value is lost, and at
        # x = 0 the variance is eps alone, so the gradient is ~1/sqrt(eps) (diverged within 40 steps at 3e-3)
        print_fn(f"warning: --layer-norm with one input feature (--view {trainer.config.view}) keeps only the "
                 f"sign of each input and tends to diverge; the tuned recipe leaves it off on this view")


def _continue(trainer: Trainer, saved: TrainConfig, print_fn: Callable[[str], None]) -> None:
    """Restore last.pt (a run killed before its first checkpoint has none: it starts again from step 0) and
    record a new total of steps, refusing one below the steps done."""
    out, config = trainer.out, trainer.config
    checkpointed = trainer.group.from_main(lambda: (out / "last.pt").is_file())
    if checkpointed:
        trainer.restore(out / "last.pt")
    done = trainer.progress["step"]
    expect(config.steps >= done, "--steps", f"at least the {done:,} steps the run {out} has done", config.steps)
    if trainer.group.is_main:  # the new total of steps, and the processes that train this part of the run
        write_config(out, config, trainer.group.world_size)
    if checkpointed:
        print_fn(f"resuming {out} at step {done:,} of {config.steps:,}")
        if config.steps != saved.steps and config.lr_schedule != "constant":
            # the schedule is a function of the total, so a new total reshapes the rest of the decay
            before, after = saved.learning_rate().at(done), config.learning_rate().at(done)
            print_fn(f"note: the {config.lr_schedule} schedule now ends at step {config.steps:,} instead of "
                     f"{saved.steps:,}: the learning rate at step {done:,} is {after:.3g} (was {before:.3g})")
    else:
        print_fn(f"starting {out} from step 0: it holds no checkpoint yet")


def _train(trainer: Trainer, data: Data, stop: StopRequest, print_fn, progress, on_step) -> RunResult:
    """The loop from the run's step to its last: a step, an evaluation every eval_every steps, and the
    final weights always evaluated; a stop request ends it with last.pt saved."""
    config, state, group = trainer.config, trainer.progress, trainer.group
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    clock = (time.perf_counter(), state["elapsed"])  # elapsed time goes on from the run's earlier parts
    bar = Progress(total=config.steps, initial=state["step"], enabled=progress, print_fn=print_fn)
    trainer.step_model = _replicated(trainer)
    trainer.model.train()
    try:
        with bar:
            # a request that came before the first step
            signum = stop.agreed(group.sum(torch.tensor(stop.counts(), dtype=torch.float64)))
            for i in range(state["step"], config.steps):
                if signum is not None or _early_stop(config, state):
                    break
                counts = _step(trainer, data, loss_fn, i, clock)
                loss = None
                if i % config.eval_every == 0:
                    loss = _record(trainer, data, i, scheduled=True, write=bar.write, counts=counts)
                    counts = torch.zeros_like(counts)
                if on_step is not None:
                    on_step(i)
                # one all-reduce of a few numbers per step: the step's loss window counts (unless the
                # evaluation took them) and the stop requests, so that every rank stops after the same step
                t_sum = time.perf_counter()
                sums = group.sum(torch.cat([counts, torch.tensor(stop.counts(), dtype=torch.float64)]))
                state["train_seconds"] += time.perf_counter() - t_sum  # part of a step's cost (samples/s)
                loss = _add_to_window(state, sums[:3]) if loss is None else loss
                signum = stop.agreed(sums[3:])
                samples_per_s = state["step"] * config.batch_size / max(state["train_seconds"], 1e-9)
                bar.update(loss=loss, accuracy=state["best"] if state["rows"] else None,
                           samples_per_s=samples_per_s)
            if signum is not None and state["step"] < config.steps:
                return _stopped(trainer, signum, print_fn)
            _record_final(trainer, data, bar.write)
        return _finish(trainer, len(data.x_train), len(data.x_test), print_fn)
    except RuntimeError as e:  # DistributedDataParallel's own collectives fail in backward
        if group.is_lost(e):
            raise group.lost(e) from None
        raise


def _step(trainer: Trainer, data: Data, loss_fn, i: int, clock: tuple[float, float]) -> torch.Tensor:
    """Training step i: this rank's share of the global batch, one Adam update and the timings. Returns
    this rank's counts for the loss window (loss sum, correct, seen), to be summed over the ranks."""
    config, state, group = trainer.config, trainer.progress, trainer.group
    t_step = time.perf_counter()
    idx = trainer.batches.next_indices()  # the global batch: the one-process order
    share = group.share(config.batch_size)
    idx = slice(idx.start + share.start, idx.start + share.stop) if isinstance(idx, slice) else idx[share]
    xb, yb = data.x_train[idx], data.y_train[idx]
    if config.shift:  # every rank draws the global batch's shifts: the generators stay alike
        xb = shift_sequences(xb, draw_shifts(config.batch_size, config.shift)[share], config.view,
                             config.permutation_seed)
    with global_batch(BatchRows(share.start, config.batch_size)):  # masks: this share's rows of the global ones
        logits = trainer.step_model(xb)
    loss = loss_fn(logits, yb)
    trainer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.clip_norm:  # the gradients are the averaged ones here: every rank clips alike
        nn.utils.clip_grad_norm_(trainer.model.parameters(), config.clip_norm)
    for param_group in trainer.optimizer.param_groups:
        param_group["lr"] = trainer.schedule.at(i)
    trainer.optimizer.step()
    if trainer.ema is not None:
        trainer.ema.update()
    counts = torch.tensor([loss.item() * len(yb), int((logits.argmax(1) == yb).sum()), len(yb)], dtype=torch.float64)
    state["step"] = i + 1
    state["train_seconds"] += time.perf_counter() - t_step
    state["elapsed"] = clock[1] + time.perf_counter() - clock[0]
    return counts


def _early_stop(config: TrainConfig, state: dict) -> bool:
    """--early-stop K: K evaluations in a row without a better validation accuracy (the same on every rank)."""
    return bool(config.early_stop) and state.get("since_best", 0) >= config.early_stop


def _add_to_window(state: dict, sums: torch.Tensor) -> Optional[float]:
    """Add one step's counts summed over the ranks to the loss window; returns that step's loss."""
    if not sums[2]:
        return None
    window = state["window"]
    window[0] += sums[0].item()
    window[1] += int(sums[1])
    window[2] += int(sums[2])
    return sums[0].item() / sums[2].item()


def _record(trainer: Trainer, data: Data, i: int, scheduled: bool, write: Callable[[str], None],
            counts: Optional[torch.Tensor] = None) -> Optional[float]:
    """Evaluate after step i: a row of metrics.csv, last.pt, and best.pt when it is the best so far. The
    final, off-schedule row keeps the loss window: a run extended later goes on exactly as one that never
    stopped. ``counts``: step i's loss window counts on this rank, summed with the evaluation's; returns
    step i's loss.

    With --validation the held-out images are evaluated too and choose best.pt (and any early stop); the
    test set is evaluated for the record. Each rank evaluates its contiguous share of each set; the correct
    answers are summed."""
    config, state, group = trainer.config, trainer.progress, trainer.group
    with trainer.evaluated() as model:
        correct = [_correct(model, x, y, group.share(len(y)), config.eval_batch_size)
                   for x, y in ((data.x_test, data.y_test), (data.x_val, data.y_val))]
    counts = torch.zeros(3, dtype=torch.float64) if counts is None else counts
    sums = group.sum(torch.cat([torch.tensor(correct, dtype=torch.float64), counts]))
    accuracy = sums[0].item() / len(data.x_test)
    validated = config.validation > 0
    val_accuracy = sums[1].item() / len(data.y_val) if validated else None
    loss = _add_to_window(state, sums[2:])
    window = state["window"]
    row = {"step": i, "loss": f"{window[0] / max(window[2], 1):.6f}",
           "train_accuracy": f"{window[1] / max(window[2], 1):.6f}", "test_accuracy": f"{accuracy:.6f}",
           "elapsed_s": f"{state['elapsed']:.3f}", "val_accuracy": f"{val_accuracy:.6f}" if validated else "",
           "lr": f"{trainer.schedule.at(i):.6g}"}
    state["rows"].append(row)
    if scheduled:
        state["window"] = [0.0, 0, 0]
    chosen = float(row[SELECTED_BY[validated]])  # as metrics.csv has it: best.pt is its best row
    improved = chosen > state["best"]
    state["best"] = max(state["best"], chosen)
    state["since_best"] = 0 if improved else state.get("since_best", 0) + 1
    trainer.save("last.pt")
    if improved:
        trainer.save("best.pt")
    _write_metrics(trainer)
    val = f"  val {val_accuracy:.4f}" if validated else ""
    write(f"step {i:>6}  loss {row['loss'][:6]}  train {row['train_accuracy'][:6]}{val}  accuracy: {accuracy:.4f}")
    return loss


# the metrics.csv column that chooses best.pt: the validation split's when there is one (no peeking)
SELECTED_BY = {False: "test_accuracy", True: "val_accuracy"}


def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, share: slice, batch_size: int) -> int:
    """Correct answers of ``model`` on this rank's share of (x, y)."""
    if share.stop <= share.start:
        return 0
    _, predictions = evaluate(model, x[share], y[share], batch_size)
    return int((predictions == y[share]).sum())


def _write_metrics(trainer: Trainer) -> None:
    if trainer.group.is_main:
        write_metrics(trainer.out / "metrics.csv", trainer.progress["rows"])


def _record_final(trainer: Trainer, data: Data, write: Callable[[str], None]) -> None:
    """The final weights are always a row of metrics.csv (unless the last step was evaluated already)."""
    state = trainer.progress
    rows = state["rows"]
    if not rows or int(rows[-1]["step"]) != state["step"] - 1:
        _record(trainer, data, state["step"] - 1, scheduled=False, write=write)
    else:
        trainer.save("last.pt")
        _write_metrics(trainer)


def _stopped(trainer: Trainer, signum: int, print_fn: Callable[[str], None]) -> RunResult:
    """A stop request between steps: last.pt and metrics.csv as they are, and how to go on."""
    out, state = trainer.out, trainer.progress
    trainer.save("last.pt")
    _write_metrics(trainer)
    trainer.group.barrier()  # no rank ends (and has torchrun end the others) before rank 0 has written
    name = signal.Signals(signum).name
    print_fn(f"stopped by {name} after step {state['step']:,} of {trainer.config.steps:,}; the checkpoint "
             f"{out / 'last.pt'} is intact. Resume with: grunet train --resume {out}")
    return RunResult(128 + signum, None, out)


def _finish(trainer: Trainer, train_size: int, test_size: int, print_fn) -> RunResult:
    """summary.json and the done line, both read from metrics.csv's rows."""
    config, out, state, group = trainer.config, trainer.out, trainer.progress, trainer.group
    rows = state["rows"]
    selected_by = SELECTED_BY[config.validation > 0]
    best_row = max(rows, key=lambda r: float(r[selected_by]))  # the first of equals, as best.pt
    result = {
        "final_test_accuracy": float(rows[-1]["test_accuracy"]),
        "best_test_accuracy": float(best_row["test_accuracy"]),  # best.pt's, chosen by selected_by
        "best_step": int(best_row["step"]),
        "last_eval_test_accuracy": float(rows[-1]["test_accuracy"]),
        "selected_by": selected_by,
        "recipe": config.recipe,
        "steps": state["step"],
        "seconds": round(state["elapsed"], 3),
        "train_seconds": round(state["train_seconds"], 3),
        "samples_per_s": round(state["step"] * config.batch_size / max(state["train_seconds"], 1e-9), 1),
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "train_size": train_size,
        "test_size": test_size,
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),  # per process
        "world_size": group.world_size,
    }
    if config.validation:
        result.update(final_val_accuracy=float(rows[-1]["val_accuracy"]),
                      best_val_accuracy=float(best_row["val_accuracy"]), validation_size=config.validation,
                      early_stopped=state["step"] < config.steps)
    if group.is_main:
        write_json(out / "summary.json", result)
    group.barrier()  # as in _stopped: rank 0's files are whole before any rank ends
    print_fn(f"done: {state['step']:,} steps in {state['elapsed']:.1f} s; final test accuracy "
             f"{result['final_test_accuracy']:.4f}, best {result['best_test_accuracy']:.4f} at step "
             f"{result['best_step']}{' (chosen on the validation split)' if config.validation else ''}; "
             f"run in {out}")
    return RunResult(0, result, out)
