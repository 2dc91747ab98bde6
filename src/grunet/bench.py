"""Timing grunet's GRU implementations against torch.nn.GRU, in one process on the same data.

Every measurement warms up first, then takes the median of ``repeats`` timings (each the mean of a few
calls); ratios are torch.nn.GRU's median over the other's, so > 1 means faster than torch.nn.GRU.
Implementations: "torch" (torch.nn.GRU), "reference" (grunet's PyTorch loop), "fused" (grunet's kernel).
"""
from __future__ import annotations

import datetime
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

import grunet

IMPLS = ("torch", "reference", "fused")


@dataclass
class Row:
    name: str
    ms: dict[str, Optional[float]] = field(default_factory=dict)  # impl -> median ms (None = skipped)
    note: str = ""

    def ratio(self, impl: str) -> Optional[float]:
        base, t = self.ms.get("torch"), self.ms.get(impl)
        return base / t if base and t else None


def median_ms(fn: Callable[[], object], repeats: int, number: int = 1, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - start) / number)
    return statistics.median(times) * 1e3


def make_gru(impl: str, I: int, H: int, batch_first: bool = True) -> nn.Module:
    torch.manual_seed(0)
    if impl == "torch":
        return nn.GRU(I, H, batch_first=batch_first)
    return grunet.GRU(I, H, batch_first=batch_first, impl=impl)


# ----------------------------------------------------------------------------------------------------
def training_step(repeats: int, impls=IMPLS, B=50, T=28, I=28, H=75) -> Row:
    """(a) the tutorial model's training step: GRU(75) -> Linear(10), cross-entropy, Adam."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(B, T, I, generator=g), torch.randint(0, 10, (B,), generator=g)
    row = Row(f"train step B={B} T={T} I={I} H={H}")
    steps = {}
    for impl in impls:
        gru, head = make_gru(impl, I, H), nn.Linear(H, 10)
        opt = torch.optim.Adam(list(gru.parameters()) + list(head.parameters()), lr=1e-3)

        def step(gru=gru, head=head, opt=opt):
            opt.zero_grad()
            out, _ = gru(x)
            nn.functional.cross_entropy(head(out[:, -1]), y).backward()
            opt.step()

        steps[impl] = step
    for impl in impls:  # warm every model before timing any
        median_ms(steps[impl], 1, warmup=5)
    for impl in impls:
        row.ms[impl] = median_ms(steps[impl], repeats, number=10)
    return row


def inference(repeats: int, impls=IMPLS, n=10_000, batch=1000, T=28, I=28, H=75) -> Row:
    """(c) throughput of the tutorial model (GRU + Linear) over n sequences, no grad; ms per n."""
    x = torch.rand(n, T, I, generator=torch.Generator().manual_seed(0))
    row = Row(f"inference {n} seqs (batch {batch})")
    for impl in impls:
        gru, head = make_gru(impl, I, H), nn.Linear(H, 10)

        def run(gru=gru, head=head):
            with torch.no_grad():
                for i in range(0, n, batch):
                    out, _ = gru(x[i:i + batch])
                    head(out[:, -1])

        row.ms[impl] = median_ms(run, max(3, repeats // 3), warmup=1)
    row.note = "seq/s: " + ", ".join(f"{k} {n / (v / 1e3):,.0f}" for k, v in row.ms.items() if v)
    return row


def sweep_case(B: int, H: int, T: int, repeats: int, impls=IMPLS, I: int = 28, max_call_s: float = 2.0) -> Row:
    """(b) forward + backward of one GRU layer; impls whose single call would exceed max_call_s are skipped."""
    row = Row(f"fwd+bwd B={B} H={H} T={T}")
    flops = 3 * 2 * T * B * 3 * H * (I + H)  # forward ~ 2*T*B*3H*(I+H), backward ~ twice that
    x = torch.rand(B, T, I, generator=torch.Generator().manual_seed(0)).requires_grad_()
    skipped = []
    for impl in impls:
        overhead = T * 1e-3 if impl == "reference" else 0.0  # the Python loop: ~1 ms per step, fwd+bwd
        if flops / 40e9 + overhead > max_call_s:  # ~40 GFLOP/s: a generous estimate of this CPU
            row.ms[impl] = None
            skipped.append(impl)
            continue
        gru = make_gru(impl, I, H)

        def run(gru=gru):
            out, _ = gru(x)
            out.sum().backward()

        start = time.perf_counter()
        run()
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
    return [(B, H, T) for B in (1, 50, 256) for H in (75, 256, 1024) for T in (28, 784)]


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
