"""Atomic file writes: nothing half-written is ever left at the destination.

Write to a temporary file in the destination's directory, flush and fsync it, then ``os.replace`` it over
the target (atomic on POSIX). A crash or Ctrl-C leaves either the old file or the new one, never a mix.
A destination that cannot be written (a missing or read-only directory, a directory in the way, a full disk)
raises GrunetError naming the path, and the temporary file is removed.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

from .errors import os_error


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on success it replaces ``path``."""
    path = Path(path)
    if path.is_dir():
        raise os_error(path, "write a file", IsADirectoryError(21, "a directory at that path"))
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
        if e.filename not in (None, tmp, os.fspath(path)):
            raise  # an error reading some other file inside the with-block: not ours to rename
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
