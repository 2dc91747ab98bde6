"""A run directory: made only for a new run, never over someone's files, and trained by one process at a time.

    config.json          the run's settings; its presence is what makes a directory a run
    last.pt, best.pt     checkpoints (grunet.checkpoint), metrics.csv, summary.json, report/
    .grunet.lock         held with flock(LOCK_EX) while a process trains the run; it holds that process's pid

A new run needs a new or empty directory (a lock file or the temporary file of a killed write does not count),
so files named like a run's (last.pt, metrics.csv) that belong to something else are never overwritten. The
lock is released by the kernel when its process ends, however it ends, so a killed run never stays locked.
"""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from .errors import GrunetError, expect, os_error

LOCK_NAME = ".grunet.lock"


def _leftovers(out: Path) -> list[str]:
    """Entries of ``out`` that are someone's files: all but the lock and temporary files of dead writers."""
    names = []
    for entry in sorted(out.iterdir()):
        if entry.name == LOCK_NAME or entry.name.startswith(".grunet-write-test"):
            continue
        if entry.name.startswith(".") and entry.name.endswith(".tmp"):
            continue  # a killed atomic write's temporary file; grunet.fileio removes it on the next write
        names.append(entry.name)
    return names


def check_new(out: Path) -> None:
    """Refuse an --out that is a file, holds a run, or holds other files."""
    if not out.exists():
        return
    expect(out.is_dir(), "--out", "a directory (or a path to create)", f"{out}, which is a file")
    expect(not (out / "config.json").exists(), "--out", "an empty or new directory",
           f"{out}, which already holds a run (continue it with --resume {out}, or choose another --out)")
    try:
        others = _leftovers(out)
    except OSError as e:
        raise os_error(out, "list a directory for the run", e) from None
    expect(not others, "--out", "an empty or new directory",
           f"{out}, which holds {len(others)} entries that are not a run ({', '.join(others[:3])}"
           f"{', ...' if len(others) > 3 else ''}); choose another --out")


def make_new(out: Path) -> None:
    check_new(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".grunet-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise GrunetError(f"--out: expected a writable directory, got {out} ({e.strerror})") from None


def check_writable(out: Path) -> None:
    """A resumed run writes checkpoints: fail before training, not at the first checkpoint."""
    probe = out / f".grunet-write-test.{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise GrunetError(f"--resume: expected a writable run directory, got {out} ({e.strerror})") from None


class RunLock:
    """``with RunLock(out):`` holds an exclusive flock on out/.grunet.lock; a second holder gets one line."""

    def __init__(self, out: Path) -> None:
        self.out, self.fd = out, None

    def __enter__(self) -> "RunLock":
        path = self.out / LOCK_NAME
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise os_error(path, "create the run's lock file in a writable run directory", e) from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(self.fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(self.fd)
            self.fd = None
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise GrunetError(f"{self.out}: expected a run no other process is training, got one locked by "
                                  f"pid {holder} (wait for it to end, or stop it)") from None
            raise os_error(path, "lock the run directory", e) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the flock
            self.fd = None
