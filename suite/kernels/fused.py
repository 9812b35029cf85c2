"""``fused`` backend: all T steps of IF/LIF as one autograd node, forward and backward written out.

The reference (``torch``) backend records several autograd nodes per step and keeps their
intermediates; this one saves a single ``[T, ...]`` tensor, the pre-reset membrane ``h``, from
which the backward derives the spikes ``s = [h >= v_th]`` and the surrogate ``sg``, and runs the
adjoint recurrence (see :mod:`suite.kernels.numba_loops` for the math)::

    dL/dh[t] = dL/ds[t] sg[t] + k dv/dh[t] dL/dh[t+1],      dL/dx[t] = c dL/dh[t]

Two engines compute the same thing:

* ``"numba"`` (CPU, the default there): one pass over the data per direction, split over
  ``torch.get_num_threads()`` threads for large layers. Compiled on first use (~5-10 s), cached
  on disk next to the module, and loaded by later processes (~1-2 s with Numba's import);
  float16/bfloat16 are computed in float32;
* ``"torch"`` (any device, and the CPU fallback when Numba is missing): three torch ops per step
  forward and one per step backward, the rest vectorised over all T.

:func:`psp_filter` is the same idea for TSSL-BP's synaptic filter.
"""
from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import torch

from suite.kernels.params import NeuronParams


@functools.lru_cache(maxsize=1)
def _numba_loops():
    """The compiled loops, or None where Numba is not installed."""
    try:
        from suite.kernels import numba_loops
    except ImportError:
        return None
    return numba_loops


def engine_for(x: torch.Tensor, engine: str | None = None) -> str:
    if engine is None:
        return "numba" if x.device.type == "cpu" and _numba_loops() is not None else "torch"
    if engine == "numba" and (_numba_loops() is None or x.device.type != "cpu"):
        raise RuntimeError("the numba engine needs Numba and a CPU tensor")
    if engine not in ("numba", "torch"):
        raise ValueError(f"unknown engine {engine!r}; valid: numba, torch")
    return engine


# ---------------------------------------------------------------------------------- numba engine
#: below this many neurons per step one thread does the whole loop
PARALLEL_MIN = 1 << 16


@functools.lru_cache(maxsize=None)
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="snn-fused")


