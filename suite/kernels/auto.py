"""``auto`` backend: per call, the fastest backend that can run on the input's device.

CUDA tensors go to ``triton`` where Triton can run there (else ``fused``, with a warning that
says why, once per process); float64 and everything off CUDA go to ``fused``, whose CPU loops
beat the reference and whose torch engine runs on any device.
"""
from __future__ import annotations

import functools
import warnings

import torch


@functools.lru_cache(maxsize=None)
def _triton_or_reason():
    from suite.kernels import unavailable_reason

    reason = unavailable_reason("triton")
    if reason is not None:
        warnings.warn(f"backend 'auto': triton cannot run here ({reason}); using 'fused'", RuntimeWarning,
                      stacklevel=4)
        return None
    from suite.kernels import triton as triton_backend
    return triton_backend


def backend_for(x: torch.Tensor):
    if x.is_cuda and x.dtype in (torch.float32, torch.float16, torch.bfloat16):  # triton's dtypes
        mod = _triton_or_reason()
        if mod is not None:
            return mod
    from suite.kernels import fused
    return fused


def multi_step(x_seq: torch.Tensor, **kwargs):
    return backend_for(x_seq).multi_step(x_seq, **kwargs)


def psp_filter(x: torch.Tensor, tau_s: float) -> torch.Tensor:
    """:func:`suite.neurons.psp` on the fastest path for ``x``'s device (triton / fused)."""
    return backend_for(x).psp_filter(x, tau_s)
