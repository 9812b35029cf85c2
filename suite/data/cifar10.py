"""CIFAR-10 (Krizhevsky 2009, *Learning Multiple Layers of Features from Tiny Images*), the
python version: ``<root>/cifar-10-batches-py/`` with ``data_batch_1`` ... ``data_batch_5``
(train), ``test_batch`` and ``batches.meta``.

Each batch is a pickled dict: ``b"data"`` a ``uint8`` array ``[N, 3072]`` (1024 red, then 1024
green, then 1024 blue values of a 32 x 32 image, row-major) and ``b"labels"`` N ints in 0..9.
Images come out ``[N, 3, 32, 32]`` float32 in [0, 1] (no mean/std normalisation: a rule that
wants it does it, as for the other data sets).

Checksums are verified *before* a file is unpickled: against a ``SHA256SUMS`` manifest beside
the batches when there is one (a curated or reduced copy), else against the official md5s
(https://www.cs.toronto.edu/~kriz/cifar.html; torchvision uses the same values). Unpickling
also goes through an allow-list (dict/list/bytes and numpy's array reconstruction only), so a
file that is not a CIFAR batch is rejected with a :class:`~suite.data.DataError` naming it
rather than executed. ``download()`` fetches the official archive, checks its md5, and extracts
only the batch files; it is never run implicitly (``snn-suite data download cifar10``).
"""
from __future__ import annotations

import functools
import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import torch

from suite.data import Dataset, DataError, Split, resolve_root
from suite.data.idx import sha256_file
from suite.hookspecs import hookimpl

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
#: official release: batch file -> md5
OFFICIAL_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
SPLIT_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SIZE = 3 * 32 * 32

# numpy pickles arrays and scalars through these (the module moved from numpy.core to numpy._core
# in 2.0); protocol-2 pickles written by Python 3 carry bytes as _codecs.encode(str, "latin1")
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


def _md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _BatchUnpickler(pickle.Unpickler):
    """Builds only plain containers and numpy arrays: a file with any other global is refused."""

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a CIFAR-10 batch")


