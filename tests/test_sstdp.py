"""SSTDP (Liu et al. 2021): TTFS coding, fire-once IF neurons simulated event-driven, the
STDP-shaped update driven by a normalised error on spike times, presets and op counts."""
import math

import pytest
import torch
import torch.nn.functional as F

from suite.archs import ArchSpec
from suite.rule import Context, check_options
from suite.train import Cell, run_cell

import suite.plugins.sstdp as sst


def _ctx(rule, hp, arch, input_shape, n_classes, T=None, **kw):
    ctx = Context(hp=hp, T=T or hp["T"], timesteps=(T or hp["T"],), arch=arch, dataset="test",
                  input_shape=input_shape, n_classes=n_classes, **kw)
    ctx.generator.manual_seed(0)
    return ctx


def _single_layer(host, weights, **opts):
    """A network with no hidden layer: inputs -> len(weights) output neurons, weights set by hand."""
    rule = host.rule("sstdp")
    hp = check_options(rule, {"init_range": "1", **opts})
    arch = ArchSpec("sstdp_test_single", "")
    w = torch.tensor(weights, dtype=torch.float32)
    model = rule.build(arch, (1, 1, w.shape[1]), w.shape[0], "torch", hp)
    model.layers[0].weight.copy_(w)
    return rule, hp, arch, model


# ----------------------------------------------------------------------------- the update
@pytest.mark.parametrize("tau", [0.0, 20.0])
def test_one_pair_weight_change_is_the_hand_computed_stdp_value(host, tau):
    """Inputs spike at 0, 127, 203. Output 0 (the label) fires at 127 (too late), output 1 at 0
    (a wrong winner). e = (t - target) / ||t - target|| with targets (0, 5); dW = lr eps(dt) e."""
    A, B, lr = 0.8, 0.2, 10.0
    rule, hp, arch, model = _single_layer(host, [[60.0, 60.0, 60.0], [110.0, 0.0, 0.0]],
                                          A=A, B=B, lr=lr, weight_decay=0.0, stdp_tau=tau)
    x = torch.tensor([[[[1.0, 0.5, 0.2]]]])
    t_in = sst.ttfs_times(x, 255).flatten()
    assert t_in.tolist() == [0.0, 127.0, 203.0]
    t_out, _, _ = rule.simulate(model, x, 255, hp)
    assert t_out.tolist() == [[127.0, 0.0]]
    before = model.layers[0].weight.clone()
    rule.train_step(model, (x, torch.tensor([0])), None, _ctx(rule, hp, arch, (1, 1, 3), 2))
    dW = model.layers[0].weight - before
    n = math.hypot(127.0, 5.0)
    e = [127.0 / n, -5.0 / n]

    def expected(j, i):
        dt = t_in[i].item() - t_out[0, j].item()
        eps = A if dt <= 0 else -B
        return lr * eps * e[j] * (math.exp(-abs(dt) / tau) if tau else 1.0)

    for j in range(2):
        for i in range(3):
            assert dW[j, i].item() == pytest.approx(expected(j, i), abs=2e-5)   # float32 weights ~100
    # the label fired too late: potentiation before its spike (and at it), depression after it
    assert dW[0, 0] > 0 and dW[0, 1] > 0 and dW[0, 2] < 0
    # the wrong winner fired too early: its causal input is depressed
    assert dW[1, 0] < 0


@pytest.mark.parametrize("numba", [True, False])
def test_a_silent_pre_synapse_gets_no_potentiation_and_no_error(numba):
    T = 50
    t_in = torch.tensor([[3.0, float(T)]])                  # pre 1 never fired
    for t_post in (10.0, float(T)):                          # post fired, or silent
        t_out = torch.tensor([[t_post]])
        err = torch.tensor([[1.0]])                          # the post should fire earlier
        S = sst.stdp_weight_sum(t_in, t_out, err, T, A=1.0, B=0.0, tau=0.0, numba=numba)
        assert S[0, 0] > 0 and S[1, 0] == 0
        S = sst.stdp_weight_sum(t_in, t_out, err, T, A=0.8, B=0.2, tau=5.0, numba=numba)
        assert S[1, 0] <= 0
        g = sst.propagate_error(t_in, t_out, err, torch.tensor([[2.0, 3.0]]), T, numba=numba)
        assert g[0, 1] == 0 and g[0, 0] == 2.0


