"""What the machine can hold: a size a file or an option promises is compared with this before allocating.

A hand-edited config.json or checkpoint architecture can ask for units=10**7 (3 * 10**14 parameters); building
that would exhaust memory or take the machine down before any error could be raised, so the parameter count
is computed from the settings first (or the module is built on the meta device) and refused here.
"""
from __future__ import annotations

import os

from .errors import expect


def physical_memory() -> int:
    """Bytes of RAM on this machine (a generous bound: the process may get less)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: no bound known, assume 64 GiB
        return 64 << 30


def expect_fits(nbytes: int, what: str, detail: str) -> None:
    """One line unless ``nbytes`` fit in this machine's memory; ``detail`` says where the number comes from."""
    limit = physical_memory()
    expect(nbytes <= limit, what, f"a size that fits in this machine's {limit / 2**30:.1f} GiB of memory",
           f"{detail}, which needs {nbytes / 2**30:,.1f} GiB")