def read_batch(path) -> tuple[np.ndarray, np.ndarray]:
    """One python-version batch -> ``(images uint8 [N, 3, 32, 32], labels int64 [N])``; every
    structural problem raises :class:`DataError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with open(path, "rb") as f:
            d = _BatchUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DataError(f"{path}: not a CIFAR-10 python batch ({type(exc).__name__}: {exc}); "
                        "truncated or corrupt file?") from exc
    if not isinstance(d, dict):
        raise DataError(f"{path}: expected a pickled dict with b'data' and b'labels', got {type(d).__name__}")
    data, labels = d.get(b"data", d.get("data")), d.get(b"labels", d.get("labels"))
    if data is None or labels is None:
        raise DataError(f"{path}: missing key b'data' or b'labels' (keys: {sorted(map(str, d))})")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != IMAGE_SIZE:
        raise DataError(f"{path}: data is {data.dtype} {data.shape}, expected uint8 [N, {IMAGE_SIZE}]")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path}: {labels.size} labels for {data.shape[0]} images")
    bad = (labels < 0) | (labels >= len(CLASSES))
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{path}: label {labels[i]} of image {i} out of range 0..{len(CLASSES) - 1}")
    return data.reshape(-1, 3, 32, 32), labels


class CIFAR10(Dataset):
    name = "cifar10"
    val_size = 5000
    input_shape = (3, 32, 32)
    n_classes = 10
    description = "CIFAR-10 (Krizhevsky 2009), 50k/10k, 3x32x32, python batches"
    url = URL

    def directory(self, root) -> Path:
        return Path(root) / FOLDER

    def verify(self, path: Path) -> None:
        """Checksum of one batch: ``SHA256SUMS`` beside it when present, else the official md5."""
        if not path.is_file():
            raise DataError(f"{path}: file not found (expected the CIFAR-10 python batches under {path.parent}; "
                            "set --data-root / SNN_SUITE_DATA, or run `snn-suite data download cifar10 "
                            "--data-root DIR`)")
        sums = path.parent / "SHA256SUMS"
        if sums.is_file():
            table = _read_sums(sums)
            want, source = table.get(path.name), str(sums)
            got = _cached_digest("sha256", str(path), path.stat().st_size, path.stat().st_mtime_ns)
        else:
            want, source = OFFICIAL_MD5.get(path.name), "the official CIFAR-10 release (md5)"
            got = _cached_digest("md5", str(path), path.stat().st_size, path.stat().st_mtime_ns)
        if want is None:
            raise DataError(f"{path}: no checksum for this file in {source}")
        if got != want:
            raise DataError(f"{path}: checksum {got} does not match {want} from {source}")

    def _load(self, split, root):
        return _load_split(self, str(self.directory(root)), split)

    def verify_files(self, root=None) -> None:
        directory = self.directory(resolve_root(root))
        for split in ("train", "test"):
            for fname in SPLIT_FILES[split]:
                self.verify(directory / fname)

    def download(self, root=None) -> Path:
        """Fetch the official archive, verify its md5, extract the batch files (and nothing else)
        into ``<root>/cifar-10-batches-py/`` and verify each of them."""
        root = resolve_root(root)
        directory = self.directory(root)
        if all((directory / f).is_file() for f in OFFICIAL_MD5):
            try:
                for f in OFFICIAL_MD5:
                    self.verify(directory / f)
                return directory
            except DataError:
                pass  # a bad or partial copy: fetch again
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            archive = Path(tmp) / "cifar-10-python.tar.gz"
            try:
                with urllib.request.urlopen(self.url, timeout=120) as r, open(archive, "wb") as f:
                    shutil.copyfileobj(r, f)
            except OSError as exc:
                raise DataError(f"could not download {self.url}: {exc}") from exc
            got = _md5_file(archive)
            if got != ARCHIVE_MD5:
                raise DataError(f"{self.url}: md5 {got} does not match the official {ARCHIVE_MD5}")
            staging = Path(tmp) / "x"
            _extract_batches(archive, staging)
            directory.mkdir(parents=True, exist_ok=True)
            for f in OFFICIAL_MD5:
                os.replace(staging / f, directory / f)
        for f in OFFICIAL_MD5:
            self.verify(directory / f)
        return directory


def _extract_batches(archive: Path, dest: Path) -> None:
    """Extract the known member files only, as plain files (no links, no paths from the archive)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        found = set()
        for member in tar.getmembers():
            name = Path(member.name)
            if member.isfile() and name.parent.name == FOLDER and name.name in OFFICIAL_MD5:
                with tar.extractfile(member) as src, open(dest / name.name, "wb") as out:
                    shutil.copyfileobj(src, out)
                found.add(name.name)
    missing = sorted(set(OFFICIAL_MD5) - found)
    if missing:
        raise DataError(f"{archive}: archive lacks {', '.join(missing)}")


def _read_sums(path: Path) -> dict[str, str]:
    table = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or len(parts[0]) != 64:
            raise DataError(f"{path}: line {n} is not '<sha256>  <file>': {line!r}")
        table[parts[1].lstrip("*")] = parts[0].lower()
    return table


@functools.lru_cache(maxsize=16)
def _cached_digest(kind: str, path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path)) if kind == "sha256" else _md5_file(Path(path))


@functools.lru_cache(maxsize=2)
def _load_split(ds: CIFAR10, directory: str, split: str) -> Split:
    directory = Path(directory)
    images, labels = [], []
    for fname in SPLIT_FILES[split]:
        path = directory / fname
        ds.verify(path)
        x, y = read_batch(path)
        images.append(x)
        labels.append(y)
    x = torch.from_numpy(np.concatenate(images)).to(torch.float32).div_(255.0)
    return Split(x, torch.from_numpy(np.concatenate(labels)))


@hookimpl
def snn_suite_datasets():
    return [CIFAR10()]
