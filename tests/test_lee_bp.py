"""lee_bp (Lee, Delbruck & Pfeiffer 2016): forward dynamics and the paper's gradient worked out
by hand on a tiny net, independence from u - theta (no surrogate), backends, encoder, op
counting, and end-to-end training on the embedded digits."""
import math

import pytest
import torch

from suite.archs import ArchSpec
from suite.rule import Context, check_options
from suite.train import Cell, run_cell

import suite.plugins.lee_bp as lb

LAM = 0.5                      # membrane decay per step, exp(-1/tau_mp)
TAU = 1.0 / math.log(2.0)
S0 = [[1, 0, 1],               # input events, [t][k]
      [0, 1, 0],
      [1, 1, 0],
      [0, 0, 1]]
W1 = [[0.6, 0.5, 0.3],         # hidden 3 <- input 3; hidden neuron 2 never fires
      [0.2, 0.4, 0.9],
      [-0.5, 0.1, -0.3]]
W2 = [[0.8, 0.7, 0.3],         # output 2 <- hidden 3
      [0.9, -0.2, 0.3]]
TH1, TH2 = [1.0, 1.0, 1.0], [0.5, 0.6]
K_H, K_O, SIGMA = -0.4, -1.0, 0.5


def _hp(**over):
    return check_options(lb.LeeBP(), {"tau_mp": TAU, "kappa_hidden": K_H, "kappa_out": K_O, "sigma": SIGMA, **over})


def _tiny(backend="torch", w1=W1):
    net = lb.LeeNet([3, 3, 2], _hp(), backend)
    with torch.no_grad():
        net.layers[0].weight.copy_(torch.tensor(w1))
        net.layers[1].weight.copy_(torch.tensor(W2))
        net.layers[0].theta.copy_(torch.tensor(TH1))
        net.layers[1].theta.copy_(torch.tensor(TH2))
    return net


def _input():
    return torch.tensor(S0, dtype=torch.float32)[:, None, :]      # [T=4, B=1, 3]


def test_forward_matches_hand_simulation():
    """charge u = 0.5 u + W s, fire at u >= theta, subtract theta, WTA kappa*theta per other
    spike, clip at -theta -- worked out step by step:

    hidden (theta 1, kappa -0.4):
      t0: u = (0.9, 1.1, -0.8): n1 fires -> (0.9-0.4, 0.1, -1.2 -> clip -1)
      t1: u = (0.25+0.5, 0.05+0.4, -0.5+0.1) = (0.75, 0.45, -0.4): none
      t2: u = (0.375+1.1, 0.225+0.6, -0.2-0.4) = (1.475, 0.825, -0.6): n0 fires -> (0.475, 0.425, -1)
      t3: u = (0.2375+0.3, 0.2125+0.9, -0.5-0.3): n1 fires (1.1125)
    output (theta 0.5 / 0.6, kappa -1), inputs = hidden spikes (0,1,0) (0,0,0) (1,0,0) (0,1,0):
      t0: u = (0.7, -0.2): o0 fires -> (0.2, -0.2-0.6 -> clip -0.6)
      t1: u = (0.1, -0.3)
      t2: u = (0.05+0.8, -0.15+0.9) = (0.85, 0.75): both fire -> (0.35-0.5, 0.15-0.6)
      t3: u = (-0.075+0.7, -0.225-0.2) = (0.625, -0.425): o0 fires
    """
    spikes, _ = _tiny().run(_input())
    assert spikes[1][:, 0].tolist() == [[0, 1, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0]]
    assert spikes[2][:, 0].tolist() == [[1, 0], [0, 0], [1, 1], [1, 0]]


