import hashlib

import numpy as np
import pytest
import torch

from suite.data import DataError
from suite.data.nmnist import EventsToFrames, NMNIST, read_nmnist_file
from suite.train import Cell, run_cell


def _encode(x, y, p, t_us) -> bytes:
    out = bytearray()
    for xi, yi, pi, ti in zip(x, y, p, t_us):
        out += bytes([xi, yi, (pi << 7) | ((ti >> 16) & 0x7F), (ti >> 8) & 0xFF, ti & 0xFF])
    return bytes(out)


def _make_subset(root, n_train=12, n_test=6, rng=np.random.default_rng(0)):
    d = root / "nmnist-subset"
    lines, sums = {}, []
    for split, n, base in (("train", n_train, 1), ("test", n_test, 60001)):
        (d / split).mkdir(parents=True)
        rows = ["#sample #class"]
        for i in range(n):
            sid, label = base + i, i % 10
            k = 200
            # class-dependent position so a classifier can learn something
            x = np.clip(rng.normal(3 + 3 * label, 1.5, k), 0, 33).astype(int)
            y = rng.integers(0, 34, k)
            t = np.sort(rng.integers(0, 300_000, k))
            (d / split / f"{sid}.bs2").write_bytes(_encode(x, y, rng.integers(0, 2, k), t))
            rows.append(f"{sid}\t{label}")
        name = f"{split}{n}.txt"
        (d / name).write_text("\r\n".join(rows) + "\r\n")
    for p in sorted(d.rglob("*")):
        if p.is_file() and p.name != "SHA256SUMS":
            sums.append(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(d).as_posix()}")
    (d / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return d


def test_reader_decodes_the_40_bit_format(tmp_path):
    p = tmp_path / "a.bs2"
    p.write_bytes(_encode([1, 33], [2, 0], [1, 0], [5, 8_000_000 - 1]))
    ev = read_nmnist_file(p)
    assert ev["x"].tolist() == [1, 33] and ev["y"].tolist() == [2, 0]
    assert ev["p"].tolist() == [1, 0] and ev["t"].tolist() == [5, 8_000_000 - 1]


def test_bad_event_files_name_the_file(tmp_path):
    p = tmp_path / "trunc.bs2"
    p.write_bytes(_encode([1], [2], [1], [5]) + b"\x01\x02")
    with pytest.raises(DataError, match="trunc.bs2: 7 bytes is not a whole number of 5-byte events"):
        read_nmnist_file(p)
    q = tmp_path / "range.bs2"
    q.write_bytes(_encode([1, 40], [2, 3], [1, 1], [5, 6]))
    with pytest.raises(DataError, match=r"range.bs2: event 1 has coordinates \(40, 3\) outside the 34x34 sensor"):
        read_nmnist_file(q)


def test_frames_by_time_window_and_by_count():
    ev = np.zeros(4, dtype=[("x", "<i8"), ("y", "<i8"), ("t", "<i8"), ("p", "<i8")])
    ev["x"], ev["y"], ev["p"], ev["t"] = [0, 1, 1, 2], [0, 0, 0, 5], [1, 0, 0, 1], [0, 100, 15_000, 25_000]
    f = EventsToFrames(n_frames=4, time_window_us=10_000)(ev)
    assert f.shape == (4, 2, 34, 34) and f.dtype == np.uint8
    assert f[0, 1, 0, 0] == 1 and f[0, 0, 0, 1] == 1       # ON -> channel 1, OFF -> channel 0
    assert f[1, 0, 0, 1] == 1 and f[3].sum() == 0          # zero-padded past the recording
    assert f.sum() == 3  # the last, incomplete window is dropped by tonic's ToFrame
    g = EventsToFrames(n_frames=2, time_window_us=None, event_count=2)(ev)
    assert g.reshape(2, -1).sum(1).tolist() == [2, 2]


def test_subset_loader_checks_manifest(tmp_path):
    d = _make_subset(tmp_path)
    ds = NMNIST(EventsToFrames(n_frames=8, time_window_us=40_000))
    tr = ds.load("train", tmp_path)
    assert tr.x.shape == (12, 8, 2, 34, 34) and tr.y.tolist()[:3] == [0, 1, 2]
    (d / "test" / "60002.bs2").write_bytes(b"\x00" * 10)   # contents changed: manifest mismatch
    with pytest.raises(DataError, match=r"test/60002.bs2: sha256 does not match .*SHA256SUMS"):
        NMNIST(EventsToFrames(n_frames=9)).load("test", tmp_path)


def test_missing_nmnist_explains(tmp_path):
    with pytest.raises(DataError, match="nmnist-subset: not found .*snn-suite data download nmnist"):
        NMNIST().load("train", tmp_path)


@pytest.mark.parametrize("rule", ["surrogate_bptt_bn", "tssl_bp", "cnn"])
def test_rules_run_on_event_frames(tmp_path, host, rule):
    _make_subset(tmp_path)
    rows = run_cell(Cell(rule, "nmnist", "mlp128", epochs=1, timesteps=(2, 4) if rule != "cnn" else None,
                         data_root=str(tmp_path)), host)
    assert rows[0]["status"] == "ok", rows[0]["error"]
    if rule != "cnn":
        assert rows[0]["encoding"] == "events" and rows[0]["synops"] > 0


def test_real_subset(shared_data, host):
    te = host.dataset("nmnist").load("test", shared_data)
    assert te.x.shape == (100, 30, 2, 34, 34)
    assert te.y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]   # MNIST test order


def test_denoise_drops_isolated_events():
    ev = np.zeros(3, dtype=[("x", "<i8"), ("y", "<i8"), ("t", "<i8"), ("p", "<i8")])
    # (6,5) follows its neighbour (5,5) within 5 ms; (20,20) has no neighbour; tonic's Denoise
    # keeps only an event preceded by a neighbouring one, so one event survives
    ev["x"], ev["y"], ev["p"], ev["t"] = [5, 6, 20], [5, 5, 20], [1, 1, 0], [20_000, 21_000, 22_000]
    plain = EventsToFrames(n_frames=1, time_window_us=30_000)(ev)
    assert plain.sum() == 3
    den = EventsToFrames(n_frames=1, time_window_us=30_000, denoise_us=5_000)(ev)
    assert den.sum() == 1 and den[0, 1, 5, 6] == 1        # [frame, polarity, y, x]


def test_full_set_goes_through_tonic_nmnist(tmp_path, monkeypatch):
    """With only ``<root>/nmnist/`` present, tonic's NMNIST class is used (never downloading here)."""
    import tonic

    calls = []

    class FakeNMNIST:
        def __init__(self, save_to, train):
            calls.append((save_to, train))
            self.n = 3 if train else 2

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            ev = np.zeros(2, dtype=[("x", "<i8"), ("y", "<i8"), ("t", "<i8"), ("p", "<i8")])
            ev["x"], ev["y"], ev["p"], ev["t"] = [i, i], [1, 2], [1, 0], [1_000, 25_000]
            return ev, i

    monkeypatch.setattr(tonic.datasets, "NMNIST", FakeNMNIST)
    (tmp_path / "nmnist").mkdir()
    tr = NMNIST(EventsToFrames(n_frames=3, time_window_us=10_000)).load("train", tmp_path)
    assert calls == [(str(tmp_path / "nmnist"), True)]
    assert tr.x.shape == (3, 3, 2, 34, 34) and tr.y.tolist() == [0, 1, 2]
    assert tr.x[2, 0, 1, 1, 2] == 1 and tr.x[2, 2].sum() == 0   # event at t=1 ms in frame 0
