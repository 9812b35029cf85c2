"""The HTML comparison report (reports/html.py, reports/svg.py): merging, statistics, Pareto
front, escaping, self-containment, and rendering in headless Chromium where installed."""
import base64
import gzip
import html as htmlmod
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from suite.cli import main
from suite.reports.html import ci95, deduplicate, pareto_front, render, write_report
from suite.results import read_frame, write_cell, write_run_meta

EVIL = "<script>alert('x')</script>"
CHROMIUM = Path("/usr/bin/chromium")


def _cell_rows(rule, *, arch="mlp128", seed=0, Ts=(1, 2, 4, 8), acc0=0.6, paper="paper", cell_id=None,
               finished="2026-01-01T00:00:00+00:00", command="snn-suite run"):
    rows = []
    for T in Ts:
        synops = 0.0 if T is None else 1000.0 * T * (1 + 0.1 * seed)
        macs = 9472.0 if T is None else 64 * 128 * T
        rate = 0.2 + 0.01 * seed
        extra = {"spike_rates": {} if T is None else {"1": rate},
                 "activations": {} if T is None else {"1": {"kind": "spiking", "module": "LIF", "neurons": 128,
                                                            "spikes": rate * 128 * T, "rate": rate,
                                                            "sparsity": 1 - rate, "updates": 128 * T}},
                 "layers": {}, "neuron_updates": 0 if T is None else 128 * T, "eval_time_s": 0.5,
                 "energy_model": {"name": "45nm_fp32"}}
        rows.append({"rule": rule, "paper": paper, "dataset": "digits", "arch": arch, "backend": "torch",
                     "encoding": "direct", "T": T, "seed": seed, "status": "ok",
                     "accuracy": acc0 + (0 if T is None else 0.03 * T ** 0.5) + 0.01 * seed,
                     "synops": synops, "macs": macs, "energy_pj": 4.6 * macs + 0.9 * synops,
                     "spikes_per_sample": 0 if T is None else rate * 128 * T, "train_time_s": 2.0 + seed,
                     "samples_per_s": 700.0 - 10 * seed, "peak_mem_mb": 900.0, "epochs": 2, "n_train": 1437,
                     "n_test": 360, "train_T": None if T is None else max(Ts), "plugin_version": "1.0",
                     "cell_id": cell_id or f"{rule}__{arch}__s{seed}", "finished_at": finished,
                     "command": command, "extra": extra})
    return rows


@pytest.fixture
def result_dirs(tmp_path):
    """Two result directories (two 'machines'): an evil third-party rule, the CNN, conversion,
    and one cell present in both."""
    a, b = tmp_path / "machineA", tmp_path / "machineB"
    cmd_a, cmd_b = f"snn-suite run --rules '{EVIL}',cnn", "snn-suite run --rules surrogate_bptt_bn,ann2snn"
    for seed in (0, 1, 2):
        write_cell(a, f"evil{seed}", _cell_rows(EVIL, seed=seed, paper=EVIL, command=cmd_a))
        write_cell(a, f"cnn{seed}", _cell_rows("cnn", seed=seed, Ts=(None,), acc0=0.9, command=cmd_a))
        write_cell(b, f"sbn{seed}", _cell_rows("surrogate_bptt_bn", seed=seed, acc0=0.7, command=cmd_b))
    write_cell(b, "conv0", _cell_rows("ann2snn", Ts=(4, 8), acc0=0.5, command=cmd_b))
    # the same cell copied to machine A, finished earlier: must count once (the later copy)
    write_cell(a, "sbn0copy", [{**r, "accuracy": 0.0} for r in
                               _cell_rows("surrogate_bptt_bn", seed=0, acc0=0.7, finished="2025-01-01T00:00:00+00:00")])
    write_cell(b, "failed", [{"rule": "tssl_bp", "dataset": "digits", "arch": "mlp128", "backend": "torch", "T": 4,
                              "seed": 0, "status": "failed", "error": f"ValueError: {EVIL}\ntraceback"}])
    write_run_meta(a, {"command": cmd_a, "environment": {"python": "3.11", "torch": "2.x", "cpu": "x86_64",
                                                         "cpu_count": 2, "gpu": EVIL}, "cells": 6})
    write_run_meta(b, {"command": cmd_b, "environment": {"python": "3.11", "torch": "2.x", "cpu": "x86_64"},
                       "cells": 4})
    return a, b


