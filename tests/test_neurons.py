import pytest
import torch

from suite.neurons import IF, LIF, if_step, lif_step
from suite.surrogates import SURROGATES, create_surrogate

SG = create_surrogate("fast_sigmoid")


def test_lif_step_hand_values_reset_to_zero():
    # tau=2, decay_input: h = v + (x - v)/2 ; threshold 1
    v = torch.tensor([0.0])
    s, v = lif_step(v, torch.tensor([1.5]), tau=2.0, surrogate=SG)   # h = 0.75
    assert (s.item(), v.item()) == (0.0, 0.75)
    s, v = lif_step(v, torch.tensor([1.5]), tau=2.0, surrogate=SG)   # h = 0.75 + 0.375 = 1.125 -> spike, v=0
    assert (s.item(), v.item()) == (1.0, 0.0)


def test_lif_step_hand_values_subtract_and_no_decay_input():
    # decay_input=False: h = v - v/tau + x  (beta = 0.5)
    v = torch.tensor([0.8])
    s, v = lif_step(v, torch.tensor([0.9]), tau=2.0, v_reset=None, decay_input=False, surrogate=SG)
    # h = 0.8 - 0.4 + 0.9 = 1.3 -> spike, v = 0.3
    assert s.item() == 1.0 and v.item() == pytest.approx(0.3)


def test_if_step_hand_values():
    v = torch.zeros(2)
    out = []
    for _ in range(4):
        s, v = if_step(v, torch.tensor([0.4, 0.6]), v_threshold=1.0, v_reset=None, surrogate=SG)
        out.append(s.tolist())
    # cumulative 0.4: .4 .8 1.2(spike,->.2) .6 ; 0.6: .6 1.2(spike,->.2) .8 1.4(spike)
    assert out == [[0, 0], [0, 1], [1, 0], [0, 1]]
    assert v.tolist() == pytest.approx([0.6, 0.4])


def test_modules_map_T_B_shapes_and_start_from_rest():
    x = torch.rand(5, 3, 4) * 2
    lif = LIF(tau=2.0)
    s1, s2 = lif(x), lif(x)
    assert s1.shape == x.shape and torch.equal(s1, s2)   # no hidden state between calls
    assert IF(v_reset=None)(x).shape == x.shape


def test_lif_surrogate_gradient_flows():
    x = (torch.rand(6, 2, 3) * 2).requires_grad_()
    LIF(tau=2.0, surrogate="atan")(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(SURROGATES))
def test_surrogate_grad_is_derivative_of_primitive(name):
    sg = create_surrogate(name)
    x = torch.linspace(-2, 2, 81, dtype=torch.float64)
    x = x[(x.abs() - 0.5 / sg.alpha).abs() > 1e-3]   # avoid kinks of piecewise shapes
    eps = 1e-6
    fd = (sg.primitive(x + eps) - sg.primitive(x - eps)) / (2 * eps)
    assert torch.allclose(sg.grad(x), fd, atol=1e-5)


def test_invalid_tau():
    with pytest.raises(ValueError, match="tau must be >= 1"):
        LIF(tau=0.5)


def test_neurons_default_to_the_fastest_backend_for_the_input_device(monkeypatch):
    """LIF()/IF() without backend= take "auto": on a CPU tensor that is the fused backend, with the
    reference's values and gradients."""
    from suite.kernels import auto, fused

    calls = []
    real = fused.multi_step
    monkeypatch.setattr(fused, "multi_step", lambda x, **kw: calls.append(x.device.type) or real(x, **kw))
    for default, reference in ((LIF(tau=10.0), LIF(tau=10.0, backend="torch")), (IF(), IF(backend="torch"))):
        assert default.backend == "auto"
        x = (torch.rand(6, 3, 5) * 2).requires_grad_()
        y = default(x)
        assert calls[-1] == "cpu" and auto.backend_for(x) is fused
        (g,) = torch.autograd.grad(y.sum(), x)
        x2 = x.detach().clone().requires_grad_()
        y2 = reference(x2)
        (g2,) = torch.autograd.grad(y2.sum(), x2)
        assert torch.equal(y, y2)
        assert torch.allclose(g, g2, atol=1e-6)
