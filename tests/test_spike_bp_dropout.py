"""spike_bp_dropout (Lee, Sarwar, Panda, Srinivasan, Roy 2020): time-fixed dropout, the
leak-corrected spike derivative worked out by hand, agreement with the official code's
detach-trick formulation, the output layer, the CIFAR-10 presets, and training on digits."""
import math

import pytest
import torch

from suite.rule import Context, check_options
from suite.train import Cell, run_cell

import suite.plugins.spike_bp_dropout as sbp


def _ctx(rule, hp, arch, input_shape, T, seed=0):
    ctx = Context(hp=hp, T=T, timesteps=(T,), arch=arch, dataset="test", input_shape=input_shape, n_classes=10)
    ctx.generator.manual_seed(seed)
    return ctx


def _record_dropout(model):
    """Forward hooks on every TimeFixedDropout: list of (input, output) per call."""
    seen = []
    for m in model.modules():
        if isinstance(m, sbp.TimeFixedDropout):
            m.register_forward_hook(lambda mod, inp, out: seen.append((inp[0].detach(), out.detach())))
    return seen


# ------------------------------------------------------------------------------- dropout
def test_dropout_mask_is_fixed_over_time_and_differs_between_samples():
    drop = sbp.TimeFixedDropout(0.25)
    drop.generator = torch.Generator().manual_seed(3)
    drop.train()
    out = drop(torch.ones(7, 4, 50))                    # [T, B, N]
    assert torch.equal(out, out[:1].expand_as(out))     # the same mask at every step
    assert all(v == 0.0 or v == pytest.approx(1.0 / 0.75) for v in out.unique().tolist())
    assert not torch.equal(out[0, 0], out[0, 1])        # a different mask per sample
    assert 0.1 < float((out[0] == 0).float().mean()) < 0.4
    drop.eval()
    x = torch.rand(7, 4, 50)
    assert torch.equal(drop(x), x)


def test_dropout_inside_one_forward_pass_of_the_rule(host):
    """In a VGG-style net at T=6, every dropout layer's output is its input times one mask per
    sample that does not change with t; masks differ between samples; the draw is seeded."""
    rule = host.rule("spike_bp_dropout")
    hp = check_options(rule, {"dropout": 0.2, "input_gain": 1.0})
    arch = sbp.ArchSpec("t", "8C3p1-P2-16")
    model = rule.build(arch, (1, 8, 8), 10, "torch", hp)
    model.train()
    seen = _record_dropout(model)
    x = torch.rand(5, 1, 8, 8)
    rule.forward(model, x, 6, _ctx(rule, hp, arch, (1, 8, 8), 6))
    assert len(seen) == 2
    for inp, out in seen:
        total_in, total_out = inp.sum(0), out.sum(0)
        active = total_in > 0
        mask = torch.where(active, total_out / total_in.clamp(min=1e-9), torch.zeros_like(total_in))
        assert torch.allclose(out, inp * mask.unsqueeze(0))           # one mask for all t
        assert all(v == 0.0 or v == pytest.approx(1.25) for v in mask[active].unique().tolist())
        assert bool((mask[active] == 0).any()) and bool((mask[active] > 0).any())
        flat = mask.flatten(1)
        assert not torch.equal(flat[0], flat[1])
    # same generator seed -> same masks (the cell's generator is the only source)
    seen.clear()
    rule.forward(model, x, 6, _ctx(rule, hp, arch, (1, 8, 8), 6))
    first = [o for _, o in seen]
    seen.clear()
    rule.forward(model, x, 6, _ctx(rule, hp, arch, (1, 8, 8), 6))
    assert all(torch.equal(a, o) for a, (_, o) in zip(first, seen))


def test_no_dropout_at_evaluation(host):
    rule = host.rule("spike_bp_dropout")
    hp = check_options(rule, {"dropout": 0.5})
    arch = host.arch("mlp128")
    model = rule.build(arch, (1, 8, 8), 10, "torch", hp)
    model.eval()
    seen = _record_dropout(model)
    rule.evaluate(model, torch.rand(4, 1, 8, 8), (2, 5), _ctx(rule, hp, arch, (1, 8, 8), 5))
    assert seen and all(torch.equal(i, o) for i, o in seen)


