"""Backends for multi-step neuron dynamics, selected by name behind one API.

A backend is a module with ``multi_step(x_seq, *, tau, v_threshold, v_reset, surrogate,
decay_input, detach_reset) -> spikes`` where ``tau=None`` means IF. ``"torch"`` is the
reference loop over :mod:`suite.neurons`' step functions; other backends must match it in
values and gradients (tests/test_kernels*.py).
"""
from __future__ import annotations

import importlib
import warnings

#: backend name -> module path. Other backends register here.
BACKENDS = {"torch": "suite.kernels.torch"}


def available_backends() -> list[str]:
    return sorted(BACKENDS) + ["auto"]


def get_backend(name: str):
    if name == "auto":
        for candidate in ("triton",):
            if candidate in BACKENDS:
                try:
                    mod = importlib.import_module(BACKENDS[candidate])
                    reason = getattr(mod, "unavailable_reason", lambda: None)()
                    if reason is None:
                        return mod
                    warnings.warn(f"backend 'auto': {candidate} cannot run here ({reason}); using 'torch'",
                                  RuntimeWarning, stacklevel=2)
                except ImportError as exc:
                    warnings.warn(f"backend 'auto': {candidate} unavailable ({exc}); using 'torch'",
                                  RuntimeWarning, stacklevel=2)
        name = "torch"
    try:
        path = BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; valid: {', '.join(available_backends())}") from None
    return importlib.import_module(path)
