"""The training loop of the tutorial experiment: recipe, evaluation, run directory, checkpoints, resume.

The seed recipe (DESIGN.md §1): digits read row by row (28 steps of 28 pixels / 255), GRU(75, Keras init)
-> Dense(10) -> softmax, categorical cross-entropy, Adam lr 1e-3, batches of 50 taken as consecutive
slices of the training set (back to 0 when the next slice would run past the end), 50,000 steps, and
after step i (0-based) with i % 100 == 0 the whole test set is evaluated and ``accuracy: 0.xxxx`` printed.

Run directory: config.json (every setting), metrics.csv (step, loss, train_accuracy, test_accuracy,
elapsed_s; loss and train accuracy are the means over the steps since the previous evaluation),
last.pt and best.pt (atomic; model, optimizer, RNG states, data position, step, metrics so far) and
summary.json at the end. A run stopped by Ctrl-C / SIGTERM saves last.pt after the step in flight; resuming
it gives the same metrics.csv (but elapsed_s) and the same weights as a run that was never stopped.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from . import __version__
from .config import from_dict as config_from_dict
from .checkpoint import load_checkpoint, save_checkpoint
from .data import DATASETS, VIEWS, load_split, to_sequences
from .errors import GrunetError, expect
from .fileio import write_json, write_text
from .model import CELLS, ModelConfig, SequenceClassifier
from .progress import Progress

METRICS_FIELDS = ("step", "loss", "train_accuracy", "test_accuracy", "elapsed_s")
CONFIG_VERSION = 1
TRAIN_IMPLS = ("auto", "reference", "fused", "torch")  # "torch": torch.nn.GRU, the baseline


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

    def validate(self) -> "TrainConfig":
        expect(self.dataset in DATASETS, "--dataset", f"one of {list(DATASETS)}", repr(self.dataset))
        expect(self.view in VIEWS, "--view", f"one of {list(VIEWS)}", repr(self.view))
        expect(self.cell in CELLS, "--cell", f"one of {list(CELLS)}", repr(self.cell))
        expect(self.impl in TRAIN_IMPLS, "--impl", f"one of {list(TRAIN_IMPLS)}", repr(self.impl))
        for name in ("units", "layers", "steps", "batch_size", "eval_every", "eval_batch_size"):
            value = getattr(self, name)
            expect(isinstance(value, int) and value >= 1, f"--{name.replace('_', '-')}", "an integer >= 1", value)
        expect(math.isfinite(self.lr) and self.lr > 0, "--lr", "a number > 0", self.lr)
        expect(self.threads is None or self.threads >= 1, "--threads", "an integer >= 1", self.threads)
        expect(self.device == "cpu" or self.device.startswith("cuda"), "--device", "'cpu' or 'cuda[:N]'",
               repr(self.device))
        if self.device.startswith("cuda"):
            expect(torch.cuda.is_available(), "--device", "a visible CUDA device", "none (torch sees no GPU)")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "TrainConfig":
        return config_from_dict(cls, d, where)

    def model_config(self, input_size: int) -> ModelConfig:
        return ModelConfig(input_size=input_size, hidden_size=self.units, num_classes=10, num_layers=self.layers,
                           bidirectional=self.bidirectional, reset_after=self.reset_after,
                           recurrent_activation=self.recurrent_activation, cell=self.cell, init=self.init)

    def data_info(self) -> dict:
        return {"dataset": self.dataset, "view": self.view, "permutation_seed": self.permutation_seed}


def config_differences(saved: TrainConfig, asked: dict) -> list[str]:
    """'name: run has X, command asks Y' for each asked setting that differs from the saved run's."""
    return [f"{name}: the run has {getattr(saved, name)!r}, the command asks {value!r}"
            for name, value in asked.items() if getattr(saved, name) != value]


