"""What a user or a plugin author gets wrong, and what they see.

Each case ends in a clear one-line error that names the culprit (and no traceback), or in a
``failed`` row with the reason while the rest goes on, and never loses what already finished.

Catalogue
---------
plugins        misspelt hook (marked, or a plain function); a @hookimpl(specname=...) the host
               lacks; wrong hook signature; a hook that returns one item instead of a list, items of
               the wrong type, a rule without a name, a preset without an arch, a dataset hook that
               returns an architecture, a metric that is not callable; a hook that raises; import
               error; SystemExit at import; another API version; a duplicate name; a plugin broken
               in one hook contributes nothing; `plugins` lists each and exits 0; a rule that
               crashes inside a cell is a failed row while the other cells finish
command line   --epochs -1 / 0, --batch-size 0, --jobs 0, --max-retries -1, --limit-train abc,
               --seeds a, --timesteps 0, --set without '=', unknown --set key, --set lr=abc,
               --set batch_norm=maybe, a preset's option by --set, --device gpu / cuda:99,
               unknown rule / dataset / arch / preset / backend, a preset whose dataset is not
               installed, --executor ray without Ray, no --rules nor --preset, a missing matrix
               file or one with an unknown key, --debug keeps the traceback; none starts a cell
data           missing MNIST files, a checksum mismatch, a malformed SHA256SUMS, no N-MNIST, no
               CIFAR-10, `data check` naming the bad file
results files  missing path, empty directory (report and results), a CSV of committed rows, a Parquet
               and a JSONL file, a file of another kind, a CSV or JSONL file without the row
               schema, an unreadable Parquet, a cut JSON line, a newer schema, rows of schema 1
interruption   Ctrl-C mid-matrix keeps the finished cells and --resume runs only the rest; a
               failed cell is run again by --resume (the SIGKILL case: tests/test_cli.py)
"""
from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import sys
import types
from pathlib import Path

import pandas as pd
import pytest

from suite import host as host_mod
from suite.archs import ArchSpec
from suite.cli import main
from suite.hookspecs import hookimpl
from suite.results import read_frame, write_cell
from suite.rule import Rule
from suite.validate import UsageError

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "digits", "--arch", "mlp128", "--timesteps", "1", "--epochs", "1", "--limit-train", "64",
        "--limit-test", "32", "--quiet"]


class _Rate(Rule):
    name = "rel_rate"
    neuron = "IF"

    def build(self, arch, input_shape, n_classes, backend, hp):
        raise AssertionError("never built in these tests")


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    for k, v in attrs.items():
        setattr(mod, k, v)
    return mod


def _install(monkeypatch, **plugins):
    """Register modules under the ``snn_suite`` entry-point group, as a third-party package would."""
    real = host_mod._entry_points()
    eps = []
    for name, mod in plugins.items():
        if isinstance(mod, types.ModuleType):
            monkeypatch.setitem(sys.modules, mod.__name__, mod)
            value = mod.__name__
        else:
            value = mod  # a module path that fails to import
        eps.append((md.EntryPoint(name=name, value=value, group="snn_suite"), "third-party", "1.0"))
    monkeypatch.setattr(host_mod, "_entry_points", lambda: real + eps)


def _one_line_error(capsys, *parts):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


# ============================================================================ plugins
def _rules_hook(value):
    @hookimpl
    def snn_suite_rules():
        return value
    return snn_suite_rules


def _misspelt_marked():
    @hookimpl
    def snn_suite_rule():
        return [_Rate()]
    return {"snn_suite_rule": snn_suite_rule}


def _misspelt_plain():
    def snn_suite_rulez():
        return [_Rate()]
    return {"snn_suite_rulez": snn_suite_rulez}


def _renamed_spec():
    @hookimpl(specname="snn_suite_schedulers")
    def rules():
        return [_Rate()]
    return {"rules": rules}


def _wrong_signature():
    @hookimpl
    def snn_suite_rules(config):
        return [_Rate()]
    return {"snn_suite_rules": snn_suite_rules}


