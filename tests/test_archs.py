"""Shared architectures: the static-input path of TimeDistributed (one step broadcast over T runs
once) gives the values and gradients of the per-step path, and stays off under the op counter."""
import copy

import pytest
import torch
from torch import nn

from suite.archs import ArchSpec, TimeDistributed, build_network
from suite.encoders import create_encoder
from suite.neurons import LIF
from suite.opcount import OpCounter


class ShapeLinear(nn.Linear):
    """A Linear that remembers the row count of every input it saw."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.rows = []

    def forward(self, x):
        self.rows.append(x.shape[0])
        return super().forward(x)


@pytest.mark.parametrize("spec,shape", [("32", (1, 8, 8)), ("4C3p1-P2-16", (2, 8, 8))])
@pytest.mark.parametrize("bn", [True, False])
@pytest.mark.parametrize("train", [True, False])
def test_static_input_matches_the_per_step_path(spec, shape, bn, train):
    torch.manual_seed(0)
    arch = ArchSpec("t", spec)
    net = build_network(arch, shape, 10, norm=bn, time_major=True,
                        activation=lambda layer, s: LIF(tau=10.0, v_reset=0.0, decay_input=False, backend="torch"))
    net.train(train)
    x = create_encoder("direct")(torch.rand(6, *shape) * 3, 5)
    assert x.stride(0) == 0
    outs = []
    state = copy.deepcopy(net.state_dict())
    for inp in (x, x.contiguous()):
        net.load_state_dict(state)
        net.zero_grad()
        out = net(inp)
        out.square().mean().backward()
        outs.append((out.detach(), [p.grad.clone() for p in net.parameters()],
                     [b.clone() for b in net.buffers()]))
    (o1, g1, b1), (o2, g2, b2) = outs
    assert torch.allclose(o1, o2, atol=1e-5)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    for a, b in zip(b1, b2):                       # BN running statistics: over batch x time either way
        assert torch.allclose(a.float(), b.float(), atol=1e-6)


def test_static_path_runs_one_step_and_is_counted_as_every_step():
    lin = ShapeLinear(6, 4)
    net = nn.Sequential(TimeDistributed(lin), LIF(backend="torch"), TimeDistributed(nn.Linear(4, 2))).eval()
    x = torch.rand(3, 6).unsqueeze(0).expand(5, 3, 6)
    counts = []
    for inp in (x, x.contiguous()):
        counter = OpCounter(net, 5, 3)
        with counter, torch.no_grad():
            net(inp)
        counts.append(counter.at(5))
    assert lin.rows == [3, 15]                      # the broadcast input ran once, a materialised one every step
    assert counts[0] == counts[1]                   # and the op counter charged the same: T steps of MACs
    assert counts[0]["macs"] == pytest.approx(5 * 6 * 4)
    handle = lin.register_forward_hook(lambda *a: None)   # a hook that does not know the shortcut
    net(x)
    assert lin.rows[-1] == 15
    handle.remove()


@pytest.mark.parametrize("spec,shape", [("32", (1, 8, 8)), ("4C3p1-P2-8C3-16", (2, 8, 8))])
def test_op_counts_of_a_static_input_equal_the_per_step_counts(spec, shape):
    torch.manual_seed(0)
    net = build_network(ArchSpec("t", spec), shape, 10, norm=True, time_major=True,
                        activation=lambda layer, s: LIF(tau=2.0, v_reset=0.0, backend="torch")).eval()
    x = create_encoder("direct")(torch.rand(4, *shape) * 3, 6)
    counts = []
    for inp in (x, x.contiguous()):
        counter = OpCounter(net, 6, 4)
        counter.input_events = False
        with counter, torch.no_grad():
            net(inp)
        counts.append({T: counter.at(T) for T in (1, 3, 6)})
    for T in (1, 3, 6):
        _assert_same(counts[0][T], counts[1][T], f"T={T}")


def _assert_same(a, b, where):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-6), where
    else:
        assert a == b, where


def test_dropout_never_takes_the_static_path():
    td = TimeDistributed(nn.Dropout(0.5)).train()
    y = td(torch.rand(3, 4).unsqueeze(0).expand(5, 3, 4))
    assert y.stride(0) != 0                         # a fresh mask per row of T x B
    assert not torch.equal(y[0], y[1])


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("bn", [nn.BatchNorm1d, nn.BatchNorm2d])
def test_batch_norm_of_a_static_input_equals_batch_norm_over_its_copies(bn, momentum):
    shape = (3, 4) if bn is nn.BatchNorm1d else (3, 4, 2, 2)
    one, ref = bn(4, momentum=momentum).train(), bn(4, momentum=momentum).train()
    for _ in range(3):
        x = torch.rand(*shape) * 2 + 1
        y = TimeDistributed(one)(x.unsqueeze(0).expand(5, *shape))
        want = TimeDistributed(ref)(x.unsqueeze(0).expand(5, *shape).contiguous())
        assert y.stride(0) == 0
        assert torch.allclose(y, want, atol=1e-5)
    for a, b in zip(one.buffers(), ref.buffers()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)
