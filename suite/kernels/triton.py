"""``triton`` backend: the T-step IF/LIF loop as one Triton kernel forward and one backward.

Each program owns ``BLOCK`` neurons and runs all T steps with the membrane in registers (fp32
whatever the storage dtype), so a launch reads ``x`` once and writes the spikes and the pre-reset
membrane ``h`` once. The autograd Function saves the spikes (the output itself, so no extra
memory) and ``h`` in the input's dtype; the backward kernel runs the adjoint recurrence of
:mod:`suite.kernels.numba_loops` from t = T-1 with the surrogate inlined (``tl.constexpr`` code
from :mod:`suite.kernels.params`; any other surrogate is evaluated once with torch and loaded).
With ``h`` in float32 the hard-reset backward recomputes the spikes as ``h >= v_th`` (the forward's
own comparison) instead of reading them: 12 instead of 16 bytes per element and step.

Triton compiles for GPUs. On a CPU the kernels run only under ``TRITON_INTERPRET=1`` (Triton's
numpy interpreter: correct but slow, which is how the tests run them); elsewhere
:func:`unavailable_reason` says why and ``get_backend("triton")`` raises. The kernels are
wrapped with ``triton.jit`` at first use, so setting ``TRITON_INTERPRET`` after import works.

Also here: :func:`psp_filter`, the first-order synaptic filter ``a[t] = d a[t-1] + g x[t]``
(TSSL-BP's PSP with ``d = 1 - 1/tau_s``, ``g = 1/tau_s``) as one kernel per direction.
"""
from __future__ import annotations

import functools
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError as exc:  # the module stays importable so the reason can be reported
    triton, tl, _IMPORT_ERROR = None, None, exc
else:
    _IMPORT_ERROR = None

from suite.kernels.params import NeuronParams

BLOCK = 1024


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def unavailable_reason() -> str | None:
    if _IMPORT_ERROR is not None:
        return f"Triton is not installed ({_IMPORT_ERROR})"
    if _interpreting() or torch.cuda.is_available():
        return None
    return ("no CUDA GPU: Triton compiles its kernels for GPUs (set TRITON_INTERPRET=1 to run them "
            "on the CPU interpreter, correct but slow)")


def _check_device(x: torch.Tensor) -> None:
    if not x.is_cuda and not _interpreting():
        raise RuntimeError(f"backend 'triton' needs a CUDA tensor (got {x.device}); "
                           "TRITON_INTERPRET=1 runs it on the CPU interpreter")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"backend 'triton' computes in float32 and stores float32/float16/bfloat16, not {x.dtype}")


