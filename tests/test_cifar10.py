"""CIFAR-10 loader on tiny fake batches in tmp_path (never the network): layout, checksums, bad
files named in the error, the download path's checks, and the CIFAR-10 presets on CPU."""
import collections
import hashlib
import io
import pickle
import tarfile

import numpy as np
import pytest
import torch

from suite.data import DataError
from suite.data.cifar10 import CIFAR10, FOLDER, OFFICIAL_MD5, SPLIT_FILES, _extract_batches, read_batch
from suite.train import Cell, run_cell

N = 4  # images per fake batch


def _batch(rng, n=N, labels=None):
    return {b"batch_label": b"fake", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, n).tolist() if labels is None else labels, b"filenames": [b"x.png"] * n}


def _write_sums(d):
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in sorted(d.iterdir())
             if p.name != "SHA256SUMS"]
    (d / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def _fake_cifar(root, sums=True):
    d = root / FOLDER
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in (*SPLIT_FILES["train"], *SPLIT_FILES["test"]):
        (d / name).write_bytes(pickle.dumps(_batch(rng), protocol=2))
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane"] * 10}, protocol=2))
    if sums:
        _write_sums(d)
    return d


def test_loads_python_batches_as_float_images(tmp_path):
    d = _fake_cifar(tmp_path)
    ds = CIFAR10()
    train, test = ds.load("train", tmp_path), ds.load("test", tmp_path)
    assert train.x.shape == (5 * N, 3, 32, 32) and test.x.shape == (N, 3, 32, 32)
    assert train.x.dtype == torch.float32 and 0.0 <= float(train.x.min()) and float(train.x.max()) <= 1.0
    raw = pickle.loads((d / "data_batch_1").read_bytes())
    # channel-major rows: the first 1024 values are the red plane
    assert torch.equal((train.x[0, 0] * 255).round().to(torch.uint8).flatten(),
                       torch.from_numpy(raw[b"data"][0, :1024]))
    assert train.y[:N].tolist() == [int(v) for v in raw[b"labels"]] and train.y.dtype == torch.int64
    assert ds.check(tmp_path)[0].startswith("cifar10/train: 20 samples")


def _corrupt(d, case):
    rng = np.random.default_rng(1)
    p = d / "test_batch"
    if case == "missing":
        p.unlink()
    elif case == "truncated":
        p.write_bytes(p.read_bytes()[:50])
    elif case == "shape":
        b = _batch(rng)
        b[b"data"] = b[b"data"][:, :100]
        p.write_bytes(pickle.dumps(b, protocol=2))
    elif case == "labels":
        p.write_bytes(pickle.dumps(_batch(rng, labels=[0, 1, 12, 3]), protocol=2))
    elif case == "count":
        p.write_bytes(pickle.dumps(_batch(rng, labels=[0, 1]), protocol=2))
    elif case == "global":  # any class other than numpy's array is refused, never built
        p.write_bytes(pickle.dumps(collections.OrderedDict(a=1), protocol=2))
    elif case == "notdict":
        p.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    if case != "checksum":
        _write_sums(d)  # structural cases: the checksum matches, the content is wrong
    else:
        p.write_bytes(p.read_bytes()[:-1] + b"\x00")


@pytest.mark.parametrize("case, message", [
    ("missing", "test_batch: file not found"),
    ("checksum", r"test_batch: checksum [0-9a-f]{64} does not match"),
    ("truncated", "test_batch: not a CIFAR-10 python batch"),
    ("shape", r"test_batch: data is uint8 \(4, 100\), expected uint8 \[N, 3072\]"),
    ("labels", "test_batch: label 12 of image 2 out of range 0..9"),
    ("count", "test_batch: 2 labels for 4 images"),
    ("global", "test_batch: not a CIFAR-10 python batch.*collections.OrderedDict' is not allowed"),
    ("notdict", "test_batch: expected a pickled dict"),
])
def test_bad_files_are_named(tmp_path, case, message):
    d = _fake_cifar(tmp_path)
    _corrupt(d, case)
    with pytest.raises(DataError, match=message):
        CIFAR10().load("test", tmp_path)


def test_without_a_manifest_the_official_md5s_are_required(tmp_path):
    _fake_cifar(tmp_path, sums=False)
    with pytest.raises(DataError, match=f"data_batch_1: checksum .* does not match {OFFICIAL_MD5['data_batch_1']} "
                                        r"from the official CIFAR-10 release \(md5\)"):
        CIFAR10().load("train", tmp_path)
    with pytest.raises(DataError, match="file not found.*snn-suite data download cifar10"):
        CIFAR10().load("train", tmp_path / "elsewhere")


def test_read_batch_accepts_a_real_layout(tmp_path):
    p = tmp_path / "b"
    p.write_bytes(pickle.dumps(_batch(np.random.default_rng(2), labels=[9, 0, 1, 2]), protocol=4))
    x, y = read_batch(p)
    assert x.shape == (4, 3, 32, 32) and x.dtype == np.uint8 and y.tolist() == [9, 0, 1, 2]


def test_download_verifies_the_archive(tmp_path, monkeypatch):
    # a stand-in archive: the official md5 cannot match, so nothing may be extracted
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"not cifar"
        info = tarfile.TarInfo(f"{FOLDER}/data_batch_1")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    payload = buf.getvalue()

    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout: Response(payload))
    with pytest.raises(DataError, match="md5 .* does not match the official c58f30108f718f92721af3b95e74349a"):
        CIFAR10().download(tmp_path)
    assert not (tmp_path / FOLDER).exists()


def test_extract_takes_only_the_batch_files(tmp_path):
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in [*(f"{FOLDER}/{f}" for f in OFFICIAL_MD5), f"{FOLDER}/readme.html", "../evil"]:
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    _extract_batches(archive, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(OFFICIAL_MD5)
    assert not (tmp_path.parent / "evil").exists()


@pytest.mark.parametrize("preset", ["cnn/cifar10-cpu", "ann2snn/cifar10-cpu", "cnn/cifar10-resnet18",
                                    "ann2snn/cifar10-resnet18"])
def test_cifar10_presets_build_and_run_on_cpu(tmp_path, host, preset):
    _fake_cifar(tmp_path)
    p = host.preset(preset)
    temporal = host.rule(p["rule"]).temporal
    # the preset's own rule, arch and options, on 8 fake images; the ONNX path has its own test
    options = {k: v for k, v in p.get("options", {}).items() if k != "onnx"}
    cell = Cell(p["rule"], p["dataset"], p["arch"], epochs=1, batch_size=2, limit_train=4, limit_test=2,
                timesteps=(1, 2) if temporal else None, options=tuple(options.items()) + (("calibration_samples", 4),)
                if temporal else tuple(options.items()), data_root=str(tmp_path), preset=preset)
    rows = run_cell(cell, host)
    assert all(r["status"] == "ok" for r in rows), rows[0].get("error")
    assert len(rows) == (2 if temporal else 1) and rows[-1]["macs"] > 0
