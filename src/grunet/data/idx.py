"""The IDX file format of MNIST and its relatives (LeCun's "MNIST database" page), read and written.

An IDX file is a 4-byte magic number, one big-endian uint32 per dimension, then the values row-major:

    magic = 0x00 0x00 <dtype code> <ndim>       dims = ndim x uint32 (big-endian)       data = prod(dims) values
    dtype codes: 0x08 ubyte, 0x09 sbyte, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64 (all big-endian)

Files are often gzip-compressed; we detect that by the gzip magic bytes 1f 8b, never by the file name, because
mirrors and users rename files freely. Everything that can go wrong with a downloaded file (a wrong magic, a
short or oversized body, a broken gzip stream) raises GrunetError naming the file and what was wrong, rather
than surfacing later as a reshape error or, worse, as silently misaligned images.
"""
from __future__ import annotations

import gzip as _gzip
import math
import os
import struct
import zlib

import numpy as np

from ..errors import GrunetError
from ..fileio import write_bytes

GZIP_MAGIC = b"\x1f\x8b"
DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
CODES = {np.dtype(v).newbyteorder("="): k for k, v in DTYPES.items()}


def read_idx_bytes(path: str | os.PathLike) -> bytes:
    """The file's IDX bytes, gunzipped when the file starts with the gzip magic 1f 8b."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise GrunetError(f"IDX file {path}: cannot read it ({e.strerror or e})") from e
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return _gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise GrunetError(f"IDX file {path}: expected a complete gzip stream, got a broken one ({e})") from e


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse uncompressed IDX bytes into a native-endian, writable array; ``name`` is used in errors."""
    what = f"IDX file {name}"
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
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(DTYPES[code])
    expected = math.prod(dims) * dtype.itemsize
    got = len(data) - header
    if got != expected:
        kind = "truncated" if got < expected else "oversized"
        raise GrunetError(f"{what}: expected {expected} data bytes for shape {tuple(dims)} "
                          f"and type {dtype.newbyteorder('=').name}, got {got} ({kind})")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # a native-endian, writable copy


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into a numpy array of its declared type and shape."""
    return parse_idx(read_idx_bytes(path), str(path))


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
