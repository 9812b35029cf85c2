"""Saved models, NIR export (the discrete <-> continuous time convention, refusals) and the
`nir` baseline, with round trips through snnTorch's and Norse's own NIR importers."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

nir = pytest.importorskip("nir")

from suite.archs import ArchSpec, Flatten, TimeDistributed
from suite.cli import main
from suite.host import create_host
from suite.models import ModelFileError, load_model, model_path
from suite.neurons import IF, LIF
from suite.nir import DEFAULT_DT, NIRExportError, export_model, to_nir
from suite.baselines.nir import NIRNet

RUN = ["run", "--rules", "surrogate_bptt_bn", "--dataset", "digits", "--arch", "mlp128", "--timesteps", "4,8",
       "--epochs", "2", "--limit-train", "400", "--backend", "torch", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One surrogate_bptt_bn cell on digits with --save-models, exported to NIR."""
    out = tmp_path_factory.mktemp("nir") / "run"
    assert main([*RUN, "--out", str(out), "--save-models"]) == 0
    (model_file,) = sorted((out / "models").glob("*.pt"))
    graph_file = out / "model.nir"
    assert main(["export", str(model_file), "-o", str(graph_file)]) == 0
    rows = [json.loads(l) for f in (out / "cells").glob("*.jsonl") for l in f.read_text().splitlines()]
    return out, model_file, graph_file, rows


def _digits(n=48):
    x = create_host().dataset("digits").load("test").x[:n]
    return x.float()


def _suite_spikes(model, x_seq):
    """The suite network's hidden LIF spikes and output currents per step for ``x_seq`` [T, B, ...]."""
    lif = next(m for m in model.modules() if isinstance(m, LIF))
    seen = {}
    handle = lif.register_forward_hook(lambda m, i, o: seen.__setitem__("spikes", o))
    with torch.no_grad():
        out = model(x_seq)
    handle.remove()
    return seen["spikes"], out


# ------------------------------------------------------------------------------------ saving
def test_save_models_writes_loadable_model_that_reproduces_the_row(trained):
    out, model_file, _, rows = trained
    assert all(r["model_path"] == str(model_file) for r in rows)
    model, info = load_model(model_file)
    assert info["rule"] == "surrogate_bptt_bn" and info["arch"]["spec"] == "128" and info["backend"] == "torch"
    assert info["hp"]["beta"] == 0.9 and info["input_shape"] == [1, 8, 8]
    # the reloaded network gives the row's accuracy on the same test set (direct coding: deterministic)
    data = create_host().dataset("digits").load("test")
    x_seq = data.x.float().unsqueeze(0).expand(8, *data.x.shape)
    with torch.no_grad():
        pred = model(x_seq).cumsum(0)[-1].argmax(-1)
    acc = float((pred == data.y).float().mean())
    assert acc == pytest.approx(next(r["accuracy"] for r in rows if r["T"] == 8), abs=1e-9)


def test_resume_reruns_a_finished_cell_only_when_its_model_is_missing(trained, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*RUN, "--out", str(out)]) == 0            # finished without a model
    capsys.readouterr()
    assert main([*RUN, "--out", str(out), "--resume", "--save-models"]) == 0
    assert "already finished" not in capsys.readouterr().out
    (path,) = (out / "models").glob("*.pt")
    assert path == model_path(out, path.stem)
    assert main([*RUN, "--out", str(out), "--resume", "--save-models"]) == 0
    assert "1 of 1 cells already finished" in capsys.readouterr().out


def test_bad_model_file_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    torch.save({"weights": torch.zeros(2)}, bad)
    assert main(["export", str(bad), "-o", str(tmp_path / "m.nir")]) == 2
    assert f"{bad}: not a snn-suite model file" in capsys.readouterr().err
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model(tmp_path / "missing.pt")
    assert not (tmp_path / "m.nir").exists()


