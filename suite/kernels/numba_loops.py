"""Numba loops for the ``fused`` CPU backend: the whole T-step IF/LIF recurrence in one pass.

Both loops work on ``[T, N]`` C-contiguous arrays (N = every neuron of the batch), on the
neurons ``start:stop`` (so threads can share one call's work; the loops release the GIL), in
blocks of ``BLOCK`` neurons: for one block, t runs over all steps while the block's state stays
in L1, and the innermost loop over the block is a plain elementwise loop that LLVM vectorises. Each array
is read or written once, which is what makes the fused step cost about as much as a ReLU.

Charge ``h = k v + c x + b``, fire ``s = [h >= v_th]``, reset ``v = v_reset`` (hard) or
``v = h - v_th`` (soft) where ``s = 1``. The backward runs the adjoint recurrence from t = T-1::

    dL/dh[t] = dL/ds[t] sg[t] + dL/dv[t] dv/dh[t],   dL/dx[t] = c dL/dh[t],   dL/dv[t-1] = k dL/dh[t]

with ``sg[t] = surrogate'(h[t] - v_th)`` and ``dv/dh = (1 - s) + (v_reset - h) sg`` (hard reset)
or ``1 - v_th sg`` (soft reset); with ``detach_reset`` the ``sg`` terms of ``dv/dh`` vanish.
Surrogate codes (the formulas of :mod:`suite.surrogates`, tested equal to their ``grad``):
0 = ``sg`` given as an array, 1 = fast sigmoid, 2 = sigmoid, 3 = atan, 4 = triangle, 5 = rectangular.

Scalars arrive typed as the arrays' dtype (float32 or float64) and no bare float literal is
used, so float32 arithmetic stays float32, as in the torch reference.
"""
from __future__ import annotations

import numpy as np
from numba import njit

BLOCK = 2048


@njit(cache=True, nogil=True, error_model="numpy")
def lif_forward(x, s_out, h_out, k, c, b, v_th, v_reset, soft, zero, one, start, stop):
    T = x.shape[0]
    v = np.empty(BLOCK, dtype=x.dtype)
    for lo in range(start, stop, BLOCK):
        n = min(stop, lo + BLOCK) - lo
        for j in range(n):
            v[j] = v_reset
        for t in range(T):
            xr = x[t, lo:lo + n]
            sr = s_out[t, lo:lo + n]
            hr = h_out[t, lo:lo + n]
            if soft:
                for j in range(n):
                    h = k * v[j] + c * xr[j] + b
                    hr[j] = h
                    fired = h >= v_th
                    sr[j] = one if fired else zero
                    v[j] = h - v_th if fired else h
            else:
                for j in range(n):
                    h = k * v[j] + c * xr[j] + b
                    hr[j] = h
                    fired = h >= v_th
                    sr[j] = one if fired else zero
                    v[j] = v_reset if fired else h


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _exp_f32_block(z, out, ibuf, fbuf, n):
    """``out = exp(z)`` for float32 ``z`` clamped to [-87, 87]: Cephes' ``expf`` (range reduction by
    ln 2 in two parts, degree-7 polynomial, ~1 ulp), written branch-free so LLVM vectorises it --
    ``np.exp`` is a scalar libm call per element. ``fbuf`` is ``ibuf`` viewed as float32: the
    scale ``2^k`` is built from its exponent bits."""
    for j in range(n):
        x = min(max(z[j], np.float32(-87.0)), np.float32(87.0))
        k = np.floor(x * np.float32(1.44269504088896341) + np.float32(0.5))
        r = x - k * np.float32(0.693359375) - k * np.float32(-2.12194440e-4)
        p = np.float32(1.9875691500e-4)
        p = p * r + np.float32(1.3981999507e-3)
        p = p * r + np.float32(8.3334519073e-3)
        p = p * r + np.float32(4.1665795894e-2)
        p = p * r + np.float32(1.6666665459e-1)
        p = p * r + np.float32(5.0000001201e-1)
        out[j] = p * r * r + r + np.float32(1.0)
        ibuf[j] = (np.int32(k) + np.int32(127)) << np.int32(23)
    for j in range(n):
        out[j] = out[j] * fbuf[j]


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _surrogate_block(code, hr, sgr, out, tmp, ibuf, fbuf, n, v_th, a, p1, p2, zero, one, fast_exp):
    if code == 0:
        for j in range(n):
            out[j] = sgr[j]
    elif code == 1:  # fast sigmoid: 1 / (1 + a|x|)^2
        for j in range(n):
            d = one + a * abs(hr[j] - v_th)
            out[j] = one / (d * d)
    elif code == 2:  # sigmoid: a s (1 - s), s = sigmoid(a x) = 1 / (1 + exp(-a x))
        if fast_exp:
            for j in range(n):
                tmp[j] = -(a * (hr[j] - v_th))
            _exp_f32_block(tmp, tmp, ibuf, fbuf, n)
        else:
            for j in range(n):
                tmp[j] = np.exp(-(a * (hr[j] - v_th)))
        for j in range(n):
            s = one / (one + tmp[j])
            out[j] = a * s * (one - s)
    elif code == 3:  # atan: p2 / (1 + (p1 x)^2), p1 = pi/2 a, p2 = a/2
        for j in range(n):
            z = p1 * (hr[j] - v_th)
            out[j] = p2 / (one + z * z)
    elif code == 4:  # triangle: max(a - p1 |x|, 0), p1 = a^2
        for j in range(n):
            g = a - p1 * abs(hr[j] - v_th)
            out[j] = g if g > zero else zero
    else:  # rectangular: a [|x| < p1], p1 = 1/(2a)
        for j in range(n):
            out[j] = a if abs(hr[j] - v_th) < p1 else zero


