"""Dataset registry: every dataset is a :class:`Dataset` contributed through the
``snn_suite_datasets`` hook (built-ins in :mod:`suite.data.builtin`).

A dataset loads a split as tensors ``x`` (float32 in [0, 1], ``[N, C, H, W]``, or frames
``[N, T, C, H, W]`` for event data) and ``y`` (int64 labels). Files are found under a data
root: ``--data-root`` / ``SNN_SUITE_DATA`` / ``~/.cache/snn-suite/data``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch


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

    def load(self, split: str, root=None) -> Split:
        if split not in ("train", "test"):
            raise ValueError(f"dataset {self.name!r}: unknown split {split!r}; expected 'train' or 'test'")
        return self._load(split, resolve_root(root))

    def _load(self, split: str, root: Path) -> Split:  # pragma: no cover - abstract
        raise TypeError(f"dataset {self.name!r} does not implement _load")

    def check(self, root=None) -> list[str]:
        """Verify files (structure and checksums); returns lines describing what was checked.
        Raises :class:`DataError` naming the first bad file."""
        out = []
        for split in ("train", "test"):
            s = self.load(split, root)
            out.append(f"{self.name}/{split}: {len(s)} samples, x {tuple(s.x.shape)}")
        return out
