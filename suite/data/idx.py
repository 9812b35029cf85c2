"""Reader for the IDX format (MNIST, Fashion-MNIST), gzip-compressed or not, with checks."""
from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np

from suite.data import DataError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_idx(path: Path, expect_magic: int | None = None, expect_shape: tuple | None = None) -> np.ndarray:
    """Read one IDX file; ``expect_magic`` (2051 images, 2049 labels) and ``expect_shape``
    (``None`` entries match anything) are checked, and every failure names the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot decompress ({exc}); the file is truncated or not gzip") from exc
    if len(raw) < 4:
        raise DataError(f"{path}: {len(raw)} bytes, too short for an IDX header")
    magic = int.from_bytes(raw[:4], "big")
    if expect_magic is not None and magic != expect_magic:
        raise DataError(f"{path}: wrong magic number {magic}, expected {expect_magic}")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(f"{path}: not an IDX file (header bytes {raw[:4].hex()})")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: header truncated ({len(raw)} bytes for {ndim} dimensions)")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    if expect_shape is not None:
        if len(expect_shape) != ndim or any(e is not None and e != d for e, d in zip(expect_shape, dims)):
            raise DataError(f"{path}: dimensions {dims}, expected {tuple('*' if e is None else e for e in expect_shape)}")
    dtype = np.dtype(_DTYPES[raw[2]])
    need = int(np.prod(dims)) * dtype.itemsize
    have = len(raw) - 4 - 4 * ndim
    if have != need:
        raise DataError(f"{path}: {have} data bytes, expected {need} for dimensions {dims} (truncated or padded)")
    return np.frombuffer(raw, dtype, offset=4 + 4 * ndim).reshape(dims)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an uint8 array as IDX (gzip when the name ends in .gz); used by tests and tools."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
