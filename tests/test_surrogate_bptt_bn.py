"""The paper's point: the surrogate's width decides whether BPTT gradients explode or vanish."""
import torch

from suite.archs import ArchSpec
from suite.rule import Context, check_options


def _layer_grad_norms(host, alpha):
    rule = host.rule("surrogate_bptt_bn")
    arch = ArchSpec("deep_test", "128-128-128-128-128-128")
    train = host.dataset("digits").load("train")
    x, y = train.x[:128], train.y[:128]
    torch.manual_seed(0)
    hp = check_options(rule, {"alpha": alpha})
    model = rule.build(arch, (1, 8, 8), 10, "torch", hp)
    ctx = Context(hp=hp, T=10, timesteps=(10,), arch=arch, dataset="digits", input_shape=(1, 8, 8), n_classes=10)
    rule.loss(rule.forward(model, x, 10, ctx), y, ctx).backward()
    return [m.weight.grad.norm().item() for m in model.modules() if isinstance(m, torch.nn.Linear)]


def test_wide_surrogate_explodes_narrow_vanishes(host):
    wide, tuned, narrow = (_layer_grad_norms(host, a) for a in (0.05, 1.0, 50.0))
    # first-layer / last-layer gradient norm through 6 spiking layers and 10 steps
    assert wide[0] / wide[-1] > 1e6
    assert narrow[0] / narrow[-1] < 1e-3
    assert 1e-1 < tuned[0] / tuned[-1] < 1e2
    # monotone in depth for the extremes
    assert all(a > b for a, b in zip(wide, wide[1:]))
    assert all(a < b for a, b in zip(narrow, narrow[1:]))


def test_bn_statistics_are_shared_over_time(host):
    """One BN per hidden layer normalises the currents of all T steps with one mean and
    variance over batch x time: steps whose currents differ stay apart after it (per-step
    statistics would centre every step), and the running mean is the batch x time mean."""
    rule = host.rule("surrogate_bptt_bn")
    model = rule.build(host.arch("mlp128"), (1, 8, 8), 10, "torch", check_options(rule, {})).train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(bns) == 1
    seen = {}
    hooks = [bns[0].register_forward_hook(lambda m, i, o: seen.update(current=i[0].detach(), normed=o.detach()))]
    T, B = 4, 32
    x = torch.rand(B, 1, 8, 8)
    steps = torch.stack([x * (1.0 + 3.0 * t) for t in range(T)])   # currents grow with t
    with torch.no_grad():
        model(steps)
    hooks[0].remove()
    current, normed = seen["current"].reshape(T, B, -1), seen["normed"].reshape(T, B, -1)
    gamma, beta = bns[0].weight.detach(), bns[0].bias.detach()
    mean = current.mean((0, 1))
    var = current.var((0, 1), unbiased=False)
    expected = (current - mean) / torch.sqrt(var + bns[0].eps) * gamma + beta
    torch.testing.assert_close(normed, expected, rtol=1e-4, atol=1e-4)
    # per-step statistics would centre each step: every channel's mean over the batch would be ~0
    assert normed.mean(1).abs().mean() > 0.1
    torch.testing.assert_close(bns[0].running_mean, bns[0].momentum * mean, rtol=1e-4, atol=1e-6)