def _hand_gradients(y):
    """The paper's rule on the tiny net, by hand (B = 1, so the batch mean is the sample)."""
    T = 4
    c = [1 - LAM ** (T - t) for t in range(T)]                    # effective weight of a spike at t
    s_h = [[0, 1, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0]]
    s_o = [[1, 0], [0, 0], [1, 1], [1, 0]]
    xbar = [sum(c[t] * S0[t][k] for t in range(T)) for k in range(3)]      # 27/16, 13/8, 23/16
    abar_h = [sum(c[t] * s_h[t][j] for t in range(T)) for j in range(3)]   # 3/4, 23/16, 0
    abar_o = [sum(c[t] * s_o[t][i] for t in range(T)) for i in range(2)]   # 35/16, 3/4
    assert xbar == pytest.approx([27 / 16, 13 / 8, 23 / 16]) and abar_o == pytest.approx([35 / 16, 3 / 4])
    counts = [3, 1]
    a_hat = [counts[0] / 3, counts[1] / 3]
    target = [1.0 if i == y else 0.0 for i in range(2)]
    e = [a_hat[i] - target[i] for i in range(2)]
    loss = 0.5 * sum(v * v for v in e)

    # output layer: every output unit carries its error; g = 1/theta, g_bar = RMS of g
    g_o = [1 / TH2[0], 1 / TH2[1]]
    gbar_o = math.sqrt((g_o[0] ** 2 + g_o[1] ** 2) / 2)
    d_o = [g_o[i] / gbar_o * e[i] for i in range(2)]
    N, M, m = 2, 3, 2                                             # 2 of the 3 hidden inputs were active
    gW2 = [[math.sqrt(N / m) * d_o[i] * abar_h[j] for j in range(3)] for i in range(2)]
    drive_o = [abar_o[i] - SIGMA * K_O * abar_o[1 - i] for i in range(2)]
    gth2 = [-math.sqrt(N / (m * M)) * d_o[i] * drive_o[i] for i in range(2)]

    # hidden layer: active units only (0 and 1); error normalised by sqrt(M'/m') = sqrt(3/2)
    g_h = [1 / TH1[0], 1 / TH1[1], 0.0]
    gbar_h = math.sqrt((g_h[0] ** 2 + g_h[1] ** 2) / 2)
    back = [math.sqrt(3 / 2) * sum(W2[i][j] * d_o[i] for i in range(2)) for j in range(3)]
    d_h = [g_h[j] / gbar_h * back[j] for j in range(3)]
    N, M, m = 3, 3, 3                                             # all 3 inputs had events
    gW1 = [[math.sqrt(N / m) * d_h[j] * xbar[k] for k in range(3)] for j in range(3)]
    drive_h = [abar_h[j] - SIGMA * K_H * (sum(abar_h) - abar_h[j]) for j in range(3)]
    gth1 = [-math.sqrt(N / (m * M)) * d_h[j] * drive_h[j] for j in range(3)]
    return loss, gW1, gth1, gW2, gth2


@pytest.mark.parametrize("y", [0, 1])
def test_gradient_matches_hand_computation(y):
    net = _tiny()
    spikes, _ = net.run(_input())
    grads, loss = lb.paper_gradients(net, spikes, torch.tensor([y]), _hp())
    h_loss, gW1, gth1, gW2, gth2 = _hand_gradients(y)
    assert loss.item() == pytest.approx(h_loss, rel=1e-6)
    L0, L1 = net.layers
    assert torch.allclose(grads[L1.weight], torch.tensor(gW2), atol=1e-6)
    assert torch.allclose(grads[L1.theta], torch.tensor(gth2), atol=1e-6)
    assert torch.allclose(grads[L0.weight], torch.tensor(gW1), atol=1e-6)
    assert torch.allclose(grads[L0.theta], torch.tensor(gth1), atol=1e-6)
    # the silent hidden neuron gets nothing: active units only
    assert grads[L0.weight][2].abs().max() == 0 and grads[L0.theta][2] == 0
    if y == 0:  # the winner is right, a_hat = (1, 1/3): descent raises the wrong unit's threshold
        assert grads[L1.theta][1] < 0 and grads[L1.weight][1, 0] > 0   # and lowers its weights
        assert grads[L1.theta][0] == 0 and grads[L1.weight][0].abs().max() == 0


def test_minibatch_step_is_the_mean_of_per_sample_steps():
    """Batch semantics: with normalisers computed per sample, the batch gradient is the mean of
    the per-sample (online) gradients, and homeostasis uses the batch-mean firing pattern; at
    batch size 1 both are the paper's online step."""
    g = torch.Generator().manual_seed(1)
    s = (torch.rand(4, 3, 3, generator=g) < 0.5).float()              # [T, B=3, 3] input events
    s[:, 1] = _input()[:, 0]
    y = torch.tensor([0, 1, 1])
    net = _tiny()
    spikes, _ = net.run(s)
    grads, loss = lb.paper_gradients(net, spikes, y, _hp())
    per = []
    for b in range(3):
        sb, _ = net.run(s[:, b:b + 1])
        per.append(lb.paper_gradients(net, sb, y[b:b + 1], _hp()))
    for p in net.parameters():
        assert torch.allclose(grads[p], sum(gb[p] for gb, _ in per) / 3, atol=1e-6)
    assert torch.allclose(loss, torch.cat([lb_ for _, lb_ in per]))

    rho = 0.01
    a, b = _tiny(), _tiny()
    lb.threshold_homeostasis(a, spikes, rho)
    with torch.no_grad():
        for layer, sl in zip(b.layers, spikes[1:]):
            N = sl.shape[-1]
            step = sum(rho * (N * (sl[:, k].sum(0) > 0).float() - (sl[:, k].sum(0) > 0).float().sum())
                       for k in range(3)) / 3
            layer.theta.add_(step)
    for la, lb_ in zip(a.layers, b.layers):
        assert torch.allclose(la.theta, lb_.theta)


