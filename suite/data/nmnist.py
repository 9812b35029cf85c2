"""N-MNIST (Orchard et al. 2015) as event frames, through tonic.

Two sources, tried in this order under the data root:

* ``<root>/nmnist-subset/`` -- a local copy in the original binary format: ``train/<id>.bs2``,
  ``test/<id>.bs2``, label files ``train*.txt`` / ``test*.txt`` (header line, then
  ``<id><TAB><class>``) and a ``SHA256SUMS`` manifest that every file is checked against. The
  files are read by :func:`read_nmnist_file` (5 bytes per event, 40-bit big-endian word: x in
  bits 39-32, y in 31-24, polarity in bit 23, timestamp in microseconds in bits 22-0), which
  rejects truncated files and out-of-range coordinates, naming the file.
* ``<root>/nmnist/`` -- the full data set via ``tonic.datasets.NMNIST``; it is only constructed
  when its files exist (tonic downloads in its constructor, which must never happen implicitly);
  ``snn-suite data download nmnist`` does the download on purpose.

Events become frames with tonic's transforms: optional ``Denoise``, then ``ToFrame`` by time
window (default 10 ms) or by event count; polarity is the channel axis (2 x 34 x 34). Every
sample is cut or zero-padded to ``n_frames`` (default 30 = 300 ms, the three saccades), and
frames hold event counts (uint8). Frames come out ``[N, n_frames, 2, 34, 34]``; the
``events`` encoder moves them to time-major ``[T, B, ...]``. Because frames have a fixed
duration, the first t frames of a sample are its first t x 10 ms, so accuracy at every T is
read from one pass as for the other encoders.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from suite.data import Dataset, DataError, Split
from suite.data.idx import sha256_file
from suite.hookspecs import hookimpl

SENSOR = (34, 34, 2)
EVENT_DTYPE = np.dtype([("x", "<i8"), ("y", "<i8"), ("t", "<i8"), ("p", "<i8")])  # tonic's NMNIST dtype


def read_nmnist_file(path) -> np.ndarray:
    """Read one N-MNIST binary file into a tonic-style structured array (x, y, t, p)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    raw = np.fromfile(path, np.uint8)
    if raw.size == 0 or raw.size % 5:
        raise DataError(f"{path}: {raw.size} bytes is not a whole number of 5-byte events (truncated file?)")
    b = raw.reshape(-1, 5).astype(np.int64)
    ev = np.empty(len(b), EVENT_DTYPE)
    ev["x"], ev["y"], ev["p"] = b[:, 0], b[:, 1], b[:, 2] >> 7
    ev["t"] = ((b[:, 2] & 0x7F) << 16) | (b[:, 3] << 8) | b[:, 4]
    bad = (ev["x"] >= SENSOR[0]) | (ev["y"] >= SENSOR[1])
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{path}: event {i} has coordinates ({ev['x'][i]}, {ev['y'][i]}) outside the "
                        f"{SENSOR[0]}x{SENSOR[1]} sensor")
    if np.any(np.diff(ev["t"]) < 0):
        raise DataError(f"{path}: timestamps decrease (corrupt file)")
    return ev


@dataclass(frozen=True)
class EventsToFrames:
    """tonic transforms composed: optional denoise, then ToFrame by time window or event count,
    cut / zero-padded to ``n_frames``."""

    n_frames: int = 30
    time_window_us: float | None = 10_000.0
    event_count: int | None = None
    denoise_us: float | None = None

    def __call__(self, events: np.ndarray) -> np.ndarray:
        import tonic.transforms as tt

        steps = [tt.Denoise(filter_time=self.denoise_us)] if self.denoise_us else []
        if self.event_count:
            steps.append(tt.ToFrame(sensor_size=SENSOR, event_count=self.event_count))
        else:
            steps.append(tt.ToFrame(sensor_size=SENSOR, time_window=self.time_window_us))
        frames = tt.Compose(steps)(events)
        out = np.zeros((self.n_frames, 2, SENSOR[1], SENSOR[0]), np.uint8)
        n = min(len(frames), self.n_frames)
        out[:n] = np.minimum(frames[:n], 255)
        return out