# ------------------------------------------------------------------------------------ convention
def _tiny(neuron, bn=False):
    torch.manual_seed(3)
    mods = [TimeDistributed(Flatten()), TimeDistributed(nn.Linear(64, 20))]
    if bn:
        b = nn.BatchNorm1d(20)
        b.running_mean.uniform_(-0.2, 0.2), b.running_var.uniform_(0.5, 2.0), b.weight.data.uniform_(0.5, 1.5)
        mods.append(TimeDistributed(b))
    mods += [neuron, TimeDistributed(nn.Linear(20, 10))]
    return nn.Sequential(*mods).eval()


@pytest.mark.parametrize("neuron, kind", [
    (LIF(tau=4.0, v_threshold=0.5, decay_input=True), "LIF"),
    (LIF(tau=10.0, v_threshold=1.0, decay_input=False), "LIF"),
    (IF(v_threshold=0.8), "IF"),
])
def test_discrete_time_convention_and_nir_baseline_reproduce_suite_spikes(neuron, kind, tmp_path):
    model = _tiny(neuron, bn=True)
    dt = 1e-3
    graph = to_nir(model, (1, 8, 8), dt=dt)
    node = graph.nodes["3"]
    assert type(node).__name__ == kind and np.allclose(node.r, 1.0) and np.allclose(node.v_reset, 0.0)
    w = graph.nodes["1"].weight
    if kind == "LIF":
        assert np.allclose(node.tau, neuron.tau * dt)  # tau_d steps of dt
        gain = 1.0 if neuron.decay_input else neuron.tau  # decay_input=False: input gain tau_d in the weights
        bn = model[2].module
        folded = model[1].module.weight * (bn.weight / torch.sqrt(bn.running_var + bn.eps))[:, None]
        assert np.allclose(w, gain * folded.detach().numpy(), rtol=1e-5)
    nir.write(tmp_path / "g.nir", graph)
    net = NIRNet(tmp_path / "g.nir")
    assert net.dt == dt
    x_seq = (_digits(32) * 1.5).unsqueeze(0).expand(12, 32, 1, 8, 8)
    spikes, out = _suite_spikes(model, x_seq)
    with torch.no_grad():
        logits = net(x_seq)
    assert spikes.sum() > 50  # the comparison means something
    torch.testing.assert_close(logits, out.cumsum(0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rule, arch, layer, why", [
    ("sstdp", "mlp128", "(SpikeOnceLinear)", "fires at most once"),
    ("lee_bp", "mlp128", "'layers.0' (LeeLayer)", "winner-take-all"),
    ("example_rate", "mlp128", "'2' (IF)", "reset by subtraction"),
])
def test_inexpressible_layers_are_refused_naming_the_layer(rule, arch, layer, why):
    host = create_host()
    r = host.rule(rule)
    model = r.build(host.arch(arch), (1, 8, 8), 10, "torch", dict(r.defaults))
    with pytest.raises(NIRExportError) as exc:
        to_nir(model.eval(), (1, 8, 8))
    assert layer in str(exc.value) and why in str(exc.value)


def test_max_pooling_is_refused():
    model = nn.Sequential(TimeDistributed(nn.Conv2d(1, 4, 3)), LIF(), TimeDistributed(nn.MaxPool2d(2)))
    with pytest.raises(NIRExportError, match=r"layer '2' \(MaxPool2d\): NIR has no max-pooling node"):
        to_nir(model, (1, 8, 8))


