"""Operation counts from one evaluation pass, at every T of the sweep.

Forward hooks on every ``nn.Linear`` / ``nn.Conv2d`` see the layer's input. Inputs arrive
time-major, either merged (``[T*B, ...]``, as :class:`suite.archs.TimeDistributed` does) or one
step per call (``[B, ...]``). Per step and layer we count

* **SynOps (ACs)** when the input is event-like (integer-valued: spikes, signed spikes or
  event counts): one accumulate per input event per connection it drives, i.e. nnz x fan-out
  for binary spikes (NeuroBench's definition) and count x fan-out for event frames; for a conv,
  the exact count is ``conv2d(input != 0, ones_like(weight))`` summed, which handles padding,
  stride and borders;
* **MACs** otherwise (analog input: the first layer of a direct-coded SNN, every ANN layer):
  the dense count, output elements x fan-in.

Spike counts come from hooks on modules with ``records_spikes = True`` (``[T, B, ...]``).
Everything is accumulated over samples, then divided by the number of samples.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

#: energy per operation in pJ, 45 nm (Horowitz, ISSCC 2014): 32-bit float MAC 4.6 pJ, AC 0.9 pJ
ENERGY_45NM = {"mac": 4.6, "ac": 0.9}


def _is_event(x: torch.Tensor) -> bool:
    """Spikes, signed spikes or event counts (integer-valued input); anything else is analog."""
    return bool((x == torch.round(x)).all())


def _dense_ops(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Dense multiply count per sample for input ``x`` ``[N, ...]`` -> ``[N]``."""
    if isinstance(layer, nn.Linear):
        return torch.full((x.shape[0],), float(layer.in_features * layer.out_features))
    w = layer.weight
    out = F.conv2d(x[:1], w, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    fan_in = w.shape[1] * w.shape[2] * w.shape[3]
    return torch.full((x.shape[0],), float(out[0].numel() * fan_in))


def _event_ops(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Exact accumulate count per sample: every input event (|count| of them at an input)
    x the outputs it reaches. For binary spikes this is nnz x fan-out."""
    nz = x.abs().to(torch.float32)
    if isinstance(layer, nn.Linear):
        return nz.flatten(1).sum(1) * layer.out_features
    ones = torch.ones_like(layer.weight, dtype=torch.float32)
    return F.conv2d(nz, ones, None, layer.stride, layer.padding, layer.dilation, layer.groups).flatten(1).sum(1)


@dataclass
class LayerCount:
    name: str
    kind: str                           # "linear" | "conv"
    synops: torch.Tensor                # [T] accumulated over samples, per step
    macs: torch.Tensor                  # [T]


@dataclass
class OpCounter:
    """Context manager: ``with OpCounter(model, T, B) as oc: model(x)``; call ``oc.next_batch(B)``
    before each further batch. ``T=1`` for ANNs."""

    model: nn.Module
    T: int
    batch_size: int
    layers: dict[str, LayerCount] = field(default_factory=dict)
    spikes: dict[str, torch.Tensor] = field(default_factory=dict)    # [T] spike totals per layer
    neurons: dict[str, int] = field(default_factory=dict)             # neurons per sample per layer
    samples: int = 0
    _calls: dict[str, int] = field(default_factory=dict)
    _handles: list = field(default_factory=list)

    def __enter__(self):
        for name, mod in self.model.named_modules():
            if isinstance(mod, (nn.Linear, nn.Conv2d)):
                self.layers[name] = LayerCount(name, "linear" if isinstance(mod, nn.Linear) else "conv",
                                               torch.zeros(self.T), torch.zeros(self.T))
                self._handles.append(mod.register_forward_hook(self._weight_hook(name)))
            elif getattr(mod, "records_spikes", False):
                self.spikes[name] = torch.zeros(self.T)
                self._handles.append(mod.register_forward_hook(self._spike_hook(name)))
        self.samples = self.batch_size
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def next_batch(self, batch_size: int):
        self.batch_size = batch_size
        self.samples += batch_size
        self._calls.clear()

    def _steps(self, name: str, n: int) -> tuple[slice | int, int]:
        """Which step(s) an input with leading dim n covers: all T merged, or the next step."""
        if n == self.T * self.batch_size:
            return slice(None), self.T
        t = self._calls.get(name, 0)
        self._calls[name] = t + 1
        return min(t, self.T - 1), 1

    def _weight_hook(self, name):
        def hook(mod, inputs, output):
            x = inputs[0].detach()
            where, steps = self._steps(name, x.shape[0])
            per_sample = _event_ops(mod, x) if _is_event(x) else _dense_ops(mod, x)
            per_step = per_sample.reshape(steps, -1).sum(1)
            bucket = self.layers[name].synops if _is_event(x) else self.layers[name].macs
            bucket[where] += per_step if steps > 1 else per_step[0]
        return hook

    def _spike_hook(self, name):
        def hook(mod, inputs, output):
            s = output[0] if isinstance(output, tuple) else output
            s = s.detach()
            if s.shape[0] == self.T and s.dim() >= 2:
                self.spikes[name] += (s != 0).flatten(1).sum(1).float()
                self.neurons[name] = s[0, 0].numel()
            else:  # one step per call
                where, _ = self._steps(name + "#spk", s.shape[0])
                self.spikes[name][where] += float((s != 0).sum())
                self.neurons[name] = s[0].numel()
        return hook

    # ------------------------------------------------------------------ results
    def at(self, T: int, energy: dict[str, float] = ENERGY_45NM) -> dict:
        """Per-sample counts over the first T steps (T=None for the whole window)."""
        T = self.T if T is None else T
        n = max(self.samples, 1)
        synops = sum(float(c.synops[:T].sum()) for c in self.layers.values()) / n
        macs = sum(float(c.macs[:T].sum()) for c in self.layers.values()) / n
        spikes = sum(float(s[:T].sum()) for s in self.spikes.values()) / n
        per_layer = {
            name: {"synops": float(c.synops[:T].sum()) / n, "macs": float(c.macs[:T].sum()) / n}
            for name, c in self.layers.items()
        }
        rates = {name: float(s[:T].sum()) / n / max(self.neurons.get(name, 1) * T, 1) for name, s in self.spikes.items()}
        return {"synops": synops, "macs": macs, "spikes_per_sample": spikes,
                "energy_pj": energy["mac"] * macs + energy["ac"] * synops,
                "layers": per_layer, "spike_rates": rates}