def _surrogate_gradients(w1):
    """surrogate_bptt_bn on the same input and weights (no BN, zero biases, same leak)."""
    from suite.host import create_host

    rule = create_host().rule("surrogate_bptt_bn")
    hp = check_options(rule, {"batch_norm": False, "beta": LAM})
    model = rule.build(ArchSpec("tiny", "3"), (3,), 2, "torch", hp)
    fcs = [m.module for m in model if hasattr(m, "module") and isinstance(m.module, torch.nn.Linear)]
    with torch.no_grad():
        for fc, w in zip(fcs, (w1, W2)):
            fc.weight.copy_(torch.tensor(w))
            fc.bias.zero_()
    ctx = Context(hp=hp, T=4, timesteps=(4,), arch=ArchSpec("tiny", "3"), dataset="x", input_shape=(3,), n_classes=2)
    rule.loss(model(_input()), torch.tensor([1]), ctx).backward()
    return [fc.weight.grad.clone() for fc in fcs]


def test_gradient_ignores_membrane_distance_to_threshold_unlike_surrogate():
    """Nudge w_00 so that every membrane value changes but no spike does: the paper's gradient
    (a function of the events only) is unchanged; surrogate_bptt_bn's, which weighs each step by
    a surrogate of u - theta, changes -- and already differs from the paper's on the same input."""
    w1b = [row[:] for row in W1]
    w1b[0][0] += 0.05
    hp = _hp()
    a, b = _tiny(), _tiny(w1=w1b)
    sa, ua = a.run(_input())
    sb, ub = b.run(_input())
    assert all(torch.equal(x, z) for x, z in zip(sa, sb))
    assert not torch.allclose(ua[0], ub[0])                       # the membranes differ
    ga, _ = lb.paper_gradients(a, sa, torch.tensor([1]), hp)
    gb, _ = lb.paper_gradients(b, sb, torch.tensor([1]), hp)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(ga[pa], gb[pb])

    sur_a, sur_b = _surrogate_gradients(W1), _surrogate_gradients(w1b)
    assert not torch.allclose(sur_a[0], sur_b[0])
    for lee, sur in zip((ga[a.layers[0].weight], ga[a.layers[1].weight]), sur_a):
        cos = torch.nn.functional.cosine_similarity(lee.flatten(), sur.flatten(), dim=0)
        assert not torch.allclose(lee, sur) and cos < 0.99


def test_weight_regulariser_is_the_papers_exponential():
    w = torch.tensor([[0.6, 0.8], [0.3, 0.1]])
    lam, beta = 0.01, 10.0
    g = lb.weight_regulariser_grad(w, lam, beta)
    # R_i = 1/2 lam exp(beta (|w_i|^2 - 1)): row 0 sits on the wall (|w|^2 = 1), row 1 far inside
    assert g[0].tolist() == pytest.approx([lam * beta * 0.6, lam * beta * 0.8])
    assert g[1].tolist() == pytest.approx([lam * beta * 0.3 * math.exp(-9.0), lam * beta * 0.1 * math.exp(-9.0)])
    net = _tiny()
    w0 = net.layers[0].weight.detach().clone()
    lb.apply_weight_regulariser(net, 0.1, lam, beta)
    rate = 0.1 * lam * beta * torch.exp(beta * (w0.pow(2).sum(1, keepdim=True) - 1))
    assert torch.allclose(net.layers[0].weight, w0 / (1 + rate))
    assert torch.equal(net.layers[1].weight, torch.tensor(W2))     # hidden layers only


def test_threshold_homeostasis_and_floor():
    net = _tiny()
    spikes, _ = net.run(_input())
    lb.threshold_homeostasis(net, spikes, rho=0.01)
    # hidden: N = 3, N_w = 2 (neurons 0, 1): +rho N for them, -rho N_w for all
    assert net.layers[0].theta.tolist() == pytest.approx([1 + 0.03 - 0.02, 1 + 0.03 - 0.02, 1 - 0.02])
    assert net.layers[1].theta.tolist() == pytest.approx([0.5 + 0.02 - 0.02, 0.6 + 0.02 - 0.02])
    # floor: theta_min = 1 * sqrt(3/3) = 1 for the hidden layer; neuron 2 (0.98) is lifted to
    # the floor and its weights scaled by 1/0.98 instead, the other two keep theta and weights
    lb.apply_threshold_floor(net)
    assert net.layers[0].theta.tolist() == pytest.approx([1.01, 1.01, 1.0])
    assert net.layers[0].weight[2].tolist() == pytest.approx([v / 0.98 for v in W1[2]])
    assert net.layers[0].weight[0].tolist() == pytest.approx(W1[0])