# ------------------------------------------------------------------------------- the derivative
LEAK, THETA = 0.9, 0.8


def test_leak_corrected_derivative_matches_hand_computation_on_two_neurons():
    """Two LIF neurons, T=4, leak 0.9, theta 0.8, loss L = sum_t c[t] o[t].

    A: I = [0.5, 0.5, 0.9, 0.2]: u 0.5 | 0.45+0.5 = 0.95 fires | 0.9 fires | 0.2  -> o = [0,1,1,0]
    B: I = [1.0, 0.2, 0.2, 0.5]: fires | 0.2 | 0.18+0.2 = 0.38 | 0.342+0.5 = 0.842 fires -> o = [1,0,0,1]
    LF_A = 0.9^2 + 0.9 = 1.71, N_A = 2;  LF_B = 0.9^3 + 1 = 1.729, N_B = 2
    F = 1 + ln(0.9) LF / N.  dL/dI[t] = c[t'] F / theta for the first spike t' >= t, if the
    neuron does not fire in between (the reset cuts the path; the leak counts as 1), else 0.
    """
    I = torch.tensor([[0.5, 1.0], [0.5, 0.2], [0.9, 0.2], [0.2, 0.5]], dtype=torch.float64, requires_grad=True)
    neuron = sbp.SpikeBPLIF(v_threshold=THETA, leak=LEAK, leak_correction=True)
    o = neuron(I)
    assert o.tolist() == [[0, 1], [1, 0], [1, 0], [0, 1]]
    c = torch.tensor([[1.0, 5.0], [2.0, 6.0], [3.0, 7.0], [4.0, 8.0]], dtype=torch.float64)
    (o * c).sum().backward()
    F_A = 1 + math.log(0.9) * (0.81 + 0.9) / 2
    F_B = 1 + math.log(0.9) * (0.729 + 1.0) / 2
    want_A = [2 * F_A / THETA, 2 * F_A / THETA, 3 * F_A / THETA, 0.0]
    want_B = [5 * F_B / THETA, 8 * F_B / THETA, 8 * F_B / THETA, 8 * F_B / THETA]
    assert I.grad[:, 0].tolist() == pytest.approx(want_A, rel=1e-12)
    assert I.grad[:, 1].tolist() == pytest.approx(want_B, rel=1e-12)
    assert sbp.leak_correction(o.detach(), LEAK).tolist() == pytest.approx([F_A, F_B], rel=1e-12)

    # without the correction the factor is exactly 1
    I.grad = None
    (sbp.SpikeBPLIF(THETA, LEAK, leak_correction=False)(I) * c).sum().backward()
    assert I.grad[:, 0].tolist() == pytest.approx([2 / THETA, 2 / THETA, 3 / THETA, 0.0], rel=1e-12)


def test_zero_gradient_on_non_spiking_steps():
    """An error on steps where the neuron did not fire reaches nothing: d o/d u = 0 there."""
    I = torch.tensor([[0.5, 1.0], [0.5, 0.2], [0.9, 0.2], [0.2, 0.5]], dtype=torch.float64, requires_grad=True)
    o = sbp.SpikeBPLIF(THETA, LEAK)(I)
    silent = 1.0 - o.detach()                               # A: t=0,3; B: t=1,2
    (o * silent * torch.randn(4, 2, dtype=torch.float64)).sum().backward()
    assert torch.count_nonzero(I.grad) == 0
    # a neuron that never fires gets no gradient at all
    J = torch.full((5, 3), 0.1, requires_grad=True)
    sbp.SpikeBPLIF()(J).sum().backward()
    assert torch.count_nonzero(J.grad) == 0


def test_pool_neuron_is_non_leaky_if_with_unit_derivative():
    I = torch.tensor([[0.5], [0.5], [0.25], [0.8]], dtype=torch.float64, requires_grad=True)
    o = sbp.AvgPoolIF(1, 0.75)(I)
    assert o[:, 0].tolist() == [0, 1, 0, 1]            # 0.5 | 1.0 fires | 0.25 | 1.05 fires: no leak
    (o * torch.tensor([[1.0], [2.0], [3.0], [4.0]], dtype=torch.float64)).sum().backward()
    assert I.grad[:, 0].tolist() == [2.0, 2.0, 4.0, 4.0]


