"""The neuron's constants in the affine form every fused backend computes.

IF and both LIF charge conventions of :mod:`suite.neurons` are one affine map of the previous
state ``v`` and the input ``x``::

    h = k v + c x + b
    IF:                      k = 1,          c = 1,      b = 0
    LIF, decay_input=True:   k = 1 - 1/tau,  c = 1/tau,  b = v_rest/tau
    LIF, decay_input=False:  k = 1 - 1/tau,  c = 1,      b = v_rest/tau

with ``v_rest = v_reset`` (0 for reset by subtraction), so ``dh/dv = k`` and ``dh/dx = c``.
Built-in surrogates get a code and up to three constants so kernels can inline their
derivative; any other surrogate is code 0 and its ``grad`` is evaluated with torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from suite.surrogates import ATan, FastSigmoid, Rectangular, Sigmoid, Surrogate, Triangle

#: exact surrogate class -> kernel code (a subclass may override ``grad``: it gets code 0)
SURROGATE_CODES = {FastSigmoid: 1, Sigmoid: 2, ATan: 3, Triangle: 4, Rectangular: 5}


@dataclass(frozen=True)
class NeuronParams:
    k: float
    c: float
    b: float
    v_threshold: float
    v_reset: float          # reset value for hard reset; 0 (unused) for soft reset
    soft: bool              # reset by subtraction
    detach_reset: bool
    surrogate: Surrogate
    code: int               # surrogate code, 0 = evaluate ``surrogate.grad`` in torch
    a: float                # surrogate constants (see suite.kernels.numba_loops)
    p1: float
    p2: float

    @classmethod
    def create(cls, *, tau, v_threshold, v_reset, surrogate, decay_input=True, detach_reset=False):
        v_rest = 0.0 if v_reset is None else float(v_reset)
        if tau is None:
            k, c, b = 1.0, 1.0, 0.0
        else:
            k, c, b = 1.0 - 1.0 / tau, (1.0 / tau if decay_input else 1.0), v_rest / tau
        code = SURROGATE_CODES.get(type(surrogate), 0)
        a = float(getattr(surrogate, "alpha", 1.0))
        p1, p2 = {3: (math.pi / 2 * a, a / 2), 4: (a ** 2, 0.0), 5: (0.5 / a, 0.0)}.get(code, (0.0, 0.0))
        return cls(k=k, c=c, b=b, v_threshold=float(v_threshold), v_reset=v_rest, soft=v_reset is None,
                   detach_reset=bool(detach_reset), surrogate=surrogate, code=code, a=a, p1=p1, p2=p2)

    def surrogate_grad(self, h):
        """``surrogate'(h - v_th)`` with torch (any surrogate)."""
        return self.surrogate.grad(h - self.v_threshold)

    def reset_derivative(self, h, sg):
        """``dv/dh`` of the reset (see :mod:`suite.kernels.numba_loops`), with torch."""
        if self.soft:
            return 1.0 - self.v_threshold * sg if not self.detach_reset else None
        nospike = (h < self.v_threshold).to(h.dtype)
        if self.detach_reset:
            return nospike
        return nospike.addcmul_(self.v_reset - h, sg)