def test_fused_backend_matches_reference():
    g = torch.Generator().manual_seed(3)
    cur = torch.randn(20, 4, 30, generator=g) * 0.6
    theta = torch.rand(30, generator=g) + 0.5
    u0 = torch.randn(4, 30, generator=g) * 0.1
    ref = lb.lif_wta_reference(cur, theta, u0, 0.9, -0.3)
    neuron = lb.LeeLIF(30, 1.0, -1.0 / math.log(0.9), -0.3, backend="fused")
    with torch.no_grad():
        neuron.theta.copy_(theta)
    fused = neuron.run(cur, u0)
    assert ref[0].sum() > 0 and torch.equal(ref[0], fused[0]) and torch.allclose(ref[1], fused[1])
    x = (torch.rand(50, 40, generator=g) < 0.1).float() * torch.randint(1, 3, (50, 40), generator=g)
    lin = lb.EventLinear(40, 30, backend="fused")
    with torch.no_grad():
        assert torch.allclose(lin(x), x @ lin.weight.t(), atol=1e-5)


def test_poisson_events_have_the_total_rate():
    x = torch.rand(8, 1, 8, 8)
    x[0] = 0.0
    x[1, 0, :4] = 0.0
    s = lb.PoissonEvents(3.0)(x, 2000, torch.Generator().manual_seed(0))
    per_step = s.flatten(2).sum(2).mean(0)                        # events per step, per image
    assert per_step[0] == 0 and torch.allclose(per_step[1:], torch.full((7,), 3.0), rtol=0.05)
    assert s[:, 1, 0, :4].sum() == 0 and set(s.unique().tolist()) <= {0.0, 1.0}


def test_event_op_counter_counts_input_events_times_fan_out():
    net = _tiny()
    with lb.LeeBP().op_counter(net, 4, 1) as counter:
        assert net._event_counter is counter                     # where evaluate() finds it
        state = None
        for t0, t1 in ((0, 3), (3, 4)):                            # two chunks, membranes carried over
            spikes, state = net.run(_input()[t0:t1], state)
            counter.record(t0, spikes)
    ops = counter.at(4)
    # input events 6 x 3 hidden + hidden spikes 3 x 2 outputs
    assert ops["synops"] == 6 * 3 + 3 * 2 and ops["macs"] == 0
    assert ops["spikes_per_sample"] == 3 + 4
    assert counter.at(2)["synops"] == 3 * 3 + 1 * 2
    assert not hasattr(net, "_event_counter")


def test_rule_is_registered_with_its_citation(host):
    rule = host.rules["lee_bp"]
    assert "Lee, Delbruck, Pfeiffer (2016)" in rule.paper and "10.3389/fnins.2016.00508" in rule.paper
    assert {"lee_bp/mnist", "lee_bp/mnist-cpu", "lee_bp/nmnist", "lee_bp/digits"} <= set(host.presets)
    assert rule.supports(host.arch("fc800"), "mnist") and not rule.supports(host.arch("lenet5"), "mnist")


def test_digits_preset_trains(host):
    p = host.preset("lee_bp/digits")
    cell = Cell(rule="lee_bp", dataset="digits", arch=p["arch"], seed=0, timesteps=(p["options"]["T"],),
                epochs=p["epochs"], batch_size=p["batch_size"], options=tuple(sorted(p["options"].items())),
                backend="fused", preset=p["name"])
    rows = run_cell(cell, host=host)
    assert all(r["status"] == "ok" for r in rows), rows[0].get("error")
    by_T = {r["T"]: r for r in rows}
    train_T = p["options"]["T"]
    assert by_T[train_T]["accuracy"] >= 0.85
    assert by_T[train_T]["synops"] > 0 and by_T[train_T]["macs"] == 0


def test_nmnist_preset_runs_on_event_frames(host, shared_data):
    """The N-MNIST preset trains a step and evaluates on real event frames (tiny subset)."""
    p = host.preset("lee_bp/nmnist")
    cell = Cell(rule="lee_bp", dataset="nmnist", arch=p["arch"], seed=0, timesteps=tuple(p["timesteps"]),
                epochs=1, batch_size=8, options=tuple(sorted(p["options"].items())), backend="fused",
                data_root=str(shared_data), limit_train=16, limit_test=8, preset=p["name"])
    rows = run_cell(cell, host=host)
    assert all(r["status"] == "ok" for r in rows), rows[0].get("error")
    assert [r["T"] for r in rows] == [10, 20, 30] and rows[-1]["synops"] > 0 and rows[-1]["macs"] == 0
