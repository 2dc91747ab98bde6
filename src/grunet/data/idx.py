"""The IDX file format of MNIST and its relatives (LeCun's "MNIST database" page), read and written.

An IDX file is a 4-byte magic number, one big-endian uint32 per dimension, then the values row-major:

    magic = 0x00 0x00 <dtype code> <ndim>       dims = ndim x uint32 (big-endian)       data = prod(dims) values
    dtype codes: 0x08 ubyte, 0x09 sbyte, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64 (all big-endian)

Files are often gzip-compressed; we detect that by the gzip magic bytes 1f 8b, never by the file name, because
mirrors and users rename files freely. Everything that can go wrong with a downloaded file (a wrong magic, a
short or oversized body, a broken gzip stream) raises GrunetError naming the file and what was wrong, rather
than surfacing later as a reshape error or, worse, as silently misaligned images.

Files from elsewhere are untrusted: a few MB of gzip can inflate to GBs. So a file is streamed: its header
is read first and what it promises is checked (against a ceiling, and by the caller against what the
dataset can hold) before anything is allocated; the body is inflated straight into its array, and reading
stops one chunk past the promised end.
"""
from __future__ import annotations

import gzip as _gzip
import hashlib
import math
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ..errors import GrunetError
from ..fileio import write_bytes

GZIP_MAGIC = b"\x1f\x8b"
DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
CODES = {np.dtype(v).newbyteorder("="): k for k, v in DTYPES.items()}
# What read_idx will allocate for one file unless told otherwise: the largest file of the MNIST family is
# 47 MB (60,000 images of 28x28); a header promising more than this is refused before anything is inflated.
MAX_BYTES = 1 << 30
CHUNK = 1 << 16


@dataclass(frozen=True)
class IdxHeader:
    """What an IDX header promises: the element type and the dimensions, hence the body's size."""

    dtype: np.dtype  # big-endian, as stored
    dims: tuple[int, ...]

    @property
    def body_bytes(self) -> int:
        return math.prod(self.dims) * self.dtype.itemsize

    @property
    def size(self) -> int:
        return 4 + 4 * len(self.dims)

    def describe(self) -> str:
        return f"shape {self.dims} and type {self.dtype.newbyteorder('=').name}"


@dataclass(frozen=True)
class IdxContent:
    array: np.ndarray  # native-endian, writable
    sha256: str  # of the uncompressed IDX bytes, header included


