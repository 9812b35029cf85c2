"""Operation counts and energy from one evaluation pass, at every T of the sweep.

Forward hooks on every ``nn.Linear`` / ``nn.Conv1d/2d/3d`` see the layer's input. Inputs arrive
time-major, either merged (``[T*B, ...]``, as :class:`suite.archs.TimeDistributed` does) or one
step per call (``[B, ...]``). Per step, per layer and per sample we count

* **SynOps (ACs)** when the input is event-like: one accumulate per input event per
  connection it drives,

      SynOps_l[t] = sum_i |o_i^{l-1}[t]| * fanout_i,

  i.e. nnz x fan-out for binary spikes; for a conv the exact count is
  ``conv(|o|, ones_like(W))`` summed, which handles padding, stride and borders. Spikes
  averaged by a pooling layer (values k / window) are scaled back to spike counts first: a
  spike reaching the next layer through an average pool costs the same accumulates as one
  reaching it directly (the 1/window factor folds into the weights);
  Whether the network's *input* is events is declared, not read from values
  (``input_events``, which the host sets from the rule's encoding and the dataset kind): a
  binarised image is analog input all the same. The input layer is the first weight layer that
  runs. Inside a network with spiking layers, inputs are events when integer-valued (spikes,
  signed spikes, or spikes summed by a residual addition); inside a network without any (an
  ANN), they are analog whatever their values;
* **MACs** otherwise (analog input: the first layer of a direct-coded SNN, every ANN layer):
  the dense count ``output elements x fan-in`` (padding included, the usual MAC/FLOP
  convention), plus ``macs_effective``: only pairs of a non-zero input and a non-zero weight
  (NeuroBench's "Effective_MACs"), which skips the zeros a ReLU produces;
* ``dense_ops``: the dense count for every layer whatever its input (the same network run as
  an ANN, once per step) and ``input_density``: the fraction of non-zero inputs.

**Residual joins** (modules with ``residual_join = True``, :class:`suite.archs.ResidualAdd`:
``main + shortcut``) are entries of ``layers`` of kind ``"add"``. The main operand is the current
a weight layer just produced (already counted there; it lands in the same membrane). The
shortcut costs, per step and sample: when it is events (the spikes of the block's input
neurons), one accumulate per event (``sum |s|``, in ``synops``: a synapse of weight 1, or the
conversion's scale, onto one neuron); when analog (an ANN's activations, or a projection
shortcut's current), one addition per element, counted as ``adds`` and priced like an
accumulate (an fp32 add, Horowitz 2014). ``dense_ops`` of an add is its element count.

Modules with ``records_spikes = True`` report their output ``[T, B, ...]`` (or ``[B, ...]`` per
call) as spikes: per layer spike rate ``spikes / (neurons x T)``, activation sparsity
``1 - rate`` and neuron-state updates ``neurons x T`` (a time-driven simulation updates every
membrane once per step). ReLU-family activations of ANNs give their activation sparsity.

Energy (:class:`EnergyModel`, default 45 nm 32-bit float from Horowitz, "Computing's energy
problem (and what we can do about it)", ISSCC 2014: multiply 3.7 pJ + add 0.9 pJ, so a MAC
costs 4.6 pJ and an accumulate 0.9 pJ)::

    E = e_MAC * MACs + e_AC * SynOps + e_neuron * neuron updates      (e_neuron = 0 by default)

the convention of the SNN literature (memory traffic and neuron updates ignored, the latter
reported separately). Pick another model with ``OpCounter(..., energy="45nm_int8")``,
``energy="mac=3.2,ac=0.1"`` or the environment variable ``SNN_SUITE_ENERGY``.

Definitions compared with the peers (tests/test_opcount.py checks the numbers):
NeuroBench's ``SynapticOperations`` counts a layer as AC only when every input is in {0, 1, -1}
and counts only non-zero weights; its "Dense" excludes padded positions. SpikingJelly's
``SynOpCounter`` counts binary ({0, 1}) inputs as ``conv(x, ones)``, like ours, and its
``MACCounter`` counts dense MACs with padding, like ours. Both count event counts > 1 (pooled or
summed spikes) as MACs, which we count as accumulates.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

#: energy per operation in pJ, 45 nm (Horowitz, ISSCC 2014): 32-bit float MAC 4.6 pJ, AC 0.9 pJ
ENERGY_45NM = {"mac": 4.6, "ac": 0.9}

HOROWITZ_2014 = ("M. Horowitz, Computing's energy problem (and what we can do about it), "
                 "ISSCC 2014, doi:10.1109/ISSCC.2014.6757323 (45 nm, 0.9 V)")


@dataclass(frozen=True)
class EnergyModel:
    """Energy per operation in pJ. A MAC is one multiply plus one add; an AC one add."""

    name: str
    mac_pj: float
    ac_pj: float
    neuron_pj: float = 0.0
    source: str = HOROWITZ_2014

    def energy(self, macs: float, synops: float, neuron_updates: float = 0.0) -> float:
        return self.mac_pj * macs + self.ac_pj * synops + self.neuron_pj * neuron_updates

    def as_dict(self) -> dict:
        return {"name": self.name, "mac_pj": self.mac_pj, "ac_pj": self.ac_pj, "neuron_pj": self.neuron_pj,
                "source": self.source}


#: Horowitz 2014 (45 nm): int add 8b 0.03 / 32b 0.1 pJ, int mult 8b 0.2 / 32b 3.1 pJ,
#: float add 16b 0.4 / 32b 0.9 pJ, float mult 16b 1.1 / 32b 3.7 pJ.
ENERGY_MODELS = {
    "45nm_fp32": EnergyModel("45nm_fp32", 3.7 + 0.9, 0.9),
    "45nm_fp16": EnergyModel("45nm_fp16", 1.1 + 0.4, 0.4),
    "45nm_int32": EnergyModel("45nm_int32", 3.1 + 0.1, 0.1),
    "45nm_int8": EnergyModel("45nm_int8", 0.2 + 0.03, 0.03),
}
DEFAULT_ENERGY = "45nm_fp32"


def energy_model(spec: "str | dict | EnergyModel | None" = None) -> EnergyModel:
    """An :class:`EnergyModel` from a preset name (``45nm_fp32`` ...), ``"mac=4.6,ac=0.9[,neuron=0]"``,
    a dict ``{"mac": .., "ac": .., "neuron": ..}`` or ``None`` (``$SNN_SUITE_ENERGY``, else 45 nm fp32)."""
    if isinstance(spec, EnergyModel):
        return spec
    if spec is None:
        spec = os.environ.get("SNN_SUITE_ENERGY") or DEFAULT_ENERGY
    if isinstance(spec, dict):
        vals = {k.replace("_pj", ""): float(v) for k, v in spec.items() if k not in ("name", "source")}
        if not {"mac", "ac"} <= set(vals):
            raise ValueError(f"energy model {spec!r} needs 'mac' and 'ac' (pJ per operation)")
        return EnergyModel(str(spec.get("name", "custom")), vals["mac"], vals["ac"], vals.get("neuron", 0.0),
                           str(spec.get("source", "user-supplied")))
    spec = str(spec).strip()
    if spec in ENERGY_MODELS:
        return ENERGY_MODELS[spec]
    try:
        vals = {k.strip(): float(v) for k, v in (p.split("=", 1) for p in spec.split(",") if p.strip())}
        if set(vals) - {"mac", "ac", "neuron"} or not {"mac", "ac"} <= set(vals):
            raise ValueError
    except ValueError:
        raise ValueError(f"unknown energy model {spec!r}; use one of {', '.join(ENERGY_MODELS)} "
                         "or 'mac=<pJ>,ac=<pJ>[,neuron=<pJ>]'") from None
    return EnergyModel(spec, vals["mac"], vals["ac"], vals.get("neuron", 0.0), "user-supplied")


WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
AVG_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
             nn.AdaptiveAvgPool3d)
ANN_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardtanh)
_CONV = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}


def static_aware(hook):
    """Mark a forward hook as understanding :class:`suite.archs.TimeDistributed`'s static
    input (one step standing for T, ``module.static_steps``); other hooks turn that shortcut off."""
    hook.static_aware = True
    return hook


def _is_event(x: torch.Tensor) -> bool:
    """Spikes, signed spikes or event counts (integer-valued input); anything else is analog."""
    return bool((x == torch.round(x)).all())


def _conv(layer: nn.Module, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``layer``'s convolution (its stride, padding, dilation, groups) of ``x`` with weights ``w``."""
    fn = next(f for t, f in _CONV.items() if isinstance(layer, t))
    return fn(x, w, None, layer.stride, layer.padding, layer.dilation, layer.groups)