@pytest.mark.parametrize("numba", [True, False])
def test_weight_sum_and_error_match_the_dense_definition(numba):
    g = torch.Generator().manual_seed(1)
    T, P, N, M = 30, 6, 17, 5
    t_in = torch.randint(0, T + 1, (P, N), generator=g).float()
    t_out = torch.randint(0, T + 1, (P, M), generator=g).float()
    err = torch.randn(P, M, generator=g)
    err[2] = 0
    w = torch.randn(M, N, generator=g)
    for A, B, tau in [(1.0, 0.0, 0.0), (0.8, 0.2, 0.0), (0.8, 0.2, 7.0)]:
        eps = sst.stdp_window(t_in.unsqueeze(2), t_out.unsqueeze(1), T, A, B, tau)     # [P, N, M]
        S = sst.stdp_weight_sum(t_in, t_out, err, T, A, B, tau, numba=numba)
        torch.testing.assert_close(S, (eps * err.unsqueeze(1)).sum(0))
    causal = ((t_in.unsqueeze(1) <= t_out.unsqueeze(2)) & (t_in.unsqueeze(1) < T)).float()     # [P, M, N]
    torch.testing.assert_close(sst.propagate_error(t_in, t_out, err, w, T, numba=numba),
                               (err.unsqueeze(2) * causal * w).sum(1))


def test_train_step_builds_no_autograd_graph(host):
    rule = host.rule("sstdp")
    hp = check_options(rule, {"init_range": "15,25"})
    arch = host.arch("mlp128")
    model = rule.build(arch, (1, 8, 8), 10, "torch", hp)
    assert all(not p.requires_grad for p in model.parameters())
    opt, sched, interval = rule.configure_optimizer(model, _ctx(rule, hp, arch, (1, 8, 8), 10))
    assert (opt, sched, interval) == (None, None, "epoch")
    seen = []
    simulate = model.simulate

    def spy(*a, **k):
        out = simulate(*a, **k)
        seen.append((torch.is_grad_enabled(), out[0].grad_fn, out[0].requires_grad))
        return out

    model.simulate = spy
    x = torch.rand(8, 1, 8, 8, requires_grad=True)
    before = [p.clone() for p in model.parameters()]
    with torch.enable_grad():
        stats = rule.train_step(model, (x, torch.arange(8) % 10), None, _ctx(rule, hp, arch, (1, 8, 8), 10))
    assert seen == [(False, None, False)]
    assert math.isfinite(stats["loss"])
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    for p in model.parameters():
        assert p.grad is None and p.grad_fn is None and not p.requires_grad
    assert x.grad is None


# ----------------------------------------------------------------------------- the simulation
@pytest.mark.parametrize("numba", [True, False])
def test_event_driven_layer_equals_the_stepped_reference(numba):
    g = torch.Generator().manual_seed(0)
    T, last = 40, 37
    for trial in range(4):
        P, N, M = 9, 60, 23
        t_in = torch.randint(0, T + 1, (P, N), generator=g).float()
        w = torch.randint(-24, 40, (M, N), generator=g).float() / 8     # dyadic: sums are exact
        theta = 40.0 + 5 * trial
        t_ev, v_ev = sst.spike_once_linear(t_in, w, theta, T, last, numba=numba, chunk=700)
        t_st, raster = sst.spike_once_linear_stepped(t_in, w, theta, T, last)
        assert torch.equal(t_ev, t_st)
        fired = t_ev < T
        assert 0.1 < fired.float().mean() < 0.95                     # a mix of fired and silent
        assert (raster.sum(0) <= 1).all()
        # potential at the firing step, or over the whole window when silent
        at = torch.where(fired, t_ev, torch.full_like(t_ev, float(last)))
        ref = ((t_in.unsqueeze(1) <= at.unsqueeze(2)).float() * w).sum(2)
        torch.testing.assert_close(v_ev, ref)


def test_numba_dispatch_defaults_to_cpu_and_refuses_other_devices():
    assert sst._use_numba(None, torch.device("cpu")) and not sst._use_numba(False, torch.device("cpu"))
    assert not sst._use_numba(None, torch.device("meta"))
    with pytest.raises(ValueError, match="CPU"):
        sst._use_numba(True, torch.device("meta"))


