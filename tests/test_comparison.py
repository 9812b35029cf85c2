"""The comparison protocol: validation split, matrix files, equal-budget tuning, paired statistics."""
from __future__ import annotations

import json
import math

import pytest
import torch

from suite.cli import build_parser, main, matrix_from_args
from suite.data import Dataset, validation_split
from suite.hookspecs import hookimpl
from suite.host import create_host
from suite.matrix import MatrixError, load_matrix
from suite.results import read_frame, write_cell
from suite.stats import paired_difference


# ---------------------------------------------------------------------- validation split
class _Sized(Dataset):
    name, input_shape, n_classes = "sized", (1, 2, 2), 2

    def __init__(self, val_size):
        self.val_size = val_size


def test_split_is_disjoint_complete_deterministic_and_sized_per_dataset(host):
    digits = host.dataset("digits")
    n = len(digits.load("train"))
    a, b = validation_split(digits, n), validation_split(digits, n)
    assert torch.equal(a.val, b.val) and torch.equal(a.train, b.train)          # deterministic
    assert len(a.val) == round(0.1 * n) == 144
    assert not set(a.val.tolist()) & set(a.train.tolist())                        # no overlap
    assert sorted(a.val.tolist() + a.train.tolist()) == list(range(n))            # nothing lost
    torch.manual_seed(123)                                                         # a run seed changes nothing
    assert torch.equal(validation_split(digits, n).val, a.val)
    assert host.dataset("mnist").val_size == host.dataset("fashion_mnist").val_size == 5000
    assert len(validation_split(_Sized(5000), 60000).val) == 5000                 # fixed size on the full set
    assert len(validation_split(_Sized(5000), 100).val) == 10                     # 10 % of a small copy
    assert describe_differs(digits)


def describe_differs(digits) -> bool:
    """Another dataset name draws another split (the fingerprint in each row tells them apart)."""
    other = type("Other", (_Sized,), {"name": "other"})(0.1)
    return validation_split(digits, 1000).describe() != validation_split(other, 1000).describe()


class _CountingDigits(Dataset):
    """The digits data under another name, recording which splits were loaded."""

    name, input_shape, n_classes, val_size = "counting_digits", (1, 8, 8), 10, 0.1

    def __init__(self, host):
        self._digits, self.loads = host.dataset("digits"), []

    def _load(self, split, root):
        self.loads.append(split)
        return self._digits.load(split)


@pytest.mark.parametrize("evaluate_test", [True, False])
def test_test_set_is_read_once_at_the_end_and_never_by_a_tuning_trial(evaluate_test):
    from suite.train import Cell, run_cell

    host = create_host()
    ds = _CountingDigits(host)

    class Plugin:
        @hookimpl
        def snn_suite_datasets(self):
            return [ds]

    host = create_host(extra_plugins=[("counting", Plugin())])
    rows = run_cell(Cell("surrogate_bptt_bn", "counting_digits", "mlp128", timesteps=(1, 4), epochs=2,
                         limit_train=300, evaluate_test=evaluate_test), host)
    assert {r["status"] for r in rows} == {"ok"}, rows[0].get("error")
    assert ds.loads == (["train", "test"] if evaluate_test else ["train"])
    assert all(0 <= r["val_accuracy"] <= 1 for r in rows)
    assert all((r["accuracy"] is not None) == evaluate_test for r in rows)
    assert rows[0]["val_split"]["n_val"] == 144 and rows[0]["n_train"] == 300