# ---------------------------------------------------------------------------------- kernels
# Kernels use only Triton builtins (tl.full, not tl.zeros): the standard library's helpers are
# themselves jit functions that the interpreter cannot call when Triton was imported before
# TRITON_INTERPRET was set.
def _lif_forward_kernel(x_ptr, s_ptr, h_ptr, T, N, k, c, b, v_th, v_reset,
                        SOFT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    v = tl.full([BLOCK], 0.0, tl.float32) + v_reset
    x_ptr += offs
    s_ptr += offs
    h_ptr += offs
    for _ in range(T):
        x = tl.load(x_ptr, mask=mask, other=0.0).to(tl.float32)
        h = k * v + c * x + b
        fired = h >= v_th
        s = fired.to(tl.float32)
        if SOFT:
            v = h - s * v_th
        else:
            v = tl.where(fired, v_reset, h)
        tl.store(h_ptr, h.to(h_ptr.dtype.element_ty), mask=mask)
        tl.store(s_ptr, s.to(s_ptr.dtype.element_ty), mask=mask)
        x_ptr += N
        s_ptr += N
        h_ptr += N


def _lif_backward_kernel(gs_ptr, s_ptr, h_ptr, sg_ptr, gx_ptr, T, N, k, c, v_th, v_reset, a, p1, p2,
                         SOFT: tl.constexpr, DETACH: tl.constexpr, CODE: tl.constexpr, S_FROM_H: tl.constexpr,
                         BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    last = (T - 1).to(tl.int64) * N + offs
    gs_ptr += last
    s_ptr += last
    h_ptr += last
    sg_ptr += last
    gx_ptr += last
    gv = tl.full([BLOCK], 0.0, tl.float32)
    for _ in range(T):
        g = tl.load(gs_ptr, mask=mask, other=0.0).to(tl.float32)
        h = tl.load(h_ptr, mask=mask, other=0.0).to(tl.float32)
        u = h - v_th
        if CODE == 0:
            sg = tl.load(sg_ptr, mask=mask, other=0.0).to(tl.float32)
        elif CODE == 1:
            d = 1.0 + a * tl.abs(u)
            sg = 1.0 / (d * d)
        elif CODE == 2:
            sig = 1.0 / (1.0 + tl.exp(-(a * u)))
            sg = a * sig * (1.0 - sig)
        elif CODE == 3:
            z = p1 * u
            sg = p2 / (1.0 + z * z)
        elif CODE == 4:
            sg = tl.maximum(a - p1 * tl.abs(u), 0.0)
        else:
            sg = tl.where(tl.abs(u) < p1, a, 0.0)
        if SOFT:
            if DETACH:
                dvdh = tl.full([BLOCK], 1.0, tl.float32)
            else:
                dvdh = 1.0 - v_th * sg
        else:
            if S_FROM_H:  # h kept in float32: the forward's comparison, exactly, without reading s
                s = (h >= v_th).to(tl.float32)
            else:
                s = tl.load(s_ptr, mask=mask, other=0.0).to(tl.float32)
            if DETACH:
                dvdh = 1.0 - s
            else:
                dvdh = (1.0 - s) + (v_reset - h) * sg
        gh = g * sg + gv * dvdh
        tl.store(gx_ptr, (c * gh).to(gx_ptr.dtype.element_ty), mask=mask)
        gv = k * gh
        gs_ptr -= N
        s_ptr -= N
        h_ptr -= N
        sg_ptr -= N
        gx_ptr -= N


def _psp_kernel(x_ptr, out_ptr, T, N, decay, gain, REVERSE: tl.constexpr, BLOCK: tl.constexpr):
    """``out[t] = decay out[t-1] + gain x[t]`` (REVERSE: t runs backwards, ``out[t+1]``)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    if REVERSE:
        start = (T - 1).to(tl.int64) * N + offs
        step = -N
    else:
        start = offs
        step = N
    x_ptr += start
    out_ptr += start
    acc = tl.full([BLOCK], 0.0, tl.float32)
    for _ in range(T):
        acc = decay * acc + gain * tl.load(x_ptr, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr, acc.to(out_ptr.dtype.element_ty), mask=mask)
        x_ptr += step
        out_ptr += step


@functools.lru_cache(maxsize=2)
def _kernels(interpret: bool):
    """``triton.jit`` the kernels for the current mode (``TRITON_INTERPRET`` is read at jit time)."""
    del interpret  # the cache key: re-jit when the mode changes
    # T and N stay runtime ints: Triton would otherwise turn a value of 1 into a Python constant
    # (no ``.to``), and a recompile per distinct T or N is wasted work anyway
    return {name: triton.jit(fn, do_not_specialize=["T", "N"]) for name, fn in (("forward", _lif_forward_kernel),
                                                  ("backward", _lif_backward_kernel),
                                                  ("psp", _psp_kernel))}


def _launch(name: str, n: int, *args, **meta):
    block = min(BLOCK, triton.next_power_of_2(max(n, 16)))
    kernel = _kernels(_interpreting())[name]
    kernel[(triton.cdiv(n, block),)](*args, BLOCK=block, **meta)


# ---------------------------------------------------------------------------------- autograd
class TritonNeuron(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p: NeuronParams):
        x = x.detach().contiguous()
        T, N = x.shape[0], x[0].numel()
        s, h = torch.empty_like(x), torch.empty_like(x)
        if N:
            _launch("forward", N, x, s, h, T, N, p.k, p.c, p.b, p.v_threshold, p.v_reset, SOFT=p.soft)
        ctx.save_for_backward(s, h)
        ctx.p = p
        return s

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_s):
        s, h = ctx.saved_tensors
        p = ctx.p
        T, N = h.shape[0], h[0].numel()
        gs = grad_s.contiguous()
        gx = torch.empty_like(h)
        sg = p.surrogate_grad(h.float()).contiguous() if p.code == 0 else h
        if N:
            _launch("backward", N, gs, s, h, sg, gx, T, N, p.k, p.c, p.v_threshold, p.v_reset, p.a, p.p1, p.p2,
                    SOFT=p.soft, DETACH=p.detach_reset, CODE=p.code, S_FROM_H=h.dtype == torch.float32)
        return gx, None


def multi_step(x_seq: torch.Tensor, *, tau, v_threshold, v_reset, surrogate, decay_input=True,
               detach_reset=False):
    _check_device(x_seq)
    p = NeuronParams.create(tau=tau, v_threshold=v_threshold, v_reset=v_reset, surrogate=surrogate,
                            decay_input=decay_input, detach_reset=detach_reset)
    return TritonNeuron.apply(x_seq, p)


class TritonPSP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, decay: float, gain: float):
        x = x.detach().contiguous()
        out = torch.empty_like(x)
        T, N = x.shape[0], x[0].numel()
        if N:
            _launch("psp", N, x, out, T, N, decay, gain, REVERSE=False)
        ctx.decay, ctx.gain = decay, gain
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_a):
        g = grad_a.contiguous()
        gx = torch.empty_like(g)
        T, N = g.shape[0], g[0].numel()
        if N:  # adjoint: G[t] = g[t] + decay G[t+1], grad_x = gain G
            _launch("psp", N, g, gx, T, N, ctx.decay, ctx.gain, REVERSE=True)
        return gx, None, None


def psp_filter(x: torch.Tensor, tau_s: float) -> torch.Tensor:
    """PSP ``a[t] = (1 - 1/tau_s) a[t-1] + x[t]/tau_s`` over ``[T, ...]`` (= :func:`suite.neurons.psp`)."""
    _check_device(x)
    return TritonPSP.apply(x, 1.0 - 1.0 / tau_s, 1.0 / tau_s)