# ------------------------------------------------------------------------------------ round trips
def test_round_trip_suite_to_snntorch_and_norse_gives_the_same_spikes(trained, caplog):
    """Tolerance: identical hidden spikes and predictions; output currents to 1e-4 (float32 rounding
    of the folded weights, tau and the threshold rescaling snnTorch applies)."""
    import snntorch
    import snntorch.utils
    from norse.torch import from_nir
    from snntorch.import_nir import import_from_nir

    _, model_file, graph_file, _ = trained
    model, _ = load_model(model_file)
    T, B = 8, 24
    x = _digits(B)
    spikes, out = _suite_spikes(model, x.unsqueeze(0).expand(T, *x.shape))
    graph = nir.read(str(graph_file))
    assert graph.metadata["dt"] == DEFAULT_DT and graph.metadata["encoding"] == "direct"

    sn = import_from_nir(nir.read(str(graph_file)))
    leaky = next(m for m in sn.modules() if isinstance(m, snntorch.Leaky))
    with caplog.at_level(logging.ERROR):
        nr = from_nir(nir.read(str(graph_file)), dt=DEFAULT_DT)
    cells = [m for m in nr.modules() if type(m).__name__ == "LIFBoxCell"]
    assert len(cells) == 1
    for name, net in (("snntorch", sn), ("norse", nr)):
        got_s, got_o = torch.zeros_like(spikes), torch.zeros_like(out)
        for b in range(B):  # NIR types have no batch dimension: one sample per call
            seen = {}
            hook = (leaky if net is sn else cells[0]).register_forward_hook(
                lambda m, i, o: seen.__setitem__("s", o[0] if isinstance(o, tuple) else o))
            if net is sn:
                snntorch.utils.reset(sn)
            state = None
            with torch.no_grad():
                for t in range(T):
                    y, state = net(x[b], state) if net is nr else sn(x[b])
                    got_s[t, b], got_o[t, b] = seen["s"], y
            hook.remove()
        assert torch.equal(got_s, spikes), f"{name}: {(got_s != spikes).float().mean():.2e} of spikes differ"
        torch.testing.assert_close(got_o, out, rtol=1e-4, atol=1e-4, msg=name)
        assert torch.equal(got_o.cumsum(0).argmax(-1), out.cumsum(0).argmax(-1))


def test_nir_baseline_row_matches_the_original_row(trained, tmp_path):
    out, _, graph_file, rows = trained
    res = tmp_path / "nir"
    assert main(["run", "--rules", "nir", "--set", f"graph={graph_file}", "--dataset", "digits",
                 "--timesteps", "4,8", "--out", str(res), "--quiet"]) == 0
    (f,) = (res / "cells").glob("*.jsonl")
    got = {r["T"]: r for r in map(json.loads, f.read_text().splitlines())}
    for r in rows:
        assert got[r["T"]]["accuracy"] == pytest.approx(r["accuracy"], abs=1e-9)
        assert got[r["T"]]["synops"] == pytest.approx(r["synops"], rel=1e-6)
        assert got[r["T"]]["macs"] == r["macs"]


def test_snntorch_exported_graph_is_evaluated_with_snntorchs_predictions(tmp_path):
    import snntorch as snn
    import snntorch.utils
    from snntorch.export_nir import export_to_nir

    torch.manual_seed(0)
    data = create_host().dataset("digits")
    tr, te = data.load("train"), data.load("test")
    xtr, xte = tr.x.float().flatten(1)[:600], te.x.float().flatten(1)
    # per-neuron beta and threshold: snnTorch's exporter writes scalars otherwise, which NIR's type check rejects
    leaky = lambda n: snn.Leaky(beta=torch.full((n,), 0.8), threshold=torch.ones(n), init_hidden=True,
                                reset_mechanism="zero", reset_delay=False)
    net = nn.Sequential(nn.Linear(64, 32), leaky(32), nn.Linear(32, 10), leaky(10))
    T = 6

    def counts(x):
        snn.utils.reset(net)
        return torch.stack([net(x) for _ in range(T)]).sum(0)

    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for epoch in range(3):  # a few seconds: enough for predictions well above chance
        for i in range(0, len(xtr), 50):
            loss = nn.functional.cross_entropy(counts(xtr[i:i + 50]), tr.y[i:i + 50])
            opt.zero_grad(), loss.backward(), opt.step()
    with torch.no_grad():
        pred = counts(xte).argmax(-1)
    acc = float((pred == te.y).float().mean())
    assert acc > 0.5
    graph = export_to_nir(net, torch.zeros(64))  # NIR types carry no batch dimension
    nir.write(tmp_path / "snntorch.nir", graph)
    res = tmp_path / "res"
    assert main(["run", "--rules", "nir", "--set", f"graph={tmp_path / 'snntorch.nir'}", "--dataset", "digits",
                 "--timesteps", str(T), "--out", str(res), "--quiet"]) == 0
    (f,) = (res / "cells").glob("*.jsonl")
    (row,) = map(json.loads, f.read_text().splitlines())
    assert row["status"] == "ok" and row["accuracy"] == pytest.approx(acc, abs=1e-9)
    # per sample, too: the baseline's module predicts what snnTorch predicts
    gnet = NIRNet(tmp_path / "snntorch.nir")
    with torch.no_grad():
        assert torch.equal(gnet(xte.unsqueeze(0).expand(T, *xte.shape))[-1].argmax(-1), pred)