def test_train_step_is_the_same_with_the_numba_and_the_torch_kernels(host, monkeypatch):
    """The torch forms (the non-CPU path) and the numba loops give the same spikes and update."""
    rule = host.rule("sstdp")
    hp = check_options(rule, {"init_range": "15,25", "B": 0.2})
    arch = host.arch("mlp128")
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(12, 1, 8, 8, generator=g), torch.arange(12) % 10
    weights = []
    for numba in (True, False):
        monkeypatch.setattr(sst, "_use_numba", lambda flag, device, numba=numba: numba)
        torch.manual_seed(0)
        model = rule.build(arch, (1, 8, 8), 10, "torch", hp)
        rule.train_step(model, (x, y), None, _ctx(rule, hp, arch, (1, 8, 8), 10))
        weights.append([p.clone() for p in model.parameters()])
    for a, b in zip(*weights):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_a_neuron_never_fires_twice(host):
    """Weights +60, +60, -100, +90: v crosses theta=100 at the 2nd input, drops below and crosses
    again at the 4th; the neuron spikes once, at the first crossing, in both simulations."""
    t_in = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    w = torch.tensor([[60.0, 60.0, -100.0, 90.0]])
    t_st, raster = sst.spike_once_linear_stepped(t_in, w, 100.0, 10, 7)
    assert raster.sum().item() == 1 and raster[1, 0, 0] == 1
    for numba in (True, False):
        assert sst.spike_once_linear(t_in, w, 100.0, 10, 7, numba=numba)[0].item() == 1.0
    # the rule's own raster: one spike at most per output neuron and sample
    rule = host.rule("sstdp")
    hp = check_options(rule, {"init_range": "15,25"})
    arch = host.arch("mlp128")
    model = rule.build(arch, (1, 8, 8), 10, "torch", hp)
    raster = rule.forward(model, torch.rand(16, 1, 8, 8), 64, _ctx(rule, hp, arch, (1, 8, 8), 10, T=64))
    assert raster.shape == (64, 16, 10) and (raster.sum(0) <= 1).all() and raster.sum() > 0


def test_same_step_inputs_are_integrated_before_the_threshold_test():
    """+150 and -100 arrive in the same step: v = 50 after the step, no spike (stepped semantics)."""
    t_in = torch.tensor([[2.0, 2.0]])
    for w in ([[150.0, -100.0]], [[-100.0, 150.0]]):
        for numba in (True, False):
            t, v = sst.spike_once_linear(t_in, torch.tensor(w), 100.0, 10, 7, numba=numba)
            assert t.item() == 10.0 and v.item() == 50.0


def test_conv_layer_equals_a_stepped_convolution():
    g = torch.Generator().manual_seed(3)
    T, last, theta = 30, 27, 8.0
    t_in = torch.randint(0, T + 1, (2, 3, 9, 8), generator=g).float()
    layer = sst.SpikeOnceConv2d(3, 4, 3, 2, 1, (5, 4), init_range=1.0)
    layer.weight.copy_(torch.randint(-4, 12, layer.weight.shape, generator=g).float() / 4)
    t_ev, _ = layer.run(t_in, T, last, theta)
    v = torch.zeros(2, 4, 5, 4)
    t_ref = torch.full_like(v, float(T))
    for t in range(last + 1):
        v = v + F.conv2d((t_in == t).float(), layer.weight, stride=2, padding=1)
        t_ref[(v > theta) & (t_ref == T)] = float(t)
    assert torch.equal(t_ev, t_ref)
    assert 0.1 < (t_ev < T).float().mean() < 0.95


def test_full_kernel_conv_updates_like_the_equivalent_linear_layer(host):
    """A conv whose kernel covers its whole input is a linear layer: same spikes, same update."""
    rule = host.rule("sstdp")
    hp = check_options(rule, {"init_range": "auto"})
    g = torch.Generator().manual_seed(0)
    w_hidden = torch.rand(6, 2, 4, 4, generator=g) * 40
    w_out = torch.rand(3, 6, generator=g) * 60
    x = torch.rand(5, 2, 4, 4, generator=g)
    y = torch.tensor([0, 1, 2, 1, 0])
    results = []
    for spec in ("6C4", "6"):
        arch = ArchSpec(f"sstdp_test_{spec}", spec)
        model = rule.build(arch, (2, 4, 4), 3, "torch", hp)
        model.layers[0].weight.copy_(w_hidden.reshape(model.layers[0].weight.shape))
        model.layers[-1].weight.copy_(w_out)
        t_out, _, _ = rule.simulate(model, x, 255, hp)
        rule.train_step(model, (x, y), None, _ctx(rule, hp, arch, (2, 4, 4), 3))
        results.append((t_out, model.layers[0].weight.reshape(6, -1).clone(), model.layers[-1].weight.clone()))
    (t_a, h_a, o_a), (t_b, h_b, o_b) = results
    assert torch.equal(t_a, t_b)
    torch.testing.assert_close(h_a, h_b)
    torch.testing.assert_close(o_a, o_b)
    assert not torch.equal(h_a, w_hidden.reshape(6, -1))


