"""Atomic file writes: nothing half-written is ever left at the destination.

Write to a temporary file in the destination's directory, flush and fsync it, then ``os.replace`` it over
the target (atomic on POSIX). A crash or Ctrl-C leaves either the old file or the new one, never a mix.
A destination that cannot be written (a missing or read-only directory, a directory in the way, a full disk)
raises GrunetError naming the path, and the temporary file is removed.

A process killed during a write (kill -9, power loss) cannot remove its temporary file, so the name holds
the writer's pid, ``.NAME.PID.RANDOM.tmp``, and the next write of NAME removes those whose process is gone.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

from .errors import os_error

# what writing, flushing or renaming the file itself can fail with (a full disk, a read-only file system ...)
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                          errno.EFBIG, errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.EXDEV})


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of ``path`` left by writers that no longer run; returns them."""
    path = Path(path)
    removed = []
    try:
        candidates = list(path.parent.glob(f".{glob_escape(path.name)}.*.tmp"))
    except OSError:
        return removed
    for tmp in candidates:
        parts = tmp.name[len(path.name) + 2:-len(".tmp")].split(".")  # PID, RANDOM (no dot in either)
        if len(parts) != 2 or not parts[0].isdigit():
            continue
        pid = int(parts[0])
        if pid != os.getpid() and not _process_alive(pid):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on success it replaces ``path``."""
    path = Path(path)
    if path.is_dir():
        raise os_error(path, "write a file", IsADirectoryError(21, "a directory at that path"))
    remove_stale_temporaries(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    except OSError as e:
        raise os_error(path, "write a file in an existing, writable directory", e) from None
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a written file gets the usual permissions
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if e.errno not in WRITE_ERRNOS or e.filename not in (None, tmp, os.fspath(path)):
            raise  # not a failure to write this file (a network error, a read of another file): not ours to rename
        raise os_error(path, "write the file", e) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def torch_save(obj, path: str | os.PathLike) -> None:
    """torch.save through a temporary file (a killed save never corrupts the previous checkpoint)."""
    import torch

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
