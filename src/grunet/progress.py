"""Training progress: a tqdm bar on a terminal, plain lines otherwise (logs, pipes, CI).

Both show the same facts: step, loss, accuracy, samples/s and the estimated time left.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    def __init__(self, total: int, initial: int = 0, enabled: Optional[bool] = None,
                 print_fn: Callable[[str], None] = print) -> None:
        self.total, self.done, self.print_fn = total, initial, print_fn
        self.enabled = sys.stdout.isatty() if enabled is None else enabled
        self.samples_per_s: Optional[float] = None
        self._t0, self._initial = time.perf_counter(), initial
        self._bar = None
        if self.enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stdout)

    def eta(self) -> float:
        rate = (self.done - self._initial) / max(time.perf_counter() - self._t0, 1e-9)
        return (self.total - self.done) / rate if rate > 0 else float("nan")

    def update(self, loss: float, accuracy: Optional[float], samples_per_s: float) -> None:
        self.done += 1
        self.samples_per_s = samples_per_s
        if self._bar is not None:
            postfix = {"loss": f"{loss:.4f}", "samples/s": f"{samples_per_s:,.0f}"}
            if accuracy is not None:
                postfix["best acc"] = f"{accuracy:.4f}"
            self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(1)

    def write(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line)
            return
        extra = ""
        if self.samples_per_s is not None:
            eta = self.eta()
            extra = f"  ({self.samples_per_s:,.0f} samples/s, ETA {format_seconds(eta) if eta == eta else '?'})"
        self.print_fn(line + extra)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()