def test_select_best_val_tests_the_best_validation_epoch(host):
    from suite.train import Cell, run_cell

    kw = dict(timesteps=(1, 4), epochs=4, limit_train=200, options=(("lr", 0.05),))
    last = run_cell(Cell("surrogate_bptt_bn", "digits", "mlp128", **kw), host)
    best = run_cell(Cell("surrogate_bptt_bn", "digits", "mlp128", select="best_val", **kw), host)
    hist = best[0]["extra"]["history"]
    scores = [max(r["extra"]["history"][e]["val_accuracy"] for r in best) for e in range(4)]
    chosen = 1 + max(range(4), key=lambda e: (scores[e], -e))            # first epoch with the best score
    assert best[0]["selected_epoch"] == chosen and last[0]["selected_epoch"] == 4
    assert [p["val_accuracy"] for p in hist] == [p["val_accuracy"] for p in last[0]["extra"]["history"]]
    for r in best:  # the row's validation accuracy is the chosen epoch's
        assert r["val_accuracy"] == pytest.approx(r["extra"]["history"][chosen - 1]["val_accuracy"])
    if chosen == 4:
        assert [r["accuracy"] for r in best] == [r["accuracy"] for r in last]
    # without per-epoch validation there is nothing to select on
    rows = run_cell(Cell("surrogate_bptt_bn", "digits", "mlp128", select="best_val", curve=0, **kw), host)
    assert rows[0]["status"] == "failed" and "needs per-epoch validation" in rows[0]["error"]


# ---------------------------------------------------------------------- matrix files
GOOD = """\
name = "t"
datasets = ["digits"]
archs = ["mlp128"]
seeds = [0, 1]
timesteps = [1, 4]
epochs = 2

[rules.surrogate_bptt_bn]
options = { T = 4, lr = 2e-3 }

[rules.cnn]
"""


