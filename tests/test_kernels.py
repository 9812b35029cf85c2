"""Backends of the multi-step neuron (suite.kernels) against the torch reference.

Values and gradients of ``fused`` (both engines) and ``triton`` (under ``TRITON_INTERPRET=1`` on
the CPU) are compared with ``backend="torch"`` over IF / LIF (decay_input True and False) x reset
to zero / to -0.2 / by subtraction x detach_reset x every surrogate x T x odd shapes, in float32
and bfloat16. Inputs are continuous random draws, so no membrane lands within rounding of the
threshold and spikes must match exactly in float32.
"""
from __future__ import annotations

import itertools
import warnings

import pytest
import torch

from suite.kernels import fused, get_backend, resolve_backend
from suite.kernels import torch as ref
from suite.neurons import LIF, psp
from suite.surrogates import SURROGATES, Surrogate, create_surrogate

NEURONS = {"IF": dict(tau=None), "LIF": dict(tau=2.0, decay_input=True),
           "LIF-nodecay": dict(tau=5.0, decay_input=False)}
RESETS = (0.0, -0.2, None)
SHAPES = {1: (3, 5), 4: (7,), 9: (2, 3, 5)}     # T -> odd per-step shape


def _inputs(T, shape, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((T, *shape), generator=g) * 1.3 + 0.5
    w = torch.randn((T, *shape), generator=g)
    return x.to(dtype).requires_grad_(), w.to(dtype)


def _run(multi_step, x, w, **kw):
    s = multi_step(x, **kw)
    (g,) = torch.autograd.grad((s * w).sum(), x)
    return s, g


def _compare(multi_step, kwargs, *, seed=0, dtype=torch.float32, atol=1e-5, rtol=1e-4, shapes=SHAPES):
    for T, shape in shapes.items():
        x, w = _inputs(T, shape, seed + T, dtype)
        s0, g0 = _run(ref.multi_step, x.detach().float().requires_grad_(), w.float(), **kwargs)
        s1, g1 = _run(multi_step, x, w, **kwargs)
        assert s1.dtype == dtype and g1.dtype == dtype and s1.shape == x.shape
        assert torch.equal(s1.float(), s0), f"spikes differ at T={T}"
        torch.testing.assert_close(g1.float(), g0, atol=atol, rtol=rtol)


def _kwargs(neuron, v_reset, detach, surrogate):
    return dict(NEURONS[neuron], v_threshold=1.0, v_reset=v_reset, surrogate=create_surrogate(surrogate),
                detach_reset=detach)


# ------------------------------------------------------------------------------------ fused
@pytest.mark.parametrize("engine", ["numba", "torch"])
@pytest.mark.parametrize("surrogate", sorted(SURROGATES))
@pytest.mark.parametrize("neuron", sorted(NEURONS))
def test_fused_matches_reference(engine, surrogate, neuron):
    if engine == "numba" and not fused.numba_available():
        pytest.skip("Numba is not installed")
    for v_reset, detach in itertools.product(RESETS, (False, True)):
        _compare(lambda x, **kw: fused.multi_step(x, engine=engine, **kw),
                 _kwargs(neuron, v_reset, detach, surrogate))


@pytest.mark.parametrize("engine", ["numba", "torch"])
def test_fused_bfloat16(engine):
    """bf16 in, bf16 out; the numba engine computes in float32, so spikes match the float32
    reference on the same (bf16) values and gradients agree to bf16 precision."""
    if engine == "numba" and not fused.numba_available():
        pytest.skip("Numba is not installed")
    kw = _kwargs("LIF", 0.0, False, "sigmoid")
    if engine == "numba":
        _compare(lambda x, **k: fused.multi_step(x, engine=engine, **k), kw, dtype=torch.bfloat16,
                 atol=2e-2, rtol=2e-2)
    else:  # state rounded to bf16 every step: compare rates and gradients loosely
        x, w = _inputs(8, (16, 16), 3, torch.bfloat16)
        s0, g0 = _run(ref.multi_step, x, w, **kw)
        s1, g1 = _run(lambda x, **k: fused.multi_step(x, engine=engine, **k), x, w, **kw)
        assert s1.dtype == torch.bfloat16 and (s1 != s0).float().mean() < 0.02
        assert torch.nn.functional.cosine_similarity(g1.float().flatten(), g0.float().flatten(), dim=0) > 0.98


class _Quadratic(Surrogate):
    """A user-defined surrogate the kernels have no inline formula for (kernel code 0)."""

    name = "quadratic_test"

    def grad(self, x):
        return (1.0 - x * x).clamp(min=0.0)


@pytest.mark.parametrize("engine", ["numba", "torch"])
def test_fused_custom_surrogate_uses_its_grad(engine):
    if engine == "numba" and not fused.numba_available():
        pytest.skip("Numba is not installed")
    kw = dict(tau=2.0, v_threshold=1.0, v_reset=0.0, surrogate=_Quadratic(), decay_input=True, detach_reset=False)
    _compare(lambda x, **k: fused.multi_step(x, engine=engine, **k), kw)


def test_fused_is_one_node_saving_one_tensor():
    x, _ = _inputs(6, (4, 3), 1)
    s = fused.multi_step(x, tau=2.0, v_threshold=1.0, v_reset=0.0, surrogate=create_surrogate("atan"))
    saved = s.grad_fn.saved_tensors
    assert len(saved) == 1 and saved[0].numel() == x.numel()
    assert s.grad_fn.next_functions[0][0].variable is x  # straight to the leaf: no per-step nodes


def test_fused_numba_splits_across_threads(monkeypatch):
    if not fused.numba_available():
        pytest.skip("Numba is not installed")
    monkeypatch.setattr(fused, "PARALLEL_MIN", 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # 3 uneven shares of 3 blocks (BLOCK = 2048) with a partial last one
    try:
        _compare(fused.multi_step, _kwargs("LIF", 0.0, False, "sigmoid"), shapes={3: (5000,)})
    finally:
        torch.set_num_threads(threads)


def test_fused_engine_falls_back_without_numba(monkeypatch):
    monkeypatch.setattr(fused, "_numba_loops", lambda: None)
    assert fused.engine_for(torch.zeros(1)) == "torch"
    with pytest.raises(RuntimeError, match="Numba"):
        fused.engine_for(torch.zeros(1), "numba")


def test_fused_backend_trains_like_reference():
    """A two-layer LIF net: same loss and parameter gradients with backend fused and torch."""
    torch.manual_seed(0)
    x = torch.rand(6, 5, 12)
    grads = {}
    for backend in ("torch", "fused"):
        torch.manual_seed(1)
        net = torch.nn.Sequential(torch.nn.Linear(12, 9), LIF(tau=2.0, v_reset=None, backend=backend),
                                  torch.nn.Linear(9, 3))
        net(x * 3).mean(0).sum().backward()
        grads[backend] = [p.grad for p in net.parameters()]
    for a, b in zip(grads["torch"], grads["fused"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_psp_filter_matches_matmul_reference():
    x, w = _inputs(7, (3, 5), 2)
    a0 = psp(x, 3.0)
    a1 = fused.psp_filter(x, 3.0)
    torch.testing.assert_close(a1, a0, atol=1e-6, rtol=1e-5)
    (g0,) = torch.autograd.grad((a0 * w).sum(), x)
    (g1,) = torch.autograd.grad((a1 * w).sum(), x)
    torch.testing.assert_close(g1, g0, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------ selection
def test_registry_and_auto_on_cpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert get_backend("fused") is fused
    assert resolve_backend("auto", ("torch", "fused", "auto"), "cpu") == "fused"
    assert resolve_backend("auto", ("torch",), "cpu") == "torch"
    assert resolve_backend("torch", ("torch", "fused"), "cpu") == "torch"
    auto = get_backend("auto")
    x, _ = _inputs(3, (4,), 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # CPU tensors go to fused without a warning
        s = auto.multi_step(x, tau=2.0, v_threshold=1.0, v_reset=0.0, surrogate=create_surrogate("atan"))
    assert s.grad_fn.name() == "FusedNeuronBackward"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_triton_says_why_it_cannot_run(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="cannot run here: .*(CUDA|Triton)"):
        get_backend("triton")
    with pytest.warns(RuntimeWarning, match="triton cannot run here"):
        assert resolve_backend("auto", ("torch", "fused", "triton"), "cuda") == "fused"


# ------------------------------------------------------------------------------------ triton
triton_mod = pytest.importorskip("suite.kernels.triton")
needs_triton = pytest.mark.skipif(triton_mod.triton is None, reason="Triton is not installed")
TRITON_SHAPES = {1: (3, 5), 5: (7,)}


@pytest.fixture
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.mark.triton
@needs_triton
@pytest.mark.parametrize("surrogate", sorted(SURROGATES))
@pytest.mark.parametrize("neuron", sorted(NEURONS))
def test_triton_matches_reference(interpret, surrogate, neuron):
    # every reset x detach for every neuron and surrogate, T in {1, 5}: tiny, the interpreter is slow
    for v_reset, detach in itertools.product(RESETS, (False, True)):
        _compare(triton_mod.multi_step, _kwargs(neuron, v_reset, detach, surrogate), shapes=TRITON_SHAPES)


@pytest.mark.triton
@needs_triton
def test_triton_multiple_programs_and_custom_surrogate(interpret, monkeypatch):
    monkeypatch.setattr(triton_mod, "BLOCK", 64)  # 3 programs, the last one masked
    _compare(triton_mod.multi_step, _kwargs("LIF", 0.0, False, "fast_sigmoid"), shapes={3: (150,)})
    kw = dict(tau=2.0, v_threshold=1.0, v_reset=None, surrogate=_Quadratic(), decay_input=True, detach_reset=False)
    _compare(triton_mod.multi_step, kw, shapes={4: (3, 7)})


@pytest.mark.triton
@needs_triton
def test_triton_bfloat16(interpret):
    _compare(triton_mod.multi_step, _kwargs("LIF", 0.0, False, "sigmoid"), dtype=torch.bfloat16,
             atol=2e-2, rtol=2e-2, shapes={6: (5, 7)})


@pytest.mark.triton
@needs_triton
def test_triton_psp_filter(interpret):
    x, w = _inputs(6, (3, 5), 4)
    a0, a1 = psp(x, 3.0), triton_mod.psp_filter(x, 3.0)
    torch.testing.assert_close(a1, a0, atol=1e-6, rtol=1e-5)
    (g0,) = torch.autograd.grad((a0 * w).sum(), x)
    (g1,) = torch.autograd.grad((a1 * w).sum(), x)
    torch.testing.assert_close(g1, g0, atol=1e-6, rtol=1e-5)


@pytest.mark.triton
@needs_triton
def test_triton_in_lif_module(interpret):
    x, w = _inputs(4, (2, 6), 5)
    lif_t = LIF(tau=2.0, surrogate="atan", backend="triton")
    lif_r = LIF(tau=2.0, surrogate="atan", backend="torch")
    assert torch.equal(lif_t(x), lif_r(x))