def _raises():
    @hookimpl
    def snn_suite_rules():
        raise RuntimeError("rule table corrupt")
    return {"snn_suite_rules": snn_suite_rules}


def _nameless():
    class Nameless(_Rate):
        name = ""
    return {"snn_suite_rules": _rules_hook([Nameless()])}


def _preset_without_arch():
    @hookimpl
    def snn_suite_presets():
        return [{"name": "rel_rate/digits", "rule": "rel_rate", "dataset": "digits"}]
    return {"snn_suite_presets": snn_suite_presets}


def _dataset_hook_returns_arch():
    @hookimpl
    def snn_suite_datasets():
        return [ArchSpec("rel_arch", "32")]
    return {"snn_suite_datasets": snn_suite_datasets}


def _metric_not_callable():
    @hookimpl
    def snn_suite_metrics():
        return ["accuracy"]
    return {"snn_suite_metrics": snn_suite_metrics}


def _duplicate():
    class Dup(_Rate):
        name = "surrogate_bptt_bn"
    return {"snn_suite_rules": _rules_hook([Dup()])}


BROKEN_PLUGINS = {
    "misspelt hook": (_misspelt_marked, "unknown hook snn_suite_rule() (did you mean snn_suite_rules?)"),
    "misspelt, unmarked": (_misspelt_plain, "unknown hook snn_suite_rulez() (did you mean snn_suite_rules?)"),
    "specname unknown": (_renamed_spec, "unknown hook snn_suite_schedulers"),
    "wrong signature": (_wrong_signature, "wrong hook signature"),
    "one item, no list": (lambda: {"snn_suite_rules": _rules_hook(_Rate())},
                          "snn_suite_rules() returned _Rate; expected a list of rule items"),
    "wrong item type": (lambda: {"snn_suite_rules": _rules_hook(["rel_rate"])},
                        "expected suite.rule.Rule instances, got str"),
    "rule without name": (_nameless, "a Rule without a name"),
    "preset without arch": (_preset_without_arch, "preset 'rel_rate/digits' lacks arch"),
    "dataset hook, arch item": (_dataset_hook_returns_arch, "expected suite.data.Dataset instances, got ArchSpec"),
    "metric not callable": (_metric_not_callable, "expected callables, got str"),
    "hook raises": (_raises, "snn_suite_rules() raised RuntimeError: rule table corrupt"),
    "another API version": (lambda: {"SNN_SUITE_API": 2, "snn_suite_rules": _rules_hook([_Rate()])},
                            "incompatible plugin API version 2"),
    "duplicate name": (_duplicate, "duplicate rule name 'surrogate_bptt_bn': provided by plugin 'surrogate_bptt_bn'"),
}


@pytest.mark.parametrize("case", list(BROKEN_PLUGINS))
def test_a_broken_plugin_is_listed_and_every_command_still_works(case, monkeypatch, capsys):
    make, reason = BROKEN_PLUGINS[case]
    _install(monkeypatch, zz_bad=_module(f"snn_suite_rel_{abs(hash(case))}", **make()))
    h = host_mod.create_host()
    broken = {p.name: p.error for p in h.broken()}
    assert reason in broken["zz_bad"]
    assert {"surrogate_bptt_bn", "cnn", "example_rate"} <= set(h.rules)
    assert h.rule("surrogate_bptt_bn").distribution == "snn-suite"
    assert "rel_rate" not in h.rules and "rel_arch" not in h.datasets
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "BROKEN plugin zz_bad" in out and reason in out