def test_fused_avgpool_if_matches_avgpool_then_if():
    """Numba pool+IF equals avg_pool2d followed by the IF loop (7x7 input: the last row and
    column belong to no window and get no gradient)."""
    torch.manual_seed(3)
    x = (torch.rand(6, 2, 3, 7, 7) < 0.4).float() * 1.25
    g = torch.randn(6, 2, 3, 3, 3)
    res = []
    for fused in (False, True):
        xi = x.clone().requires_grad_()
        o = sbp.AvgPoolIF(2, 0.75, fused=fused)(xi)
        (o * g).sum().backward()
        res.append((o, xi.grad))
    assert torch.equal(res[0][0], res[1][0]) and float(res[0][0].detach().mean()) > 0.1
    assert torch.allclose(res[0][1], res[1][1], atol=1e-7)
    assert torch.count_nonzero(res[1][1][..., 6, :]) == 0


class _CodeSpike(torch.autograd.Function):
    """The code's ``SpikingNN``: 1[input > 0], gradient passed where input > 0."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.gt(0).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        x, = ctx.saved_tensors
        return g * x.gt(0).to(g.dtype)


def _code_layer(currents, theta, leak):
    """The official code's step-major LIF (LIF_sNeuron + LF_Unit + grad_cal hooks), in modern torch."""
    mem = torch.zeros_like(currents[0])
    lf = torch.zeros_like(currents[0])
    total = torch.zeros_like(currents[0])
    outs = []
    for t in range(currents.shape[0]):
        mem = mem + currents[t]
        ex = torch.nn.functional.threshold(mem, theta, 0.0)
        mem = mem - ex
        out = _CodeSpike.apply(ex)
        mem = leak * mem.detach() + mem - mem.detach()
        out = out.detach() + out / theta - (out / theta).detach()
        lf, total = leak * lf + out.detach(), total + out.detach()
        outs.append(out)
    total = total + (total < 1e-3).to(total.dtype)
    ng = lf.gt(1e-3).to(lf.dtype) + math.log(leak) * lf / total
    for out in outs:
        out.register_hook(lambda g: g * ng)
    return torch.stack(outs)


@pytest.mark.parametrize("fused", [False, True])
def test_layer_matches_the_official_codes_formulation(fused):
    torch.manual_seed(1)
    cur = (torch.rand(12, 3, 40, dtype=torch.float64) * 0.9).requires_grad_()
    g = torch.randn(12, 3, 40, dtype=torch.float64)
    ref = _code_layer(cur, 1.0, 0.99)
    (ref * g).sum().backward()
    want = cur.grad.clone()
    cur.grad = None
    o = sbp.SpikeBPLIF(1.0, 0.99, True, fused=fused)(cur)
    (o * g).sum().backward()
    assert torch.equal(o, ref.detach())
    assert 0.05 < float(o.detach().mean()) < 0.6
    assert torch.allclose(cur.grad, want, rtol=1e-10, atol=1e-12)


def test_numba_loops_match_torch_loops_float32():
    torch.manual_seed(2)
    cur = torch.rand(9, 4, 7, 5) * 0.8
    g = torch.randn(9, 4, 7, 5)
    outs = []
    for fused in (False, True):
        x = cur.clone().requires_grad_()
        o = sbp.SpikeBPLIF(1.0, 0.99, True, fused=fused)(x)
        (o * g).sum().backward()
        outs.append((o, x.grad))
    assert torch.equal(outs[0][0], outs[1][0])
    assert torch.allclose(outs[0][1], outs[1][1], rtol=1e-5, atol=1e-6)


def test_output_layer_is_a_leaky_integrator_with_identity_backward():
    T = 5
    cur = torch.rand(T, 2, 3, dtype=torch.float64, requires_grad=True)
    out = sbp.LeakyIntegratorReadout(leak=0.99, v_threshold=1.0)(cur)
    v = torch.zeros(2, 3, dtype=torch.float64)
    for t in range(T):
        v = 0.99 * (v + cur[t].detach())
        assert torch.allclose(out[t], v / (t + 1))          # logits a run of length t+1 would give
    out[-1].sum().backward()
    assert torch.allclose(cur.grad, torch.full_like(cur, 1.0 / T))