def test_nir_baseline_errors_name_the_file(tmp_path, capsys):
    assert main(["run", "--rules", "nir", "--dataset", "digits", "--out", str(tmp_path / "a"), "--quiet"]) == 1
    (f,) = (tmp_path / "a" / "cells").glob("*.jsonl")
    assert "needs the graph file: --set graph=FILE.nir" in f.read_text()
    (tmp_path / "junk.nir").write_text("not hdf5")
    assert main(["run", "--rules", "nir", "--set", f"graph={tmp_path / 'junk.nir'}", "--dataset", "digits",
                 "--out", str(tmp_path / "b"), "--quiet"]) == 1
    (f,) = (tmp_path / "b" / "cells").glob("*.jsonl")
    assert f"{tmp_path / 'junk.nir'} is not a readable NIR graph" in f.read_text()


def _conv_model(rule_name: str):
    """A random conv net the rule builds for 8x8 digits (conv, avg-pool, flatten, fc), eval mode,
    batch-norm statistics made non-trivial so that folding them matters."""
    host = create_host()
    rule = host.rule(rule_name)
    torch.manual_seed(1)
    model = rule.build(ArchSpec("tiny_conv", "6C3p1-P2-16"), (1, 8, 8), 10, "torch", dict(rule.defaults)).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) or isinstance(m, nn.BatchNorm1d):
            m.running_mean.uniform_(-0.3, 0.3), m.running_var.uniform_(0.5, 2.0), m.weight.data.uniform_(0.5, 1.5)
    return model


def test_conv_net_round_trip_through_snntorch(tmp_path):
    """surrogate_bptt_bn's conv/avg-pool/flatten/BN network: identical spikes in snnTorch."""
    import snntorch
    import snntorch.utils
    from snntorch.import_nir import import_from_nir

    model = _conv_model("surrogate_bptt_bn")
    graph = to_nir(model, (1, 8, 8))
    assert [type(n).__name__ for n in graph.nodes.values()] == \
        ["Input", "Conv2d", "LIF", "AvgPool2d", "Flatten", "Affine", "LIF", "Affine", "Output"]
    nir.write(tmp_path / "c.nir", graph)
    T, B = 6, 12
    x = _digits(B) * 2.0
    x_seq = x.unsqueeze(0).expand(T, *x.shape)
    with torch.no_grad():
        out = model(x_seq)
    sn = import_from_nir(nir.read(str(tmp_path / "c.nir")))
    got = torch.zeros_like(out)
    for b in range(B):
        snntorch.utils.reset(sn)
        with torch.no_grad():
            for t in range(T):
                got[t, b] = sn(x[b])[0]
    assert out.abs().sum() > 0
    torch.testing.assert_close(got, out, rtol=1e-4, atol=1e-4)


