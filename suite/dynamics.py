"""Neuron dynamics as step functions (charge -> fire -> reset) and the PSP filter.

The bottom of the neuron stack: :mod:`suite.kernels` backends loop over these, and
:mod:`suite.neurons` builds its modules on those backends (see its docstring for the equations).
"""
from __future__ import annotations

import torch

from suite.surrogates import Surrogate


def if_charge(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v + x


def lif_charge(v: torch.Tensor, x: torch.Tensor, tau: float, decay_input: bool = True,
               v_rest: float = 0.0) -> torch.Tensor:
    if decay_input:
        return v + (x - (v - v_rest)) / tau
    return v - (v - v_rest) / tau + x


def fire(h: torch.Tensor, v_threshold: float, surrogate: Surrogate) -> torch.Tensor:
    return surrogate(h - v_threshold)


def reset(h: torch.Tensor, s: torch.Tensor, v_threshold: float, v_reset: float | None,
          detach_reset: bool = False) -> torch.Tensor:
    if detach_reset:
        s = s.detach()
    if v_reset is None:
        return h - s * v_threshold
    return h * (1.0 - s) + v_reset * s


def if_step(v, x, *, v_threshold=1.0, v_reset=0.0, surrogate, detach_reset=False):
    h = if_charge(v, x)
    s = fire(h, v_threshold, surrogate)
    return s, reset(h, s, v_threshold, v_reset, detach_reset)


def lif_step(v, x, *, tau=2.0, v_threshold=1.0, v_reset=0.0, surrogate, decay_input=True,
             detach_reset=False):
    h = lif_charge(v, x, tau, decay_input, 0.0 if v_reset is None else v_reset)
    s = fire(h, v_threshold, surrogate)
    return s, reset(h, s, v_threshold, v_reset, detach_reset)


def srm_step(u, i, *, tau_m=5.0, v_threshold=1.0):
    """Current-driven LIF / SRM step as in TSSL-BP: ``h = (1 - 1/tau_m) u + i``, ``s = 1[h > theta]``
    (strict, no surrogate: the rule supplies the gradient), hard reset ``u = h (1 - s)``.
    Returns ``(s, h, u)``: the pre-reset membrane ``h`` is what spike-timing gradients need."""
    h = torch.add(i, u, alpha=1.0 - 1.0 / tau_m)
    fired = h > v_threshold
    return fired.to(h.dtype), h, h.masked_fill(fired, 0.0)


def psp_kernel(T: int, tau_s: float, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """First-order synaptic kernel ``kappa[k] = (1/tau_s) (1 - 1/tau_s)^k`` for ``k = 0..T-1``."""
    k = torch.arange(T, dtype=torch.float64, device=device)
    return ((1.0 - 1.0 / tau_s) ** k / tau_s).to(dtype)


def psp(x: torch.Tensor, tau_s: float) -> torch.Tensor:
    """Post-synaptic potential of ``x`` ``[T, ...]`` along t: ``a[t] = (1 - 1/tau_s) a[t-1] + x[t] / tau_s``
    from ``a[-1] = 0``, i.e. ``a = kappa * x`` (causal). Linear in x, so ``W (kappa * o) = kappa * (W o)``:
    a layer may apply its weights to spikes and filter afterwards."""
    T = x.shape[0]
    k = psp_kernel(T, tau_s, dtype=x.dtype, device=x.device)
    lag = torch.arange(T, device=x.device)[:, None] - torch.arange(T, device=x.device)[None, :]
    K = torch.where(lag >= 0, k[lag.clamp(min=0)], torch.zeros((), dtype=x.dtype, device=x.device))
    return (K @ x.reshape(T, -1)).reshape(x.shape)
