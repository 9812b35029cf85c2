import math

import pytest
import torch

from suite.hookspecs import hookimpl
from suite.host import create_host
from suite.rule import Context, Rule
from suite.train import Cell, run_cell


def _ctx(host, rule, arch="mlp128", T=8, seed=0):
    from suite.rule import check_options

    ds = host.dataset("digits")
    return Context(hp=check_options(rule, {}), T=T, timesteps=(T,), arch=host.arch(arch), dataset="digits",
                   input_shape=ds.input_shape, n_classes=10)


@pytest.mark.parametrize("rule_name", ["surrogate_bptt_bn", "example_rate"])
def test_accuracy_at_every_T_equals_separate_evaluations(host, rule_name):
    rule = host.rule(rule_name)
    ctx = _ctx(host, rule)
    model = rule.build(ctx.arch, ctx.input_shape, 10, "torch", ctx.hp).eval()
    x = host.dataset("digits").load("test").x[:64]
    ts = (1, 2, 4, 8)
    ctx.generator.manual_seed(5)
    one_pass = rule.evaluate(model, x, ts, ctx)
    for k, t in enumerate(ts):
        ctx.generator.manual_seed(5)
        separate = rule.evaluate(model, x, (t,), ctx)[0]
        assert torch.allclose(one_pass[k], separate, atol=1e-5), t
        assert torch.equal(one_pass[k].argmax(-1), separate.argmax(-1))


def test_surrogate_bptt_bn_learns_digits(host):
    rows = run_cell(Cell("surrogate_bptt_bn", "digits", "mlp128", seed=0, timesteps=(1, 2, 4, 8), epochs=8), host)
    assert [r["status"] for r in rows] == ["ok"] * 4, rows[0].get("error")
    acc = {r["T"]: r["accuracy"] for r in rows}
    assert acc[8] >= 0.90
    assert all(r["synops"] > 0 and r["spikes_per_sample"] > 0 for r in rows)
    # the first layer is fed analog current (direct coding): MACs grow linearly with T
    macs = {r["T"]: r["macs"] for r in rows}
    assert macs[8] == pytest.approx(8 * macs[1])
    assert rows[0]["train_T"] == 8 and rows[0]["epochs"] == 8


def test_cnn_row_has_empty_T_and_exact_macs(host):
    rows = run_cell(Cell("cnn", "digits", "mlp128", seed=0, epochs=3), host)
    assert len(rows) == 1 and rows[0]["T"] is None and rows[0]["status"] == "ok"
    assert rows[0]["macs"] == 64 * 128 + 128 * 10 and rows[0]["synops"] == 0
    assert rows[0]["accuracy"] > 0.8


class _NaNRule(Rule):
    name, paper, neuron = "nan_rule", "test", "LIF"
    defaults = {"T": 2, "epochs": 1, "batch_size": 64}

    def build(self, arch, input_shape, n_classes, backend, hp):
        return torch.nn.Sequential(torch.nn.Flatten(2), torch.nn.Linear(64, n_classes))

    def configure_optimizer(self, model, ctx):
        return None, None, "epoch"

    def train_step(self, model, batch, optimizer, ctx):
        return {"loss": math.nan}


class _CrashRule(_NaNRule):
    name = "crash_rule"

    def train_step(self, model, batch, optimizer, ctx):
        raise RuntimeError("deliberate crash in plugin")


class _TestRules:
    @hookimpl
    def snn_suite_rules(self):
        return [_NaNRule(), _CrashRule()]


def test_nan_guard_and_crashing_plugin_give_rows_and_the_rest_goes_on(tmp_path):
    from suite.results import read_frame
    from suite.executors import run_matrix

    host = create_host(extra_plugins=[("test_rules", _TestRules())])
    import suite.host as host_mod

    cells = [Cell(r, "digits", "mlp128", epochs=1, timesteps=(1, 2)) for r in ("nan_rule", "crash_rule")]
    cells.append(Cell("cnn", "digits", "mlp128", epochs=1))
    orig = host_mod.create_host
    host_mod.create_host = lambda: host
    try:
        run_matrix(cells, tmp_path, log=lambda *a: None)
    finally:
        host_mod.create_host = orig
    df = read_frame(tmp_path)
    st = df.groupby("rule")["status"].first().to_dict()
    assert st == {"nan_rule": "nan", "crash_rule": "failed", "cnn": "ok"}
    err = df.set_index("rule").loc["crash_rule", "error"].iloc[0]
    assert "deliberate crash in plugin" in err
    assert "non-finite loss" in df.set_index("rule").loc["nan_rule", "error"].iloc[0]


def test_unsupported_backend_is_skipped_with_reason(host):
    rows = run_cell(Cell("cnn", "digits", "mlp128", backend="triton-nonexistent", epochs=1), host)
    assert rows[0]["status"] == "skipped" and "does not support backend" in rows[0]["error"]


def test_cell_is_picklable_and_id_is_stable():
    import pickle

    c = Cell("cnn", "digits", "mlp128", seed=3, options=(("lr", 0.1),))
    assert pickle.loads(pickle.dumps(c)) == c
    assert c.cell_id == Cell("cnn", "digits", "mlp128", seed=3, options=(("lr", 0.1),), data_root="/x").cell_id
    assert c.cell_id != Cell("cnn", "digits", "mlp128", seed=4, options=(("lr", 0.1),)).cell_id


class _FallbackRule(_NaNRule):
    """Says its 'fused' backend runs the torch loops off the CPU, as spike_bp_dropout does on CUDA."""

    name = "fallback_rule"
    defaults = {"T": 2, "lr": 0.1}

    def backends(self):
        return ("torch", "fused")

    def backend_used(self, backend, device):
        return "torch" if backend == "fused" else backend

    def train_step(self, model, batch, optimizer, ctx):
        return {"loss": 0.0}


class _FallbackRules:
    @hookimpl
    def snn_suite_rules(self):
        return [_FallbackRule()]


def test_rows_describe_themselves_device_hp_and_the_backend_that_ran():
    host = create_host(extra_plugins=[("fallback_rules", _FallbackRules())])
    rows = run_cell(Cell("fallback_rule", "digits", "mlp128", backend="fused", options=(("lr", "0.5"),),
                         epochs=1, limit_train=32, limit_test=16), host)
    assert [r["status"] for r in rows] == ["ok"], rows[0].get("error")
    row = rows[0]
    assert row["device"] == "cpu"
    assert row["hp"] == {"T": 2, "lr": 0.5}                      # defaults merged with the override, parsed
    assert row["backend"] == "torch" and row["cell_id"].split("__")[3] == "fused"


def test_spike_bp_dropout_records_torch_where_its_fused_loops_cannot_run(host):
    rule = host.rule("spike_bp_dropout")
    assert rule.backend_used("fused", "cpu") == "fused"
    assert rule.backend_used("fused", "cuda:0") == "torch"
    assert rule.backend_used("torch", "cuda") == "torch"
    assert host.rule("surrogate_bptt_bn").backend_used("fused", "cuda") == "fused"
