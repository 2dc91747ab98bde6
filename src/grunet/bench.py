"""Timing grunet's GRU implementations against torch.nn.GRU, in one process on the same data.

Every measurement warms up first, then takes the median of ``repeats`` timings (each the mean of a few
calls); ratios are torch.nn.GRU's median over the other's, so > 1 means faster than torch.nn.GRU.
Implementations: "torch" (torch.nn.GRU), "reference" (grunet's PyTorch loop), "fused" (grunet's kernel),
"auto" (grunet's default choice) and "triton" (grunet's Triton kernel, CUDA). Everything runs on ``device``
(set_device: "cpu", or "cuda" with torch.cuda.synchronize() around every timing).
When Keras 3 is importable, the tutorial training step and inference are also timed in Keras (on JAX when
KERAS_BACKEND is unset and jax is importable), on the same data in the same process.
"""
from __future__ import annotations

import datetime
import importlib.util
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

import grunet

IMPLS = ("torch", "reference", "fused")  # the default set on CPU
CUDA_IMPLS = ("torch", "reference", "auto", "triton")  # on CUDA: cuDNN, the loop, grunet's choice, Triton
KNOWN_IMPLS = ("torch", "reference", "fused", "auto", "triton")
_device = torch.device("cpu")


def set_device(device: str) -> None:
    """Where every model and tensor of the timings lives."""
    global _device
    _device = torch.device(device)


def on_device(t: torch.Tensor) -> torch.Tensor:
    return t.to(_device)


def _sync() -> None:
    if _device.type == "cuda":
        torch.cuda.synchronize(_device)


@dataclass
class Row:
    name: str
    ms: dict[str, Optional[float]] = field(default_factory=dict)  # impl -> median ms (None = skipped)
    note: str = ""
    keras_note: str = ""

    def ratio(self, impl: str) -> Optional[float]:
        base, t = self.ms.get("torch"), self.ms.get(impl)
        return base / t if base and t else None


