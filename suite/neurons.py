"""Spiking neuron dynamics, written once as step functions: charge -> fire -> reset.

``if_step`` / ``lif_step`` (in :mod:`suite.dynamics`, re-exported here) take the membrane state in and return ``(spike, state)``; they
hold no hidden state, so there is no ``reset_net`` to forget. The modules ``IF`` and ``LIF``
map input currents ``[T, B, ...]`` to spikes ``[T, B, ...]`` starting from ``v = v_reset``
(0 for reset by subtraction) on every call, and run the T-step loop on a backend from
:mod:`suite.kernels` (``"torch"`` is the reference every other backend is tested against).

LIF charge (``decay_input=True``, SpikingJelly's convention)::

    h[t] = v[t-1] + (x[t] - (v[t-1] - v_rest)) / tau

and with ``decay_input=False`` (snnTorch's ``Leaky``, beta = 1 - 1/tau)::

    h[t] = v[t-1] - (v[t-1] - v_rest) / tau + x[t]

Fire: ``s = H(h - v_threshold)`` with a surrogate gradient. Reset: to ``v_reset``
(``v = h (1 - s) + v_reset s``) or, with ``v_reset=None``, by subtraction (``v = h - s v_th``).
"""
from __future__ import annotations

import torch
from torch import nn

from suite.dynamics import (  # noqa: F401  (re-exported: plugins build on these names)
    fire, if_charge, if_step, lif_charge, lif_step, psp, psp_kernel, reset, srm_step,
)
from suite.kernels import get_backend
from suite.surrogates import Surrogate, create_surrogate


class SpikingNeuron(nn.Module):
    """Base of every spiking layer. The host's spike recorder hooks modules with
    ``records_spikes = True`` and reads their output ``[T, B, ...]`` as spikes."""

    records_spikes = True


class LIF(SpikingNeuron):
    """Leaky integrate-and-fire over T steps: ``[T, B, ...]`` currents -> ``[T, B, ...]`` spikes.

    ``backend="auto"`` (the default) runs the fastest backend that is correct for the input's
    device (fused on the CPU, triton on CUDA); ``"torch"`` is the reference loop."""

    def __init__(self, tau: float = 2.0, v_threshold: float = 1.0, v_reset: float | None = 0.0,
                 surrogate: str | Surrogate = "fast_sigmoid", alpha: float | None = None,
                 decay_input: bool = True, detach_reset: bool = False, backend: str = "auto"):
        super().__init__()
        if tau is not None and tau < 1.0:
            raise ValueError(f"LIF tau must be >= 1 (got {tau})")
        self.tau, self.v_threshold, self.v_reset = tau, float(v_threshold), v_reset
        self.surrogate = create_surrogate(surrogate, alpha)
        self.decay_input, self.detach_reset = decay_input, detach_reset
        self.backend = backend
        self._kernel = get_backend(backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._kernel.multi_step(x, tau=self.tau, v_threshold=self.v_threshold, v_reset=self.v_reset,
                                       surrogate=self.surrogate, decay_input=self.decay_input,
                                       detach_reset=self.detach_reset)

    def extra_repr(self) -> str:
        return (f"tau={self.tau}, v_threshold={self.v_threshold}, v_reset={self.v_reset}, "
                f"surrogate={self.surrogate}, decay_input={self.decay_input}, backend={self.backend!r}")


class IF(LIF):
    """Integrate-and-fire (no leak) over T steps."""

    def __init__(self, v_threshold: float = 1.0, v_reset: float | None = 0.0,
                 surrogate: str | Surrogate = "fast_sigmoid", alpha: float | None = None,
                 detach_reset: bool = False, backend: str = "auto"):
        super().__init__(tau=None, v_threshold=v_threshold, v_reset=v_reset, surrogate=surrogate,
                         alpha=alpha, detach_reset=detach_reset, backend=backend)

    def extra_repr(self) -> str:
        return f"v_threshold={self.v_threshold}, v_reset={self.v_reset}, surrogate={self.surrogate}, backend={self.backend!r}"