def test_earliest_spike_pooling_and_its_error_routing():
    pool = sst.EarliestSpikePool2d(2)
    t = torch.tensor([[[[5.0, 3.0], [9.0, 7.0]]]])
    out, _ = pool.run(t, 10, 7, 1.0)
    assert out.item() == 3.0
    assert pool.backward(t, torch.tensor([[[[2.0]]]])).tolist() == [[[[0.0, 2.0], [0.0, 0.0]]]]


def test_evaluate_reencodes_every_window(host):
    rule = host.rule("sstdp")
    hp = check_options(rule, {"init_range": "15,25"})
    arch = host.arch("mlp128")
    model = rule.build(arch, (1, 8, 8), 10, "torch", hp)
    x = torch.rand(6, 1, 8, 8)
    ctx = _ctx(rule, hp, arch, (1, 8, 8), 10)
    logits = rule.evaluate(model, x, (16, 255), ctx)
    assert logits.shape == (2, 6, 10)
    for k, T in enumerate((16, 255)):
        t_out, v, _ = rule.simulate(model, x, T, hp)
        torch.testing.assert_close(logits[k], rule.decode(t_out, v, hp))
        assert torch.equal(logits[k].argmax(1), (-t_out + 0.5 * torch.sigmoid((v - 100) / 100)).argmax(1))


def test_targets_follow_the_paper():
    t_out = torch.tensor([[10.0, 12.0, 30.0, 255.0], [255.0, 255.0, 255.0, 255.0]])
    target = sst.time_targets(t_out, torch.tensor([2, 1]), 255, 5.0)
    assert target.tolist() == [[15.0, 15.0, 10.0, 255.0], [255.0, 250.0, 255.0, 255.0]]


def test_dead_hidden_neurons_are_reinitialised_after_an_epoch_when_asked(host):
    rule = host.rule("sstdp")
    hp = check_options(rule, {"init_range": "15,25", "reinit_below": 1e-3})
    arch = host.arch("mlp128")
    model = rule.build(arch, (1, 8, 8), 10, "torch", hp)
    hidden = model.layers[0]
    hidden.weight[:5] = -1.0                                         # these can never fire
    out_before = model.layers[1].weight.clone()
    ctx = _ctx(rule, hp, arch, (1, 8, 8), 10, epochs=2, steps_per_epoch=2)
    x, y = torch.rand(16, 1, 8, 8), torch.arange(16) % 10
    rule.train_step(model, (x, y), None, ctx)
    assert (hidden.weight[:5] < 0).all() and hidden.fire_samples.item() == 16
    ctx.step = 1                                                     # the epoch's last step
    stats = rule.train_step(model, (x, y), None, ctx)
    assert stats["reinit"] >= 5
    assert ((hidden.weight[:5] >= 0) & (hidden.weight[:5] < 15)).all()
    assert hidden.fire_samples.item() == 0
    assert not torch.equal(out_before, model.layers[1].weight)


def test_no_reinitialisation_by_default_as_in_the_official_code(host):
    """The code's retrieve_dead_neurons assigns to ``weight[idx].data`` (a temporary view): a no-op."""
    w = torch.nn.Parameter(torch.zeros(3, 4))
    for idx in range(3):
        w[idx].data = torch.ones(4)                                  # the official code's statement
    assert (w == 0).all()
    rule = host.rule("sstdp")
    hp = check_options(rule, {"init_range": "15,25"})
    assert hp["reinit_below"] == 0.0
    arch = host.arch("mlp128")
    model = rule.build(arch, (1, 8, 8), 10, "torch", hp)
    hidden = model.layers[0]
    hidden.weight[:5] = -1.0                                         # these can never fire
    ctx = _ctx(rule, hp, arch, (1, 8, 8), 10, epochs=2, steps_per_epoch=1)
    x, y = torch.rand(16, 1, 8, 8), torch.arange(16) % 10
    stats = rule.train_step(model, (x, y), None, ctx)               # the epoch's last step
    assert "reinit" not in stats
    assert (hidden.weight[:5] < 0).all()


def test_learning_rate_schedules():
    hp = {"lr": 10.0, "lr_schedule": "none"}
    assert sst.learning_rate(hp, 7, 10) == 10.0
    hp["lr_schedule"] = "cosine"
    assert sst.learning_rate(hp, 0, 10) == 10.0 and sst.learning_rate(hp, 5, 10) == pytest.approx(5.0)
    hp["lr_schedule"] = "step"
    with pytest.raises(ValueError, match="cosine"):
        sst.learning_rate(hp, 0, 10)