# "contract" lets LLVM fuse a*b + c into FMAs (the exp polynomial is ~25% faster); values move by
# an ulp at most, within the tolerance every backend is tested to.
@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def lif_backward(grad_s, h, sg_given, grad_x, k, c, v_th, v_reset, soft, detach, code, a, p1, p2,
                 zero, one, start, stop):
    T = h.shape[0]
    m = BLOCK
    gv = np.empty(m, dtype=h.dtype)
    sg = np.empty(m, dtype=h.dtype)
    tmp = np.empty(m, dtype=h.dtype)
    ibuf = np.empty(m, dtype=np.int32)
    fbuf = ibuf.view(np.float32)
    fast_exp = h.itemsize == 4
    keep = zero if detach else one          # weight of the surrogate path through the reset
    for lo in range(start, stop, BLOCK):
        n = min(stop, lo + BLOCK) - lo
        for j in range(n):
            gv[j] = zero
        for t in range(T - 1, -1, -1):
            hr = h[t, lo:lo + n]
            gr = grad_s[t, lo:lo + n]
            xr = grad_x[t, lo:lo + n]
            sgr = sg_given[t, lo:lo + n] if code == 0 else hr
            _surrogate_block(code, hr, sgr, sg, tmp, ibuf, fbuf, n, v_th, a, p1, p2, zero, one, fast_exp)
            if soft:
                for j in range(n):
                    gh = gr[j] * sg[j] + gv[j] * (one - keep * v_th * sg[j])
                    xr[j] = c * gh
                    gv[j] = k * gh
            else:
                for j in range(n):
                    hj = hr[j]
                    dvdh = (zero if hj >= v_th else one) + keep * (v_reset - hj) * sg[j]
                    gh = gr[j] * sg[j] + gv[j] * dvdh
                    xr[j] = c * gh
                    gv[j] = k * gh


@njit(cache=True, nogil=True, error_model="numpy")
def psp_forward(x, out, decay, gain):
    """``a[t] = decay a[t-1] + gain x[t]`` from ``a[-1] = 0``."""
    T, N = x.shape
    for lo in range(0, N, BLOCK):
        n = min(N, lo + BLOCK) - lo
        prev = out[0, lo:lo + n]
        xr = x[0, lo:lo + n]
        for j in range(n):
            prev[j] = gain * xr[j]
        for t in range(1, T):
            cur = out[t, lo:lo + n]
            xr = x[t, lo:lo + n]
            for j in range(n):
                cur[j] = decay * prev[j] + gain * xr[j]
            prev = cur


@njit(cache=True, nogil=True, error_model="numpy")
def psp_backward(grad_a, grad_x, decay, gain):
    """Adjoint of :func:`psp_forward`: ``G[t] = grad_a[t] + decay G[t+1]``, ``grad_x = gain G``."""
    T, N = grad_a.shape
    m = min(N, BLOCK)
    acc = np.empty(m, dtype=grad_a.dtype)
    for lo in range(0, N, BLOCK):
        n = min(N, lo + BLOCK) - lo
        for j in range(n):
            acc[j] = grad_a[T - 1, lo + j]
        for t in range(T - 1, -1, -1):
            gr = grad_a[t, lo:lo + n]
            xr = grad_x[t, lo:lo + n]
            if t < T - 1:
                for j in range(n):
                    acc[j] = gr[j] + decay * acc[j]
            for j in range(n):
                xr[j] = gain * acc[j]
