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
    rule = host.rule("surrogate_bptt_bn")
    model = rule.build(host.arch("mlp128"), (1, 8, 8), 10, "torch", check_options(rule, {}))
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(bns) == 1  # one BN per hidden layer, applied to [T*B, C]: batch x time statistics