def _dense_ops(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Dense multiply count per sample for input ``x`` ``[N, ...]`` -> ``[N]``: output elements x fan-in."""
    if isinstance(layer, nn.Linear):
        return torch.full((x.shape[0],), float(layer.in_features * layer.out_features))
    out = _conv(layer, x[:1], layer.weight)
    return torch.full((x.shape[0],), float(out[0].numel() * layer.weight[0].numel()))


_CONV_INPUT_GRAD = {nn.Conv1d: torch.nn.grad.conv1d_input, nn.Conv2d: torch.nn.grad.conv2d_input,
                    nn.Conv3d: torch.nn.grad.conv3d_input}


def _cached(cache: dict | None, key, make):
    """``make()``, kept in ``cache`` under ``key`` for the rest of the pass (no cache: computed)."""
    if cache is None:
        return make()
    if key not in cache:
        cache[key] = make()
    return cache[key]


def _reach(layer: nn.Module, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Per input position, the sum over all outputs of the weights ``w`` connecting it:
    ``sum(conv(x, w)) = <x, reach>``, the conv's adjoint applied to ones (padding, stride and
    borders included). It depends on the shapes and ``w`` only."""
    out_shape = _conv(layer, x[:1], w).shape
    fn = next(f for t, f in _CONV_INPUT_GRAD.items() if isinstance(layer, t))
    return fn((1, *x.shape[1:]), w, torch.ones(out_shape, dtype=w.dtype, device=x.device),
              layer.stride, layer.padding, layer.dilation, layer.groups)[0].flatten()


def _conv_sum(layer: nn.Module, x: torch.Tensor, w: torch.Tensor, kind: str, cache: dict | None) -> torch.Tensor:
    """``conv(x, w)`` summed per sample: one product with the cached :func:`_reach` of ``w``
    (``kind`` names ``w`` in the cache), or the convolution itself where the layer pads by a string mode."""
    if isinstance(layer.padding, str):
        return _conv(layer, x, w).flatten(1).sum(1)
    reach = _cached(cache, (kind, id(layer), tuple(x.shape[1:]), layer.weight._version), lambda: _reach(layer, x, w))
    return x.flatten(1) @ reach


def _event_ops(layer: nn.Module, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
    """Exact accumulate count per sample: every input event (|count| of them at an input)
    x the outputs it reaches. For binary spikes this is nnz x fan-out. ``cache``: a dict kept for
    one evaluation pass (the weights fixed), where a conv's reach map is computed once."""
    nz = x.abs().to(torch.float32)
    if isinstance(layer, nn.Linear):
        return nz.flatten(1).sum(1) * layer.out_features
    return _conv_sum(layer, nz, torch.ones_like(layer.weight, dtype=torch.float32), "ones", cache)


def _effective_ops(layer: nn.Module, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
    """Pairs of a non-zero input and a non-zero weight per sample (NeuroBench's effective count)."""
    xb = (x != 0).to(torch.float32)
    wb = (layer.weight != 0).to(torch.float32)
    if isinstance(layer, nn.Linear):
        return (xb.reshape(-1, layer.in_features) @ wb.sum(0)).reshape(x.shape[0], -1).sum(1)
    return _conv_sum(layer, xb, wb, "nonzero", cache)


def _pool_divisor(pool: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float | None:
    """The number of inputs an average pool divides by, when it is the same for every output."""
    if isinstance(pool, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
        if getattr(pool, "divisor_override", None):
            return float(pool.divisor_override)
        dims = {nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3}[type(pool)]
        k = pool.kernel_size
        k = (k,) * dims if isinstance(k, int) else tuple(k)
        return float(math.prod(k))
    dims = {nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3}[type(pool)]
    ins, outs = x.shape[-dims:], y.shape[-dims:]
    if any(i % o for i, o in zip(ins, outs)):
        return None
    return float(math.prod(i // o for i, o in zip(ins, outs)))


@dataclass
class LayerCount:
    name: str
    kind: str                           # "linear" | "conv"
    synops: torch.Tensor                # [T] accumulated over samples, per step
    macs: torch.Tensor                  # [T]
    macs_effective: torch.Tensor = None  # [T] non-zero input x non-zero weight pairs, analog input
    dense: torch.Tensor = None           # [T] output elements x fan-in, every input
    input_nonzero: torch.Tensor = None   # [T] non-zero input values
    input_size: int = 0                  # input values per sample and step
    adds: torch.Tensor = None            # [T] analog element additions (residual joins)

    def __post_init__(self):
        for f in ("macs_effective", "dense", "input_nonzero", "adds"):
            if getattr(self, f) is None:
                setattr(self, f, torch.zeros_like(self.synops))


@dataclass
class OpCounter:
    """Context manager: ``with OpCounter(model, T, B) as oc: model(x)``; call ``oc.next_batch(B)``
    before each further batch; ``oc.at(T)`` gives per-sample counts over the first T steps.
    ``T=1`` for ANNs. ``energy``: see :func:`energy_model`."""

    model: nn.Module
    T: int
    batch_size: int
    energy: "str | dict | EnergyModel | None" = None
    #: whether the network input is events (True) or analog (False); None: judge it by its values
    input_events: bool | None = None
    layers: dict[str, LayerCount] = field(default_factory=dict)
    spikes: dict[str, torch.Tensor] = field(default_factory=dict)    # [T] spike totals per layer
    neurons: dict[str, int] = field(default_factory=dict)             # neurons per sample per layer
    activations: dict[str, torch.Tensor] = field(default_factory=dict)  # [T] non-zero ANN activations
    kinds: dict[str, str] = field(default_factory=dict)               # module class per hooked layer
    samples: int = 0
    _calls: dict[str, int] = field(default_factory=dict)
    _handles: list = field(default_factory=list)
    _pooled: dict = field(default_factory=dict)   # storage address -> (tensor, divisor): pooled spikes
    _input_layer: str | None = None               # the first weight layer that ran: it reads the input
    _maps: dict = field(default_factory=dict)     # per conv layer and input shape, for the pass: see _reach()

    def __post_init__(self):
        self.energy = energy_model(self.energy)

    def __enter__(self):
        for name, mod in self.model.named_modules():
            if isinstance(mod, WEIGHT_LAYERS):
                self.layers[name] = LayerCount(name, "linear" if isinstance(mod, nn.Linear) else "conv",
                                               torch.zeros(self.T), torch.zeros(self.T))
                self._handles.append(mod.register_forward_hook(self._weight_hook(name)))
            elif getattr(mod, "residual_join", False):
                self.layers[name] = LayerCount(name, "add", torch.zeros(self.T), torch.zeros(self.T))
                self._handles.append(mod.register_forward_hook(self._join_hook(name)))
            elif getattr(mod, "records_spikes", False):
                self.spikes[name] = torch.zeros(self.T)
                self._handles.append(mod.register_forward_hook(self._spike_hook(name)))
            elif isinstance(mod, AVG_POOLS):
                self._handles.append(mod.register_forward_hook(self._pool_hook()))
            elif isinstance(mod, ANN_ACTIVATIONS):
                self.activations[name] = torch.zeros(self.T)
                self._handles.append(mod.register_forward_hook(self._activation_hook(name)))
            else:
                continue
            self.kinds[name] = type(mod).__name__
        self.samples = self.batch_size
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._pooled.clear()
        self._maps.clear()

    def next_batch(self, batch_size: int):
        self.batch_size = batch_size
        self.samples += batch_size
        self._calls.clear()
        self._pooled.clear()

    def _steps(self, name: str, n: int) -> tuple[slice | int, int]:
        """Which step(s) an input with leading dim n covers: all T merged, or the next step."""
        if n == self.T * self.batch_size:
            return slice(None), self.T
        t = self._calls.get(name, 0)
        self._calls[name] = t + 1
        return min(t, self.T - 1), 1

    @staticmethod
    def _add(bucket: torch.Tensor, where, steps: int, per_sample: torch.Tensor) -> None:
        per_step = per_sample.reshape(steps, -1).sum(1).to("cpu", torch.float32)  # buckets live on the CPU
        bucket[where] += per_step if steps > 1 else per_step[0]

    def _declared(self, name: str) -> bool | None:
        """For the input layer, whether its input is events as declared by ``input_events``;
        None for every other layer (and when nothing was declared)."""
        if self._input_layer is None:
            self._input_layer = name
        return self.input_events if name == self._input_layer else None

    def _as_events(self, x: torch.Tensor, name: str) -> torch.Tensor | None:
        """``x`` as event counts, or None for analog input. Average-pooled spikes (recognised by
        the storage they share with the pool's output) are multiplied back by the pool's divisor."""
        declared = self._declared(name)
        if declared is not None:
            return x if declared else None
        if not self.spikes and name != self._input_layer:
            return None  # hidden layers of a network without spiking layers (an ANN): analog, whatever the values
        if _is_event(x):
            return x
        hit = self._pooled.get(x.untyped_storage().data_ptr())
        if hit is None:
            return None
        scaled = x * hit[1]
        rounded = torch.round(scaled)  # float rounding of k / window: snap, then confirm
        return rounded if bool(((scaled - rounded).abs() < 1e-4).all()) else None

    def _span(self, mod: nn.Module, name: str, x: torch.Tensor) -> tuple[slice | int, int, int]:
        """``(where, steps, copies)`` for a weight layer's input: a static input's one step
        (``mod.static_steps`` set by :class:`suite.archs.TimeDistributed`) stands for all T steps,
        each charged as if computed (``copies`` = T); otherwise :meth:`_steps`."""
        static = getattr(mod, "static_steps", None)
        if static:
            return slice(None), static, static
        return (*self._steps(name, x.shape[0]), 1)

    def _weight_hook(self, name):
        @static_aware
        def hook(mod, inputs, output):
            x = inputs[0].detach()
            where, steps, copies = self._span(mod, name, x)
            lc = self.layers[name]
            events = self._as_events(x, name)
            dense = _dense_ops(mod, x).repeat(copies)
            if events is not None:
                self._add(lc.synops, where, steps, _event_ops(mod, events, self._maps).repeat(copies))
            else:
                self._add(lc.macs, where, steps, dense)
                self._add(lc.macs_effective, where, steps, _effective_ops(mod, x, self._maps).repeat(copies))
            self._add(lc.dense, where, steps, dense)
            self._add(lc.input_nonzero, where, steps, (x != 0).flatten(1).sum(1).float().repeat(copies))
            lc.input_size = x[0].numel()
        return hook

    def _join_hook(self, name):
        def hook(mod, inputs, output):
            x = inputs[1].detach()
            if getattr(mod, "time_major", False):
                x = x.flatten(0, 1)
            where, steps = self._steps(name, x.shape[0])
            lc = self.layers[name]
            lc.input_size = x[0].numel()
            self._add(lc.dense, where, steps, torch.full((x.shape[0],), float(lc.input_size)))
            self._add(lc.input_nonzero, where, steps, (x != 0).flatten(1).sum(1).float())
            if self.spikes and _is_event(x):  # an ANN's shortcut is analog whatever its values
                self._add(lc.synops, where, steps, x.abs().flatten(1).sum(1).float())
            else:
                self._add(lc.adds, where, steps, torch.full((x.shape[0],), float(lc.input_size)))
        return hook

    def _pool_hook(self):
        @static_aware  # keeps no per-step count
        def hook(mod, inputs, output):
            self._record_pooled(mod, inputs, output)
        return hook

    def _record_pooled(self, mod, inputs, output):
        x = inputs[0].detach()
        if torch.is_tensor(output) and _is_event(x):
            div = _pool_divisor(mod, x, output)
            if div:
                # keyed by storage: the next layer sees a reshaped view of it. The reference kept
                # here stops the storage being freed and its address reused until next_batch.
                self._pooled[output.untyped_storage().data_ptr()] = (output, div)

    def _spike_hook(self, name):
        def hook(mod, inputs, output):
            s = output[0] if isinstance(output, tuple) else output
            s = s.detach()
            if s.shape[0] == self.T and s.dim() >= 2:
                self.spikes[name] += (s != 0).flatten(1).sum(1).float().cpu()
                self.neurons[name] = s[0, 0].numel()
            else:  # one step per call
                where, _ = self._steps(name + "#spk", s.shape[0])
                self.spikes[name][where] += float((s != 0).sum())
                self.neurons[name] = s[0].numel()
        return hook

    def _activation_hook(self, name):
        def hook(mod, inputs, output):
            a = output.detach()
            if a.dim() >= 2 and a.shape[0] == self.T and self.T > 1 and a.shape[1] == self.batch_size:
                a = a.flatten(0, 1)  # [T, B, ...] time-major activations
            where, steps = self._steps(name + "#act", a.shape[0])
            self._add(self.activations[name], where, steps, (a != 0).flatten(1).sum(1).float())
            self.neurons[name] = a[0].numel()
        return hook

    # ------------------------------------------------------------------ results
    def at(self, T: int | None, energy: "str | dict | EnergyModel | None" = None) -> dict:
        """Per-sample counts over the first T steps (T=None for the whole window).

        Keys: ``synops``, ``macs``, ``macs_effective``, ``dense_ops``, ``energy_pj`` (with
        ``energy_breakdown`` and ``energy_model``), ``spikes_per_sample``, ``neuron_updates``,
        ``activation_sparsity`` (all recorded activations), and per layer: ``layers`` (weight
        layers), ``spike_rates`` and ``activations`` (spiking and ANN activation layers).
        """
        T = self.T if T is None else int(T)
        em = self.energy if energy is None else energy_model(energy)
        n = max(self.samples, 1)

        def s(v):
            return float(v[:T].sum()) / n

        layers = {}
        for name, c in self.layers.items():
            synops, macs, adds = s(c.synops), s(c.macs), s(c.adds)
            size = c.input_size * T
            layers[name] = {"kind": c.kind, "module": self.kinds.get(name, ""), "synops": synops, "macs": macs,
                            "adds": adds, "macs_effective": s(c.macs_effective), "dense_ops": s(c.dense),
                            "input_density": s(c.input_nonzero) / size if size else None,
                            "energy_pj": em.energy(macs, synops + adds)}
        acts, rates = {}, {}
        total_active = total_slots = updates = 0.0
        for name, spk in self.spikes.items():
            slots = self.neurons.get(name, 0) * T
            rate = s(spk) / slots if slots else 0.0
            rates[name] = rate
            acts[name] = {"kind": "spiking", "module": self.kinds.get(name, ""), "neurons": self.neurons.get(name, 0),
                          "spikes": s(spk), "rate": rate, "sparsity": 1.0 - rate, "updates": float(slots)}
            total_active, total_slots, updates = total_active + s(spk), total_slots + slots, updates + slots
        for name, act in self.activations.items():
            slots = self.neurons.get(name, 0) * T
            density = s(act) / slots if slots else 0.0
            acts[name] = {"kind": "analog", "module": self.kinds.get(name, ""), "neurons": self.neurons.get(name, 0),
                          "nonzero": s(act), "density": density, "sparsity": 1.0 - density}
            total_active, total_slots = total_active + s(act), total_slots + slots
        synops = sum(v["synops"] for v in layers.values())
        macs = sum(v["macs"] for v in layers.values())
        adds = sum(v["adds"] for v in layers.values())
        breakdown = {"mac": em.mac_pj * macs, "ac": em.ac_pj * synops, "neuron": em.neuron_pj * updates}
        if adds:
            breakdown["add"] = em.ac_pj * adds
        return {"synops": synops, "macs": macs, "adds": adds,
                "macs_effective": sum(v["macs_effective"] for v in layers.values()),
                "dense_ops": sum(v["dense_ops"] for v in layers.values()),
                "spikes_per_sample": sum(s(v) for v in self.spikes.values()),
                "neuron_updates": updates,
                "activation_sparsity": 1.0 - total_active / total_slots if total_slots else None,
                "energy_pj": sum(breakdown.values()), "energy_breakdown": breakdown,
                "energy_model": em.as_dict(),
                "layers": layers, "spike_rates": rates, "activations": acts}
