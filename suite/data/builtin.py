"""Built-in datasets: ``digits`` (embedded), ``mnist``, ``fashion_mnist``.

Checksums: when a ``SHA256SUMS`` file lies beside the IDX files (as in a curated local copy),
every file is checked against it; otherwise against the official release's sha256 below. The
structure (magic, dimensions, counts) is always checked. ``download()`` fetches the official
files and verifies them before they are moved into place; it is never run implicitly.
"""
from __future__ import annotations

import functools
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import torch

from suite.data import Dataset, DataError, Split
from suite.data.idx import read_idx, sha256_file
from suite.hookspecs import hookimpl


class Digits(Dataset):
    """scikit-learn's 8x8 handwritten digits (1,797 samples): ships inside scikit-learn, so
    it needs no files and no network. A fixed stratified split: 1,437 train / 360 test."""

    name = "digits"
    input_shape = (1, 8, 8)
    n_classes = 10
    description = "scikit-learn 8x8 digits, embedded (1437 train / 360 test, fixed split)"
    embedded = True

    def _load(self, split, root):
        return _digits()[split]


@functools.lru_cache(maxsize=1)
def _digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.2, random_state=0, stratify=d.target)
    mk = lambda a, b: Split(torch.from_numpy(np.ascontiguousarray(a)), torch.from_numpy(b.astype(np.int64)))
    return {"train": mk(xtr, ytr), "test": mk(xte, yte)}


class IdxDataset(Dataset):
    """The four standard IDX ``.gz`` files under ``<root>/<folder>/``."""

    folder: str = ""
    mirrors: tuple[str, ...] = ()
    #: official release: file name -> sha256 of the .gz as published
    official_sha256: dict[str, str] = {}
    counts = {"train": 60000, "test": 10000}
    input_shape = (1, 28, 28)
    val_size = 5000

    @staticmethod
    def files(split):
        prefix = "train" if split == "train" else "t10k"
        return f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"

    def directory(self, root: Path) -> Path:
        return Path(root) / self.folder

    def expected_sha256(self, directory: Path) -> tuple[dict[str, str], str]:
        sums = directory / "SHA256SUMS"
        if sums.is_file():
            table = {}
            for n, line in enumerate(sums.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                parts = line.split()
                if len(parts) != 2 or len(parts[0]) != 64:
                    raise DataError(f"{sums}: line {n} is not '<sha256>  <file>': {line!r}")
                table[parts[1].lstrip("*")] = parts[0].lower()
            return table, str(sums)
        return dict(self.official_sha256), f"the official {self.name} release"

    def verify(self, path: Path) -> None:
        table, source = self.expected_sha256(path.parent)
        if not path.is_file():
            raise DataError(f"{path}: file not found (expected the {self.name} file {path.name} under "
                            f"{path.parent}; set --data-root / SNN_SUITE_DATA, or run "
                            f"`snn-suite data download {self.name} --data-root DIR`)")
        want = table.get(path.name)
        if want is None:
            raise DataError(f"{path}: no checksum for this file in {source}")
        got = _cached_sha256(str(path), path.stat().st_size, path.stat().st_mtime_ns)
        if got != want:
            raise DataError(f"{path}: sha256 {got} does not match {want} from {source}")

    def _load(self, split, root):
        return _load_idx(self, str(self.directory(root)), split)

    def verify_files(self, root=None) -> None:
        from suite.data import resolve_root

        directory = self.directory(resolve_root(root))
        for split in ("train", "test"):
            for fname in self.files(split):
                self.verify(directory / fname)

    def download(self, root=None) -> Path:
        """Fetch the official files (trying each mirror), verify their sha256, move into place."""
        from suite.data import resolve_root

        directory = self.directory(resolve_root(root))
        directory.mkdir(parents=True, exist_ok=True)
        for split in ("train", "test"):
            for fname in self.files(split):
                dest = directory / fname
                if dest.is_file() and sha256_file(dest) == self.official_sha256[fname]:
                    continue
                errors = []
                for mirror in self.mirrors:
                    url = mirror + fname
                    try:
                        with urllib.request.urlopen(url, timeout=60) as r, \
                                tempfile.NamedTemporaryFile(dir=directory, delete=False) as tmp:
                            shutil.copyfileobj(r, tmp)
                        got = sha256_file(Path(tmp.name))
                        if got != self.official_sha256[fname]:
                            os.unlink(tmp.name)
                            errors.append(f"{url}: sha256 {got}, expected {self.official_sha256[fname]}")
                            continue
                        os.replace(tmp.name, dest)
                        break
                    except OSError as exc:
                        errors.append(f"{url}: {exc}")
                else:
                    raise DataError(f"could not download {fname}: " + "; ".join(errors))
        return directory


@functools.lru_cache(maxsize=32)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))


@functools.lru_cache(maxsize=4)
def _load_idx(ds: IdxDataset, directory: str, split: str) -> Split:
    directory = Path(directory)
    img_name, lbl_name = ds.files(split)
    n = ds.counts[split]
    for name in (img_name, lbl_name):
        ds.verify(directory / name)
    images = read_idx(directory / img_name, 2051, (n, 28, 28))
    labels = read_idx(directory / lbl_name, 2049, (n,))
    if labels.max() >= ds.n_classes:
        raise DataError(f"{directory / lbl_name}: label {labels.max()} out of range 0..{ds.n_classes - 1}")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return Split(x, torch.from_numpy(labels.astype(np.int64)))


class MNIST(IdxDataset):
    name = "mnist"
    folder = "mnist"
    description = "MNIST (LeCun et al.), 60k/10k, 28x28"
    mirrors = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/",
               "http://yann.lecun.com/exdb/mnist/")
    official_sha256 = {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    }


class FashionMNIST(IdxDataset):
    name = "fashion_mnist"
    folder = "fashion-mnist"
    description = "Fashion-MNIST (Xiao et al. 2017), 60k/10k, 28x28"
    mirrors = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
               "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/")
    official_sha256 = {
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    }


@hookimpl
def snn_suite_datasets():
    return [Digits(), MNIST(), FashionMNIST()]