def test_signed_bernoulli_input():
    x = torch.tensor([[[[0.9, 0.1]]]]).expand(1, 1, 1, 2)
    g = torch.Generator().manual_seed(0)
    s = sbp.signed_bernoulli(x, 4000, gain=1.0, mean=(0.5,), std=(0.5,), generator=g)   # -> [0.8, -0.8]
    assert set(s.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert float(s[..., 0].mean()) == pytest.approx(0.8, abs=0.03)
    assert float(s[..., 1].mean()) == pytest.approx(-0.8, abs=0.03)
    half = sbp.signed_bernoulli(torch.full((1, 1, 2, 2), 0.6), 4000, gain=0.5, generator=g)  # MNIST: |x|/2
    assert float(half.mean()) == pytest.approx(0.3, abs=0.02)


# ------------------------------------------------------------------------------- presets, archs
def test_registered_with_citation_archs_and_presets(host):
    rule = host.rule("spike_bp_dropout")
    assert "Enabling Spike-Based Backpropagation" in rule.paper and "2020" in rule.paper
    for name in ("spikebp_lenet", "spikebp_vgg9", "spikebp_resnet11"):
        assert host.arch(name)
    for name in ("mnist", "mnist-cpu", "cifar10-vgg9", "cifar10-resnet11", "digits"):
        assert host.preset(f"spike_bp_dropout/{name}")["rule"] == "spike_bp_dropout"
    exact = host.preset("spike_bp_dropout/mnist")
    assert (exact["epochs"], exact["batch_size"], exact["options"]["T"], exact["arch"]) == (125, 64, 100, "spikebp_lenet")
    hp = check_options(rule, exact["options"])
    assert (hp["lr"], hp["weight_decay"], hp["optimizer"], hp["leak"], hp["lr_milestones"]) == \
        (0.0085, 5e-4, "sgd", 0.99, (75,))


@pytest.mark.parametrize("preset,p,n_weights", [("cifar10-vgg9", 0.2, 9), ("cifar10-resnet11", 0.25, 14)])
def test_cifar_presets_build_and_run_a_training_step(host, preset, p, n_weights):
    """Paper architectures with the presets' hyper-parameters; T shortened to 2 so a CPU step is quick."""
    pre = host.preset(f"spike_bp_dropout/{preset}")
    rule, arch = host.rule("spike_bp_dropout"), host.arch(pre["arch"])
    hp = check_options(rule, {**pre["options"], "T": 2})
    assert hp["dropout"] == p and hp["augment"] and pre["batch_size"] == 16
    model = rule.build(arch, (3, 32, 32), 10, "fused", hp)
    weights = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(weights) == n_weights and all(m.bias is None for m in weights)
    assert sum(isinstance(m, sbp.TimeFixedDropout) for m in model.modules()) >= 8
    ctx = _ctx(rule, hp, arch, (3, 32, 32), 2)
    opt, sched, _ = rule.configure_optimizer(model, ctx)
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["lr"] == hp["lr"]
    before = [w.weight.detach().clone() for w in weights]
    out = rule.train_step(model, (torch.rand(2, 3, 32, 32), torch.tensor([1, 7])), opt, ctx)
    assert math.isfinite(out["loss"])
    changed = [not torch.equal(b, w.weight) for b, w in zip(before, weights)]
    assert changed[-1] and sum(changed) >= 2
    model.eval()
    logits = rule.evaluate(model, torch.rand(2, 3, 32, 32), (1, 2), ctx)
    assert logits.shape == (2, 2, 10)


def test_trains_on_digits_at_the_presets_T(host):
    pre = host.preset("spike_bp_dropout/digits")
    cell = Cell(rule="spike_bp_dropout", dataset="digits", arch=pre["arch"], seed=0,
                timesteps=tuple(pre["timesteps"]), epochs=pre["epochs"], batch_size=pre["batch_size"],
                options=tuple(sorted(pre["options"].items())), backend="fused")
    rows = run_cell(cell, host=host)
    assert all(r["status"] == "ok" for r in rows), rows[0].get("error")
    by_T = {r["T"]: r["accuracy"] for r in rows}
    assert by_T[pre["options"]["T"]] >= 0.85
    assert rows[-1]["synops"] > 0 and rows[-1]["macs"] == 0        # spike-driven synapses only