def parse_header(data: bytes, what: str) -> IdxHeader:
    """The header at the start of ``data`` (which may hold just the header or the whole file)."""
    if len(data) < 4:
        raise GrunetError(f"{what}: expected at least a 4-byte header, got {len(data)} bytes")
    zero0, zero1, code, ndim = data[:4]
    if (zero0, zero1) != (0, 0):
        raise GrunetError(f"{what}: expected magic bytes 00 00 <type> <ndim>, got {data[:4].hex(' ')} "
                          "(not an IDX file, or still compressed with something other than gzip)")
    if code not in DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in DTYPES)
        raise GrunetError(f"{what}: expected a data type code in ({known}), got 0x{code:02X}")
    if ndim == 0:
        raise GrunetError(f"{what}: expected at least 1 dimension, got 0")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise GrunetError(f"{what}: expected a {header}-byte header for {ndim} dimensions, "
                          f"got a file of {len(data)} bytes")
    return IdxHeader(np.dtype(DTYPES[code]), struct.unpack(f">{ndim}I", data[4:header]))


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse uncompressed IDX bytes into a native-endian, writable array; ``name`` is used in errors."""
    what = f"IDX file {name}"
    head = parse_header(data, what)
    got = len(data) - head.size
    if got != head.body_bytes:
        kind = "truncated" if got < head.body_bytes else "oversized"
        raise GrunetError(f"{what}: expected {head.body_bytes} data bytes for {head.describe()}, got {got} ({kind})")
    array = np.frombuffer(data, dtype=head.dtype, offset=head.size).reshape(head.dims)
    return array.astype(head.dtype.newbyteorder("="))  # a native-endian, writable copy


def _read_fully(stream, n: int) -> bytes:
    parts, left = [], n
    while left:
        part = stream.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def load_idx(path: str | os.PathLike, *, max_bytes: int = MAX_BYTES,
             check: Optional[Callable[[IdxHeader], None]] = None) -> IdxContent:
    """Read an IDX file (gzip-compressed or raw), streaming, with bounded memory.

    The header is read first; ``check(header)`` may refuse what it promises (e.g. the wrong shape for the
    dataset), and a body larger than ``max_bytes`` is refused before any of it is inflated. The body is then
    inflated straight into the array, and the stream is read at most one chunk past its promised end: a gzip
    member that inflates to more than its header says (a bomb) stops there.
    """
    what = f"IDX file {path}"
    try:
        raw = open(path, "rb")
    except OSError as e:
        raise GrunetError(f"{what}: expected a readable file, got {e.strerror or type(e).__name__}") from None
    try:
        with raw:
            compressed = raw.read(2) == GZIP_MAGIC
            raw.seek(0)
            stream = _gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
            digest = hashlib.sha256()
            start = _read_fully(stream, 4)
            head_bytes = start + _read_fully(stream, 4 * start[3]) if len(start) == 4 else start
            head = parse_header(head_bytes, what)
            digest.update(head_bytes)
            if check is not None:
                check(head)
            if head.body_bytes > max_bytes:
                raise GrunetError(f"{what}: expected at most {max_bytes:,} data bytes, got a header promising "
                                  f"{head.body_bytes:,} for {head.describe()} (refused before reading)")
            if not compressed:  # the size on disk tells before anything is allocated
                got = os.fstat(raw.fileno()).st_size - head.size
                if got != head.body_bytes:
                    kind = "truncated" if got < head.body_bytes else "oversized"
                    raise GrunetError(f"{what}: expected {head.body_bytes} data bytes for {head.describe()}, "
                                      f"got {got} ({kind})")
            array = np.empty(head.dims, dtype=head.dtype)
            view = memoryview(array.reshape(-1).view(np.uint8))
            got = 0
            while got < head.body_bytes:
                n = stream.readinto(view[got:got + CHUNK * 16])
                if not n:
                    break
                got += n
            if got < head.body_bytes:
                raise GrunetError(f"{what}: expected {head.body_bytes} data bytes for {head.describe()}, "
                                  f"got {got} (truncated)")
            extra = len(stream.read(CHUNK))
            if extra:
                more = " or more" if extra == CHUNK or stream.read(1) else ""
                raise GrunetError(f"{what}: expected {head.body_bytes} data bytes for {head.describe()}, "
                                  f"got {got + extra}{more} (oversized)")
            digest.update(view)
    except (OSError, EOFError, zlib.error) as e:
        raise GrunetError(f"{what}: expected a complete gzip stream, got a broken one ({e})") from None
    native = head.dtype.newbyteorder("=")
    return IdxContent(array.astype(native, copy=False) if native == head.dtype else array.byteswap().view(native),
                      digest.hexdigest())


def read_idx(path: str | os.PathLike, max_bytes: int = MAX_BYTES) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into a numpy array of its declared type and shape."""
    return load_idx(path, max_bytes=max_bytes).array


def encode_idx(array: np.ndarray) -> bytes:
    """The uncompressed IDX bytes of ``array`` (any shape with ndim >= 1, a dtype IDX can hold)."""
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in CODES:
        known = ", ".join(str(d) for d in CODES)
        raise GrunetError(f"write_idx array: expected dtype in ({known}), got {array.dtype}")
    if array.ndim == 0 or array.ndim > 255:
        raise GrunetError(f"write_idx array: expected 1 to 255 dimensions, got {array.ndim}")
    header = bytes([0, 0, CODES[native], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=DTYPES[CODES[native]]).tobytes()


def write_idx(path: str | os.PathLike, array: np.ndarray, gzip: bool = True) -> None:
    """Write ``array`` as an IDX file (gzip-compressed with mtime 0, so output is reproducible), atomically."""
    data = encode_idx(array)
    if gzip:
        data = _gzip.compress(data, mtime=0)
    write_bytes(path, data)