@pytest.mark.parametrize("source,reason", [
    ("raise SyntaxError('bad plugin')", "import failed: SyntaxError: bad plugin"),
    ("import sys; sys.exit('plugin gave up')", "import failed: SystemExit: plugin gave up"),
])
def test_a_plugin_that_cannot_import_is_listed(source, reason, monkeypatch, tmp_path):
    (tmp_path / "rel_bad_import.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    _install(monkeypatch, zz_import="rel_bad_import")
    h = host_mod.create_host()
    assert reason in {p.name: p.error for p in h.broken()}["zz_import"]
    assert "cnn" in h.rules


def test_a_plugin_broken_in_one_hook_contributes_nothing(monkeypatch):
    _install(monkeypatch, zz_half=_module("rel_half", snn_suite_rules=_rules_hook([_Rate()]),
                                           **_preset_without_arch()))
    h = host_mod.create_host()
    assert "rel_rate" not in h.rules and "zz_half" in {p.name for p in h.broken()}


def test_plugins_json_lists_broken_plugins(monkeypatch, capsys):
    _install(monkeypatch, zz_bad=_module("rel_json_bad", **_misspelt_marked()))
    assert main(["plugins", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [b["plugin"] for b in out["broken"] if b["plugin"] == "zz_bad"] == ["zz_bad"]
    assert out["unavailable_presets"]["sstdp/caltech101"] == "needs dataset 'caltech101', not installed"


class _Crashing(Rule):
    name = "rel_crash"
    neuron = "LIF"
    defaults = {"T": 1}

    def build(self, arch, input_shape, n_classes, backend, hp):
        raise RuntimeError("kaboom in build")


def test_a_rule_that_crashes_in_a_cell_is_a_failed_row_and_the_matrix_goes_on(monkeypatch, tmp_path, capsys):
    _install(monkeypatch, zz_crash=_module("rel_crash_mod", snn_suite_rules=_rules_hook([_Crashing()])))
    assert main(["run", "--rules", "rel_crash,surrogate_bptt_bn", *TINY, "--out", str(tmp_path)]) == 1
    df = read_frame(tmp_path).set_index("rule")
    assert df.loc["rel_crash", "status"] == "failed"
    assert df.loc["rel_crash", "error"].startswith("RuntimeError: kaboom in build")
    assert df.loc["surrogate_bptt_bn", "status"] == "ok"
    assert "[failed] rel_crash" in capsys.readouterr().out


# ============================================================================ command line
BAD_ARGUMENTS = {
    "--epochs -1": (["--rules", "cnn", "--epochs", "-1"], "argument --epochs: expected a positive integer, got -1"),
    "--epochs 0": (["--rules", "cnn", "--epochs", "0"], "argument --epochs: expected a positive integer, got 0"),
    "--batch-size 0": (["--rules", "cnn", "--batch-size", "0"], "argument --batch-size: expected a positive"),
    "--jobs 0": (["--rules", "cnn", "--jobs", "0"], "argument --jobs: expected a positive integer"),
    "--max-retries -1": (["--rules", "cnn", "--max-retries", "-1"], "argument --max-retries: expected an integer >= 0"),
    "--limit-train abc": (["--rules", "cnn", "--limit-train", "abc"], "argument --limit-train: expected a positive"),
}


@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
def test_bad_numbers_are_refused_by_the_parser(case, capsys, tmp_path):
    argv, message = BAD_ARGUMENTS[case]
    with pytest.raises(SystemExit) as exc:
        main(["run", *argv, "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "cells").exists()


BAD_RUNS = {
    "--set lr=abc": (["--rules", "cnn", "--set", "lr=abc"],
                     ["--set", "option 'lr': expected a number such as 0.001, got 'abc'"]),
    "--set batch_norm=maybe": (["--rules", "surrogate_bptt_bn", "--set", "batch_norm=maybe"],
                               ["option 'batch_norm': expected true or false", "'maybe'"]),
    "a preset's option by --set": (["--preset", "cnn/digits", "--set", "lr=fast"],
                                   ["preset 'cnn/digits' or --set", "option 'lr'"]),
    "--device gpu": (["--rules", "cnn", "--device", "gpu"], ["--device 'gpu': expected cpu, cuda or cuda:N"]),
    "--device cuda:99": (["--rules", "cnn", "--device", "cuda:99"], ["--device cuda:99: "]),
    "missing data root": (["--rules", "cnn", "--dataset", "mnist", "--arch", "fc800", "--data-root", "{tmp}/none"],
                          ["dataset 'mnist'", "none/mnist/train-images-idx3-ubyte.gz: file not found"]),
    "unknown rule": (["--rules", "cnnn"], ["unknown rule 'cnnn'; valid: ", "surrogate_bptt_bn"]),
    "unknown dataset": (["--rules", "cnn", "--dataset", "mnits"], ["unknown dataset 'mnits'; valid: ", "mnist"]),
    "unknown arch": (["--rules", "cnn", "--arch", "fc8000"], ["unknown architecture 'fc8000'; valid: ", "fc800"]),
    "unknown preset": (["--preset", "cnn/digitz"], ["unknown preset 'cnn/digitz'; valid: "]),
    "preset not installed": (["--preset", "sstdp/caltech101"],
                             ["--preset sstdp/caltech101: needs dataset 'caltech101', not installed"]),
    "matrix file missing": (["--matrix", "{tmp}/none.toml"], ["none.toml: cannot read matrix file"]),
    "matrix file, unknown key": (["--matrix", "{tmp}/bad.toml"], ["bad.toml:2: seed: unknown key; valid keys: "]),
}


@pytest.mark.parametrize("case", list(BAD_RUNS))
def test_a_bad_run_stops_before_any_cell_with_one_line(case, capsys, tmp_path):
    argv, parts = BAD_RUNS[case]
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    (tmp_path / "bad.toml").write_text('rules = ["cnn"]\nseed = [0]\ndatasets = ["digits"]\narchs = ["mlp128"]\n')
    assert main(["run", *argv, "--out", str(tmp_path / "out")]) == 2
    _one_line_error(capsys, *parts)
    assert not (tmp_path / "out" / "cells").exists()


@pytest.mark.parametrize("argv,message", [
    (["--rules", "cnn", "--seeds", "a"], "--seeds expects comma-separated integers, got 'a'"),
    (["--rules", "cnn", "--timesteps", "0"], "--timesteps expects positive integers, got '0'"),
    (["--rules", "cnn", "--set", "lr"], "--set expects KEY=VALUE, got 'lr'"),
    (["--rules", "surrogate_bptt_bn", "--set", "alhpa=3"], "--set alhpa: no selected rule has this option"),
    (["--rules", "cnn", "--backend", "warp"], "unknown backend 'warp'; valid: "),
    ([], "give --rules, --preset or --matrix"),
])
def test_malformed_lists_and_missing_choices(argv, message, tmp_path):
    with pytest.raises(SystemExit, match=message.replace("(", r"\(").replace(")", r"\)")):
        main(["run", *argv, "--out", str(tmp_path)])
    assert not (tmp_path / "cells").exists()


def test_tune_checks_the_device_before_any_trial(tmp_path, capsys):
    (tmp_path / "m.toml").write_text('rules = ["cnn"]\ndatasets = ["digits"]\narchs = ["mlp128"]\n')
    assert main(["tune", "--matrix", str(tmp_path / "m.toml"), "--out", str(tmp_path / "t"), "--trials", "1",
                 "--epochs", "1", "--device", "gpu"]) == 2
    _one_line_error(capsys, "--device 'gpu': expected cpu, cuda or cuda:N")
    assert not (tmp_path / "t").exists()


def test_executor_ray_without_ray_names_the_extra(monkeypatch, capsys, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    assert main(["run", "--rules", "cnn", "--executor", "ray", "--out", str(tmp_path)]) == 2
    _one_line_error(capsys, "--executor ray needs the Python package 'ray'", "pip install 'snn-suite[ray]'")


def test_debug_keeps_the_traceback(monkeypatch, tmp_path):
    with pytest.raises(UsageError, match="--device 'gpu'"):
        main(["--debug", "run", "--rules", "cnn", "--device", "gpu", "--out", str(tmp_path)])
    monkeypatch.setenv("SNN_SUITE_DEBUG", "1")
    with pytest.raises(ValueError, match="unknown rule"):
        main(["run", "--rules", "nope", "--out", str(tmp_path)])


# ============================================================================ data
def _fake_mnist(root: Path, sums: str | None) -> None:
    d = root / "mnist"
    d.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        for kind in ("images-idx3", "labels-idx1"):
            (d / f"{prefix}-{kind}-ubyte.gz").write_bytes(b"not the real file")
    if sums is not None:
        (d / "SHA256SUMS").write_text(sums)


@pytest.mark.parametrize("sums,parts", [
    (None, ["train-images-idx3-ubyte.gz: sha256", "does not match", "the official mnist release"]),
    ("0" * 64 + "  train-images-idx3-ubyte.gz\n", ["train-images-idx3-ubyte.gz: sha256", "SHA256SUMS"]),
    ("garbage line\n", ["SHA256SUMS: line 1 is not '<sha256>  <file>'"]),
])
def test_bad_mnist_files_stop_the_run_naming_the_file(sums, parts, tmp_path, capsys):
    _fake_mnist(tmp_path, sums)
    assert main(["run", "--rules", "cnn", "--dataset", "mnist", "--arch", "fc800", "--data-root", str(tmp_path),
                 "--out", str(tmp_path / "out")]) == 2
    _one_line_error(capsys, "dataset 'mnist'", *parts)


@pytest.mark.parametrize("dataset,arch,part", [
    ("nmnist", "tssl_nmnist_cnn", "nmnist-subset: not found"),
    ("cifar10", "convnet", "data_batch_1: file not found"),
])
def test_missing_event_and_cifar_data_stop_the_run(dataset, arch, part, tmp_path, capsys):
    assert main(["run", "--rules", "tssl_bp", "--dataset", dataset, "--arch", arch, "--data-root", str(tmp_path),
                 "--out", str(tmp_path / "out")]) == 2
    _one_line_error(capsys, f"dataset '{dataset}'", part)


def test_data_check_names_the_bad_file(tmp_path, capsys):
    _fake_mnist(tmp_path, None)
    assert main(["data", "check", "mnist", "--data-root", str(tmp_path)]) == 1
    assert "BAD mnist: " in capsys.readouterr().err


# ============================================================================ results files
def _rows(n=2, **extra):
    return [{"rule": "r", "dataset": "digits", "arch": "mlp128", "T": t, "seed": 0, "status": "ok",
             "accuracy": 0.5 + t / 10, **extra} for t in range(1, n + 1)]


@pytest.mark.parametrize("command", ["results", "report"])
def test_missing_and_empty_result_paths(command, tmp_path, capsys):
    assert main([command, str(tmp_path / "nope")]) == 2
    _one_line_error(capsys, "nope: no such results directory or file")
    (tmp_path / "empty").mkdir()
    assert main([command, str(tmp_path / "empty")]) == 2
    _one_line_error(capsys, "no result rows found in", "empty")
    assert not (Path.cwd() / "report.html").exists() or command == "results"


def test_a_csv_of_committed_rows_is_read_by_results_and_report(tmp_path, capsys):
    committed = ROOT / "benchmarks" / "results" / "tssl_bp" / "mnist_cpu"
    assert main(["results", str(committed), "--csv"]) == 0
    csv = tmp_path / "mnist_cpu.csv"
    csv.write_text(capsys.readouterr().out)
    n = len(read_frame(committed))
    assert len(pd.read_csv(csv)) == n > 0
    assert main(["results", str(csv), "--csv"]) == 0
    assert capsys.readouterr().out == csv.read_text()
    assert main(["report", str(csv), "-o", str(tmp_path / "r.html")]) == 0
    assert "tssl_bp" in (tmp_path / "r.html").read_text()


def test_parquet_and_jsonl_files_hold_the_same_rows(tmp_path):
    write_cell(tmp_path / "d", "c1", _rows(3))
    df = read_frame(tmp_path / "d")
    df.drop(columns=["extra", "hp"]).to_parquet(tmp_path / "rows.parquet")
    cell = next((tmp_path / "d" / "cells").glob("*.jsonl"))
    for path in (tmp_path / "rows.parquet", cell):
        got = read_frame(path)
        assert got["accuracy"].tolist() == df["accuracy"].tolist() and got["T"].tolist() == [1, 2, 3]


@pytest.mark.parametrize("name,content,part", [
    ("notes.txt", "hello", "notes.txt: not a result file; expected a results directory or a .csv"),
    ("other.csv", "a,b\n1,2\n", "other.csv: not result rows: no column(s) rule, dataset, arch, status"),
    ("broken.parquet", "PAR1 but not really", "broken.parquet: cannot be read as parquet"),
    ("log.jsonl", '{"epoch": 1}\n', "log.jsonl: not result rows: no column(s) rule, dataset, arch, status"),
])
def test_files_that_are_not_results_are_refused(name, content, part, tmp_path, capsys):
    (tmp_path / name).write_text(content)
    assert main(["report", str(tmp_path / name), "-o", str(tmp_path / "r.html")]) == 2
    _one_line_error(capsys, part)
    assert not (tmp_path / "r.html").exists()


def test_a_cut_line_and_a_newer_schema_name_the_file(tmp_path, capsys):
    path = write_cell(tmp_path, "c1", _rows())
    path.write_text(path.read_text() + '{"rule": "r", "acc')
    assert main(["results", str(tmp_path)]) == 2
    _one_line_error(capsys, "c1.jsonl: line 3 is not valid JSON")
    path.write_text(json.dumps({**_rows(1)[0], "schema_version": 99}) + "\n")
    assert main(["results", str(tmp_path)]) == 2
    _one_line_error(capsys, "schema_version 99 is newer than this suite's", "upgrade snn-suite")


def test_rows_of_schema_1_still_read(tmp_path):
    cells = tmp_path / "cells"
    cells.mkdir()
    (cells / "old.jsonl").write_text("".join(json.dumps({**r, "schema_version": 1}) + "\n" for r in _rows()))
    df = read_frame(tmp_path)
    assert df["accuracy"].tolist() == [0.6, 0.7]
    assert df["hp"].isna().all() and df["device"].isna().all()


# ============================================================================ interruption
class _Interrupted(Rule):
    """Ctrl-C in the middle of its training."""

    name = "rel_interrupt"
    neuron = "LIF"
    defaults = {"T": 1}

    def build(self, arch, input_shape, n_classes, backend, hp):
        from torch import nn
        return nn.Linear(1, 1)

    def train_step(self, model, batch, optimizer, ctx):
        raise KeyboardInterrupt


def test_ctrl_c_keeps_finished_cells_and_resume_runs_only_the_rest(monkeypatch, tmp_path, capsys):
    _install(monkeypatch, zz_int=_module("rel_int_mod", snn_suite_rules=_rules_hook([_Interrupted()])))
    out = str(tmp_path)
    assert main(["run", "--rules", "surrogate_bptt_bn,rel_interrupt", *TINY, "--out", out]) == 130
    assert "interrupted; finished cells are kept" in capsys.readouterr().err
    done = read_frame(tmp_path)
    assert done["rule"].tolist() == ["surrogate_bptt_bn"] and done["status"].tolist() == ["ok"]
    assert main(["run", "--rules", "surrogate_bptt_bn,rel_crash", *TINY, "--out", out, "--resume"]) == 2
    _install(monkeypatch, zz_crash=_module("rel_crash_mod2", snn_suite_rules=_rules_hook([_Crashing()])))
    assert main(["run", "--rules", "surrogate_bptt_bn,rel_crash", *TINY, "--out", out, "--resume"]) == 1
    first = capsys.readouterr().out
    assert "resume: 1 of 2 cells already finished" in first
    # a failed cell is not final: --resume runs it again
    assert main(["run", "--rules", "surrogate_bptt_bn,rel_crash", *TINY, "--out", out, "--resume"]) == 1
    assert "resume: 1 of 2 cells already finished" in capsys.readouterr().out
    assert read_frame(tmp_path).set_index("rule").loc["surrogate_bptt_bn", "finished_at"] == \
        done.set_index("rule").loc["surrogate_bptt_bn", "finished_at"]