def test_spike_bp_dropout_conv_net_exports_exactly(tmp_path):
    """spike_bp_dropout's LIF (leak after reset), avg-pool IF (threshold 0.75) and leaky-integrator
    readout, against the `nir` baseline's module on the same input spikes: same prediction at every
    step (the rule's readout divides by theta t, a positive factor the graph leaves out)."""
    model = _conv_model("spike_bp_dropout")
    graph = to_nir(model, (1, 8, 8))
    assert [type(n).__name__ for n in graph.nodes.values()] == \
        ["Input", "Conv2d", "LIF", "AvgPool2d", "IF", "Flatten", "Affine", "LIF", "Affine", "LI", "Output"]
    nir.write(tmp_path / "s.nir", graph)
    T, B = 10, 32
    gen = torch.Generator().manual_seed(0)
    x_seq = (torch.rand(T, B, 1, 8, 8, generator=gen) < _digits(B).clamp(0, 1)).float()
    with torch.no_grad():
        out = model(x_seq)
        got = NIRNet(tmp_path / "s.nir")(x_seq)
    steps = torch.arange(1, T + 1).view(T, 1, 1)
    torch.testing.assert_close(got, out * steps, rtol=1e-4, atol=1e-4)  # v[t] = (v[t] / (theta t)) * t, theta = 1
    assert torch.equal(got.argmax(-1), out.argmax(-1))


def test_neurobench_static_metrics_agree_with_neurobench_on_a_saved_model(trained, tmp_path):
    from neurobench.metrics.static import ConnectionSparsity, Footprint, ParameterCount
    from neurobench.models import TorchModel

    from suite.model_metrics import static_metrics
    from suite.reports.html import write_report

    out, model_file, _, rows = trained
    model, _ = load_model(model_file)
    nb = rows[0]["extra"]["neurobench"]
    assert {k: nb[k] for k in ("parameter_count", "footprint_bytes", "connection_sparsity")} == static_metrics(model)
    assert nb["synaptic_operations"]["Effective_ACs"] == rows[0]["synops"]
    assert 0.0 < nb["activation_sparsity"] < 1.0
    with torch.no_grad():  # prune a third of the hidden weights so that sparsity is not trivially 0
        w = model[1].module.weight
        w[torch.rand(w.shape, generator=torch.Generator().manual_seed(0)) < 1 / 3] = 0.0
    ours, ref = static_metrics(model), TorchModel(model)
    assert ours["parameter_count"] == ParameterCount()(ref) == 64 * 128 + 128 + 2 * 128 + 128 * 10 + 10
    assert ours["footprint_bytes"] == Footprint()(ref)
    assert ours["connection_sparsity"] == pytest.approx(ConnectionSparsity()(ref), abs=5e-5)
    assert ours["connection_sparsity"] > 0.2
    html = write_report([out], tmp_path / "r.html").read_text()
    assert "Model metrics (NeuroBench)" in html and f"{nb['parameter_count']:,}" in html


def test_rules_all_leaves_out_the_nir_baseline():
    host = create_host()
    assert "nir" in host.rules and "nir" not in host.select_rules("all")
    assert host.select_rules("nir") == ["nir"]