def test_init_ranges():
    assert sst.init_ranges("5,48", [784, 400], 100.0) == [5.0, 48.0]
    auto = sst.init_ranges("auto", [784, 400], 100.0)
    assert auto == pytest.approx([200 / 39.2, 50.0])
    assert sst.init_ranges("auto", [64, 128], 100.0) == pytest.approx([200 / 12, 50.0])
    with pytest.raises(ValueError, match="2 weight layers"):
        sst.init_ranges("5", [784, 400], 100.0)


# ----------------------------------------------------------------------------- op counting
def test_op_counter_counts_events_up_to_the_post_spike(host):
    """Inputs at 0, 127, 203 into outputs firing at 127 and 0: output 0 receives the spikes at 0
    and 127 (2 events), output 1 only the one at 0 (at its own firing step) -> 3 SynOps."""
    rule, hp, arch, model = _single_layer(host, [[60.0, 60.0, 60.0], [110.0, 0.0, 0.0]])
    x = torch.tensor([[[[1.0, 0.5, 0.2]]]])
    ctx = _ctx(rule, hp, arch, (1, 1, 3), 2)
    counter = rule.op_counter(model, 255, 1)
    with counter:
        rule.evaluate(model, x, (255,), ctx)
    assert not hasattr(model, "_sstdp_recorder")
    ops = counter.at(255)
    assert ops["synops"] == 3.0 and ops["macs"] == 0.0
    assert ops["layers"]["layers.0"]["synops_no_skip"] == 6.0
    assert ops["spikes_per_sample"] == 2.0
    assert ops["decision"] == {"mean_first_spike": 0.0, "ties": 0.0, "silent": 0.0}
    assert ops["energy_pj"] == pytest.approx(3 * ops["energy_model"]["ac_pj"])


# ----------------------------------------------------------------------------- presets and training
def test_presets_are_registered(host):
    for name in ("mnist", "mnist-cosine", "mnist-cpu", "digits", "cifar10", "caltech101"):
        p = host.preset(f"sstdp/{name}")
        assert p["rule"] == "sstdp"
        check_options(host.rule("sstdp"), p.get("options", {}))
        host.arch(p["arch"])
    mnist = host.preset("sstdp/mnist")
    assert mnist["epochs"] == 100 and max(mnist["timesteps"]) == 255 and mnist["options"]["init_range"] == "5,48"
    assert mnist["options"]["weight_decay"] == 1e-6
    rule = host.rule("sstdp")
    assert rule.defaults["T"] == 255 and rule.defaults["lr"] == 10.0 and rule.defaults["theta"] == 100.0
    assert rule.supports(host.arch("mlp128"), "digits") and not rule.supports(host.arch("mlp128"), "nmnist")


@pytest.mark.parametrize("name,input_shape,n_classes", [("cifar10", (3, 32, 32), 10), ("caltech101", (1, 160, 250), 2)])
def test_conv_presets_build_and_run_a_step_on_random_data(host, name, input_shape, n_classes):
    preset = host.preset(f"sstdp/{name}")
    if "input_shape" in preset:
        assert tuple(preset["input_shape"]) == input_shape and preset["n_classes"] == n_classes
    rule = host.rule("sstdp")
    hp = check_options(rule, preset["options"])
    arch = host.arch(preset["arch"])
    assert rule.supports(arch, name)
    model = rule.build(arch, input_shape, n_classes, "torch", hp)
    assert sum(isinstance(m, sst.SpikeOnceConv2d) for m in model.layers) >= 2
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, *input_shape, generator=g)
    ctx = _ctx(rule, hp, arch, input_shape, n_classes)
    before = [p.clone() for p in model.parameters()]
    stats = rule.train_step(model, (x, torch.tensor([0, 1])), None, ctx)
    assert math.isfinite(stats["loss"])
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    counter = rule.op_counter(model, 255, 2)
    with counter:
        logits = rule.evaluate(model, x, (64, 255), ctx)
    assert logits.shape == (2, 2, n_classes)
    assert counter.at(255)["synops"] > 0


def test_digits_preset_reaches_80_percent(host):
    preset = host.preset("sstdp/digits")
    cell = Cell(rule="sstdp", dataset="digits", arch=preset["arch"], seed=0, timesteps=(64, 255),
                epochs=preset["epochs"], batch_size=preset["batch_size"],
                options=tuple(sorted(preset.get("options", {}).items())))
    rows = run_cell(cell, host)
    assert [r["status"] for r in rows] == ["ok", "ok"], rows[0].get("error")
    assert rows[-1]["accuracy"] >= 0.80
    assert all(r["synops"] > 0 and r["macs"] == 0 for r in rows)
    assert rows[-1]["extra"]["decision"]["mean_first_spike"] < 255
