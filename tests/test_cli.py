import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from suite.cli import main
from suite.results import read_frame, write_cell, write_run_meta

VOLATILE = ["train_time_s", "samples_per_s", "peak_mem_mb", "finished_at", "extra", "command", "source"]


def _cli(*args, env=None):
    return [sys.executable, "-m", "suite.cli", *args]


def _stable(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=VOLATILE).sort_values(["rule", "seed", "T"]).reset_index(drop=True)


def test_resume_after_kill_gives_the_same_table(tmp_path):
    args = ["run", "--rules", "surrogate_bptt_bn,cnn", "--dataset", "digits", "--arch", "mlp128",
            "--timesteps", "1,4", "--seeds", "0,1,2", "--epochs", "3", "--limit-train", "600", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    full, part = tmp_path / "full", tmp_path / "part"
    subprocess.run(_cli(*args, "--out", str(full)), env=env, check=True, capture_output=True)

    proc = subprocess.Popen(_cli(*args, "--out", str(part)), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    cells = part / "cells"
    deadline = time.time() + 120
    while time.time() < deadline and not (cells.is_dir() and len(list(cells.glob("*.jsonl"))) >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_done = len(list(cells.glob("*.jsonl")))
    assert 2 <= n_done < 6, "the kill must land mid-run"
    for f in cells.glob("*.jsonl"):
        assert all(json.loads(line)["status"] == "ok" for line in f.read_text().splitlines())

    out = subprocess.run(_cli(*args, "--out", str(part), "--resume"), env=env, check=True,
                         capture_output=True, text=True).stdout
    assert f"resume: {n_done} of 6 cells already finished" in out
    pd.testing.assert_frame_equal(_stable(read_frame(full)), _stable(read_frame(part)))


def test_results_csv_has_header_and_all_rows(tmp_path, capsys):
    rows = [{"rule": "r", "dataset": "digits", "arch": "a", "T": t, "seed": 0, "status": "ok", "accuracy": 0.5}
            for t in (1, 2)]
    write_cell(tmp_path, "cell1", rows)
    assert main(["results", str(tmp_path), "--csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("rule,paper,dataset,arch,encoding,backend,T,seed,accuracy,val_accuracy,synops")
    assert len(lines) == 3 and lines[1].split(",")[6] == "1"


def test_report_is_self_contained_and_escapes_plugin_strings(tmp_path):
    evil = "<script>alert(1)</script>"
    rows = [{"rule": evil, "paper": evil, "dataset": "digits", "arch": "mlp128", "backend": "torch", "T": t,
             "seed": s, "status": "ok", "accuracy": 0.5 + 0.1 * t / 8, "synops": 100.0 * t, "macs": 10.0,
             "energy_pj": 1.0} for t in (1, 2, 4, 8) for s in (0, 1)]
    rows.append({"rule": "cnn", "dataset": "digits", "arch": "mlp128", "backend": "torch", "T": None, "seed": 0,
                 "status": "ok", "accuracy": 0.9, "macs": 9472.0})
    write_cell(tmp_path, "c1", rows)
    write_run_meta(tmp_path, {"command": f"snn-suite run --rules '{evil}'", "environment": {"python": "3"}})
    out = tmp_path / "report.html"
    assert main(["report", str(tmp_path), "-o", str(out)]) == 0
    html = out.read_text()
    assert "<svg" in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert evil not in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in html
    assert "cnn (ANN)" in html


def test_unknown_names_are_errors_listing_valid_ones(capsys):
    assert main(["run", "--rules", "nope", "--out", "/tmp/unused"]) == 2
    assert "valid:" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="valid: "):
        main(["run", "--rules", "cnn", "--backend", "warp", "--out", "/tmp/unused"])
    with pytest.raises(SystemExit, match="--set alhpa: no selected rule has this option"):
        main(["run", "--rules", "surrogate_bptt_bn", "--set", "alhpa=3", "--out", "/tmp/unused"])


def test_data_check_reports_bad_file(tmp_path, capsys):
    (tmp_path / "mnist").mkdir()
    assert main(["data", "check", "mnist", "--data-root", str(tmp_path)]) == 1
    assert "train-images-idx3-ubyte.gz: file not found" in capsys.readouterr().err


def test_curve_reads_validation_only_and_never_changes_the_rows(tmp_path, capsys):
    base = ["run", "--rules", "surrogate_bptt_bn,cnn", "--dataset", "digits", "--arch", "mlp128",
            "--timesteps", "1,4", "--seeds", "0", "--epochs", "2", "--limit-train", "400", "--limit-test", "120",
            "--quiet"]
    assert main([*base, "--out", str(tmp_path / "plain")]) == 0
    assert main([*base, "--out", str(tmp_path / "curve"), "--curve", "100"]) == 0
    assert main([*base, "--out", str(tmp_path / "off"), "--curve", "0"]) == 0
    err = capsys.readouterr().err
    assert "[val] surrogate_bptt_bn/digits/mlp128 s0 epoch 2: T=1:" in err and "(100 validation samples" in err
    plain, curve, off = (read_frame(tmp_path / d) for d in ("plain", "curve", "off"))
    # same cells (curve is not part of the identity) and the same training: identical test measurements
    for other in (curve, off):
        pd.testing.assert_frame_equal(_stable(plain)[["rule", "T", "accuracy", "val_accuracy", "synops"]],
                                      _stable(other)[["rule", "T", "accuracy", "val_accuracy", "synops"]])
    for _, row in plain.iterrows():
        points = row["extra"]["history"]
        assert [p["epoch"] for p in points] == [1, 2] and all(p["n_val"] == 144 for p in points)
        assert all(p["train_loss"] > 0 for p in points)
        # the last epoch's point on the whole validation split is the row's validation accuracy
        assert points[-1]["val_accuracy"] == pytest.approx(row["val_accuracy"], abs=1e-9)
        assert row["val_split"]["n_val"] == 144 and row["n_train"] == 400 and row["n_test"] == 120
    assert all(p["n_val"] == 100 for _, r in curve.iterrows() for p in r["extra"]["history"])
    assert all("val_accuracy" not in p for _, r in off.iterrows() for p in r["extra"]["history"])
    with pytest.raises(SystemExit, match="--curve expects a number of validation samples >= 0"):
        main([*base, "--out", str(tmp_path / "bad"), "--curve", "-1"])


def test_timesteps_override_a_presets_sweep(tmp_path):
    assert main(["run", "--preset", "surrogate_bptt_bn/digits", "--timesteps", "2,3", "--epochs", "1",
                 "--limit-train", "200", "--limit-test", "50", "--seeds", "0", "--quiet",
                 "--out", str(tmp_path)]) == 0
    df = read_frame(tmp_path)
    assert sorted(df["T"].tolist()) == [2, 3]