def test_tssl_bp_exports_as_cubalif_and_norse_reproduces_its_spikes(tmp_path, caplog):
    """TSSL-BP's PSP filter + SRM neuron = nir.CubaLIF, output PSP = nir.LI, input normalisation folded
    into the first layer: the nir baseline gives the suite's output PSP (to 1e-4) and Norse's importer
    the suite's spikes in both layers (identical). Norse drops the LI node it cannot import."""
    from norse.torch import from_nir

    host = create_host()
    rule = host.rule("tssl_bp")
    hp = dict(rule.defaults)
    torch.manual_seed(2)
    model = rule.build(ArchSpec("tssl_test", "40"), (1, 8, 8), 10, "torch", hp).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(3.0)  # enough drive for spikes in both layers within T = 8
    norm = (hp["input_mean"], hp["input_std"])
    graph = to_nir(model, (1, 8, 8), input_normalisation=norm)
    assert [type(n).__name__ for n in graph.nodes.values()] == \
        ["Input", "Flatten", "Affine", "CubaLIF", "Affine", "CubaLIF", "LI", "Output"]
    lif = graph.nodes["3"]
    assert np.allclose(lif.tau_syn, hp["tau_s"] * DEFAULT_DT) and np.allclose(lif.tau_mem, hp["tau_m"] * DEFAULT_DT)
    assert np.allclose(lif.r, hp["tau_m"]) and np.allclose(lif.w_in, 1.0)
    nir.write(tmp_path / "t.nir", graph)
    T, B = 8, 16
    x = _digits(B)
    x_seq = ((x - norm[0][0]) / norm[1][0]).unsqueeze(0).expand(T, *x.shape)
    neurons = [m for m in model.modules() if type(m).__name__ == "TSSLNeuron"]
    spikes = []
    hooks = [m.register_forward_hook(lambda m, i, o: spikes.append(o)) for m in neurons]
    with torch.no_grad():
        out = model(x_seq)
        got = NIRNet(tmp_path / "t.nir", readout="last")(x.unsqueeze(0).expand(T, *x.shape))
    for h in hooks:
        h.remove()
    assert all(s.sum() > 10 for s in spikes)
    torch.testing.assert_close(got, out, rtol=1e-4, atol=1e-4)
    with caplog.at_level(logging.ERROR):
        nr = from_nir(nir.read(str(tmp_path / "t.nir")), dt=DEFAULT_DT)
    cells = [m for m in nr.modules() if type(m).__name__ == "CubaLIF"]
    assert len(cells) == 2
    got_s = [torch.zeros_like(s) for s in spikes]
    for b in range(B):
        seen = []
        hooks = [c.register_forward_hook(lambda m, i, o: seen.append(o[0])) for c in cells]
        state = None
        with torch.no_grad():
            for t in range(T):
                _, state = nr(x[b], state)
                for k in range(2):
                    got_s[k][t, b] = seen[2 * t + k]
        for h in hooks:
            h.remove()
    for k in range(2):
        assert torch.equal(got_s[k], spikes[k]), f"layer {k}: {(got_s[k] != spikes[k]).float().mean():.2e} differ"


def test_tssl_bp_conv_net_sum_pooling_and_the_padding_refusal(tmp_path):
    host = create_host()
    rule = host.rule("tssl_bp")
    hp = dict(rule.defaults)
    norm = (hp["input_mean"], hp["input_std"])
    torch.manual_seed(4)
    padded = rule.build(ArchSpec("tssl_pad", "6C3p1-P2-16"), (1, 8, 8), 10, "torch", hp).eval()
    with pytest.raises(NIRExportError, match=r"layer '0' \(Conv2d\): the rule normalises its input"):
        to_nir(padded, (1, 8, 8), input_normalisation=norm)
    model = rule.build(ArchSpec("tssl_conv", "6C3-P2-16"), (1, 8, 8), 10, "torch", hp).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.mul_(4.0)
    graph = to_nir(model, (1, 8, 8), input_normalisation=norm)
    assert [type(n).__name__ for n in graph.nodes.values()] == \
        ["Input", "Conv2d", "CubaLIF", "SumPool2d", "Flatten", "Affine", "CubaLIF", "Affine", "CubaLIF", "LI",
         "Output"]
    assert np.allclose(graph.nodes["7"].w_in, hp["pool_scale"])  # the pooling factor rides on the next synapse
    nir.write(tmp_path / "c.nir", graph)
    T, x = 6, _digits(16)
    with torch.no_grad():
        out = model(((x - norm[0][0]) / norm[1][0]).unsqueeze(0).expand(T, *x.shape))
        got = NIRNet(tmp_path / "c.nir", readout="last")(x.unsqueeze(0).expand(T, *x.shape))
    assert out.abs().sum() > 0
    torch.testing.assert_close(got, out, rtol=1e-4, atol=1e-4)
