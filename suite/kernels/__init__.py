"""Backends for multi-step neuron dynamics, selected by name behind one API.

A backend is a module with ``multi_step(x_seq, *, tau, v_threshold, v_reset, surrogate,
decay_input, detach_reset) -> spikes`` where ``tau=None`` means IF. ``"torch"`` is the
reference loop over :mod:`suite.neurons`' step functions; other backends must match it in
values and gradients (tests/test_kernels*.py).

* ``"fused"``: one autograd node for all T steps; Numba loops on the CPU (about the cost of a
  ReLU), torch ops elsewhere -- :mod:`suite.kernels.fused`;
* ``"triton"``: one Triton kernel per direction on CUDA (``TRITON_INTERPRET=1`` runs it on the
  CPU interpreter, for tests) -- :mod:`suite.kernels.triton`;
* ``"auto"``: triton for CUDA tensors where it can run, else fused -- :mod:`suite.kernels.auto`.
  ``snn-suite run --backend auto`` resolves it per rule with :func:`resolve_backend` and records
  the backend it used.
"""
from __future__ import annotations

import importlib
import warnings

#: backend name -> module path. Other backends register here.
BACKENDS = {"torch": "suite.kernels.torch", "fused": "suite.kernels.fused", "triton": "suite.kernels.triton"}

#: what ``"auto"`` prefers, best first, per device type (triton only where it can run)
AUTO_PREFERENCE = {"cuda": ("triton", "fused", "torch"), "cpu": ("fused", "torch")}


def available_backends() -> list[str]:
    return sorted(BACKENDS) + ["auto"]


def unavailable_reason(name: str) -> str | None:
    """Why backend ``name`` cannot run on this machine, or None when it can."""
    try:
        mod = importlib.import_module(BACKENDS[name])
    except ImportError as exc:
        return f"import failed: {exc}"
    return getattr(mod, "unavailable_reason", lambda: None)()


def get_backend(name: str):
    """The backend module ``name``. ``"auto"`` is a dispatcher that picks, per call, triton for
    CUDA tensors where Triton runs (else fused, with a warning) and fused on the CPU. A backend
    that cannot run here raises ``RuntimeError`` saying why."""
    if name == "auto":
        return importlib.import_module("suite.kernels.auto")
    try:
        path = BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; valid: {', '.join(available_backends())}") from None
    reason = unavailable_reason(name)
    if reason is not None:
        raise RuntimeError(f"backend {name!r} cannot run here: {reason}")
    return importlib.import_module(path)


def resolve_backend(name: str, supported, device: str = "cpu") -> str:
    """The concrete backend a run uses: ``name`` itself, or for ``"auto"`` the first of
    :data:`AUTO_PREFERENCE` for ``device`` that the rule supports and that can run here
    (``"auto"`` again when the rule supports none of them)."""
    if name != "auto":
        return name
    for candidate in AUTO_PREFERENCE["cuda" if str(device).startswith("cuda") else "cpu"]:
        if candidate in supported:
            reason = unavailable_reason(candidate)
            if reason is None:
                return candidate
            warnings.warn(f"backend 'auto': {candidate} cannot run here ({reason}); trying the next",
                          RuntimeWarning, stacklevel=2)
    return name
