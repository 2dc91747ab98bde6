"""Fetch one file from a list of mirrors, verified by SHA-256, into place atomically.

Why this shape: dataset hosts come and go (yann.lecun.com has served 403s for long stretches), so every file
has several mirrors, tried in order. A mirror "fails" on anything that could leave us with wrong bytes: an HTTP
error, a connection error, a body shorter than its Content-Length, or a SHA-256 that differs from the published
one. Bytes stream to a temporary file next to the destination while being hashed, and only a verified file is
renamed into place (``fileio.atomic_open``), so an interrupted or bad download never leaves a file that a
later run would trust, nor a stray temporary file.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import GrunetError
from ..fileio import atomic_open

CHUNK = 1 << 20
TIMEOUT_S = 30.0


class DownloadError(GrunetError):
    """Every mirror failed for one file; ``attempts`` holds (url, reason) pairs, in the order tried."""

    def __init__(self, filename: str, attempts: list[tuple[str, str]]):
        self.filename = filename
        self.attempts = attempts
        tried = "; ".join(f"{url}: {reason}" for url, reason in attempts) or "no mirrors"
        super().__init__(f"{filename}: expected a download from one of its mirrors, got failures from all "
                         f"({tried})")


class _Rejected(Exception):
    """This mirror gave bytes we will not keep (short body, wrong checksum)."""


def _network_failure(e: Exception) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return f"cannot connect ({e.reason})"
    return f"{type(e).__name__}: {e}"


NETWORK_ERRORS = (OSError, http.client.HTTPException, ValueError)  # URLError and HTTPError are OSErrors


def _stream(url: str, f, sha256: str) -> None:
    """Copy ``url`` into the open file ``f``; raise _Rejected unless the body is complete and hashes right.

    Network errors become _Rejected here, inside the caller's atomic write: an OSError escaping into it
    would read as a failure to write the destination."""
    request = urllib.request.Request(url, headers={"User-Agent": "grunet"})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except NETWORK_ERRORS as e:
        raise _Rejected(_network_failure(e)) from None
    with response:
        length = response.headers.get("Content-Length")
        digest, size = hashlib.sha256(), 0
        while True:
            try:
                chunk = response.read(CHUNK)
            except http.client.IncompleteRead as e:
                size += len(e.partial)
                raise _Rejected(f"truncated body: got {size} of {length} bytes") from None
            except NETWORK_ERRORS as e:
                raise _Rejected(_network_failure(e)) from None
            if not chunk:
                break
            digest.update(chunk)
            f.write(chunk)
            size += len(chunk)
    if length is not None and int(length) != size:
        raise _Rejected(f"truncated body: got {size} of {length} bytes")
    if digest.hexdigest() != sha256:
        raise _Rejected(f"sha256 mismatch: expected {sha256}, got {digest.hexdigest()}")


def fetch(filename: str, mirrors: tuple[str, ...], sha256: str, dest_dir: str | os.PathLike,
          *, quiet: bool = False) -> Path:
    """Download ``filename`` from the first mirror (a base URL) that serves the right bytes.

    Returns ``dest_dir / filename``. Raises DownloadError listing what each mirror said if none did.
    """
    dest = Path(dest_dir) / filename
    attempts: list[tuple[str, str]] = []
    for base in mirrors:
        url = base if base.endswith(filename) else base.rstrip("/") + "/" + filename
        if not quiet:
            print(f"grunet: downloading {url}", file=sys.stderr)
        try:
            with atomic_open(dest, "wb") as f:
                _stream(url, f, sha256)
            return dest
        except _Rejected as e:
            attempts.append((url, str(e)))
    raise DownloadError(filename, attempts)