# ----------------------------------------------------------------------------------------------------
class Batches:
    """Consecutive slices of the training set, back to the start when the next slice would not fit;
    with ``shuffle`` a new order (from its own generator) at every pass. Its state is part of a checkpoint."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int) -> None:
        expect(batch_size <= n, "--batch-size", f"at most the training set's size {n}", batch_size)
        self.n, self.batch_size, self.shuffle = n, batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.position, self.epoch = 0, 0
        self.order = torch.randperm(n, generator=self.generator) if shuffle else None

    def next_indices(self) -> torch.Tensor | slice:
        if self.position + self.batch_size > self.n:
            self.position, self.epoch = 0, self.epoch + 1
            if self.shuffle:
                self.order = torch.randperm(self.n, generator=self.generator)
        start, self.position = self.position, self.position + self.batch_size
        if self.order is None:
            return slice(start, start + self.batch_size)
        return self.order[start:start + self.batch_size]

    def state_dict(self) -> dict:
        return {"position": self.position, "epoch": self.epoch, "order": self.order,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.position, self.epoch, self.order = state["position"], state["epoch"], state["order"]
        self.generator.set_state(state["generator"])


def rng_states() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> tuple[float, torch.Tensor]:
    """Accuracy and predicted classes of ``model`` on (x, y)."""
    was_training = model.training
    model.eval()
    predictions = torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return (predictions == y).double().mean().item(), predictions


class StopRequest:
    """Turns SIGINT / SIGTERM into a flag that the loop checks after each step (main thread only)."""

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

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# ----------------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    exit_code: int  # 0 done, 130 / 143 stopped by SIGINT / SIGTERM
    summary: Optional[dict]
    out_dir: Path


def prepare_out_dir(out: Path, resume: bool) -> None:
    if resume:
        expect((out / "config.json").is_file() and (out / "last.pt").is_file(), "--resume",
               "a run directory holding config.json and last.pt", f"{out} without them")
        return
    if out.exists():
        expect(out.is_dir(), "--out", "a directory (or a path to create)", f"{out}, which is a file")
        expect(not (out / "config.json").exists(), "--out", "an empty or new directory",
               f"{out}, which already holds a run (continue it with --resume {out}, or choose another --out)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".grunet-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise GrunetError(f"--out: expected a writable directory, got {out} ({e.strerror})") from None


def load_data(config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    train_images, train_labels = load_split(config.dataset, "train", data_dir=config.data_dir)
    test_images, test_labels = load_split(config.dataset, "test", data_dir=config.data_dir)
    seq = lambda images: to_sequences(images, config.view, permutation_seed=config.permutation_seed)  # noqa: E731
    return seq(train_images), torch.as_tensor(train_labels), seq(test_images), torch.as_tensor(test_labels)


def write_metrics(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRICS_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def run(
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    print_fn: Callable[[str], None] = print,
    progress: Optional[bool] = None,
    on_step: Optional[Callable[[int], None]] = None,
) -> RunResult:
    """Train (or continue) the run in ``out_dir``. ``on_step(i)`` is called after each step (tests)."""
    config.validate()
    out = Path(out_dir)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    x_train, y_train, x_test, y_test = load_data(config)
    x_train, y_train = x_train.to(device), y_train.to(device)
    x_test, y_test = x_test.to(device), y_test.to(device)

    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    random.seed(config.seed)
    model = SequenceClassifier(config.model_config(x_train.shape[2]), impl=config.impl).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)  # one kernel for all params
    batches = Batches(len(x_train), config.batch_size, config.shuffle, config.seed)
    loss_fn = nn.CrossEntropyLoss()
    prepare_out_dir(out, resume)  # only once the data and model are known to be good: no empty run left
    state = {"step": 0, "rows": [], "window": [0.0, 0, 0], "best": -1.0, "elapsed": 0.0, "train_seconds": 0.0}

    if resume:
        ckpt = load_checkpoint(out / "last.pt")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        batches.load_state_dict(ckpt["batches"])
        set_rng_states(ckpt["rng"])
        state = ckpt["progress"]
        print_fn(f"resuming {out} at step {state['step']:,} of {config.steps:,}")
    else:
        write_json(out / "config.json", {"grunet_version": __version__, "config_version": CONFIG_VERSION,
                                         **config.to_dict()})
        from .params import summary

        summary(model, (1, *x_train.shape[1:]), print_fn=print_fn)

    def checkpoint(name: str) -> None:
        save_checkpoint(out / name, model, data=config.data_info(), optimizer=optimizer.state_dict(),
                        batches=batches.state_dict(), rng=rng_states(), progress=state, config=config.to_dict())

    start_step, t0 = state["step"], time.perf_counter()
    elapsed0 = state["elapsed"]
    bar = Progress(total=config.steps, initial=start_step, enabled=progress, print_fn=print_fn)
    exit_code = 0
    model.train()
    with StopRequest() as stop, bar:
        for i in range(start_step, config.steps):
            t_step = time.perf_counter()
            idx = batches.next_indices()
            xb, yb = x_train[idx], y_train[idx]
            logits = model(xb)
            loss = loss_fn(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            window = state["window"]
            window[0] += loss.item() * len(yb)
            window[1] += int((logits.argmax(1) == yb).sum())
            window[2] += len(yb)
            state["step"] = i + 1
            state["train_seconds"] += time.perf_counter() - t_step
            state["elapsed"] = elapsed0 + time.perf_counter() - t0
            if i % config.eval_every == 0:
                accuracy, _ = evaluate(model, x_test, y_test, config.eval_batch_size)
                row = {"step": i, "loss": f"{window[0] / window[2]:.6f}",
                       "train_accuracy": f"{window[1] / window[2]:.6f}", "test_accuracy": f"{accuracy:.6f}",
                       "elapsed_s": f"{state['elapsed']:.3f}"}
                state["rows"].append(row)
                state["window"] = [0.0, 0, 0]
                improved = accuracy > state["best"]
                state["best"] = max(state["best"], accuracy)
                checkpoint("last.pt")
                if improved:
                    checkpoint("best.pt")
                write_metrics(out / "metrics.csv", state["rows"])
                bar.write(f"step {i:>6}  loss {row['loss'][:6]}  train {row['train_accuracy'][:6]}  "
                          f"accuracy: {accuracy:.4f}")
            samples_per_s = state["step"] * config.batch_size / max(state["train_seconds"], 1e-9)
            bar.update(loss=loss.item(), accuracy=state["best"] if state["rows"] else None,
                       samples_per_s=samples_per_s)
            if on_step is not None:
                on_step(i)
            if stop.signum is not None:
                checkpoint("last.pt")
                write_metrics(out / "metrics.csv", state["rows"])
                name = signal.Signals(stop.signum).name
                exit_code = 128 + stop.signum
                break
    if exit_code:
        print_fn(f"stopped by {name} after step {state['step']:,} of {config.steps:,}; the checkpoint "
                 f"{out / 'last.pt'} is intact. Resume with: grunet train --resume {out}")
        return RunResult(exit_code, None, out)
    checkpoint("last.pt")
    write_metrics(out / "metrics.csv", state["rows"])
    final_accuracy, _ = evaluate(model, x_test, y_test, config.eval_batch_size)
    rows = state["rows"]
    best_row = max(rows, key=lambda r: float(r["test_accuracy"])) if rows else None
    result = {
        "final_test_accuracy": final_accuracy,
        "best_test_accuracy": float(best_row["test_accuracy"]) if best_row else None,
        "best_step": int(best_row["step"]) if best_row else None,
        "last_eval_test_accuracy": float(rows[-1]["test_accuracy"]) if rows else None,
        "steps": state["step"],
        "seconds": round(state["elapsed"], 3),
        "train_seconds": round(state["train_seconds"], 3),
        "samples_per_s": round(state["step"] * config.batch_size / max(state["train_seconds"], 1e-9), 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_size": len(x_train),
        "test_size": len(x_test),
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    write_json(out / "summary.json", result)
    print_fn(f"done: {state['step']:,} steps in {state['elapsed']:.1f} s; final test accuracy {final_accuracy:.4f}, "
             f"best {result['best_test_accuracy']:.4f} at step {result['best_step']}; run in {out}")
    return RunResult(0, result, out)


def read_config(out: Path) -> TrainConfig:
    try:
        saved = json.loads((out / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GrunetError(f"{out / 'config.json'}: expected the run's settings as JSON, got {e}") from None
    saved.pop("grunet_version", None)
    saved.pop("config_version", None)
    return TrainConfig.from_dict(saved, where=str(out / "config.json"))