def test_ci95_and_pareto_front():
    assert ci95([1.0]) == 0.0
    assert ci95([1.0, 2.0, 3.0]) == pytest.approx(4.302653 * 1.0 / 3 ** 0.5, rel=1e-5)
    pts = [(10, 0.5), (20, 0.7), (15, 0.4), (30, 0.7), (40, 0.9), (5, 0.3), (20, 0.6)]
    assert pareto_front(pts) == [(5, 0.3), (10, 0.5), (20, 0.7), (40, 0.9)]


def test_merged_report_statistics_escaping_and_self_containment(result_dirs, tmp_path):
    a, b = result_dirs
    out = tmp_path / "report.html"
    assert main(["report", str(a), str(b), "-o", str(out)]) == 0
    page = out.read_text()
    # every plugin-supplied string escaped: rule, paper, error, environment, command
    assert EVIL not in page and "<script" not in page.lower()
    assert htmlmod.escape(EVIL) in page
    # self-contained: no scripts, stylesheets, images or fonts from anywhere
    no_ns = page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "http://" not in no_ns and "https://" not in no_ns and "<link" not in page and " src=" not in page
    # sections and charts: accuracy vs T (CNN dashed reference), ops and energy with the front, spike rates
    assert page.count("<svg") >= 5 and "cnn (ANN)" in page and "ann2snn (reference)" in page
    assert 'class="front"' in page and "Pareto front" in page and "spike rate per layer" in page
    assert "Training time and throughput" in page and "Commands and environment" in page
    # merged: one copy of the duplicated cell (the later), seeds and CI from three seeds
    df, dropped = deduplicate(read_frame(a, b))
    assert dropped == 4 and (df.loc[df["rule"] == "surrogate_bptt_bn", "accuracy"] > 0).all()
    assert "4 duplicate rows" in page
    sbn8 = df[(df["rule"] == "surrogate_bptt_bn") & (df["T"] == 8)]["accuracy"]
    mean, half = sbn8.mean(), ci95(sbn8)
    assert f"{100 * mean:.2f} % ± {100 * half:.2f}" in page
    # commands of both machines, with the rows each produced
    assert htmlmod.escape("snn-suite run --rules surrogate_bptt_bn,ann2snn") in page
    # the embedded CSV (gzip, base64) holds every deduplicated row
    embedded = re.search(r"data:application/gzip;base64,([A-Za-z0-9+/=]+)", page).group(1)
    csv_rows = pd.read_csv(io.StringIO(gzip.decompress(base64.b64decode(embedded)).decode()))
    assert len(csv_rows) == len(df) and set(csv_rows["rule"]) == set(df["rule"])
    assert oct(out.stat().st_mode & 0o777) == "0o644"


def test_energy_model_can_be_changed_in_the_report(result_dirs, tmp_path):
    a, _ = result_dirs
    df = read_frame(a)
    page = render(df, [str(a)], [], energy="45nm_int8")
    assert "45nm_int8" in page and "MAC 0.23 pJ" in page
    cnn = df[df["rule"] == "cnn"].iloc[0]
    assert f"{0.23 * cnn['macs'] / 1e3:.4g}" in page          # energy (nJ) of the CNN, recomputed
    with pytest.raises(ValueError, match="unknown energy model"):
        render(df, [str(a)], [], energy="3nm")


def test_empty_and_failed_only_directories_render(tmp_path):
    write_cell(tmp_path, "f", [{"rule": "x", "dataset": "digits", "arch": "a", "T": 1, "seed": 0, "status": "failed",
                                "error": "boom"}])
    out = write_report([tmp_path], tmp_path / "r.html")
    page = out.read_text()
    assert "No successful rows" in page and "Cells that did not finish" in page


def test_report_from_real_cells(host, tmp_path):
    """A real run (surrogate_bptt_bn and the CNN, tiny) renders with its per-layer rates."""
    from suite.executors import run_matrix
    from suite.train import Cell

    cells = [Cell("surrogate_bptt_bn", "digits", "mlp128", seed=s, timesteps=(1, 2), epochs=1, limit_train=64,
                  limit_test=32, command="test") for s in (0,)]
    cells.append(Cell("cnn", "digits", "mlp128", seed=0, epochs=1, limit_train=64, limit_test=32, command="test"))
    run_matrix(cells, tmp_path / "res")
    page = write_report([tmp_path / "res"], tmp_path / "r.html").read_text()
    assert "layer 1" in page and "surrogate_bptt_bn (T=2)" in page and "cnn (ANN)" in page


