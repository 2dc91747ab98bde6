"""Build (once) and load the fused CPU GRU extension with torch.utils.cpp_extension.load.

The build is cached by torch in ``~/.cache/torch_extensions`` (or ``$TORCH_EXTENSIONS_DIR``) under a name
that carries a hash of the C++ sources, the flags, the torch version and the CPU, so that a changed source
or a different machine builds afresh instead of loading a stale library. The first build takes about a
minute (torch's headers dominate); later loads take well under a second.

Flags: ``-O3 -march=native -fopenmp`` so that the ``#pragma omp simd`` gate loops are vectorised (with an
inline exp in both precisions, see gru_cpu.h), the products use the CPU's widest vectors (AVX-512 here),
and ATen's at::parallel_for (an inline ``#pragma omp parallel`` in the headers) really runs threads. No
``-ffast-math``: it lets the compiler assume that no value is NaN or infinite, and such values then vanish
from the results where torch.nn.GRU propagates them; of what it bundles only the parts that keep IEEE
semantics are on (FMA contraction: rounding only; no errno, no traps: nothing reads them). The library
needs libgomp.so.1, the soname of the libgomp torch ships and has already loaded, so the process keeps a
single OpenMP runtime. The first build says so on stderr, in one line.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Optional

from .. import KernelUnavailable

HERE = Path(__file__).resolve().parent
SOURCES = ("bindings.cpp", "gru_forward.cpp", "gru_backward.cpp", "gru_autograd.cpp", "gru_ops.cpp")
HEADERS = ("gru_cpu.h", "small_gemm.h")
# no -ffast-math: it lets the compiler assume finite values, and NaN or inf then vanish from the results
# (torch.nn.GRU propagates them). Contraction into FMA is kept (it changes rounding only), and errno and
# trapping are off (nothing reads errno or enables FP traps), which lets more of the gate loops vectorise.
CFLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast", "-fopenmp",
          "-std=c++17"]
LDFLAGS = ["-fopenmp"]

_module: Optional[ModuleType] = None
_error: Optional[str] = None
build_seconds: Optional[float] = None  # time of the load() that built or loaded the module in this process


def _cpu_id() -> str:
    """The CPU model (-march=native code must not run on another CPU that shares the cache)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_key() -> str:
    import torch

    h = hashlib.sha256()
    for name in SOURCES + HEADERS:
        h.update(name.encode())
        h.update((HERE / name).read_bytes())
    h.update(" ".join(CFLAGS + LDFLAGS).encode())
    h.update(torch.__version__.encode())
    h.update(_cpu_id().encode())
    return h.hexdigest()[:16]


def build_directory(name: str) -> Path:
    """Where torch builds and caches the extension called ``name`` ($TORCH_EXTENSIONS_DIR or its default)."""
    from torch.utils import cpp_extension

    return Path(cpp_extension._get_build_directory(name, verbose=False))


def load() -> ModuleType:
    """The compiled module, building it on first use; raises KernelUnavailable with the reason."""
    global _module, _error, build_seconds
    if _module is not None:
        return _module
    if _error is not None:
        raise KernelUnavailable(_error)
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        _error = f"no C++ compiler ({compiler!r} not found on PATH)"
        raise KernelUnavailable(_error)
    start = time.perf_counter()
    try:
        from torch.utils import cpp_extension

        name = f"grunet_cpu_{cache_key()}"
        directory = build_directory(name)
        if not (directory / f"{name}.so").exists():  # a build, not a load from the cache: say why we wait
            print(f"grunet: compiling the fused CPU kernel (once, one to two minutes); cached in {directory}",
                  file=sys.stderr, flush=True)
        _module = cpp_extension.load(
            name=name,
            sources=[str(HERE / s) for s in SOURCES],
            extra_cflags=CFLAGS,
            extra_ldflags=LDFLAGS,
            extra_include_paths=[str(HERE)],
            verbose=bool(os.environ.get("GRUNET_BUILD_VERBOSE")),
        )
    except Exception as e:  # compiler errors, missing ninja, a library that fails to load ...
        lines = str(e).strip().splitlines()
        errors = [line for line in lines if "error" in line.lower()]  # the compiler's first complaint
        reason = (errors[:1] + lines[-1:]) if errors else lines[-1:]
        _error = f"building the CPU kernel failed: {type(e).__name__}: {' | '.join(reason)}"[:2000]
        raise KernelUnavailable(_error) from e
    build_seconds = time.perf_counter() - start
    return _module
