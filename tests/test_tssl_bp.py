"""TSSL-BP (Zhang & Li 2020): PSP kernel, the spike-timing gradient worked out by hand, losses,
op counting, and end-to-end training on the embedded digits."""
import math

import pytest
import torch
from torch import nn

from suite.archs import TimeDistributed
from suite.neurons import psp
from suite.rule import Context, check_options
from suite.train import Cell, run_cell

import suite.plugins.tssl_bp as tb


@pytest.fixture
def one_thread():
    """Small per-step ops: a second thread only adds overhead on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _sigmoid_slope(z, width=0.2):
    """d/du of sigmoid((theta - u)/width), magnitude: sigma(z)(1 - sigma(z))/width."""
    s = 1.0 / (1.0 + math.exp(-z))
    return s * (1.0 - s) / width


def test_psp_of_one_spike_is_the_closed_form_kernel():
    tau_s, T, t0 = 3.0, 8, 2
    o = torch.zeros(T, 1)
    o[t0] = 1.0
    a = psp(o, tau_s)[:, 0]
    want = [0.0 if t < t0 else (1 / tau_s) * (1 - 1 / tau_s) ** (t - t0) for t in range(T)]
    assert torch.allclose(a, torch.tensor(want), atol=1e-7)
    # the recursive definition a[t] = (1 - 1/tau_s) a[t-1] + o[t]/tau_s gives the same
    rec, prev = [], 0.0
    for t in range(T):
        prev = (1 - 1 / tau_s) * prev + float(o[t]) / tau_s
        rec.append(prev)
    assert torch.allclose(a, torch.tensor(rec), atol=1e-7)


def test_two_neuron_gradient_matches_hand_computation():
    """A -> (w) -> B at T=5, tau_m=5 (theta_m=0.2), tau_s=3, theta=1, kernel loss on B.

    Both neurons fire twice, so the intra-neuron term (reset to the next spike) appears in each;
    B's spikes pass the error to A through the inter-neuron term; both start quiet (PSP 0 <
    1/(4 tau_s)), which exercises the fallback. Every number below is worked out by hand.
    """
    neuron = tb.TSSLNeuron(tau_m=5.0, tau_s=3.0, v_threshold=1.0)
    I_A = torch.tensor([0.3, 1.4, 0.2, 1.5, 0.1], dtype=torch.float64, requires_grad=True)
    w = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    o_A = neuron(I_A[:, None])                    # [T, 1]
    I_B = psp(w * o_A, 3.0)                       # = w * a_A: weights on spikes, then kappa
    o_B = neuron(I_B)
    a_B = psp(o_B, 3.0)
    loss = tb.kernel_loss(a_B[:, None, :], torch.tensor([0]), 3.0)
    loss.backward()

    # ---- forward by hand
    # A: u = 0.3 | 0.8*0.3+1.4 = 1.64 (fires, du = 1.34) | 0.2 | 0.8*0.2+1.5 = 1.66 (fires, du = 1.46) | 0.1
    assert o_A[:, 0].tolist() == [0, 1, 0, 1, 0]
    a_A = [0, 1 / 3, 2 / 9, 13 / 27, 26 / 81]
    # B: I_B = 4 a_A = [0, 4/3, 8/9, 52/27, 104/81]
    #    u = 0 | 4/3 (fires, du = 4/3) | 8/9 | 0.8*8/9 + 52/27 = 356/135 (fires, du = 52/27 - 0.2*8/9 = 236/135)
    #      | 104/81 (fires, du = 104/81)
    assert o_B[:, 0].tolist() == [0, 1, 0, 1, 1]
    u_B1, du_B1, u_B3, du_B3, du_B4 = 4 / 3, 4 / 3, 356 / 135, 236 / 135, 104 / 81
    # a_B = [0, 1/3, 2/9, 13/27, 53/81]; target PSP of [0,1,1,1,1] = [0, 1/3, 5/9, 19/27, 65/81]
    # delta = dL/da_B = [0, 0, -1/3, -2/9, -4/27]
    # g_B[t] = dL/do_B[t] = sum_{t'>=t} kappa[t'-t] delta[t'], kappa = [1/3, 2/9, 4/27, 8/81, 16/243]
    g_B = [-532 / 6561, -266 / 2187, -133 / 729, -26 / 243, -4 / 81]
    assert loss.item() == pytest.approx(0.5 * (1 / 9 + 4 / 81 + 16 / 729))

    # ---- backward through B, t = 4 .. 0 (e = gradient of the next spike, carried back)
    e4 = g_B[4] / du_B4                                          # inter only: = -1/26
    e3 = g_B[3] / du_B3 + e4 * 0.2 * u_B3 / du_B3                # inter + intra (reset before the t=4 spike)
    e2 = 0.8 * e3                                                # silent step: leak (PSP 2/9 is not quiet)
    e1 = g_B[1] / du_B1 + e2 * 0.2 * u_B1 / du_B1                # inter + intra (next spike at t=3)
    f0 = g_B[0] * _sigmoid_slope((1.0 - 0.0) / 0.2)              # quiet: PSP 0 < 1/12, u = 0
    dI_B = [f0, e1, e2, e3, e4]
    assert e4 == pytest.approx(-1 / 26)
    # dL/dw = sum_t dL/dI_B[t] * a_A[t]
    assert float(w.grad) == pytest.approx(sum(g * a for g, a in zip(dI_B, a_A)), rel=1e-9)

    # ---- backward through A: dL/da_A = w dL/dI_B, then dL/do_A = kappa-correlation of that
    D = [4.0 * g for g in dI_B]
    kappa = [(1 / 3) * (2 / 3) ** k for k in range(5)]
    g_A = [sum(kappa[s - t] * D[s] for s in range(t, 5)) for t in range(5)]
    eA4 = 0.0                                                    # silent, nothing later, PSP 26/81 not quiet
    eA3 = g_A[3] / 1.46                                          # inter only
    eA2 = 0.8 * eA3                                              # leak
    eA1 = g_A[1] / 1.34 + eA2 * 0.2 * 1.64 / 1.34                # inter + intra
    fA0 = g_A[0] * _sigmoid_slope((1.0 - 0.3) / 0.2)             # quiet fallback, u = 0.3
    assert I_A.grad.tolist() == pytest.approx([fA0, eA1, eA2, eA3, eA4], rel=1e-9)
    assert eA1 != pytest.approx(g_A[1] / 1.34)                   # the intra-neuron term matters


def test_inter_neuron_factor_is_clamped_at_8():
    """A spike reached with a tiny membrane increment: |dt_f/du| = 1/du is capped at 8."""
    neuron = tb.TSSLNeuron(tau_m=5.0, tau_s=3.0)
    # u = 0.96 (silent), then 0.8*0.96 + 0.242 = 1.01 > 1: fires with du = 0.242 - 0.192 = 0.05
    current = torch.tensor([[0.96], [0.242]], dtype=torch.float64, requires_grad=True)
    o = neuron(current)
    assert o[:, 0].tolist() == [0, 1]
    o.sum().backward()                                   # dL/do = 1 at both steps
    assert float(current.grad[1]) == pytest.approx(8.0)  # min(1/0.05, 8), not 20


def test_count_loss_penalises_only_the_wrong_side():
    T = 10
    out = torch.zeros(T, 2, 3, requires_grad=True)
    with torch.no_grad():
        out[:, 0, 0] = 2.0       # correct class: count 20 >= 15 -> no error
        out[:, 0, 1] = 0.2       # wrong class: count 2 <= 3 -> no error
        out[:, 0, 2] = 0.5       # wrong class: count 5 > 3 -> e = (5 - 3)/10
        out[:, 1, 1] = 1.0       # correct class (y=1): count 10 < 15 -> e = -0.5
    y = torch.tensor([0, 1])
    loss = tb.count_loss(out, y, 15.0, 3.0)
    loss.backward()
    assert loss.item() == pytest.approx(0.5 * T * (0.2 ** 2 + 0.5 ** 2))
    g = out.grad
    assert torch.allclose(g[:, 0, 2], torch.full((T,), 0.2))      # the code's per-step error e
    assert torch.allclose(g[:, 1, 1], torch.full((T,), -0.5))
    assert float(g[:, 0, 0].abs().sum()) == 0 and float(g[:, 0, 1].abs().sum()) == 0


def test_desired_train_and_kernel_target():
    assert tb.desired_train(5).tolist() == [0, 1, 1, 1, 1]
    assert tb.desired_train(10).tolist() == [0, 1] * 5
    # the kernel loss's target is kappa * d on the correct class, 0 elsewhere; with tau_s = 3,
    # kappa[k] = (1/3)(2/3)^k, so for d = [0,1,1,1,1]: 0, 1/3, 5/9, 19/27, 65/81
    by_hand = torch.tensor([0.0, 1 / 3, 5 / 9, 19 / 27, 65 / 81])
    T, B, C = 5, 3, 4
    y = torch.tensor([2, 0, 3])
    outputs = torch.zeros(T, B, C, requires_grad=True)
    tb.kernel_loss(outputs, y, 3.0).backward()
    target = -outputs.grad                               # d loss / d outputs = outputs - target
    for b in range(B):
        torch.testing.assert_close(target[:, b, y[b]], by_hand)
        others = [c for c in range(C) if c != y[b]]
        assert (target[:, b, others] == 0).all()
    exact = torch.zeros(T, B, C)
    exact[:, torch.arange(B), y] = by_hand[:, None]
    assert tb.kernel_loss(exact, y, 3.0).item() == pytest.approx(0.0, abs=1e-12)
    assert tb.kernel_loss(torch.zeros(T, B, C), y, 3.0).item() == pytest.approx(0.5 * B * float((by_hand ** 2).sum()))


def test_op_counter_counts_pooled_spikes_as_accumulates(host):
    rule = host.rule("tssl_bp")
    hp = check_options(rule, {})
    model = rule.build(host.arch("tssl_mnist_cnn"), (1, 28, 28), 10, "torch", hp).eval()
    conv2 = model[4].module                    # after conv1 -> PSP -> neuron -> sum-pool
    assert isinstance(conv2, torch.nn.Conv2d)
    T, B = 5, 2
    x = torch.rand(B, 1, 28, 28)
    ctx = Context(hp=hp, T=T, timesteps=(T,), arch=host.arch("tssl_mnist_cnn"), dataset="mnist",
                  input_shape=(1, 28, 28), n_classes=10)
    seen = {}
    h = conv2.register_forward_hook(lambda m, i, o: seen.update(x=i[0].detach()))
    with rule.op_counter(model, T, B) as oc, torch.no_grad():
        rule.forward(model, x, T, ctx)
    h.remove()
    counts = seen["x"]
    assert bool((counts == counts.round()).all()) and counts.max() <= 4
    want = torch.nn.functional.conv2d(counts, torch.ones_like(conv2.weight)).sum() / B
    layers = oc.at(T)["layers"]
    conv2_name = next(n for n in layers if n.startswith("4"))
    assert layers[conv2_name]["synops"] == pytest.approx(float(want))          # sum(n) x fan-out
    assert layers[conv2_name]["macs"] == 0
    conv1_name = next(n for n in layers if n.startswith("0"))
    assert layers[conv1_name]["macs"] == pytest.approx(T * 15 * 24 * 24 * 25)  # analog image: MACs every step


def test_static_input_shortcut_matches_per_step_weights(host):
    """The encoded static image is one step broadcast over T: the weight layers run it once
    (suite.archs.TimeDistributed); the same input materialised runs every step. Same values and gradients."""
    rule = host.rule("tssl_bp")
    hp = check_options(rule, {})
    arch = host.arch("mlp128")
    model = rule.build(arch, (1, 8, 8), 10, "torch", hp)
    ctx = Context(hp=hp, T=5, timesteps=(5,), arch=arch, dataset="digits", input_shape=(1, 8, 8), n_classes=10)
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    x_seq = rule.encode(x, 5, ctx)
    assert x_seq.stride(0) == 0
    grads = []
    for inp in (x_seq, x_seq.contiguous()):
        model.zero_grad()
        out = model(inp)
        rule.loss(out, y, ctx).backward()
        grads.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-6)
    for a, b in zip(grads[0][1], grads[1][1]):
        assert torch.allclose(a, b, atol=1e-5)


def test_digits_reach_85_percent_at_T5(host, one_thread):
    preset = host.preset("tssl_bp/digits")
    cell = Cell(rule="tssl_bp", dataset="digits", arch=preset["arch"], seed=0, timesteps=(5,),
                epochs=preset["epochs"], batch_size=preset["batch_size"],
                options=tuple(sorted(preset.get("options", {}).items())))
    rows = run_cell(cell, host)
    assert rows[0]["status"] == "ok", rows[0].get("error")
    assert rows[0]["accuracy"] >= 0.85
    assert rows[0]["synops"] > 0


def test_cifar10_preset_builds_and_trains_one_step_on_cpu(host):
    preset = host.preset("tssl_bp/cifar10")
    rule = host.rule("tssl_bp")
    hp = check_options(rule, preset["options"])
    arch = host.arch(preset["arch"])
    assert rule.supports(arch, "cifar10")
    model = rule.build(arch, (3, 32, 32), 10, "torch", hp)
    convs = [m.module for m in model if isinstance(m, TimeDistributed) and isinstance(m.module, (nn.Conv2d, nn.Linear))]
    assert [c.out_channels for c in convs[:5]] == [96, 256, 384, 384, 256]
    assert convs[5].in_features == 256 * 8 * 8                     # padding 1 keeps 32 -> 16 -> 8
    assert sum(isinstance(m, tb.FixedDropout) for m in model) == 7
    ctx = Context(hp=hp, T=hp["T"], timesteps=(5,), arch=arch, dataset="cifar10", input_shape=(3, 32, 32),
                  n_classes=10, epochs=1)
    ctx.generator.manual_seed(0)
    opt, _, _ = rule.configure_optimizer(model, ctx)
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-4)
    before = [p.detach().clone() for p in model.parameters()]
    stats = rule.train_step(model, (torch.rand(2, 3, 32, 32), torch.tensor([3, 7])), opt, ctx)
    assert math.isfinite(stats["loss"])
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert max(p.detach().abs().max().item() for p in model.parameters()) <= hp["weight_clip"]
    model.eval()
    with torch.no_grad():
        logits = rule.evaluate(model, torch.rand(2, 3, 32, 32), (1, 5), ctx)
    assert logits.shape == (2, 2, 10)


def test_nmnist_preset_runs_on_event_frames(host):
    """Frames [B, T, 2, 34, 34] with counts > 1 are clipped to spikes; count loss (trained here
    on the first 10 of 30 frames to keep the test short)."""
    preset = host.preset("tssl_bp/nmnist")
    rule = host.rule("tssl_bp")
    hp = check_options(rule, preset["options"])
    arch = host.arch(preset["arch"])
    model = rule.build(arch, (2, 34, 34), 10, "torch", hp)
    ctx = Context(hp=hp, T=10, timesteps=(10,), arch=arch, dataset="nmnist", input_shape=(2, 34, 34),
                  n_classes=10)
    g = torch.Generator().manual_seed(0)
    frames = (torch.rand(2, 30, 2, 34, 34, generator=g) < 0.05).to(torch.uint8) * 3
    assert hp["T"] == 30
    enc = rule.encode(frames, 10, ctx)
    assert enc.shape == (10, 2, 2, 34, 34) and enc.max() == 1 and enc.dtype == torch.float32
    opt, _, _ = rule.configure_optimizer(model, ctx)
    stats = rule.train_step(model, (frames, torch.tensor([1, 8])), opt, ctx)
    assert math.isfinite(stats["loss"])
    assert model[-2].tau_m == 8.0 and model[-1].tau_s == 4.0