# ----------------------------------------------------------------------------- headless Chromium
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]

# Injected into a copy of the page only: records script errors and console errors, then
# measures every chart once the page has loaded, into an attribute --dump-dom prints.
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', function (e) { window.__errors.push(String(e.message)); });
var __ce = console.error; console.error = function () { window.__errors.push([].join.call(arguments, ' ')); __ce.apply(console, arguments); };
window.addEventListener('load', function () {
  var charts = Array.prototype.slice.call(document.querySelectorAll('svg.chart'));
  var drawn = charts.map(function (s) {
    var r = s.getBoundingClientRect();
    var marks = s.querySelectorAll('circle.point, rect.point, rect.bar, polyline.series, polyline.front');
    var visible = Array.prototype.filter.call(marks, function (m) { var b = m.getBBox(); return b.width > 0 || b.height > 0; });
    return {w: r.width, h: r.height, marks: marks.length, visible: visible.length,
            text: s.querySelectorAll('text').length};
  });
  document.body.setAttribute('data-probe', JSON.stringify({charts: drawn, errors: window.__errors}));
});
</script>"""


def _chromium(args, tmp_path, timeout=90):
    profile = tmp_path / "chromium-profile"
    return subprocess.run([str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(result_dirs, tmp_path):
    a, b = result_dirs
    page = write_report([a, b], tmp_path / "report.html")
    # 1) the page itself: a screenshot, and no console message or page error while loading it
    shot = tmp_path / "report.png"
    run = _chromium(["--enable-logging=stderr", "--v=0", "--window-size=1280,4200", f"--screenshot={shot}",
                     page.as_uri()], tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == []
    assert shot.is_file() and shot.stat().st_size > 20_000
    artifacts = os.environ.get("SNN_SUITE_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artifacts) / "report-chromium.png")
        shutil.copy(page, Path(artifacts) / "report.html")
    try:
        from PIL import Image
    except ImportError:
        pass
    else:
        with Image.open(shot) as im:                      # not a blank page
            assert len(im.convert("RGB").getcolors(1 << 20) or []) > 20
    # 2) an instrumented copy: every chart has a size and visible marks, and nothing errs
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("<head>", "<head>" + PROBE, 1))
    run = _chromium(["--virtual-time-budget=3000", "--dump-dom", probe.as_uri()], tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    m = re.search(r'data-probe="([^"]*)"', run.stdout)
    assert m, run.stdout[-1000:]
    result = json.loads(htmlmod.unescape(m.group(1)))
    assert result["errors"] == []
    charts = result["charts"]
    assert len(charts) >= 5
    for c in charts:
        assert c["w"] > 300 and c["h"] > 200 and c["text"] > 5
        assert c["marks"] > 0 and c["visible"] == c["marks"]


# ----------------------------------------------------------------------------- tox matrix
def test_matrix_env_names_become_snn_suite_runs(host):
    from suite.reports.matrix import parse_env_name, run_arguments

    assert parse_env_name("bench-tssl_bp-fmnist-triton") == ("tssl_bp", "fashion_mnist", "triton")
    with pytest.raises(SystemExit, match="bench-<rule>-<dataset>-<backend>"):
        parse_env_name("bench-tssl_bp-mnist")
    # a rule with a preset for the dataset runs the preset; extra arguments follow
    args = run_arguments("bench-surrogate_bptt_bn-digits-torch", ["--seeds", "0,1"], host)
    assert args[:3] == ["run", "--preset", "surrogate_bptt_bn/digits"] and args[-2:] == ["--seeds", "0,1"]
    assert "--resume" in args and args[args.index("--backend") + 1] == "torch"
    # the third-party fixture rule (no preset) joins by name with the dataset's defaults
    args = run_arguments("bench-example_rate-digits-fused", [], host)
    assert args[:7] == ["run", "--rules", "example_rate", "--dataset", "digits", "--arch", "mlp128"]
    assert "--timesteps" in args
    assert "--timesteps" not in run_arguments("bench-cnn-digits-torch", [], host)  # no T for the CNN
    explicit = run_arguments("bench-surrogate_bptt_bn-digits-torch", ["--arch", "convnet"], host)
    assert "--preset" not in explicit and explicit[-2:] == ["--arch", "convnet"]
    with pytest.raises(SystemExit, match="installed: .*surrogate_bptt_bn"):
        run_arguments("bench-nope-digits-torch", [], host)
    with pytest.raises(SystemExit, match="valid: .*mnist"):
        run_arguments("bench-cnn-cifar99-torch", [], host)


def test_tox_declares_any_matrix_env_in_one_shared_envdir():
    pytest.importorskip("tox")
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-m", "tox", "c", "-e", "bench-some_plugin_rule-fmnist-torch,report",
                          "-k", "commands", "runner", "env_dir"], cwd=root, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "python -m suite.reports.matrix bench-some_plugin_rule-fmnist-torch --out" in out
    assert "snn-suite report" in out and "matrix-results" in out
    assert out.count("runner = shared-virtualenv") == 2
    assert len({line for line in out.splitlines() if line.startswith("env_dir")}) == 1


def test_learning_curves_section_only_for_runs_with_history(tmp_path):
    base = {"dataset": "mnist", "arch": "fc800", "backend": "torch", "status": "ok", "epochs": 3}
    hist = [{"epoch": e, "train_time_s": 1.0 * e, "train_loss": 2.0 / e, "n_val": 500, "val_accuracy": a}
            for e, a in ((1, 0.5), (2, 0.7), (3, 0.8))]
    write_cell(tmp_path / "a", "c1", [{**base, "rule": "lee_bp", "seed": 0, "T": t, "accuracy": 0.8,
                                       "extra": {"history": hist}} for t in (50, 1000)])
    write_cell(tmp_path / "a", "c2", [{**base, "rule": "cnn", "seed": 0, "T": None, "accuracy": 0.9, "extra": {}}])
    page = render(read_frame(tmp_path / "a"), ["a"], [])
    section = page[page.index("id='curves'"):page.index("id='summary'")]
    assert "lee_bp s0, T=1000 (N=500)" in section and "cnn" not in section
    assert "training loss" in section and "validation accuracy" in section
    write_cell(tmp_path / "b", "c2", [{**base, "rule": "cnn", "seed": 0, "T": None, "accuracy": 0.9, "extra": {}}])
    assert "id='curves'" not in render(read_frame(tmp_path / "b"), ["b"], [])


def test_accuracy_vs_depth_view_from_the_rows_arch_spec(tmp_path):
    rows = []
    for arch, depth, residual in [("resnet8w8", 8, True), ("resnet14w8", 14, True), ("plain8w8", 8, False)]:
        for seed in (0, 1):
            for r in _cell_rows("surrogate_bptt_bn", arch=arch, seed=seed, Ts=(2, 4),
                                  acc0=0.5 + depth / 100 - (0 if residual else 0.1)):
                r["val_accuracy"] = r["accuracy"]
                r["extra"].update(arch_spec={"family": "resnet", "depth": depth, "width": 8, "residual": residual,
                                             "batch_norm": True},
                                  history=[{"epoch": 1, "grad_norm_ratio": 10.0 ** (seed + 1)}])
                rows.append(r)
    write_cell(tmp_path / "deep", "cells", rows)
    write_cell(tmp_path / "flat", "cnn", _cell_rows("cnn", Ts=(None,)))
    page = render(read_frame(tmp_path / "deep"), ["deep"], [])
    section = page.split("<h2 id='depth'>")[1].split("<h2")[0]
    assert "ResNet w8" in section and "plain w8" in section and section.count("<svg") == 1
    # at the best validation T (4): acc0 + 0.06 + 0.01 * seed, mean over seeds 0 and 1
    for arch, acc in [("resnet8w8", "64.50"), ("resnet14w8", "70.50"), ("plain8w8", "54.50")]:
        assert f"<td class=\"l\">{arch}</td><td class=\"\">2</td><td class=\"\">4</td><td class=\"l\">{acc} ± " in section
    assert "<td class=\"\">31.6</td>" in section  # geometric mean of the first-epoch ratios 10 and 100
    # resnet14w8 minus resnet8w8, paired by seed: +6.00 points both seeds (no interval from zero spread)
    assert "does depth pay?" in section
    assert "<td class=\"l\">resnet14w8</td><td class=\"l\">resnet8w8</td><td class=\"\">2</td><td class=\"\">+6.00</td>" in section
    assert "id='depth'" not in render(read_frame(tmp_path / "flat"), ["flat"], [])
