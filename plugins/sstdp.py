"""sstdp -- Supervised STDP: a global error on spike times, STDP-shaped local weight changes.

Liu, Zhao, Chen, Wang, Yang, Jiang (2021), *SSTDP: Supervised Spike Timing Dependent Plasticity
for Efficient Spiking Neural Network Training*, Front. Neurosci. 15:756876,
doi:10.3389/fnins.2021.756876. Official code: github.com/MXHX7199/SNN-SSTDP (MNIST MLP only).
Facts below marked [code] were read there; nothing is copied.

Model (window T, default 255):

* **Coding** [code]: input i spikes once at ``t_i = round((1 - x_i)(T - 1))``; a zero pixel spikes
  at T-1, beyond the simulated window, so it never drives anything (but counts as "fired" in the
  update, as in the code).
* **Neuron** [code]: non-leaky integrate-and-fire, ``v_j(t) = sum_{i: t_i <= t} w_ji``, the input
  of step t is integrated and the neuron fires in the same step when ``v_j > theta`` (strict),
  **once**: no reset, silent afterwards. Steps ``t = 0 .. T-1-window_margin`` (margin 2, the
  code's ``t < T-2``) are simulated. Output of a neuron = its first spike time, T if silent.
* **Event-driven simulation**: with one spike per input and no leak, ``v_j`` only changes at input
  spike times, so a layer's firing times follow from the inputs sorted by time and a cumulative
  sum of the matching weight rows, read at the last input of each time step
  (:func:`spike_once_linear`). :func:`spike_once_linear_stepped` is the dense step-by-step
  reference (tests check both agree). Convolutions run the same code on unfolded patches. On CPU
  the simulation, the STDP sum and the error propagation run as single-threaded numba loops over
  rows; on other devices as vectorised torch forms (a test checks both give the same update).
* **Decoding** [code]: the output neuron that fires first wins.
* **Loss** [code]: MSE on output times. With ``t_min`` the earliest output time (``T - delta`` if
  none fired), the target of the true class is ``t_min`` and of every other class
  ``min(max(t_k, t_min + delta), T)``, delta = 5.
* **Error** [code]: ``e_j = dL/dt_j`` normalised to unit L2 norm per sample (over all neurons of
  the layer), at the output and again at every layer. Passed down through causal synapses only:
  ``dL/dt_i = sum_j e_j w_ji 1[t_i <= t_j] 1[t_i < T]``.
* **Update** [code]: not a derivative of the spike. The local, STDP-shaped "gradient" is
  ``G_ji = -mean_b e_j eps(t_i - t_j)``, ``eps = +A`` if the pre-synaptic neuron fired at or
  before the post-synaptic one (``t_i <= t_j`` and ``t_i < T``), else ``-B``; optionally times
  ``exp(-|t_i - t_j| / stdp_tau)``. Plain SGD ``W <- W - lr (G + wd W)``, lr 10. A post neuron
  that fires too late (e > 0) therefore potentiates its causal inputs and depresses (by B) the
  others; a silent pre-synapse (t_i = T) never gets potentiation.
* **Init** [code]: ``W ~ U[0, r)`` with r = 5 (hidden) and 48 (output) for 784-400-10,
  theta = 100, batch 64, 100 epochs.
* **No dead-neuron re-initialisation by default** [code]: the code means to give hidden neurons
  that fired on fewer than 0.1 % of the samples fresh ``U[0, r)`` weights after each epoch
  (``retrieve_dead_neurons``), but it assigns to ``self.weight[idx].data``: ``weight[idx]`` is a
  temporary view, setting its ``.data`` rebinds that temporary and leaves the weight unchanged, so
  the code never re-initialises anything (checked with torch 2.x; a test repeats the
  statement). ``reinit_below = 0`` (default) follows what the code does;
  ``--set reinit_below=1e-3`` turns on what it meant. On: a neuron revived with fresh ``U[0, 5)``
  weights fires early on almost every digit and, through its old output weights, pushes the
  output layer's first spike; after each epoch with a re-initialisation the test accuracy drops
  (seed 0, 60k training samples, 2k test samples: 85.3 % after epoch 10 with 1 neuron revived,
  29.3 % after epoch 14 with 5, against 89.5-92.0 % with it off). These were the swings of
  50-94 % between epochs in benchmarks/results/sstdp (those runs had it on; their last epoch does
  no re-initialisation, which is why the final accuracy was not hit).

The weight change happens in :meth:`SSTDP.train_step` under ``torch.no_grad``; the weights are
parameters with ``requires_grad=False`` and ``configure_optimizer`` returns ``(None, None,
"epoch")``, so the host runs it like any rule.

Choices where paper and code are silent or disagree (all overridable with ``--set``):

* ``A = 1, B = 0``: the train script's defaults, with which the README command runs (the module's
  own defaults are 0.8 / 0.2). ``weight_decay = 1e-6``: the train script's default. The README
  command passes 1e-5; with lr 10 that shrinks every weight by 1e-4 per step, ~9 % per epoch, and
  1e-6 gives ~0.9 % per epoch, the same as S4NN's regulariser (lr 0.2 x 1e-6 per sample), the
  rule SSTDP builds on. ``--set weight_decay=1e-5`` restores the README value. (An earlier note
  here said 1e-5 let the hidden layer decay, 52 % after 13 epochs: that run had the dead-neuron
  re-initialisation on, see above; with it off, 1e-5 trained stably in an 18-epoch check: 91.6 %
  on 2k test images after epoch 18, 89.5 % for 1e-6, within the epoch-to-epoch spread.)
* ``lr_schedule = "none"``: the code's fixed lr (its scheduler module is missing and its step call
  is commented out). The swings of tens of points in benchmarks/results/sstdp came from the
  re-initialisation (above); with the fixed lr alone there are occasional dips (seed 0, 20k
  training samples, 2k test: 73.1 % after epoch 8, 84.0 % after epoch 12, otherwise 86-92 % from
  epoch 7 to 45). ``"cosine"`` (per epoch) is offered as a
  documented option.
* ``stdp_tau`` (0 = off) only shapes the STDP window; the code ties it to a membrane leak, which
  is left out here (the paper's neuron is non-leaky).
* ``init_range``: ``"5,48"`` (one range per weight layer) for 784-400-10; ``"auto"`` (the default,
  so that any architecture works) uses ``r = 2 theta / n``, i.e. about n inputs at the mean weight
  reach threshold, with n = max(5 % of the fan-in, 12) for hidden and max(1 %, 4) for the output
  layer: 5.1 and 50 for 784-400-10.
* Re-initialisation, when turned on (``reinit_below > 0``), counts spikes over the epoch's
  training samples only (the code's counter also runs over the test pass) and uses the cell's
  seeded generator; it is skipped after the last epoch. For a conv layer a channel counts as
  firing on a sample when it fires at any position.
* Minor departures from the code kept on purpose: the last, partial training batch of an epoch is
  used (the code drops it; the update is a batch mean either way); the test uses all 10 000
  images (the code drops the last partial batch: 9 984) and reports the last epoch (the code
  prints the best epoch so far, ``max_acc``); the code seeds numpy with 0 before drawing each
  layer's weights, so the output layer's initial weights are 48/5 times the first 4 000 of the
  hidden layer's (here independent draws); the code's first training batch starts from the
  neuron state left by its threshold-initialising call (not reproduced).
* **Ties** at the first output spike: the official test counts a sample correct when the true
  class is *among* the earliest ones (optimistic). Here ``tie_break = "potential"`` (default)
  picks, among the earliest neurons, the one with the highest membrane potential at that step
  (silent outputs: highest final potential); ``"index"`` picks the lowest class index. The op
  counter records the fraction of tied and of silent decisions per T.
* Architectures beyond the MLP (the paper's CIFAR-10 and Caltech-101 networks and its T per
  dataset are not given): convolutions use padding with silent inputs (time T, as the code's
  conv layer); every pooling token (``P``, ``A``, ``M``) is earliest-spike pooling (the TTFS form
  of max pooling: an average of spike times is not a spike), its error goes to the earliest
  input; dropout markers are ignored. The CIFAR-10 / Caltech-101 presets' networks are ours.
* Accuracy at several T: every T re-encodes the input with its own window and re-simulates
  (TTFS is not causal in T), with the weights trained at ``T``.

Operation count (:class:`EventOpCounter`): a synaptic operation is one input spike reaching one
post-synaptic neuron that has not fired before it (``t_i <= t_j``; a neuron that has fired is
silent, so an event-driven simulator skips it), for spikes inside the window; per layer also
``synops_no_skip`` (every in-window spike x full fan-out). No MACs: every layer, the first
included, receives spikes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit
from torch import nn

from suite.archs import ArchSpec, layer_shapes
from suite.hookspecs import hookimpl
from suite.rule import Rule

DEFAULTS = {
    "T": 255,
    "window_margin": 2,            # simulate t = 0 .. T-1-margin (the code: t < T-2)
    "theta": 100.0,
    "A": 1.0,                      # potentiation for a causal pre spike (train script default)
    "B": 0.0,                      # depression otherwise (module default 0.2)
    "stdp_tau": 0.0,               # 0: no exponential STDP window
    "delta": 5,                    # target gap between the winner and the other outputs
    "lr": 10.0,
    "lr_schedule": "none",         # "none" (the code: fixed) or "cosine" (per epoch, to ~0 at the end)
    "weight_decay": 1e-6,          # train script default (README command: 1e-5, see docstring)
    "batch_size": 64,
    "epochs": 100,
    "init_range": "auto",          # "auto" or one U[0, r) range per weight layer, e.g. "5,48"
    "reinit_below": 0.0,           # > 0: re-init hidden neurons firing on fewer samples than this
                                   # (the code means 1e-3, but its re-init is a no-op; see docstring)
    "tie_break": "potential",      # "potential" or "index"
    "encoding": "ttfs",
}

SEARCH_SPACE = {
    "lr": ("log", 1.0, 100.0),
    "theta": ("log", 30.0, 300.0),
    "delta": ("int", 1, 10),
    "B": ("float", 0.0, 0.3),
    "weight_decay": ("log", 1e-7, 1e-4),
}

#: datasets of event frames, which time-to-first-spike coding of intensities does not apply to
EVENT_DATASETS = frozenset({"nmnist"})

#: elements per intermediate tensor before the simulation works in chunks
CHUNK = 1 << 24


# ----------------------------------------------------------------------------- coding
def ttfs_times(x: torch.Tensor, T: int) -> torch.Tensor:
    """Spike time of every input, ``round((1 - x)(T - 1))`` for x in [0, 1]."""
    return torch.round((1.0 - x.clamp(0.0, 1.0)) * (T - 1))


def last_step(T: int, margin: int) -> int:
    """The last simulated step of a window of length T."""
    return T - 1 - margin


def time_targets(t_out: torch.Tensor, y: torch.Tensor, T: int, delta: float) -> torch.Tensor:
    """The paper's targets: ``t_min`` (or ``T - delta`` if nothing fired) for the true class and
    ``min(max(t_k, t_min + delta), T)`` for the others."""
    t_min = t_out.min(1).values
    t_min = torch.where(t_min >= T, torch.full_like(t_min, T - delta), t_min)
    target = torch.maximum(t_out, (t_min + delta).unsqueeze(1)).clamp(max=T)
    target[torch.arange(len(y), device=y.device), y] = t_min
    return target


# ----------------------------------------------------------------------------- simulation
def _use_numba(numba: bool | None, device: torch.device) -> bool:
    """The numba loops run on CPU tensors (default there); the vectorised torch forms anywhere."""
    if numba and device.type != "cpu":
        raise ValueError(f"numba kernels need CPU tensors, got {device}")
    return device.type == "cpu" if numba is None else bool(numba)


def spike_once_linear(t_in: torch.Tensor, weight: torch.Tensor, theta: float, T: int, last: int,
                      numba: bool | None = None, chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Event-driven first-spike times of fire-once, non-leaky IF neurons.

    ``t_in`` ``[P, N]`` input spike times (>= T: silent), ``weight`` ``[M, N]``. Returns
    ``t_out`` ``[P, M]``, the first step ``t <= last`` with ``sum_{i: t_i <= t} w_ji > theta`` (T
    if none), and ``v`` ``[P, M]``, the potential at that step (at the end of the window if silent).
    ``numba`` (default: on CPU) runs the per-row loop :func:`_fire_once_rows`; otherwise the
    vectorised form: a cumulative sum over the time-sorted weight rows ``[P, K, M]``.
    """
    P, M = t_in.shape[0], weight.shape[0]
    t_out = torch.full((P, M), float(T), dtype=weight.dtype, device=weight.device)
    v_out = torch.zeros((P, M), dtype=weight.dtype, device=weight.device)
    if _use_numba(numba, weight.device):
        _fire_once_rows(_np(t_in, weight.dtype), _np(weight.t(), weight.dtype),
                        weight.new_tensor(theta).numpy()[()], T, last, t_out.numpy(), v_out.numpy())
        return t_out, v_out
    valid = t_in <= last
    K = int(valid.sum(1).max()) if P else 0
    if K == 0:
        return t_out, v_out
    ts, order = torch.where(valid, t_in, torch.full_like(t_in, math.inf)).sort(dim=1)
    ts, order = ts[:, :K].to(weight.dtype), order[:, :K]
    wt = weight.t()
    step = max(1, chunk // (K * M))
    for s in range(0, P, step):
        tc, ok = ts[s:s + step], ts[s:s + step] <= last
        v = wt[order[s:s + step]]                       # [p, K, M] weights in arrival order
        v.mul_(ok.unsqueeze(-1))
        v = v.cumsum_(1)
        end = ok.clone()                                # last input of its time step
        end[:, :-1] &= tc[:, 1:] != tc[:, :-1]
        cross = (v > theta) & end.unsqueeze(-1)
        fired = cross.any(1)
        first = cross.to(torch.uint8).argmax(1)         # the first maximum: first crossing
        t_out[s:s + step] = torch.where(fired, tc.gather(1, first), t_out[s:s + step])
        v_out[s:s + step] = torch.where(fired, v.gather(1, first.unsqueeze(1)).squeeze(1), v[:, -1])
    return t_out, v_out


def spike_once_linear_stepped(t_in: torch.Tensor, weight: torch.Tensor, theta: float, T: int,
                              last: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense reference: step t = 0..last, ``v += W s[t]``, spike if ``v > theta`` and not yet fired.
    Returns ``t_out`` ``[P, M]`` and the spike raster ``[last + 1, P, M]``."""
    P, M = t_in.shape[0], weight.shape[0]
    v = torch.zeros((P, M), dtype=weight.dtype)
    fired = torch.zeros((P, M), dtype=torch.bool)
    raster = torch.zeros((max(last + 1, 0), P, M), dtype=weight.dtype)
    t_out = torch.full((P, M), float(T), dtype=weight.dtype)
    for t in range(last + 1):
        v = v + (t_in == t).to(weight.dtype) @ weight.t()
        spike = (v > theta) & ~fired
        raster[t] = spike.to(weight.dtype)
        t_out[spike] = float(t)
        fired |= spike
    return t_out, raster


# ----------------------------------------------------------------------------- update
def stdp_window(t_pre: torch.Tensor, t_post: torch.Tensor, T: int, A: float, B: float,
                tau: float) -> torch.Tensor:
    """``eps(t_pre - t_post)``: +A when the pre spike came at or before the post one (and the pre
    neuron fired at all, t_pre < T), -B otherwise; times ``exp(-|dt| / tau)`` when tau > 0."""
    causal = (t_pre <= t_post) & (t_pre < T)
    eps = torch.where(causal, torch.full_like(t_post, A), torch.full_like(t_post, -B))
    if tau > 0:
        eps = eps * torch.exp(-(t_pre - t_post).abs() / tau)
    return eps


def stdp_weight_sum(t_in: torch.Tensor, t_out: torch.Tensor, err: torch.Tensor, T: int, A: float,
                    B: float, tau: float, numba: bool | None = None, chunk: int = CHUNK) -> torch.Tensor:
    """``S[i, j] = sum_p err[p, j] eps(t_in[p, i] - t_out[p, j])`` over pseudo-samples p (samples,
    or samples x positions of a conv) -> ``[N, M]``.

    eps depends on t_in only through its value in 0..T, so the table ``E[p, t, j] = err[p, j]
    eps(t - t_out[p, j])`` is built once per row and read at ``t = t_in[p, i]``: O(P (T+1) M +
    P N M) without a ``[P, M, N]`` tensor (numba loop :func:`_stdp_rows` on CPU, an embedding
    bag otherwise).
    """
    P, N = t_in.shape
    M = t_out.shape[1]
    S = torch.zeros((N, M), dtype=err.dtype, device=err.device)
    if _use_numba(numba, err.device):
        one = err.new_tensor(1.0).numpy()[()]
        _stdp_rows(_np(t_in, err.dtype), _np(t_out, err.dtype), _np(err, err.dtype), T, one * A, one * B,
                   one * tau, S.numpy())
        return S
    tt = torch.arange(T + 1, dtype=err.dtype, device=err.device).view(1, T + 1, 1)
    step = max(1, chunk // ((T + 1) * M))
    for s in range(0, P, step):
        to, e = t_out[s:s + step], err[s:s + step]
        p = to.shape[0]
        table = stdp_window(tt, to.unsqueeze(1), T, A, B, tau) * e.unsqueeze(1)     # [p, T+1, M]
        idx = torch.arange(p, device=err.device).unsqueeze(1) * (T + 1) + t_in[s:s + step].clamp(max=T).long()
        S += F.embedding_bag(idx.t().contiguous(), table.reshape(p * (T + 1), M), mode="sum")
    return S


def propagate_error(t_in: torch.Tensor, t_out: torch.Tensor, err: torch.Tensor, weight: torch.Tensor,
                    T: int, numba: bool | None = None, chunk: int = CHUNK) -> torch.Tensor:
    """``dL/dt_in[p, i] = sum_j err[p, j] w_ji 1[t_in <= t_out_j] 1[t_in < T]`` -> ``[P, N]``."""
    P, N = t_in.shape
    M = t_out.shape[1]
    out = torch.zeros((P, N), dtype=err.dtype, device=err.device)
    if _use_numba(numba, err.device):
        _propagate_rows(_np(t_in, err.dtype), _np(t_out, err.dtype), _np(err, err.dtype),
                        _np(weight, err.dtype), T, out.numpy())
        return out
    step = max(1, chunk // (M * N))
    for s in range(0, P, step):
        ti, to = t_in[s:s + step].unsqueeze(1), t_out[s:s + step].unsqueeze(2)
        causal = ((ti <= to) & (ti < T)).to(err.dtype) * weight                       # [p, M, N]
        out[s:s + step] = torch.bmm(err[s:s + step].unsqueeze(1), causal).squeeze(1)
    return out


def normalise(err: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 normalisation over every neuron of a layer (the code adds 1e-10)."""
    norm = err.flatten(1).norm(dim=1) + 1e-10
    return err / norm.view(-1, *([1] * (err.dim() - 1)))


# ----------------------------------------------------------------------------- numba kernels (CPU)
# The CPU path of the three dispatchers above (spike_once_linear, stdp_weight_sum,
# propagate_error): one loop per row, no [P, K, M] / [P, T+1, M] / [P, M, N] intermediates.
# Single-threaded (no prange): runs share the machine, and the suite parallelises over cells.


@njit(cache=True, nogil=True)
def _fire_once_rows(t_in, wt, theta, T, last, t_out, v_out):
    """Event-driven loop per row p: the in-window inputs sorted by time, their weight rows added
    in that order, the threshold tested after the last input of each step; stops when every
    neuron has fired. ``t_out`` comes in filled with T."""
    M = wt.shape[1]
    v = np.empty(M, dtype=wt.dtype)
    for p in range(t_in.shape[0]):
        idx = np.nonzero(t_in[p] <= last)[0]
        idx = idx[np.argsort(t_in[p][idx], kind="mergesort")]
        v[:] = 0
        left, k, n = M, 0, idx.shape[0]
        while k < n and left > 0:
            t = t_in[p, idx[k]]
            while k < n and t_in[p, idx[k]] == t:
                row = wt[idx[k]]
                for j in range(M):
                    v[j] += row[j]
                k += 1
            for j in range(M):
                if v[j] > theta and t < t_out[p, j]:
                    t_out[p, j] = t
                    v_out[p, j] = v[j]
                    left -= 1
        if left > 0:                      # silent neurons report the potential at the end
            for j in range(M):
                if t_out[p, j] >= T:
                    v_out[p, j] = v[j]


@njit(cache=True, nogil=True)
def _stdp_rows(t_in, t_out, err, T, A, B, tau, S):
    """``S[i, j] += err[p, j] eps(t_in[p, i] - t_out[p, j])`` for every row p, through the per-row
    table ``E[t, j] = err[p, j] eps(t - t_out[p, j])``, built for the input times that occur."""
    M = t_out.shape[1]
    E = np.empty((T + 1, M), dtype=S.dtype)
    state = np.empty(T + 1, dtype=np.int8)         # 0: not built, 1: all zero, 2: live
    for p in range(t_in.shape[0]):
        nz = False
        for j in range(M):
            if err[p, j] != 0:
                nz = True
        if not nz:                                 # a sample without error changes nothing
            continue
        state[:] = 0
        for i in range(t_in.shape[1]):
            t = min(int(t_in[p, i]), T)
            if state[t] == 0:
                state[t] = 1
                for j in range(M):
                    d = t - t_out[p, j]
                    e = A if (d <= 0 and t < T) else -B
                    if tau > 0:
                        e *= np.exp(-abs(d) / tau)
                    E[t, j] = e * err[p, j]
                    if E[t, j] != 0:
                        state[t] = 2
            if state[t] == 2:                      # e.g. B = 0: inputs after every erring post skip
                row = E[t]
                out = S[i]
                for j in range(M):
                    out[j] += row[j]


@njit(cache=True, nogil=True)
def _propagate_rows(t_in, t_out, err, w, T, out):
    """``out[p, i] = sum_j err[p, j] w[j, i] 1[t_in <= t_out_j] 1[t_in < T]``."""
    for p in range(t_in.shape[0]):
        for j in range(w.shape[0]):
            e, tj = err[p, j], t_out[p, j]
            if e == 0:
                continue
            row = w[j]
            for i in range(t_in.shape[1]):
                ti = t_in[p, i]
                if ti <= tj and ti < T:
                    out[p, i] += e * row[i]


def _np(x: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    return x.detach().to(dtype).contiguous().numpy()


# ----------------------------------------------------------------------------- layers
class SpikeOnceLayer(nn.Module):
    """Weights + fire-once IF neurons. Subclasses map inputs to pseudo-samples ``[P, N]``
    (rows of one weight matrix ``[M, N]``) and back."""

    def __init__(self, shape: tuple[int, ...], init_range: float):
        super().__init__()
        self.init_range = float(init_range)
        self.weight = nn.Parameter(torch.rand(shape) * self.init_range, requires_grad=False)
        self.register_buffer("fire_count", torch.zeros(shape[0]))
        self.register_buffer("fire_samples", torch.zeros(()))

    @property
    def matrix(self) -> torch.Tensor:
        return self.weight.reshape(self.weight.shape[0], -1)

    def run(self, t: torch.Tensor, T: int, last: int, theta: float):
        t_out, v = spike_once_linear(self.to_patches(t, T), self.matrix, theta, T, last)
        B = t.shape[0]
        return self.from_patches(t_out, B), self.from_patches(v, B)

    def count_fired(self, t_out: torch.Tensor, T: int) -> None:
        fired = (t_out < T).flatten(2).any(2) if t_out.dim() > 2 else t_out < T
        self.fire_count += fired.sum(0).to(self.fire_count.dtype)
        self.fire_samples += t_out.shape[0]

    def reinit_dead(self, fraction: float, generator: torch.Generator) -> int:
        dead = self.fire_count < fraction * float(self.fire_samples)
        n = int(dead.sum())
        if n:
            fresh = torch.rand((n, *self.weight.shape[1:]), generator=generator) * self.init_range
            self.weight[dead] = fresh.to(self.weight.device, self.weight.dtype)
        self.fire_count.zero_()
        self.fire_samples.zero_()
        return n


class SpikeOnceLinear(SpikeOnceLayer):
    """Fully connected; the input is flattened."""

    def __init__(self, n_in: int, n_out: int, init_range: float):
        super().__init__((n_out, n_in), init_range)

    def to_patches(self, t, T):
        return t.flatten(1)

    def from_patches(self, y, B):
        return y

    def fold(self, g, in_shape, T):
        return g.reshape(in_shape)


class SpikeOnceConv2d(SpikeOnceLayer):
    """Convolution as a linear layer over unfolded patches; padding inputs are silent (time T)."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, padding: int, out_hw: tuple[int, int],
                 init_range: float):
        super().__init__((c_out, c_in, k, k), init_range)
        self.k, self.stride, self.padding, self.out_hw = k, stride, padding, tuple(out_hw)

    def to_patches(self, t, T):
        if self.padding:
            t = F.pad(t, (self.padding,) * 4, value=float(T))
        cols = F.unfold(t, self.k, stride=self.stride)                 # [B, N, L]
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])

    def from_patches(self, y, B):
        return y.reshape(B, -1, y.shape[1]).transpose(1, 2).reshape(B, y.shape[1], *self.out_hw)

    def to_rows(self, y):
        """Output-shaped ``[B, M, H, W]`` -> ``[B*L, M]`` (inverse of ``from_patches``)."""
        return y.flatten(2).transpose(1, 2).reshape(-1, y.shape[1])

    def fold(self, g, in_shape, T):
        B, C, H, W = in_shape
        p = self.padding
        cols = g.reshape(B, -1, g.shape[1]).transpose(1, 2)
        full = F.fold(cols, (H + 2 * p, W + 2 * p), self.k, stride=self.stride)
        return full[:, :, p:p + H, p:p + W]


class EarliestSpikePool2d(nn.Module):
    """Min-time pooling: an output spikes when the first of its inputs spikes."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def run(self, t, T, last, theta):
        return -F.max_pool2d(-t, self.k), None

    def backward(self, t_in, err):
        _, idx = F.max_pool2d(-t_in, self.k, return_indices=True)
        return F.max_unpool2d(err, idx, self.k, output_size=t_in.shape[-2:])


class SSTDPNet(nn.Module):
    """A stack of fire-once layers mapping input spike times to output spike times."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def simulate(self, t_in: torch.Tensor, T: int, last: int, theta: float):
        """Output times ``[B, C]``, output potentials ``[B, C]`` and the times entering and
        leaving every layer."""
        trace, t, v = [], t_in, None
        for layer in self.layers:
            t_next, v_next = layer.run(t, T, last, theta)
            trace.append((t, t_next))
            t, v = t_next, (v_next if v_next is not None else v)
        return t, v, trace


def _rows(layer: SpikeOnceLayer, y: torch.Tensor) -> torch.Tensor:
    return layer.to_rows(y) if isinstance(layer, SpikeOnceConv2d) else y


def learning_rate(hp: dict, epoch: int, epochs: int) -> float:
    """``lr`` (``lr_schedule = "none"``) or ``lr (1 + cos(pi epoch / epochs)) / 2`` ("cosine")."""
    if hp["lr_schedule"] == "none":
        return float(hp["lr"])
    if hp["lr_schedule"] == "cosine":
        return float(hp["lr"]) * 0.5 * (1.0 + math.cos(math.pi * epoch / max(epochs, 1)))
    raise ValueError(f"lr_schedule {hp['lr_schedule']!r}: expected 'none' or 'cosine'")


def init_ranges(spec: str, fan_ins: list[int], theta: float) -> list[float]:
    """``U[0, r)`` range per weight layer from ``init_range`` ("auto" or comma-separated)."""
    if str(spec).strip().lower() == "auto":
        # mean weight theta / n: n inputs reach threshold, n = 5 % of the fan-in (at least 12) for
        # hidden layers and 1 % (at least 4) for the output layer
        out = len(fan_ins) - 1
        return [2.0 * theta / (max(0.01 * f, 4.0) if i == out else max(0.05 * f, 12.0)) for i, f in enumerate(fan_ins)]
    vals = [float(v) for v in str(spec).split(",") if v.strip()]
    if len(vals) != len(fan_ins):
        raise ValueError(f"init_range {spec!r} gives {len(vals)} range(s) for {len(fan_ins)} weight layers; "
                         f"give {len(fan_ins)} comma-separated values or 'auto'")
    return vals


def build_net(arch: ArchSpec, input_shape, n_classes: int, hp: dict) -> SSTDPNet:
    if arch.family != "sequential":
        raise ValueError(f"sstdp builds sequential specs only, not {arch.name!r} ({arch.family})")
    specs = [(layer, i, o) for layer, i, o in layer_shapes(arch, input_shape, n_classes) if layer.kind != "dropout"]
    fan_ins = [(i[0] * layer.k * layer.k if layer.kind == "conv" else math.prod(i))
               for layer, i, o in specs if layer.kind in ("conv", "fc")]
    ranges = iter(init_ranges(hp["init_range"], fan_ins, hp["theta"]))
    mods: list[nn.Module] = []
    for layer, in_shape, out_shape in specs:
        if layer.kind == "conv":
            mods.append(SpikeOnceConv2d(in_shape[0], layer.out, layer.k, layer.stride, layer.padding,
                                        out_shape[1:], next(ranges)))
        elif layer.kind == "fc":
            mods.append(SpikeOnceLinear(math.prod(in_shape), layer.out, next(ranges)))
        elif layer.kind == "pool":
            mods.append(EarliestSpikePool2d(layer.k))
    return SSTDPNet(mods)


# ----------------------------------------------------------------------------- the rule
class SSTDP(Rule):
    name = "sstdp"
    version = "0.2.0"  # 0.2: dead-neuron re-initialisation off by default (the official code's is a no-op)
    paper = ("Liu, Zhao, Chen, Wang, Yang, Jiang (2021). SSTDP: Supervised Spike Timing Dependent "
             "Plasticity for Efficient Spiking Neural Network Training. Front. Neurosci. 15:756876")
    neuron = "IF"
    encoding = "ttfs"
    defaults = DEFAULTS
    search_space = SEARCH_SPACE

    def supports(self, arch, dataset):
        # TTFS codes a static intensity; event streams (frames over time) have none
        return arch.family == "sequential" and dataset not in EVENT_DATASETS

    def build(self, arch, input_shape, n_classes, backend, hp):
        return build_net(arch, tuple(input_shape), n_classes, hp)

    def configure_optimizer(self, model, ctx):
        return None, None, "epoch"   # the update is done in train_step

    # ------------------------------------------------------------------ running
    def simulate(self, model: SSTDPNet, x: torch.Tensor, T: int, hp: dict):
        t_in = ttfs_times(x.to(torch.get_default_dtype()), T)
        return model.simulate(t_in, T, last_step(T, int(hp["window_margin"])), float(hp["theta"]))

    def decode(self, t_out: torch.Tensor, v: torch.Tensor, hp: dict) -> torch.Tensor:
        """Logits: earliest spike first; ties broken by potential (in (0, 0.5), never across times)."""
        logits = -t_out
        if hp["tie_break"] == "potential":
            theta = float(hp["theta"])
            logits = logits + 0.5 * torch.sigmoid((v - theta) / theta)
        elif hp["tie_break"] != "index":
            raise ValueError(f"tie_break {hp['tie_break']!r}: expected 'potential' or 'index'")
        return logits

    def forward(self, model, x, T, ctx):
        """Output spike raster ``[T, B, C]`` (one spike per neuron at most)."""
        t_out, _, _ = self.simulate(model, x, T, ctx.hp)
        steps = torch.arange(T, dtype=t_out.dtype, device=t_out.device).view(T, 1, 1)
        return (steps == t_out.unsqueeze(0)).to(t_out.dtype)

    def readout(self, outputs):
        """Causal: at step t, a neuron that has fired at s <= t scores T - s; silent ones score 0."""
        T = outputs.shape[0]
        weight = (T - torch.arange(T, dtype=outputs.dtype, device=outputs.device)).view(T, 1, 1)
        return (outputs * weight).cumsum(0)

    @torch.no_grad()
    def train_step(self, model, batch, optimizer, ctx):
        x, y = batch
        hp, T = ctx.hp, ctx.T
        t_out, v, trace = self.simulate(model, x, T, hp)
        target = time_targets(t_out, y, T, float(hp["delta"]))
        loss = float(((t_out - target) ** 2).mean())
        acc = float((self.decode(t_out, v, hp).argmax(1) == y).float().mean())
        err, grads = t_out - target, []
        weight_layers = [m for m in model.layers if isinstance(m, SpikeOnceLayer)]
        for layer, (t_i, t_o) in zip(reversed(model.layers), reversed(trace)):
            if isinstance(layer, EarliestSpikePool2d):
                err = layer.backward(t_i, err)
                continue
            err = normalise(err)
            ti_rows, to_rows, e_rows = layer.to_patches(t_i, T), _rows(layer, t_o), _rows(layer, err)
            S = stdp_weight_sum(ti_rows, to_rows, e_rows, T, hp["A"], hp["B"], hp["stdp_tau"])
            grads.append((layer, S))
            if layer is not weight_layers[0]:
                err = layer.fold(propagate_error(ti_rows, to_rows, e_rows, layer.matrix, T), t_i.shape, T)
        # SGD on G = -S^T / batch: W <- W - lr (G + wd W), every layer after all errors are known
        lr = learning_rate(hp, ctx.epoch, ctx.epochs)
        for layer, S in grads:
            layer.weight.mul_(1.0 - lr * hp["weight_decay"])
            layer.weight.add_(S.t().reshape(layer.weight.shape), alpha=lr / x.shape[0])
        for layer, (_, t_o) in zip(model.layers, trace):
            if isinstance(layer, SpikeOnceLayer) and layer is not weight_layers[-1]:
                layer.count_fired(t_o, T)
        stats = {"loss": loss, "train_acc": acc, "silent_out": float((t_out >= T).all(1).float().mean())}
        if (hp["reinit_below"] > 0 and (ctx.step + 1) % max(ctx.steps_per_epoch, 1) == 0
                and ctx.epoch < ctx.epochs - 1):
            stats["reinit"] = float(sum(layer.reinit_dead(hp["reinit_below"], ctx.generator)
                                        for layer in weight_layers[:-1]))
        return stats

    @torch.no_grad()
    def evaluate(self, model, x, timesteps, ctx):
        """Logits ``[len(timesteps), B, C]``: each T re-encodes the input with its own window."""
        recorder = getattr(model, "_sstdp_recorder", None)
        out = []
        for T in timesteps:
            t_out, v, trace = self.simulate(model, x, T, ctx.hp)
            out.append(self.decode(t_out, v, ctx.hp))
            if recorder is not None:
                recorder.record(T, model, trace, t_out, last_step(T, int(ctx.hp["window_margin"])))
        return torch.stack(out)

    def op_counter(self, model, T, batch_size):
        return EventOpCounter(model, T, batch_size)


# ----------------------------------------------------------------------------- op counting
def synaptic_events(t_in_rows: torch.Tensor, t_out_rows: torch.Tensor, last: int) -> tuple[float, float]:
    """(events reaching a not-yet-fired post neuron, events x full fan-out) summed over rows:
    an in-window input spike at t_i reaches post neuron j iff ``t_i <= t_j``."""
    valid = t_in_rows <= last
    post_sorted = t_out_rows.sort(dim=1).values.contiguous()
    earlier = torch.searchsorted(post_sorted, t_in_rows.contiguous(), side="left")   # posts with t_j < t_i
    reach = (t_out_rows.shape[1] - earlier) * valid
    return float(reach.sum()), float(valid.sum()) * t_out_rows.shape[1]


@dataclass
class EventOpCounter:
    """Counts of the event-driven simulation, per T (each T is its own simulation). Same
    interface and keys as :class:`suite.opcount.OpCounter` (``at(T)``); MACs are zero."""

    model: nn.Module
    T: int
    batch_size: int
    energy: object = None
    samples: dict = field(default_factory=dict)      # T -> samples seen
    totals: dict = field(default_factory=dict)       # T -> {key: float}

    def __post_init__(self):
        from suite.opcount import energy_model

        self.energy = energy_model(self.energy)

    def __enter__(self):
        object.__setattr__(self.model, "_sstdp_recorder", self)
        return self

    def __exit__(self, *exc):
        self.model.__dict__.pop("_sstdp_recorder", None)

    def next_batch(self, batch_size: int):
        self.batch_size = batch_size

    def record(self, T: int, model: SSTDPNet, trace, t_out: torch.Tensor, last: int) -> None:
        B = t_out.shape[0]
        self.samples[T] = self.samples.get(T, 0) + B
        tot = self.totals.setdefault(T, {})

        def add(key, value):
            tot[key] = tot.get(key, 0.0) + float(value)

        for i, (layer, (t_i, t_o)) in enumerate(zip(model.layers, trace)):
            if not isinstance(layer, SpikeOnceLayer):
                continue
            name = f"layers.{i}"
            rows_in, rows_out = layer.to_patches(t_i, T), _rows(layer, t_o)
            reach, no_skip = synaptic_events(rows_in, rows_out, last)
            add(f"{name}/synops", reach)
            add(f"{name}/synops_no_skip", no_skip)
            add(f"{name}/in_spikes", (t_i <= last).sum())
            add(f"{name}/spikes", (t_o <= last).sum())
            add(f"{name}/dense", rows_in.shape[0] * rows_in.shape[1] * rows_out.shape[1])
            tot[f"{name}/in_size"] = t_i[0].numel()
            tot[f"{name}/neurons"] = t_o[0].numel()
            tot[f"{name}/kind"] = "conv" if isinstance(layer, SpikeOnceConv2d) else "linear"
        first = t_out.min(1).values
        add("silent", (first >= T).sum())
        add("ties", ((t_out == first.unsqueeze(1)).sum(1) > 1).sum())
        add("first_spike", first.sum())

    def at(self, T: int | None, energy=None) -> dict:
        from suite.opcount import energy_model

        T = self.T if T is None else int(T)
        if T not in self.totals:
            raise KeyError(f"sstdp: no evaluation was recorded at T={T} (recorded: {sorted(self.totals)})")
        em = self.energy if energy is None else energy_model(energy)
        n, tot = max(self.samples[T], 1), self.totals[T]
        names = sorted({k.split("/")[0] for k in tot if k.startswith("layers.")}, key=lambda s: int(s.split(".")[1]))
        layers, acts, rates = {}, {}, {}
        spikes = slots = 0.0
        for name in names:
            syn = tot[f"{name}/synops"] / n
            size = tot[f"{name}/in_size"] * T
            layers[name] = {"kind": tot[f"{name}/kind"], "module": "SpikeOnce", "synops": syn,
                            "synops_no_skip": tot[f"{name}/synops_no_skip"] / n, "macs": 0.0,
                            "macs_effective": 0.0, "dense_ops": tot[f"{name}/dense"] / n * T,
                            "input_density": tot[f"{name}/in_spikes"] / n / size if size else None,
                            "energy_pj": em.energy(0.0, syn)}
            s, neurons = tot[f"{name}/spikes"] / n, tot[f"{name}/neurons"]
            rates[name] = s / (neurons * T)
            acts[name] = {"kind": "spiking", "module": "SpikeOnce", "neurons": neurons, "spikes": s,
                          "rate": rates[name], "sparsity": 1.0 - rates[name], "fired_fraction": s / neurons,
                          "updates": 0.0}
            spikes, slots = spikes + s, slots + neurons * T
        synops = sum(v["synops"] for v in layers.values())
        return {"synops": synops, "macs": 0.0, "macs_effective": 0.0,
                "dense_ops": sum(v["dense_ops"] for v in layers.values()),
                "spikes_per_sample": spikes, "neuron_updates": 0.0,
                "activation_sparsity": 1.0 - spikes / slots if slots else None,
                "energy_pj": em.energy(0.0, synops),
                "energy_breakdown": {"mac": 0.0, "ac": em.ac_pj * synops, "neuron": 0.0},
                "energy_model": em.as_dict(), "layers": layers, "spike_rates": rates, "activations": acts,
                "simulation": "event-driven",
                "decision": {"mean_first_spike": tot["first_spike"] / n, "ties": tot["ties"] / n,
                             "silent": tot["silent"] / n}}


# ----------------------------------------------------------------------------- registry
ARCHS = [
    ArchSpec("sstdp_mlp400", "400", "SSTDP MNIST MLP 784-400-10 (official code)"),
    ArchSpec("sstdp_cifar10_cnn", "64C3p1-M2-128C3p1-M2-256C3p1-M2-512",
             "CIFAR-10 conv net for SSTDP (ours: the paper does not give its network)"),
    ArchSpec("sstdp_caltech_cnn", "16C5s2-M2-32C5-M2-128",
             "Caltech-101 Face/Motorbike conv net for SSTDP, 1x160x250 grey (ours: not given in the paper)"),
]

PRESETS = [
    {"name": "sstdp/mnist", "rule": "sstdp", "dataset": "mnist", "arch": "sstdp_mlp400",
     "timesteps": [16, 32, 64, 128, 255], "epochs": 100, "batch_size": 64,
     "options": {"init_range": "5,48", "weight_decay": 1e-6},
     "note": "paper: 98.1 % (784-400-10, T=255, 100 epochs, lr 10, theta 100; wd: script default 1e-6, "
             "README 1e-5)"},
    {"name": "sstdp/mnist-cosine", "rule": "sstdp", "dataset": "mnist", "arch": "sstdp_mlp400",
     "timesteps": [16, 32, 64, 128, 255], "epochs": 100, "batch_size": 64,
     "options": {"init_range": "5,48", "weight_decay": 1e-6, "lr_schedule": "cosine"},
     "note": "sstdp/mnist with a cosine lr decay (ours, not in the paper or code); measured with the old "
             "re-initialisation on (95.27 % mean; those superseded rows left the tree, git history keeps them: commit f08bd5e, benchmarks/results/sstdp/mnist-cosine-reinit)"},
    {"name": "sstdp/mnist-cpu", "rule": "sstdp", "dataset": "mnist", "arch": "sstdp_mlp400",
     "timesteps": [16, 32, 64, 128, 255], "epochs": 20, "batch_size": 64,
     "options": {"init_range": "5,48", "weight_decay": 1e-6},
     "note": "the paper's MNIST settings, 20 epochs instead of 100"},
    {"name": "sstdp/digits", "rule": "sstdp", "dataset": "digits", "arch": "mlp128",
     "timesteps": [16, 32, 64, 128, 255], "epochs": 10, "batch_size": 32, "options": {"init_range": "15,25"},
     "note": "quick check on the embedded 8x8 digits (init ranges and batch 32 ours: 64-128-10)"},
    {"name": "sstdp/cifar10", "rule": "sstdp", "dataset": "cifar10", "arch": "sstdp_cifar10_cnn",
     "timesteps": [255], "epochs": 100, "batch_size": 64, "options": {},
     "note": "paper: 91.3 % with a network it does not give (this one is ours); needs the CIFAR-10 files "
             "(snn-suite data download cifar10)"},
    {"name": "sstdp/caltech101", "rule": "sstdp", "dataset": "caltech101", "arch": "sstdp_caltech_cnn",
     "timesteps": [255], "epochs": 100, "batch_size": 16, "options": {},
     "input_shape": [1, 160, 250], "n_classes": 2,
     "note": "paper: 99.3 % on Caltech-101 (presumably the Face/Motorbike pair); network and input size "
             "ours; needs a dataset plugin providing 'caltech101'"},
]


@hookimpl
def snn_suite_rules():
    return [SSTDP()]


@hookimpl
def snn_suite_archs():
    return list(ARCHS)


@hookimpl
def snn_suite_presets():
    return [dict(p) for p in PRESETS]
