"""Dataset registry: every dataset is a :class:`Dataset` contributed through the
``snn_suite_datasets`` hook (built-ins in :mod:`suite.data.builtin`).

A dataset loads a split as tensors ``x`` (float32 in [0, 1], ``[N, C, H, W]``, or frames
``[N, T, C, H, W]`` for event data) and ``y`` (int64 labels). Files are found under a data
root: ``--data-root`` / ``SNN_SUITE_DATA`` / ``~/.cache/snn-suite/data``.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

#: Seed of every dataset's validation split. Fixed and independent of the run seeds, so that all
#: cells, rules and seeds of a comparison train and select on the same samples.
VAL_SEED = 20261202


class DataError(Exception):
    """A dataset file is missing or invalid; the message names the file and what was expected."""


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    if root is None:
        root = os.environ.get("SNN_SUITE_DATA") or Path.home() / ".cache" / "snn-suite" / "data"
    return Path(root).expanduser()


@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


class Dataset:
    """Base class. Subclasses set the attributes and implement ``_load``."""

    name: str = ""
    input_shape: tuple[int, ...] = ()
    n_classes: int = 10
    #: "static" images or "events" (x holds frames [N, T, C, H, W])
    kind: str = "static"
    description: str = ""
    #: True where the data ships with an installed package (no files, no data root)
    embedded: bool = False
    #: size of the validation split carved from the training set: a count, or a fraction (< 1)
    val_size: int | float = 0.1

    def load(self, split: str, root=None) -> Split:
        if split not in ("train", "test"):
            raise ValueError(f"dataset {self.name!r}: unknown split {split!r}; expected 'train' or 'test'")
        return self._load(split, resolve_root(root))

    def _load(self, split: str, root: Path) -> Split:  # pragma: no cover - abstract
        raise TypeError(f"dataset {self.name!r} does not implement _load")

    def verify_files(self, root=None) -> None:
        """Check that the files a run needs are present and intact, before any cell starts;
        raises :class:`DataError` naming the first bad file. Default: load both splits (embedded
        data needs nothing); datasets with large files override it with a cheaper check."""
        if not self.embedded:
            for split in ("train", "test"):
                self.load(split, root)

    def check(self, root=None) -> list[str]:
        """Verify files (structure and checksums); returns lines describing what was checked.
        Raises :class:`DataError` naming the first bad file."""
        out = []
        for split in ("train", "test"):
            s = self.load(split, root)
            out.append(f"{self.name}/{split}: {len(s)} samples, x {tuple(s.x.shape)}")
        return out


@dataclass(frozen=True)
class ValidationSplit:
    """Indices into a dataset's training split: ``train`` to learn from, ``val`` to select on."""

    train: torch.Tensor
    val: torch.Tensor

    def describe(self) -> dict:
        """What a result row records: size, seed and a fingerprint of the validation indices."""
        digest = hashlib.sha256(self.val.numpy().tobytes()).hexdigest()[:12]
        return {"n_val": len(self.val), "seed": VAL_SEED, "val_indices_sha256": digest}


def validation_split(dataset: Dataset, n_train: int) -> ValidationSplit:
    """The dataset's fixed validation split of its ``n_train`` training samples.

    Deterministic (seeded with :data:`VAL_SEED` and the dataset's name, never with a run seed);
    ``dataset.val_size`` samples (or that fraction of them) go to validation, the rest to training;
    a count is meant for the full set, so a smaller copy (fewer than four times as many training
    samples: a subset, a test fixture) holds out 10 % instead. Both index lists are sorted, so
    training order stays a matter of the run's own shuffle.
    """
    size = dataset.val_size
    if not (isinstance(size, float) and size < 1) and n_train < 4 * size:
        size = 0.1
    n_val = int(round(size * n_train)) if isinstance(size, float) and size < 1 else int(size)
    if not 0 < n_val < n_train:
        raise ValueError(f"dataset {dataset.name!r}: validation size {size!r} leaves no training or no "
                         f"validation samples out of {n_train}")
    name_seed = int.from_bytes(hashlib.sha256(dataset.name.encode()).digest()[:4], "little")
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(VAL_SEED + name_seed))
    return ValidationSplit(train=order[n_val:].sort().values, val=order[:n_val].sort().values)