def median_ms(fn: Callable[[], object], repeats: int, number: int = 1, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        for _ in range(number):
            fn()
        _sync()
        times.append((time.perf_counter() - start) / number)
    return statistics.median(times) * 1e3


def make_gru(impl: str, I: int, H: int, batch_first: bool = True) -> nn.Module:
    torch.manual_seed(0)
    if impl == "torch":
        return nn.GRU(I, H, batch_first=batch_first).to(_device)
    return grunet.GRU(I, H, batch_first=batch_first, impl=impl).to(_device)


# ----------------------------------------------------------------------------------------------------
# torch.optim.Adam's implementations: name -> constructor options ("default": a Python loop over the
# parameters on CPU, ~40 us a parameter tensor here; "fused": one C++ kernel for all of them)
ADAM_OPTIONS = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def classifier_step(gru: nn.Module, x: torch.Tensor, y: torch.Tensor, adam: str, lr: float = 1e-3):
    """One training step of the tutorial model around ``gru`` (its last state -> Linear(H, 10), cross-entropy,
    Adam with ``ADAM_OPTIONS[adam]`` at learning rate ``lr``), as a function the timers call."""
    head = nn.Linear(gru.hidden_size, 10).to(_device)
    opt = torch.optim.Adam(list(gru.parameters()) + list(head.parameters()), lr=lr, **ADAM_OPTIONS[adam])

    def step():
        opt.zero_grad()
        out, _ = gru(x)
        nn.functional.cross_entropy(head(out[:, -1]), y).backward()
        opt.step()

    return step


def training_step(repeats: int, impls=IMPLS, B=50, T=28, I=28, H=75, keras: bool = False,
                  adam: str = "fused") -> Row:
    """(a) the tutorial model's training step: GRU(75) -> Linear(10), cross-entropy, torch.optim.Adam of the
    implementation `adam` (see ADAM_OPTIONS, the same for every implementation); with keras, also Keras 3's
    train_on_batch."""
    g = torch.Generator().manual_seed(0)
    x, y = on_device(torch.rand(B, T, I, generator=g)), on_device(torch.randint(0, 10, (B,), generator=g))
    row = Row(f"train step B={B} T={T} I={I} H={H}, Adam {adam}")
    steps = {}
    for impl in impls:
        steps[impl] = classifier_step(make_gru(impl, I, H), x, y, adam)
    for impl in steps:  # warm every model before timing any
        median_ms(steps[impl], 1, warmup=10)
    # round robin: each repeat times every implementation once, so that drift in the machine's speed
    # (other processes, clocks) falls on all of them alike; the median of each is reported. Each block of
    # 10 timed steps starts with 2 untimed ones: the first steps after a switch run on caches the other
    # implementation filled and, after the reference's mostly one-thread block, wake an OpenMP worker that
    # went to sleep (measured per position in a block: fused 1.94, 1.63, 1.53, then ~1.45 ms; torch.nn.GRU
    # 6.5, 6.2, 6.1, then ~6.0 ms), which a training loop pays once, not every 10 steps.
    times: dict[str, list[float]] = {impl: [] for impl in steps}
    for _ in range(repeats):
        for impl, step in steps.items():
            times[impl].append(median_ms(step, 1, number=10, warmup=2))
    for impl, t in times.items():
        row.ms[impl] = statistics.median(t)
    if keras and _keras is not None:  # timed on its own: JAX's threads and torch's would contend if interleaved
        row.ms["keras"] = median_ms(keras_training_step(x, y, H), repeats, number=10, warmup=10)
        row.keras_note = "train_on_batch"
    return row


class LayerNormGRULoop(nn.Module):
    """The layer-normalised GRU as a PyTorch user writes it today (torch.nn.GRU has no such option): the two
    projections, an nn.LayerNorm on each (its shift is the bias), the reset-after gates, a Python loop."""

    def __init__(self, I: int, H: int):
        super().__init__()
        self.ih, self.hh = nn.Linear(I, 3 * H, bias=False), nn.Linear(H, 3 * H, bias=False)
        self.ln_ih, self.ln_hh = nn.LayerNorm(3 * H), nn.LayerNorm(3 * H)
        self.hidden_size = H

    def forward(self, x):  # x (B, T, I) -> (output (B, T, H), None)
        h = x.new_zeros(x.shape[0], self.hidden_size)
        gx_all = self.ln_ih(self.ih(x))  # the input side of every step at once, as a careful user would
        outs = []
        for t in range(x.shape[1]):
            a_r, a_z, a_n = gx_all[:, t].chunk(3, -1)
            h_r, h_z, h_n = self.ln_hh(self.hh(h)).chunk(3, -1)
            r, z = torch.sigmoid(a_r + h_r), torch.sigmoid(a_z + h_z)
            n = torch.tanh(a_n + r * h_n)
            h = n + z * (h - n)
            outs.append(h)
        return torch.stack(outs, 1), None


# case name -> how its GRU is made; timed against the first (the plain fused step)
CELL_CASES = {
    "plain GRU, fused": lambda I, H: grunet.GRU(I, H, batch_first=True, impl="fused"),
    "recurrent_dropout=0.25, fused": lambda I, H: grunet.GRU(I, H, batch_first=True, impl="fused",
                                                             recurrent_dropout=0.25),
    "zoneout=0.1, fused": lambda I, H: grunet.GRU(I, H, batch_first=True, impl="fused", zoneout=0.1),
    "layer_norm, fused": lambda I, H: grunet.GRU(I, H, batch_first=True, impl="fused", layer_norm=True),
    "layer_norm, reference": lambda I, H: grunet.GRU(I, H, batch_first=True, impl="reference", layer_norm=True),
    "layer_norm, PyTorch loop (nn.LayerNorm)": LayerNormGRULoop,
}


def cells_training_step(repeats: int, B=50, T=28, I=28, H=75, adam: str = "fused") -> dict[str, float]:
    """The tutorial model's training step with each cell option (CELL_CASES), timed round robin as in
    training_step; case -> median ms.

    Every case is timed at the same weights (the step runs with learning rate 0, all its work included):
    trained on one batch, each model drifts to its own weights, and some reach gradients that vanish below
    float32's normal range within the 28 steps, where the CPU computes subnormal numbers ~5-15x slower. That
    measured the trajectory, not the option (the recurrent-dropout row swung from +8% to +80-500%)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(B, T, I, generator=g), torch.randint(0, 10, (B,), generator=g)
    steps = {}
    for name, make in CELL_CASES.items():
        torch.manual_seed(0)
        steps[name] = classifier_step(make(I, H).train(), x, y, adam, lr=0.0)
    for step in steps.values():
        median_ms(step, 1, warmup=10)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(median_ms(step, 1, number=10, warmup=2))
    return {name: statistics.median(t) for name, t in times.items()}


def cells_table(ms: dict[str, float], B=50, T=28, I=28, H=75) -> str:
    """Each case's ms, its cost over the plain fused step, and the layer-norm rows against the fused one."""
    plain = next(iter(ms.values()))
    ln = ms.get("layer_norm, fused")
    lines = [f"| cell (training step B={B} T={T} I={I} H={H}, Adam fused, lr 0: the same weights) | ms | vs plain fused step | layer_norm fused "
             "speed-up |", "|---|---|---|---|"]
    for name, t in ms.items():
        speedup = f"{t / ln:.2f}x" if ln and name.startswith("layer_norm") and "fused" not in name else "-"
        lines.append(f"| {name} | {t:.3f} | {t / plain - 1:+.0%} | {speedup} |")
    return "\n".join(lines)


def inference(repeats: int, impls=IMPLS, n=10_000, batch=1000, T=28, I=28, H=75, keras: bool = False) -> Row:
    """(c) throughput of the tutorial model (GRU + Linear) over n sequences, no grad; ms per n."""
    x = on_device(torch.rand(n, T, I, generator=torch.Generator().manual_seed(0)))
    row = Row(f"inference {n} seqs (batch {batch})")
    for impl in impls:
        gru, head = make_gru(impl, I, H), nn.Linear(H, 10).to(_device)

        def run(gru=gru, head=head):
            with torch.no_grad():
                for i in range(0, n, batch):
                    out, _ = gru(x[i:i + batch])
                    head(out[:, -1])

        row.ms[impl] = median_ms(run, max(3, repeats // 3), warmup=1)
    row.note = "seq/s: " + ", ".join(f"{k} {n / (v / 1e3):,.0f}" for k, v in row.ms.items() if v)
    if keras and _keras is not None:
        row.ms["keras"], row.keras_note = keras_inference(x, batch, max(3, repeats // 3), H)
    return row


def sweep_case(B: int, H: int, T: int, repeats: int, impls=IMPLS, I: int = 28, max_call_s: float = 2.0) -> Row:
    """(b) forward + backward of one GRU layer; impls whose single call would exceed max_call_s are skipped."""
    row = Row(f"fwd+bwd B={B} H={H} T={T}")
    flops = 3 * 2 * T * B * 3 * H * (I + H)  # forward ~ 2*T*B*3H*(I+H), backward ~ twice that
    x = on_device(torch.rand(B, T, I, generator=torch.Generator().manual_seed(0))).requires_grad_()
    skipped = []
    for impl in impls:
        overhead = T * 1e-3 if impl == "reference" else 0.0  # the Python loop: ~1 ms per step, fwd+bwd
        if _device.type == "cpu" and flops / 40e9 + overhead > max_call_s:  # ~40 GFLOP/s: a generous estimate
            row.ms[impl] = None
            skipped.append(impl)
            continue
        gru = make_gru(impl, I, H)

        def run(gru=gru):
            out, _ = gru(x)
            out.sum().backward()

        _sync()
        start = time.perf_counter()
        run()
        _sync()
        if time.perf_counter() - start > max_call_s:
            row.ms[impl] = None
            skipped.append(impl)
            continue
        row.ms[impl] = median_ms(run, repeats, warmup=1)
    if skipped:
        row.note = f"skipped (over {max_call_s:g} s a call): {', '.join(skipped)}"
    return row


def sweep_shapes(quick: bool) -> list[tuple[int, int, int]]:
    if quick:
        return [(B, H, 28) for B in (1, 50) for H in (75, 256)]
    if _device.type == "cuda":
        return [(B, H, T) for B in (1, 50, 256) for H in (75, 128, 256, 512) for T in (28, 784)]
    return [(B, H, T) for B in (1, 50, 256) for H in (75, 256, 1024) for T in (28, 784)]


# ----------------------------------------------------------------------------------------------------
# Keras 3 (the tutorial's framework), timed on the same data in the same process
_keras = None
_keras_error: Optional[str] = None


def load_keras():
    """(keras module or None, a one-line status). Sets KERAS_BACKEND=jax first when it is unset and jax is
    importable (Keras 3's default backend, tensorflow, is usually not installed beside torch)."""
    global _keras, _keras_error
    if _keras is not None:
        return _keras, keras_info()
    if _keras_error is not None:
        return None, _keras_error
    if importlib.util.find_spec("keras") is None:
        _keras_error = "keras: not installed, not timed"
        return None, _keras_error
    if "KERAS_BACKEND" not in os.environ and importlib.util.find_spec("jax") is not None:
        os.environ["KERAS_BACKEND"] = "jax"
    try:
        import keras

        if int(keras.__version__.split(".")[0]) < 3:
            raise ImportError(f"keras {keras.__version__} is not Keras 3")
    except Exception as e:  # e.g. the default tensorflow backend is not installed
        _keras_error = f"keras: installed but not importable ({type(e).__name__}: {e}), not timed"
        return None, _keras_error
    _keras = keras
    return keras, keras_info()


def keras_info() -> str:
    keras = _keras
    backend = keras.backend.backend()
    version = ""
    if backend == "jax":
        import jax

        version = f" {jax.__version__}"
    return f"keras: {keras.__version__} on {backend}{version}"


def keras_model(T: int, I: int, H: int):
    """The tutorial model in Keras 3: Input (T, I) -> GRU(H) -> Dense(10, softmax), Adam 1e-3."""
    keras = _keras
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((T, I)), keras.layers.GRU(H), keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    return model


def keras_training_step(x: torch.Tensor, y: torch.Tensor, H: int) -> Callable[[], object]:
    """A function running one train_on_batch of the tutorial model on (x (B, T, I), y (B,))."""
    xb, yb = x.numpy(), y.numpy()
    model = keras_model(x.shape[1], x.shape[2], H)
    return lambda: model.train_on_batch(xb, yb)


def keras_inference(x: torch.Tensor, batch: int, repeats: int, H: int) -> tuple[float, str]:
    """ms for the tutorial model over all of x (n, T, I) in batches: the faster of model.predict and a
    jitted stateless call (JAX backend); returns (ms, note)."""
    model = keras_model(x.shape[1], x.shape[2], H)
    n = x.shape[0]
    xs = x.numpy()
    times = {"predict": median_ms(lambda: model.predict(xs, batch_size=batch, verbose=0), repeats, warmup=1)}
    if _keras.backend.backend() == "jax":
        import jax

        tv = [v.value for v in model.trainable_variables]
        ntv = [v.value for v in model.non_trainable_variables]
        call = jax.jit(lambda tv, xb: model.stateless_call(tv, ntv, xb)[0])
        parts = [jax.numpy.asarray(xs[i:i + batch]) for i in range(0, n, batch)]

        def run():
            for p in parts:
                call(tv, p).block_until_ready()

        times["jitted call"] = median_ms(run, repeats, warmup=1)
    best = min(times, key=times.get)
    return times[best], "keras " + ", ".join(f"{k} {v:.1f} ms" for k, v in times.items())


def keras_table(rows: list[Row]) -> str:
    """fused and torch.nn.GRU against Keras 3: ratio = Keras time / other time (> 1 = faster than Keras)."""
    lines = ["| case | keras ms | torch ms | fused ms | torch vs keras | fused vs keras | note |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        k = r.ms.get("keras")
        if not k:
            continue
        cells = [f"{r.ms[i]:.3f}" if r.ms.get(i) else "-" for i in ("keras", "torch", "fused")]
        ratios = [f"{k / r.ms[i]:.2f}x" if r.ms.get(i) else "-" for i in ("torch", "fused")]
        lines.append(f"| {r.name} | " + " | ".join(cells + ratios) + f" | {r.keras_note} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    import os

    return {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}",
        "torch": torch.__version__,
        "threads": str(torch.get_num_threads()),
    }


def table(rows: list[Row], impls) -> str:
    head = "| case | " + " | ".join(f"{i} ms" for i in impls) + " | " + \
        " | ".join(f"{i} vs torch" for i in impls if i != "torch") + " | note |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        ms = [f"{r.ms[i]:.3f}" if r.ms.get(i) else "skipped" for i in impls]
        ratios = [f"{r.ratio(i):.2f}x" if r.ratio(i) else "-" for i in impls if i != "torch"]
        lines.append(f"| {r.name} | " + " | ".join(ms) + " | " + " | ".join(ratios) + f" | {r.note} |")
    return "\n".join(lines)
