"""Operation counts and energy (suite/opcount.py): hand-checked counts, every T from one pass,
pooling and residual paths, and cross-checks against NeuroBench and SpikingJelly."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from suite.archs import ArchSpec, TimeDistributed
from suite.neurons import IF, SpikingNeuron
from suite.opcount import ENERGY_MODELS, OpCounter, energy_model
from suite.rule import Context, check_options


class Spikes(SpikingNeuron):
    """Heaviside with threshold 0.5 (no state), so the spikes are easy to reproduce by hand."""

    def forward(self, x):
        return (x > 0.5).float()


def _count(model, x, T, B, energy=None):
    with OpCounter(model, T, B, energy=energy) as oc, torch.no_grad():
        model(x)
    return oc


def test_linear_counts_by_hand_at_every_T():
    torch.manual_seed(1)
    T, B = 4, 3
    fc1, fc2 = nn.Linear(5, 7), nn.Linear(7, 2)
    model = nn.Sequential(TimeDistributed(fc1), Spikes(), TimeDistributed(fc2))
    x = torch.rand(T, B, 5)                        # analog input: MACs
    oc = _count(model, x, T, B)
    s = (fc1(x) > 0.5).float().detach()             # [T, B, 7]
    for t in range(1, T + 1):
        ops = oc.at(t)
        assert ops["macs"] == pytest.approx(t * 5 * 7)
        assert ops["synops"] == pytest.approx(float(s[:t].sum()) / B * 2)          # nnz x fan-out
        assert ops["spikes_per_sample"] == pytest.approx(float(s[:t].sum()) / B)
        assert ops["dense_ops"] == pytest.approx(t * (5 * 7 + 7 * 2))
        assert ops["macs_effective"] == pytest.approx(t * 5 * 7)                    # no zero inputs
        assert ops["neuron_updates"] == t * 7
        rate = float(s[:t].mean())
        assert ops["spike_rates"]["1"] == pytest.approx(rate)
        assert ops["activations"]["1"]["sparsity"] == pytest.approx(1 - rate)
        assert ops["activation_sparsity"] == pytest.approx(1 - rate)
        assert ops["layers"]["2.module"]["input_density"] == pytest.approx(rate)
        assert ops["energy_pj"] == pytest.approx(4.6 * ops["macs"] + 0.9 * ops["synops"])


def test_every_T_from_one_pass_equals_separate_runs_and_batches_add_up():
    torch.manual_seed(2)
    model = nn.Sequential(TimeDistributed(nn.Linear(6, 8)), IF(), TimeDistributed(nn.Linear(8, 3))).eval()
    x = torch.rand(6, 10, 6) * 2                    # IF is causal: a prefix of the input is a shorter run
    full = _count(model, x, 6, 10)
    for t in (1, 3, 6):
        alone = _count(model, x[:t], t, 10).at(t)
        ops = full.at(t)
        for k in ("synops", "macs", "spikes_per_sample", "dense_ops", "neuron_updates"):
            assert ops[k] == pytest.approx(alone[k]), (t, k)
    # two batches of 4 and 6 give the per-sample mean over all 10
    with OpCounter(model, 6, 4) as oc, torch.no_grad():
        model(x[:, :4])
        oc.next_batch(6)
        model(x[:, 4:])
    assert oc.at(6)["synops"] == pytest.approx(full.at(6)["synops"])
    assert oc.at(6)["spike_rates"] == pytest.approx(full.at(6)["spike_rates"])


def test_per_step_calls_count_like_merged_time():
    torch.manual_seed(3)
    fc = nn.Linear(6, 4)
    T, B = 5, 2
    x = (torch.rand(T, B, 6) < 0.3).float()
    merged = _count(TimeDistributed(fc), x, T, B)

    class PerStep(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = fc

        def forward(self, x):
            return torch.stack([self.fc(x[t]) for t in range(x.shape[0])])

    stepped = _count(PerStep(), x, T, B)
    for t in range(1, T + 1):
        assert stepped.at(t)["synops"] == pytest.approx(merged.at(t)["synops"])
        assert merged.at(t)["synops"] == pytest.approx(float(x[:t].sum()) / B * 4)


def _brute_force_conv_synops(counts: torch.Tensor, conv: nn.Conv2d) -> float:
    """Every input event x every output it reaches, by enumerating output positions."""
    B, C, H, W = counts.shape
    k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    total = 0.0
    for b, i, j in itertools.product(range(B), range(Ho), range(Wo)):
        for di, dj in itertools.product(range(k), range(k)):
            h, w = i * s - p + di, j * s - p + dj
            if 0 <= h < H and 0 <= w < W:
                total += float(counts[b, :, h, w].abs().sum()) * conv.out_channels
    return total / B


def test_conv_with_padding_and_stride_is_exact():
    torch.manual_seed(4)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
    x = (torch.rand(4, 2, 7, 7) < 0.25).float()
    oc = _count(conv, x, 1, 4)
    assert oc.at(1)["synops"] == pytest.approx(_brute_force_conv_synops(x, conv))
    # analog input: dense MACs include padded positions (output elements x fan-in)
    xa = torch.rand(4, 2, 7, 7)
    assert _count(conv, xa, 1, 4).at(1)["macs"] == 3 * 4 * 4 * 2 * 9


def test_average_pooled_spikes_are_accumulates_through_the_pool():
    torch.manual_seed(5)
    T, B = 3, 2
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
    model = nn.Sequential(Spikes(), TimeDistributed(nn.AvgPool2d(2)), TimeDistributed(conv))
    x = torch.rand(T, B, 2, 8, 8)
    oc = _count(model, x, T, B)
    spikes = (x > 0.5).float().reshape(T * B, 2, 8, 8)
    counts = F.avg_pool2d(spikes, 2) * 4             # spikes per pooled position
    ops = oc.at(T)
    assert ops["macs"] == 0
    assert ops["synops"] == pytest.approx(_brute_force_conv_synops(counts, conv) * T * B / B)
    # the same spikes fed straight into a sum-pool give the same count
    sum_pool = nn.Sequential(Spikes(), TimeDistributed(nn.AvgPool2d(2, divisor_override=1)), TimeDistributed(conv))
    assert _count(sum_pool, x, T, B).at(T)["synops"] == pytest.approx(ops["synops"])


def test_residual_sum_of_spikes_counts_each_spike():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = Spikes(), Spikes()
            self.fc = TimeDistributed(nn.Linear(6, 4))

        def forward(self, x):
            return self.fc(self.a(x) + self.b(x.flip(-1)))

    torch.manual_seed(6)
    T, B = 2, 3
    x = torch.rand(T, B, 6)
    summed = (x > 0.5).float() + (x.flip(-1) > 0.5).float()   # values 0, 1, 2: events
    ops = _count(Residual(), x, T, B).at(T)
    assert ops["macs"] == 0
    assert ops["synops"] == pytest.approx(float(summed.sum()) / B * 4)
    assert ops["spikes_per_sample"] == pytest.approx(float(summed.sum()) / B)


def test_ann_macs_effective_macs_and_relu_sparsity():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    x = torch.rand(8, 1, 8, 8)
    x[:, :, :2] = 0                                  # zero inputs are skipped by the effective count
    ops = _count(model, x, 1, 8).at(None)
    assert ops["synops"] == 0 and ops["neuron_updates"] == 0 and ops["spike_rates"] == {}
    assert ops["macs"] == 4 * 6 * 6 * 9 + 144 * 5
    h = model[1](model[0](x)).detach()
    density = float((h != 0).float().mean())
    assert ops["activations"]["1"]["sparsity"] == pytest.approx(1 - density)
    assert ops["activation_sparsity"] == pytest.approx(1 - density)
    nz_conv = float(F.conv2d((x != 0).float(), torch.ones(4, 1, 3, 3)).sum()) / 8
    assert ops["layers"]["0"]["macs_effective"] == pytest.approx(nz_conv)
    assert ops["layers"]["3"]["macs_effective"] == pytest.approx(float((h != 0).sum()) / 8 * 5)
    assert ops["energy_pj"] == pytest.approx(4.6 * ops["macs"])


def test_energy_models(monkeypatch):
    assert energy_model().as_dict()["mac_pj"] == pytest.approx(4.6)
    assert energy_model().ac_pj == 0.9 and "Horowitz" in energy_model().source
    assert energy_model("45nm_int8").mac_pj == pytest.approx(0.23)
    custom = energy_model("mac=2,ac=0.5,neuron=0.1")
    assert custom.energy(macs=10, synops=4, neuron_updates=10) == pytest.approx(20 + 2 + 1)
    assert energy_model({"mac": 1.0, "ac": 0.1}).ac_pj == 0.1
    with pytest.raises(ValueError, match="45nm_fp32"):
        energy_model("7nm")
    monkeypatch.setenv("SNN_SUITE_ENERGY", "45nm_fp16")
    model = nn.Sequential(TimeDistributed(nn.Linear(4, 3)), Spikes(), TimeDistributed(nn.Linear(3, 2)))
    x = torch.rand(2, 5, 4) * 2
    oc = _count(model, x, 2, 5)
    ops = oc.at(2)
    assert ops["energy_model"]["name"] == "45nm_fp16"
    assert ops["energy_pj"] == pytest.approx(1.5 * ops["macs"] + 0.4 * ops["synops"])
    again = oc.at(2, energy=ENERGY_MODELS["45nm_fp32"])
    assert again["energy_pj"] == pytest.approx(4.6 * ops["macs"] + 0.9 * ops["synops"])
    assert sum(again["energy_breakdown"].values()) == pytest.approx(again["energy_pj"])
    assert sum(v["energy_pj"] for v in again["layers"].values()) == pytest.approx(again["energy_pj"])


def _snn(host, spec, *, batch_norm=True, T=4, seed=0):
    rule = host.rule("surrogate_bptt_bn")
    hp = check_options(rule, {"batch_norm": batch_norm})
    arch = ArchSpec("t", spec)
    torch.manual_seed(seed)
    model = rule.build(arch, (1, 8, 8), 10, "torch", hp).eval()
    for m in model.modules():                        # more spikes than the default init gives
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.weight.data.mul_(4.0)
    ctx = Context(hp=hp, T=T, timesteps=(T,), arch=arch, dataset="digits", input_shape=(1, 8, 8), n_classes=10)
    x = host.dataset("digits").load("test").x[:16]
    return rule, model, ctx, x


@pytest.mark.parametrize("spec", ["4C3-M2-16", "24"])
def test_agrees_with_neurobench(host, spec):
    pytest.importorskip("neurobench")
    from neurobench.metrics.workload import ActivationSparsity, SynapticOperations
    from neurobench.models import TorchModel

    from suite.neurons import LIF

    T = 4
    rule, model, ctx, x = _snn(host, spec, T=T)
    with OpCounter(model, T, len(x)) as oc, torch.no_grad():
        rule.forward(model, x, T, ctx)
    ours = oc.at(T)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x):
            return rule.forward(self.net, x, T, ctx)

    nb = TorchModel(Net())
    nb.add_activation_module(LIF)
    nb.register_hooks()
    with torch.no_grad():
        preds = nb(x)
    syn = SynapticOperations()(nb, preds, (x, None))
    sparsity = ActivationSparsity()(nb, preds, (x, None))
    nb.cleanup_hooks()
    assert ours["synops"] > 0 and ours["macs"] > 0
    # Same definitions here: binary spikes -> ACs; analog first layer -> MACs (NeuroBench skips
    # zero inputs and zero weights: our macs_effective); Dense: no padding in these archs.
    assert syn["Effective_ACs"] == pytest.approx(ours["synops"])
    assert syn["Effective_MACs"] == pytest.approx(ours["macs_effective"])
    assert syn["Dense"] == pytest.approx(ours["dense_ops"])
    assert sparsity == pytest.approx(ours["activation_sparsity"])


def test_agrees_with_spikingjelly_and_differs_on_pooled_spikes_as_documented(host):
    pytest.importorskip("spikingjelly.activation_based.op_counter")
    from spikingjelly.activation_based.op_counter import DispatchCounterMode, MACCounter, SynOpCounter

    T = 4
    # padded, strided convs; the average pool feeds conv 3 non-binary spike averages
    rule, model, ctx, x = _snn(host, "4C3p1-P2-6C3s2p1-16", batch_norm=False, T=T)
    with OpCounter(model, T, len(x)) as oc, torch.no_grad():
        rule.forward(model, x, T, ctx)
    ours = oc.at(T)
    syn, mac = SynOpCounter(), MACCounter()
    with torch.no_grad(), DispatchCounterMode([syn, mac]):
        # materialised over T: SpikingJelly counts the ops that run, and a static input runs once
        model(rule.encode(x, T, ctx).contiguous())
    sj_syn, sj_mac = syn.get_total() / len(x), mac.get_total() / len(x)
    pooled = ours["layers"]["3.module"]
    assert pooled["synops"] > 0 and pooled["macs"] == 0
    # SpikingJelly counts binary inputs exactly as we do and calls pooled spike averages MACs
    assert sj_syn == pytest.approx(ours["synops"] - pooled["synops"])
    assert sj_mac == pytest.approx(ours["macs"] + pooled["dense_ops"])


def test_cell_rows_carry_the_counts(host):
    from suite.train import Cell, run_cell

    rows = run_cell(Cell("surrogate_bptt_bn", "digits", "mlp128", seed=0, timesteps=(1, 4), epochs=1,
                         limit_train=64, limit_test=32), host)
    assert [r["status"] for r in rows] == ["ok", "ok"], rows[0].get("error")
    for r in rows:
        extra = r["extra"]
        assert set(extra["spike_rates"]) == {k for k, v in extra["activations"].items() if v["kind"] == "spiking"}
        assert extra["neuron_updates"] == r["T"] * 128
        assert extra["energy_model"]["name"] == "45nm_fp32"
        assert r["energy_pj"] == pytest.approx(4.6 * r["macs"] + 0.9 * r["synops"])
        assert sum(v["synops"] for v in extra["layers"].values()) == pytest.approx(r["synops"])


def test_input_events_come_from_the_encoder_not_from_values():
    """A binarised image is analog input to a direct-coded network: MACs, not accumulates."""
    torch.manual_seed(4)
    T, B = 3, 5
    model = nn.Sequential(TimeDistributed(nn.Linear(6, 4)), Spikes(), TimeDistributed(nn.Linear(4, 2)))
    image = (torch.rand(B, 6) > 0.5).float()          # 0/1 pixels
    x = image.unsqueeze(0).expand(T, B, 6)            # the Direct encoder's output
    counts = {}
    for declared in (False, True, None):
        with OpCounter(model, T, B, input_events=declared) as oc, torch.no_grad():
            model(x)
        counts[declared] = oc.at(T)["layers"]["0.module"]
    assert counts[False]["macs"] == T * 6 * 4 and counts[False]["synops"] == 0
    events = float(image.sum()) / B * T * 4           # nnz x fan-out per step
    assert counts[True]["synops"] == pytest.approx(events) and counts[True]["macs"] == 0
    assert counts[None]["synops"] == pytest.approx(events)   # undeclared: judged by value
    # hidden layers are judged as before: spikes there are accumulates whatever the declaration
    with OpCounter(model, T, B, input_events=False) as oc, torch.no_grad():
        model(x)
    assert oc.at(T)["layers"]["2.module"]["macs"] == 0


def test_rules_declare_their_input_kind(host):
    ctx = _ctx_for(host, "surrogate_bptt_bn")
    assert host.rule("surrogate_bptt_bn").input_events(ctx) is False      # direct
    assert host.rule("example_rate").input_events(_ctx_for(host, "example_rate")) is True   # poisson
    assert host.rule("sstdp").input_events(_ctx_for(host, "sstdp")) is True                 # ttfs
    assert host.rule("spike_bp_dropout").input_events(_ctx_for(host, "spike_bp_dropout")) is True
    assert host.rule("cnn").input_events(_ctx_for(host, "cnn")) is False
    events = _ctx_for(host, "surrogate_bptt_bn")
    events.data_kind = "events"
    assert host.rule("surrogate_bptt_bn").input_events(events) is True


def _ctx_for(host, name):
    rule = host.rule(name)
    return Context(hp=check_options(rule, {}), T=4, timesteps=(4,), arch=host.arch("mlp128"), dataset="digits",
                   input_shape=(1, 8, 8), n_classes=10)


def test_a_direct_coded_cell_on_binary_images_counts_macs_in_its_first_layer(host):
    from suite.data import Dataset, Split
    from suite.host import create_host
    from suite.hookspecs import hookimpl
    from suite.train import Cell, run_cell

    class BinaryDigits(Dataset):
        name, input_shape, n_classes = "binary_digits", (1, 8, 8), 10
        embedded = True

        def _load(self, split, root):
            s = host.dataset("digits").load(split)
            return Split((s.x > 0.5).float(), s.y)

    class Plugin:
        @hookimpl
        def snn_suite_datasets(self):
            return [BinaryDigits()]

    h = create_host(extra_plugins=[("binary_digits", Plugin())])
    (row,) = run_cell(Cell("surrogate_bptt_bn", "binary_digits", "mlp128", timesteps=(2,), epochs=1,
                           limit_train=64, limit_test=32), h)
    assert row["status"] == "ok", row.get("error")
    first = next(iter(row["extra"]["layers"].values()))
    assert first["macs"] == 2 * 64 * 128 and first["synops"] == 0


def test_ann_activations_count_as_macs_even_when_integer_valued():
    # integer weights and inputs make every ReLU output an integer: still an ANN, so MACs, no SynOps
    net = nn.Sequential(nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0, 2, 0], [0, 1, 0, 1], [1, 1, 1, 1]]))
        net[2].weight.fill_(1.0)
    x = torch.tensor([[1.0, 2, 0, 1], [0, 1, 1, 0]])
    with OpCounter(net, T=1, batch_size=2, input_events=False) as oc:
        net(x)
    ops = oc.at(1)
    assert ops["synops"] == 0 and ops["macs"] == 4 * 3 + 3 * 2


@pytest.mark.parametrize("conv", [nn.Conv2d(4, 6, 3, 2, 1), nn.Conv2d(3, 5, 5), nn.Conv2d(4, 8, 3, 1, 1, groups=2),
                                  nn.Conv1d(2, 3, 3, 2, 1), nn.Conv2d(2, 4, 3, padding="same")],
                         ids=["strided-padded", "valid", "grouped", "conv1d", "same"])
def test_conv_counts_from_the_reach_map_equal_the_counting_convolution(conv):
    """SynOps and effective MACs of a conv as one product with the adjoint of ones (cached per
    pass) equal the per-sample sum of the counting convolution, borders and zero weights included."""
    from suite.opcount import _conv, _effective_ops, _event_ops

    g = torch.Generator().manual_seed(0)
    spatial = (11,) if isinstance(conv, nn.Conv1d) else (11, 9)
    x = (torch.rand(7, conv.in_channels, *spatial, generator=g) < 0.3).float() * 2.0
    with torch.no_grad():
        conv.weight[0].zero_()
    want_syn = _conv(conv, x, torch.ones_like(conv.weight)).flatten(1).sum(1)
    want_eff = _conv(conv, (x != 0).float(), (conv.weight != 0).float()).flatten(1).sum(1)
    cache: dict = {}
    for _ in range(2):                               # the second call reads the cached maps
        assert torch.equal(_event_ops(conv, x, cache), want_syn)
        assert torch.equal(_effective_ops(conv, x, cache), want_eff)
    assert torch.equal(_event_ops(conv, x), want_syn)