def _write(tmp_path, text, name="m.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_matrix_file_gives_the_cells_the_command_line_gives(tmp_path, host):
    m = load_matrix(_write(tmp_path, GOOD), host)
    args = build_parser().parse_args(["run", "--rules", "surrogate_bptt_bn", "--dataset", "digits", "--arch",
                                      "mlp128", "--timesteps", "1,4", "--epochs", "2", "--seeds", "0,1",
                                      "--set", "T=4", "--set", "lr=2e-3"])
    from_file = [c for c in m.cells() if c.rule == "surrogate_bptt_bn"]
    assert [c.cell_id for c in from_file] == [c.cell_id for c in matrix_from_args(args, host).cells()]
    assert len(m.cells()) == 4 and m.source["sha256"] and m.source["text"] == GOOD


@pytest.mark.parametrize("text, match", [
    (GOOD.replace("epochs = 2", "epoch = 2"), r"m\.toml:6: epoch: unknown key"),
    (GOOD.replace("epochs = 2", 'epochs = "two"'), r"m\.toml:6: epochs: expected int"),
    (GOOD.replace("seeds = [0, 1]", "seeds = [0, -1]"), r"m\.toml:4: seeds: expected a non-empty list of integers >= 0"),
    (GOOD.replace("[rules.cnn]", "[rules.nosuch]"), r"m\.toml:11: rules: unknown rule 'nosuch'"),
    (GOOD.replace("lr = 2e-3", "lr = 2e-3, nope = 1"), r"m\.toml:9: rules\.surrogate_bptt_bn\.options\.nope: rule "
                                                       r"'surrogate_bptt_bn' has no such option"),
    (GOOD.replace("lr = 2e-3", 'batch_norm = "maybe"'), r"m\.toml:9: rules\.surrogate_bptt_bn\.options\.batch_norm: "
                                                         r"expected a value like the default True"),
    (GOOD.replace('archs = ["mlp128"]', 'archs = ["mlp9"]'), r"m\.toml:3: archs: unknown architecture 'mlp9'"),
    (GOOD + "\n[tune]\ntrials = 0\n", r"m\.toml:14: tune\.trials: expected an integer >= 1"),
    ("name = [", r"not valid TOML"),
])
def test_matrix_file_errors_name_the_key_and_its_line(tmp_path, host, text, match):
    with pytest.raises(MatrixError, match=match):
        load_matrix(_write(tmp_path, text), host)


def test_run_matrix_records_the_file_and_refuses_mixed_options(tmp_path, capsys):
    path = _write(tmp_path, GOOD.replace("seeds = [0, 1]", "seeds = [0]").replace("epochs = 2", "epochs = 1\nlimit_train = 200"))
    assert main(["run", "--matrix", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    meta = json.loads((tmp_path / "out" / "runs.jsonl").read_text().splitlines()[-1])
    assert meta["matrix"]["text"] == path.read_text() and len(meta["matrix"]["sha256"]) == 64
    df = read_frame(tmp_path / "out")
    assert set(df["rule"]) == {"surrogate_bptt_bn", "cnn"} and df["val_accuracy"].notna().all()
    with pytest.raises(SystemExit, match="--matrix declares the whole matrix; drop --preset"):
        main(["run", "--matrix", str(path), "--preset", "cnn/digits", "--out", str(tmp_path / "x")])
    # --rules / --arch run a part of the file: the same cells (ids), so a part resumes into the whole
    assert main(["run", "--matrix", str(path), "--rules", "cnn", "--arch", "mlp128", "--out", str(tmp_path / "part"),
                 "--quiet"]) == 0
    part = read_frame(tmp_path / "part")
    assert set(part["rule"]) == {"cnn"} and set(part["cell_id"]) == set(df[df["rule"] == "cnn"]["cell_id"])
    assert main(["run", "--matrix", str(path), "--arch", "convnet", "--out", str(tmp_path / "x")]) == 2
    assert "--arch 'convnet': not in" in capsys.readouterr().err
    assert main(["run", "--matrix", str(path), "--rules", "lee_bp", "--out", str(tmp_path / "x")]) == 2
    assert "--rules 'lee_bp' selects no cell of" in capsys.readouterr().err
    assert main(["run", "--matrix", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "x")]) == 2
    assert "missing.toml: cannot read matrix file" in capsys.readouterr().err


# ---------------------------------------------------------------------- tuning
TUNE = """\
name = "tiny"
datasets = ["digits"]
archs = ["mlp128"]
seeds = [0]
limit_train = 200
epochs = 1

[rules.cnn]

[tune]
trials = 2
epochs = 1
limit_train = 200
"""


def test_two_trial_tune_resumes_after_an_interruption_and_its_result_replays(tmp_path, host):
    import optuna

    from suite.tune import tune

    matrix = load_matrix(_write(tmp_path, TUNE), host)
    out = tmp_path / "tune"
    quiet = dict(log=lambda *a: None)
    tune(matrix, out, host, trials=1, epochs=1, limit_train=200, **quiet)
    with pytest.raises(SystemExit, match="exists: pass --resume"):
        tune(matrix, out, host, trials=2, epochs=1, limit_train=200, **quiet)
    # an interrupted second trial: asked for (parameters drawn), never told
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    storage = JournalStorage(JournalFileBackend(str(out / "study.journal")))
    study = optuna.load_study(study_name="cnn/digits/mlp128", storage=storage)
    first = study.trials[0]
    dist = {k: optuna.distributions.FloatDistribution(*v[1:], log=v[0] == "log")
            for k, v in host.rule("cnn").search_space.items()}
    stale = study.ask(dist)
    tune(matrix, out, host, trials=2, epochs=1, limit_train=200, resume=True, **quiet)
    study = optuna.load_study(study_name="cnn/digits/mlp128", storage=storage)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE"]                # the stale one failed, then re-ran
    assert study.trials[2].params == stale.params                    # ... with the same parameters
    assert study.trials[0].value == first.value                      # the finished trial was kept
    assert len(list((out / "trials" / "cells").glob("*.jsonl"))) == 2
    budget = json.loads((out / "budget.json").read_text())
    assert budget["trials"] == 2 and budget["training_samples"] == 200
    assert budget["sampler"] == "TPE after 1 random trials" and "TPE after 1 random trials sampler" in \
        (out / "tuned.toml").read_text()
    # tuned.toml is a matrix file whose best options replay to the trial's validation accuracy
    tuned = load_matrix(out / "tuned.toml", host)
    best = max((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert dict(tuned.entries[0].options) == pytest.approx(best.params)
    from suite.train import run_cell
    (cell,) = [c for c in tuned.cells()]
    rows = run_cell(cell, host)
    assert rows[0]["val_accuracy"] == pytest.approx(best.value, abs=1e-9)


def test_tpe_models_the_finished_trials_after_half_the_budget(host):
    """Optuna's default of 10 random startup trials made every study of up to 10 trials a seeded
    random search: the same points for a rule in every study. Half the budget is random now."""
    import optuna
    from types import SimpleNamespace

    from suite.tune import _sampler, startup_trials

    assert [startup_trials(n) for n in (1, 2, 6, 8, 20, 40)] == [1, 1, 3, 4, 10, 10]
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def points(objective):
        study = optuna.create_study(sampler=_sampler(SimpleNamespace(trials=8), 0))
        study.optimize(lambda t: objective(t.suggest_float("x", 0.0, 1.0)), n_trials=8)
        return [t.params["x"] for t in study.trials]

    # the random draws do not depend on the objective; TPE's do, once 4 trials are finished
    up, down = points(lambda x: x), points(lambda x: -x)
    assert up[:4] == down[:4] and up[4:] != down[4:]


def test_trials_run_as_ray_tasks_sharing_the_journal(tmp_path, host):
    pytest.importorskip("ray")
    from suite.tune import tune

    matrix = load_matrix(_write(tmp_path, TUNE), host)
    tune(matrix, tmp_path / "ray", host, trials=2, epochs=1, limit_train=200, jobs=2, executor="ray",
         log=lambda *a: None)
    study_rows = list((tmp_path / "ray" / "trials" / "cells").glob("*.jsonl"))
    assert len(study_rows) == 2 and load_matrix(tmp_path / "ray" / "tuned.toml", host).entries


def test_every_rule_declares_a_search_space_over_its_own_options(host):
    from suite.tune import check_space

    for name, rule in host.rules.items():
        check_space(rule)
        assert rule.search_space or name == "nir", f"{name} declares no search space"  # nir trains nothing
    # a third-party rule joins tuning the same way
    assert "lr" in host.rule("example_rate").search_space


# ---------------------------------------------------------------------- statistics
def test_paired_difference_matches_a_hand_computation():
    a, b = {0: 0.90, 1: 0.92, 2: 0.95}, {0: 0.88, 1: 0.91, 2: 0.90, 3: 0.5}   # seed 3 has no pair
    d = paired_difference(a, b)
    # differences 0.02, 0.01, 0.05: mean 0.026667, s = 0.020817, t(0.975, 2) = 4.302653
    assert d["n"] == 3 and d["mean"] == pytest.approx(0.0266667, abs=1e-6)
    assert d["ci95"] == pytest.approx(4.302653 * 0.0208167 / math.sqrt(3), rel=1e-5)
    assert d["verdict"] == "no difference shown"                                # the interval holds 0
    d = paired_difference({0: 0.92, 1: 0.921, 2: 0.919}, {0: 0.90, 1: 0.90, 2: 0.90})
    assert d["mean"] == pytest.approx(0.02) and d["ci95"] == pytest.approx(4.302653 * 0.001 / math.sqrt(3), rel=1e-4)
    assert d["verdict"] == "A > B"
    assert paired_difference({0: 0.5}, {0: 0.6})["verdict"] == "no difference shown"  # one pair: no interval
    assert paired_difference({0: 0.5}, {1: 0.6})["verdict"] == "no common seeds"


def test_best_T_is_chosen_on_validation_and_the_report_leads_with_the_comparison(tmp_path):
    from suite.reports.comparison import markdown, method_table, paired_table
    from suite.reports.html import render

    def rows(rule, seed, accs, vals):
        return [{"rule": rule, "dataset": "d", "arch": "a", "backend": "fused", "seed": seed, "T": T,
                 "status": "ok", "accuracy": acc, "val_accuracy": val, "synops": 10.0 * T, "macs": 0.0,
                 "energy_pj": 9.0 * T, "train_time_s": 1.0, "epochs": 3, "cell_id": f"{rule}{seed}"}
                for T, acc, val in zip((4, 8, 16), accs, vals)]

    for s in (0, 1, 2):
        # test accuracy peaks at T=8, validation at T=4: best T must be 4 (names sort against accuracy)
        write_cell(tmp_path, f"z{s}", rows("zeta", s, (0.80 + s / 1000, 0.95, 0.90), (0.9, 0.8, 0.7)))
        write_cell(tmp_path, f"a{s}", rows("alpha", s, (0.70, 0.71 + s / 1000, 0.72), (0.6, 0.7, 0.8)))
    df = read_frame(tmp_path)
    mt = method_table(df).set_index("method")
    assert mt.loc["zeta", "best_T"] == 4 and mt.loc["alpha", "best_T"] == 16
    assert mt.loc["zeta", "acc_best"] == pytest.approx(0.801)
    (pair,) = paired_table(df).to_dict("records")
    assert pair["verdict"] == "zeta > alpha" and (pair["A"], pair["diff"]) == ("alpha", pytest.approx(-0.081))
    text = markdown(df)
    assert "| zeta | 80.10 ± 0.25 | 90.00 | 4 | 80.10 ± 0.25 |" in text and "- zeta > alpha: 8.10 points" in text
    page = render(df, [str(tmp_path)], [])
    assert page.index("id='comparison'") < page.index("id='acc-T'")
    table = page[page.index("id='comparison'"):page.index("<details open>")]
    assert '<td class="l">alpha</td><td class="">3</td><td class="">70.00 ± 0.00</td><td class="">72.00 ± 0.00</td>' \
        '<td class="l">16</td>' in table  # each method's row holds its own best T


def test_overview_marks_the_methods_no_other_method_beats(tmp_path):
    from suite.reports.comparison import markdown, method_table, overview_table, paired_table, skipped
    from suite.reports.html import render

    def rows(rule, arch, seed, acc):
        return [{"rule": rule, "dataset": "d", "arch": arch, "backend": "fused", "seed": seed, "T": T, "status": "ok",
                 "accuracy": acc, "val_accuracy": acc, "synops": 1.0, "macs": 0.0, "energy_pj": 1.0,
                 "train_time_s": 1.0, "epochs": 1, "cell_id": f"{rule}{arch}{seed}"} for T in (4, 8)]

    for s in (0, 1, 2):
        # net "a": zeta beats alpha by 10 points on every seed; net "b": the two differ by +-1 point (not separated)
        write_cell(tmp_path, f"za{s}", rows("zeta", "a", s, 0.90 + s / 1000))
        write_cell(tmp_path, f"aa{s}", rows("alpha", "a", s, 0.80))
        write_cell(tmp_path, f"zb{s}", rows("zeta", "b", s, 0.70 + (0.01 if s else -0.01)))
        write_cell(tmp_path, f"ab{s}", rows("alpha", "b", s, 0.70))
        write_cell(tmp_path, f"k{s}", [{"rule": "kappa", "dataset": "d", "arch": "b", "backend": "fused", "seed": s,
                                        "T": 4, "status": "skipped", "error": "no conv form", "cell_id": f"k{s}"}])
    df = read_frame(tmp_path)
    ov = overview_table(method_table(df), paired_table(df), skipped(df)).set_index("method")
    assert list(ov.index) == ["zeta", "alpha", "kappa"]            # by mean accuracy over the networks run
    assert ov.loc["zeta", "d / a"]["unbeaten"] and not ov.loc["alpha", "d / a"]["unbeaten"]
    assert ov.loc["zeta", "d / b"]["unbeaten"] and ov.loc["alpha", "d / b"]["unbeaten"]
    assert ov.loc["kappa", "d / b"] == {"skipped": "no conv form"}
    text = markdown(df)
    assert "| zeta | **90.10 (T=4)** | **70.33 (T=4)** |" in text
    assert "| alpha | 80.00 (T=4) | **70.00 (T=4)** |" in text and "| kappa |  | skipped |" in text
    page = render(df, [str(tmp_path)], [])
    assert "<td class='l'>alpha</td><td>80.00 (T=4)</td><td><b>70.00 (T=4)</b></td>" in page


def test_rows_of_one_rule_that_differ_in_a_hyper_parameter_are_two_methods(tmp_path):
    """Two surrogate widths run from two matrix files and read together: two methods, each
    named by the hyper-parameter that tells them apart, paired against each other."""
    from suite.reports.comparison import method_table, paired_table, unbeaten

    def rows(alpha, seed, acc):
        return [{"rule": "zeta", "dataset": "d", "arch": "a", "backend": "fused", "seed": seed, "T": 4, "status": "ok",
                 "accuracy": acc, "val_accuracy": acc, "synops": 1.0, "macs": 0.0, "energy_pj": 1.0,
                 "train_time_s": 1.0, "epochs": 1, "cell_id": f"z{alpha}{seed}",
                 "hp": {"alpha": alpha, "lr": 0.01, "T": 4}}]

    for s in (0, 1, 2):
        write_cell(tmp_path / "wide", f"w{s}", rows(1.0, s, 0.60 + s / 100))
        write_cell(tmp_path / "narrow", f"n{s}", rows(10.0, s, 0.80 + s / 100))
    df = read_frame(tmp_path / "wide", tmp_path / "narrow")
    mt = method_table(df).set_index("method")
    assert sorted(mt.index) == ["zeta (alpha=1.0)", "zeta (alpha=10.0)"]
    assert mt.loc["zeta (alpha=10.0)", "acc_best"] == pytest.approx(0.81)
    (pair,) = paired_table(df).to_dict("records")
    assert pair["verdict"] == "zeta (alpha=10.0) > zeta (alpha=1.0)" and pair["diff"] == pytest.approx(-0.2)
    assert pair["winner"] == "zeta (alpha=10.0)" and unbeaten(paired_table(df)) == {("d", "a", "zeta (alpha=1.0)")}
    assert pair["rule_A"] == pair["rule_B"] == "zeta"                 # two settings of one rule
    one = method_table(read_frame(tmp_path / "wide"))
    assert list(one["method"]) == ["zeta"]                          # one width: the plain rule name
    # a network only one width ran on keeps that width's name
    write_cell(tmp_path / "wide", "b0", [{**rows(1.0, 0, 0.5)[0], "arch": "b", "cell_id": "b0"}])
    both = method_table(read_frame(tmp_path / "wide", tmp_path / "narrow"))
    assert both[both["arch"] == "b"]["method"].tolist() == ["zeta (alpha=1.0)"]
    (tmp_path / "wide" / "cells" / "b0.jsonl").unlink()
    # a key only some rows record (a rule that gained an option between runs) splits nothing
    write_cell(tmp_path / "wide", "w9", [{**rows(1.0, 9, 0.6)[0], "hp": {"alpha": 1.0, "lr": 0.01, "T": 4, "new": 1}}])
    assert list(method_table(read_frame(tmp_path / "wide"))["method"]) == ["zeta"]
    # rows from another machine on another backend: the backend and the differing setting are both
    # named, on every network -- also where only one backend ran (the GPU's network "b")
    for s in (0, 1, 2):
        write_cell(tmp_path / "gpu", f"g{s}", [{**rows(10.0, s, 0.7)[0], "backend": "triton", "cell_id": f"g{s}"}])
    write_cell(tmp_path / "gpu", "gb", [{**rows(10.0, 0, 0.7)[0], "backend": "triton", "arch": "b", "cell_id": "gb"}])
    mixed = method_table(read_frame(tmp_path / "wide", tmp_path / "gpu"))
    assert sorted(mixed[mixed["arch"] == "a"]["method"]) == ["zeta [fused] (alpha=1.0)", "zeta [triton] (alpha=10.0)"]
    assert mixed[mixed["arch"] == "b"]["method"].tolist() == ["zeta [triton] (alpha=10.0)"]
    # a long float shows 4 significant digits, unless that would give two settings one name
    for lr, name in ((0.0123456789, "x"), (0.0987654321, "y")):
        for s in (0, 1):
            write_cell(tmp_path / name, f"{name}{s}", [{**rows(1.0, s, 0.6)[0], "hp": {"alpha": 1.0, "lr": lr, "T": 4},
                                                       "cell_id": f"{name}{s}"}])
    assert sorted(method_table(read_frame(tmp_path / "x", tmp_path / "y"))["method"]) == [
        "zeta (lr=0.01235)", "zeta (lr=0.09877)"]
    write_cell(tmp_path / "y", "y0", [{**rows(1.0, 0, 0.6)[0], "hp": {"alpha": 1.0, "lr": 0.0123456788, "T": 4},
                                       "cell_id": "y0"}])
    assert sorted(method_table(read_frame(tmp_path / "x", tmp_path / "y"))["method"]) == [
        "zeta (lr=0.0123456788)", "zeta (lr=0.0123456789)", "zeta (lr=0.0987654321)"]