class NMNIST(Dataset):
    name = "nmnist"
    input_shape = (2, 34, 34)
    n_classes = 10
    kind = "events"
    description = "N-MNIST event camera recordings as 30 frames of 10 ms (2 x 34 x 34), via tonic"

    def __init__(self, frames: EventsToFrames = EventsToFrames()):
        self.frames = frames

    def _load(self, split, root):
        source, directory = self._source(Path(root))
        if source == "subset":
            return _load_subset(str(directory), split, self.frames)
        return _load_tonic(str(directory), split, self.frames)

    @staticmethod
    def _source(root: Path) -> tuple[str, Path]:
        subset = root / "nmnist-subset"
        if subset.is_dir():
            return "subset", subset
        full = root / "nmnist"
        if full.is_dir():
            return "full", full
        raise DataError(f"{subset}: not found (and no full set at {full}); expected N-MNIST files under the "
                        "data root: set --data-root / SNN_SUITE_DATA, or run `snn-suite data download nmnist`")

    def verify_files(self, root=None) -> None:
        """The subset's manifest, label files and recordings are there (checksums are checked
        as they load); the full set is tonic's to check."""
        from suite.data import resolve_root

        source, directory = self._source(resolve_root(root))
        if source != "subset":
            return
        manifest = _read_manifest(directory)
        for split in ("train", "test"):
            for sid, _ in _read_labels(_label_file(directory, split)):
                path = directory / f"{split}/{sid}.bs2"
                if f"{split}/{sid}.bs2" not in manifest:
                    raise DataError(f"{path}: not listed in {directory / 'SHA256SUMS'}")
                if not path.is_file():
                    raise DataError(f"{path}: file not found")

    def download(self, root=None) -> Path:
        """Download the full N-MNIST with tonic (network needed)."""
        from suite.data import resolve_root
        import tonic

        target = resolve_root(root) / "nmnist"
        for train in (True, False):
            tonic.datasets.NMNIST(save_to=str(target), train=train)
        return target


def _read_manifest(directory: Path) -> dict[str, str]:
    sums = directory / "SHA256SUMS"
    if not sums.is_file():
        raise DataError(f"{sums}: file not found (a local N-MNIST copy needs a SHA256SUMS manifest)")
    table = {}
    for n, line in enumerate(sums.read_text().splitlines(), 1):
        if line.strip():
            parts = line.split()
            if len(parts) != 2:
                raise DataError(f"{sums}: line {n} is not '<sha256>  <file>'")
            table[parts[1].lstrip("*")] = parts[0].lower()
    return table


def _read_labels(path: Path) -> list[tuple[int, int]]:
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit() or not parts[1].isdigit() or int(parts[1]) > 9:
            raise DataError(f"{path}: line {n} is not '<id><TAB><class 0-9>': {line!r}")
        out.append((int(parts[0]), int(parts[1])))
    return out


@functools.lru_cache(maxsize=4)
def _label_file(directory: Path, split: str) -> Path:
    label_files = sorted(directory.glob(f"{split}*.txt"))
    if len(label_files) != 1:
        raise DataError(f"{directory}: expected one label file {split}*.txt, found {[p.name for p in label_files]}")
    return label_files[0]


def _load_subset(directory: str, split: str, frames: EventsToFrames) -> Split:
    directory = Path(directory)
    manifest = _read_manifest(directory)
    label_file = _label_file(directory, split)
    want = manifest.get(label_file.name)
    if want is not None and sha256_file(label_file) != want:
        raise DataError(f"{label_file}: sha256 does not match {directory / 'SHA256SUMS'}")
    pairs = _read_labels(label_file)
    xs = np.zeros((len(pairs), frames.n_frames, 2, SENSOR[1], SENSOR[0]), np.uint8)
    for i, (sid, _) in enumerate(pairs):
        rel = f"{split}/{sid}.bs2"
        path = directory / rel
        if rel not in manifest:
            raise DataError(f"{path}: not listed in {directory / 'SHA256SUMS'}")
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        if sha256_file(path) != manifest[rel]:
            raise DataError(f"{path}: sha256 does not match {directory / 'SHA256SUMS'}")
        xs[i] = frames(read_nmnist_file(path))
    ys = np.array([c for _, c in pairs], np.int64)
    return Split(torch.from_numpy(xs), torch.from_numpy(ys))


@functools.lru_cache(maxsize=2)
def _load_tonic(directory: str, split: str, frames: EventsToFrames) -> Split:
    import tonic

    ds = tonic.datasets.NMNIST(save_to=directory, train=split == "train")
    xs = np.zeros((len(ds), frames.n_frames, 2, SENSOR[1], SENSOR[0]), np.uint8)
    ys = np.zeros(len(ds), np.int64)
    for i in range(len(ds)):
        events, ys[i] = ds[i]
        xs[i] = frames(events)
    return Split(torch.from_numpy(xs), torch.from_numpy(ys))


@hookimpl
def snn_suite_datasets():
    return [NMNIST()]
