"""What a training run must carry across a stop to resume to the same numbers, as plain checkpoint values.

A checkpoint holds only tensors, numbers, strings, None, lists and dicts (it is read with weights_only), so
the RNG states that Python and NumPy give as tuples and arrays are stored as:
    torch:  the ByteTensor of torch.get_rng_state()
    numpy:  {"bit_generator": "MT19937", "key": int64 tensor (624,), "pos", "has_gauss", "cached_gaussian"}
    python: {"version": 3, "internal": int64 tensor (625,), "gauss_next": float or None}
The data position (Batches) and the run's progress (step, metric rows, the loss window since the last
evaluation, the best accuracy, timings) are checked when read back: a hand-edited checkpoint gets one line.
"""
from __future__ import annotations

import random
from typing import Optional

import numpy as np
import torch

from .errors import GrunetError, expect

METRICS_FIELDS = ("step", "loss", "train_accuracy", "test_accuracy", "elapsed_s", "val_accuracy", "lr")
# columns a run's rows may leave empty: val_accuracy without --validation; both in runs made before them
OPTIONAL_FIELDS = ("val_accuracy", "lr")


def plain_rng_states(states: Optional[dict] = None) -> dict:
    """The current RNG states (or ``states`` as returned by version 1's rng_states) as plain values."""
    if states is None:
        states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():  # masks drawn on the GPU use its generator
            states["cuda"] = torch.cuda.get_rng_state()
    numpy_state, python_state = states["numpy"], states["python"]
    if isinstance(numpy_state, dict) and isinstance(python_state, dict):
        return states  # already plain
    name, key, pos, has_gauss, cached = numpy_state
    version, internal, gauss_next = python_state
    return {
        **({"cuda": states["cuda"]} if "cuda" in states else {}),
        "torch": states["torch"],
        "numpy": {"bit_generator": str(name), "key": torch.from_numpy(np.asarray(key, dtype=np.int64).copy()),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }


def _int(value, what: str, low: int, high: int) -> int:
    expect(isinstance(value, int) and not isinstance(value, bool) and low <= value <= high, what,
           f"an integer from {low} to {high}", repr(value) if not isinstance(value, torch.Tensor) else "a tensor")
    return value


def _tensor(value, what: str, dtype: torch.dtype, shape: tuple) -> torch.Tensor:
    ok = isinstance(value, torch.Tensor) and value.dtype == dtype and tuple(value.shape) == shape
    expect(ok, what, f"a {dtype} tensor of shape {shape}",
           f"{value.dtype} {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__)
    return value


def set_rng_states(states, where: str) -> None:
    """Restore plain_rng_states(); everything is checked before any generator is touched."""
    expect(isinstance(states, dict) and {"torch", "numpy", "python"} <= set(states), f"{where} rng",
           "a dict with torch, numpy and python states", type(states).__name__)
    torch_state = _tensor(states["torch"], f"{where} rng torch", torch.uint8, tuple(torch.get_rng_state().shape))
    n, p = states["numpy"], states["python"]
    expect(isinstance(n, dict) and isinstance(p, dict), f"{where} rng", "numpy and python states as dicts",
           f"{type(n).__name__} and {type(p).__name__}")
    expect(n.get("bit_generator") == "MT19937", f"{where} rng numpy bit_generator", "'MT19937'",
           repr(n.get("bit_generator")))
    key = _tensor(n.get("key"), f"{where} rng numpy key", torch.int64, (624,))
    expect(bool(((key >= 0) & (key < 2**32)).all()), f"{where} rng numpy key", "values in [0, 2**32)", "others")
    pos = _int(n.get("pos"), f"{where} rng numpy pos", 0, 624)
    has_gauss = _int(n.get("has_gauss"), f"{where} rng numpy has_gauss", 0, 1)
    cached = n.get("cached_gaussian")
    expect(isinstance(cached, float), f"{where} rng numpy cached_gaussian", "a float", repr(cached))
    version = _int(p.get("version"), f"{where} rng python version", 0, 2**31)
    internal = _tensor(p.get("internal"), f"{where} rng python internal", torch.int64, (625,))
    gauss_next = p.get("gauss_next")
    expect(gauss_next is None or isinstance(gauss_next, float), f"{where} rng python gauss_next",
           "None or a float", repr(gauss_next))
    # the GPU's generator: restored where the run continues on a GPU (a CPU resume of a CUDA run needs none)
    cuda_state = states.get("cuda") if torch.cuda.is_available() else None
    if cuda_state is not None:
        cuda_state = _tensor(cuda_state, f"{where} rng cuda", torch.uint8, tuple(torch.cuda.get_rng_state().shape))
    try:
        python_state = (version, tuple(int(v) for v in internal.tolist()), gauss_next)
        random.setstate(python_state)
        np.random.set_state(("MT19937", key.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(torch_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state)
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise GrunetError(f"{where} rng: expected states the generators accept, got one they refuse ({e})") from None


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

    def load_state_dict(self, state: dict, where: str = "batches") -> None:
        expect(isinstance(state, dict), where, "a dict", type(state).__name__)
        position = _int(state.get("position"), f"{where} position", 0, self.n)
        epoch = _int(state.get("epoch"), f"{where} epoch", 0, 2**62)
        order = state.get("order")
        if self.shuffle:
            _tensor(order, f"{where} order", torch.int64, (self.n,))
            expect(torch.equal(order.sort().values, torch.arange(self.n)), f"{where} order",
                   f"a permutation of 0..{self.n - 1}", "other indices")
        else:
            expect(order is None, f"{where} order", "None (consecutive slices)", type(order).__name__)
        generator = _tensor(state.get("generator"), f"{where} generator", torch.uint8,
                            tuple(self.generator.get_state().shape))
        try:
            self.generator.set_state(generator)
        except RuntimeError as e:
            raise GrunetError(f"{where} generator: expected a state torch accepts, got one it refuses ({e})") from None
        self.position, self.epoch, self.order = position, epoch, order


def check_progress(state, where: str, steps_limit: int) -> dict:
    """The trainer's progress entry: {"step", "rows", "window", "best", "elapsed", "train_seconds"}."""
    expect(isinstance(state, dict), where, "a dict", type(state).__name__)
    _int(state.get("step"), f"{where} step", 0, steps_limit)
    rows = state.get("rows")
    expect(isinstance(rows, list), f"{where} rows", "a list", type(rows).__name__)
    for i, row in enumerate(rows):
        if isinstance(row, dict):  # a run from before the optional columns: they stay empty
            row.update({k: "" for k in OPTIONAL_FIELDS if k not in row})
        ok = (isinstance(row, dict) and set(row) == set(METRICS_FIELDS) and isinstance(row["step"], int)
              and not isinstance(row["step"], bool) and all(isinstance(row[k], str) for k in METRICS_FIELDS[1:]))
        expect(ok, f"{where} rows[{i}]", f"a dict with an integer step and strings for {list(METRICS_FIELDS[1:])}",
               repr(row)[:80])
        try:
            [float(row[k]) for k in METRICS_FIELDS[1:] if not (k in OPTIONAL_FIELDS and row[k] == "")]
        except ValueError:
            raise GrunetError(f"{where} rows[{i}]: expected numbers, got {repr(row)[:80]}") from None
    window = state.get("window")
    ok = (isinstance(window, list) and len(window) == 3 and isinstance(window[0], float)
          and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in window[1:]))
    expect(ok, f"{where} window", "[loss sum, correct, seen]", repr(window)[:80])
    for key in ("best", "elapsed", "train_seconds"):
        expect(isinstance(state.get(key), float), f"{where} {key}", "a float", repr(state.get(key)))
    state.setdefault("since_best", 0)  # runs from before --early-stop
    _int(state["since_best"], f"{where} since_best", 0, steps_limit)
    return state
