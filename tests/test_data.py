import gzip
import hashlib

import numpy as np
import pytest
import torch

from suite.data import DataError
from suite.data.builtin import MNIST, FashionMNIST
from suite.data.idx import read_idx, write_idx


def _fake_mnist(root, n_train=60000, n_test=10000, sums=True, rng=np.random.default_rng(0)):
    d = root / "mnist"
    d.mkdir(parents=True)
    # small pixel content keeps this fast; counts must match the real set's
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(d / f"{prefix}-images-idx3-ubyte.gz", np.zeros((n, 28, 28), np.uint8))
        write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n).astype(np.uint8))
    if sums:
        lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in sorted(d.glob("*.gz"))]
        (d / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return d


def test_idx_roundtrip(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", a)
    assert (read_idx(tmp_path / "a.gz", 2051, (2, 3, 4)) == a).all()
    write_idx(tmp_path / "b", a[:, 0, 0])
    assert read_idx(tmp_path / "b", 2049).tolist() == [0, 12]


@pytest.mark.parametrize("case, message", [
    ("missing", "file not found"),
    ("truncated", "data bytes, expected"),
    ("magic", "wrong magic number 2049, expected 2051"),
    ("dims", r"dimensions \(5, 28, 28\), expected \(4, 28, 28\)"),
    ("notgzip", "cannot decompress"),
    ("short", "too short for an IDX header"),
])
def test_idx_bad_files_name_the_file(tmp_path, case, message):
    p = tmp_path / f"{case}-images-idx3-ubyte.gz"
    imgs = np.zeros((4, 28, 28), np.uint8)
    if case == "truncated":
        write_idx(p, imgs)
        raw = gzip.open(p).read()[:-10]
        with gzip.open(p, "wb") as f:
            f.write(raw)
    elif case == "magic":
        write_idx(p, imgs[:, 0, 0])
    elif case == "dims":
        write_idx(p, np.zeros((5, 28, 28), np.uint8))
    elif case == "notgzip":
        p.write_bytes(b"this is not gzip at all")
    elif case == "short":
        with gzip.open(p, "wb") as f:
            f.write(b"\x00\x00")
    with pytest.raises(DataError, match=message) as exc:
        read_idx(p, 2051, (4, 28, 28))
    assert str(p) in str(exc.value)


def test_mnist_loads_and_checks_sha256sums(tmp_path):
    _fake_mnist(tmp_path, n_train=60000, n_test=10000)
    split = MNIST().load("test", tmp_path)
    assert split.x.shape == (10000, 1, 28, 28) and split.x.dtype == torch.float32
    assert split.y.dtype == torch.int64 and int(split.y.max()) < 10


def test_mnist_checksum_mismatch_names_file_and_source(tmp_path):
    d = _fake_mnist(tmp_path)
    write_idx(d / "t10k-labels-idx1-ubyte.gz", np.ones(10000, np.uint8))  # content changed after SHA256SUMS
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: sha256 \w+ does not match \w+ from .*SHA256SUMS"):
        MNIST().load("test", tmp_path)


def test_mnist_wrong_count_is_reported(tmp_path):
    _fake_mnist(tmp_path, n_test=9999)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz: dimensions \(9999, 28, 28\), expected \(10000, 28, 28\)"):
        MNIST().load("test", tmp_path)


def test_without_sha256sums_official_checksums_apply(tmp_path):
    _fake_mnist(tmp_path, sums=False)
    with pytest.raises(DataError, match="does not match .* from the official mnist release"):
        MNIST().load("train", tmp_path)


def test_missing_file_explains_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="file not found .*snn-suite data download fashion_mnist"):
        FashionMNIST().load("test", tmp_path)


def test_digits_is_embedded(host):
    ds = host.dataset("digits")
    tr, te = ds.load("train"), ds.load("test")
    assert (len(tr), len(te)) == (1437, 360)
    assert tr.x.shape[1:] == (1, 8, 8) and float(tr.x.max()) <= 1.0
    with pytest.raises(ValueError, match="unknown split"):
        ds.load("valid")


def test_data_root_from_environment(tmp_path, monkeypatch):
    from suite.data import resolve_root

    monkeypatch.setenv("SNN_SUITE_DATA", str(tmp_path))
    assert resolve_root() == tmp_path
    assert resolve_root("/x") == type(tmp_path)("/x")


def test_real_shared_data_verifies(shared_data, host):
    for name in ("mnist", "fashion_mnist"):
        te = host.dataset(name).load("test", shared_data)
        assert te.x.shape == (10000, 1, 28, 28)
    assert host.dataset("fashion_mnist").load("test", shared_data).y[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