def _run_split(kernel, N: int, *args) -> None:
    """``kernel(*args, start, stop)`` over neurons [0, N), split across ``torch.get_num_threads()``
    threads in whole blocks (the loops are independent per neuron and release the GIL)."""
    threads = torch.get_num_threads()
    if threads <= 1 or N < PARALLEL_MIN:
        kernel(*args, 0, N)
        return
    block = _numba_loops().BLOCK
    blocks = -(-N // block)
    bounds = [min(N, (blocks * i // threads) * block) for i in range(threads + 1)]
    futures = [_pool(threads).submit(kernel, *args, lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]
    for f in futures:
        f.result()


def _numba_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _scalars(np_dtype):
    """Constants typed as the arrays, so float32 arithmetic stays float32 inside the loops."""
    f = np_dtype.type
    return f, dict(zero=f(0.0), one=f(1.0))


def _numba_forward(x: torch.Tensor, p: NeuronParams):
    loops = _numba_loops()
    xw = x.detach().to(_numba_dtype(x.dtype)).contiguous()
    T = xw.shape[0]
    x2 = xw.reshape(T, -1)
    s = torch.empty_like(x2)
    h = torch.empty_like(x2)
    xn = x2.numpy()
    f, consts = _scalars(xn.dtype)
    _run_split(loops.lif_forward, x2.shape[1], xn, s.numpy(), h.numpy(), f(p.k), f(p.c), f(p.b),
               f(p.v_threshold), f(p.v_reset), p.soft, consts["zero"], consts["one"])
    return s.view(x.shape).to(x.dtype), h


def _numba_backward(grad_s: torch.Tensor, h: torch.Tensor, p: NeuronParams, shape, dtype):
    loops = _numba_loops()
    g2 = grad_s.detach().to(h.dtype).contiguous().reshape(h.shape)
    gx = torch.empty_like(h)
    hn = h.numpy()
    f, consts = _scalars(hn.dtype)
    sg = p.surrogate_grad(h).contiguous().numpy() if p.code == 0 else hn
    _run_split(loops.lif_backward, h.shape[1], g2.numpy(), hn, sg, gx.numpy(), f(p.k), f(p.c),
               f(p.v_threshold), f(p.v_reset), p.soft, p.detach_reset, p.code, f(p.a), f(p.p1), f(p.p2),
               consts["zero"], consts["one"])
    return gx.view(shape).to(dtype)


# ---------------------------------------------------------------------------------- torch engine
def _torch_forward(x: torch.Tensor, p: NeuronParams):
    x = x.detach()
    cx = x if (p.c == 1.0 and p.b == 0.0) else x.mul(p.c).add_(p.b)
    h = torch.empty_like(x)
    v = torch.full_like(x[0], p.v_reset)
    for t in range(x.shape[0]):
        ht = torch.add(cx[t], v, alpha=p.k, out=h[t])
        fired = ht >= p.v_threshold
        v = torch.where(fired, ht - p.v_threshold, ht) if p.soft else torch.where(fired, p.v_reset, ht)
    return (h >= p.v_threshold).to(x.dtype), h


def _torch_backward(grad_s: torch.Tensor, h: torch.Tensor, p: NeuronParams, shape, dtype):
    sg = p.surrogate_grad(h)
    acc = grad_s.to(h.dtype) * sg                       # becomes dL/dh in place, t = T-1 .. 0
    dvdh = p.reset_derivative(h, sg)                    # None: identically 1
    for t in range(h.shape[0] - 2, -1, -1):
        if dvdh is None:
            acc[t].add_(acc[t + 1], alpha=p.k)
        else:
            acc[t].addcmul_(dvdh[t], acc[t + 1], value=p.k)
    if p.c != 1.0:
        acc.mul_(p.c)
    return acc.view(shape).to(dtype)


class FusedNeuron(torch.autograd.Function):
    """``x [T, ...] -> spikes [T, ...]``; saves only the membrane ``h`` for the backward."""

    @staticmethod
    def forward(ctx, x, p: NeuronParams, engine: str):
        fwd = _numba_forward if engine == "numba" else _torch_forward
        s, h = fwd(x, p)
        ctx.save_for_backward(h)
        ctx.p, ctx.engine, ctx.shape, ctx.in_dtype = p, engine, x.shape, x.dtype
        return s

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_s):
        (h,) = ctx.saved_tensors
        bwd = _numba_backward if ctx.engine == "numba" else _torch_backward
        return bwd(grad_s, h, ctx.p, ctx.shape, ctx.in_dtype), None, None


def multi_step(x_seq: torch.Tensor, *, tau, v_threshold, v_reset, surrogate, decay_input=True,
               detach_reset=False, engine: str | None = None):
    p = NeuronParams.create(tau=tau, v_threshold=v_threshold, v_reset=v_reset, surrogate=surrogate,
                            decay_input=decay_input, detach_reset=detach_reset)
    return FusedNeuron.apply(x_seq, p, engine_for(x_seq, engine))


class FusedPSP(torch.autograd.Function):
    """First-order synaptic filter ``a[t] = decay a[t-1] + gain x[t]`` with the Numba loops."""

    @staticmethod
    def forward(ctx, x, decay: float, gain: float):
        loops = _numba_loops()
        xw = x.detach().to(_numba_dtype(x.dtype)).contiguous()
        x2 = xw.reshape(xw.shape[0], -1)
        out = torch.empty_like(x2)
        f = x2.numpy().dtype.type
        loops.psp_forward(x2.numpy(), out.numpy(), f(decay), f(gain))
        ctx.decay, ctx.gain, ctx.shape, ctx.in_dtype = decay, gain, x.shape, x.dtype
        return out.view(x.shape).to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_a):
        g = grad_a.detach().to(_numba_dtype(grad_a.dtype)).contiguous()
        g2 = g.reshape(g.shape[0], -1)
        gx = torch.empty_like(g2)
        f = g2.numpy().dtype.type
        _numba_loops().psp_backward(g2.numpy(), gx.numpy(), f(ctx.decay), f(ctx.gain))
        return gx.view(ctx.shape).to(ctx.in_dtype), None, None


def psp_filter(x: torch.Tensor, tau_s: float) -> torch.Tensor:
    """PSP ``a[t] = (1 - 1/tau_s) a[t-1] + x[t]/tau_s`` over ``[T, ...]``, equal to
    :func:`suite.neurons.psp` (a T x T matmul) and ~3.5x faster on the CPU at T = 5 and 50;
    other devices, or no Numba, use that reference."""
    if x.device.type != "cpu" or _numba_loops() is None:
        from suite.dynamics import psp
        return psp(x, tau_s)
    return FusedPSP.apply(x, 1.0 - 1.0 / tau_s, 1.0 / tau_s)


def unavailable_reason() -> str | None:
    return None


def numba_available() -> bool:
    return _numba_loops() is not None


__all__ = ["FusedNeuron", "FusedPSP", "multi_step", "psp_filter", "engine_for", "numba_available"]
