"""Architecture specs shared by every rule and by the CNN baseline.

An architecture is written in the papers' own notation, e.g. ``"15C5-P2-40C5-P2-300"``:

* ``<n>C<k>[s<stride>][p<pad>]`` -- convolution with n output channels, k x k kernel
  (padding 0 unless ``p`` is given);
* ``P<k>`` / ``A<k>`` -- average pooling k x k, ``M<k>`` -- max pooling;
* ``D<p>`` -- dropout marker (a rule decides how to drop: e.g. a mask fixed over time);
* ``<n>`` -- fully connected layer with n units (the input is flattened first).

The classifier layer (``n_classes`` units) is appended by the builder, never written in the
spec. Residual or otherwise non-sequential networks register an ``ArchSpec`` with
``layers=()`` and a ``family`` a rule recognises (and ``supports`` rejects where it does not).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterator

from torch import nn

from suite.hookspecs import hookimpl

_TOKEN = re.compile(r"^(?:(?P<conv>\d+)C(?P<k>\d+)(?:s(?P<s>\d+))?(?:p(?P<p>\d+))?"
                    r"|(?P<pool>[PAM])(?P<pk>\d+)|D(?P<drop>0?\.\d+)|(?P<fc>\d+))$")


@dataclass(frozen=True)
class Layer:
    kind: str            # "conv" | "pool" | "dropout" | "fc"
    out: int = 0         # channels or units
    k: int = 0
    stride: int = 1
    padding: int = 0
    pool: str = "avg"    # "avg" | "max"
    p: float = 0.0


def parse_layers(text: str) -> tuple[Layer, ...]:
    layers = []
    for tok in filter(None, text.split("-")):
        m = _TOKEN.match(tok)
        if not m:
            raise ValueError(f"cannot parse layer {tok!r} in architecture {text!r}; expected e.g. "
                             "'32C3', '64C3p1', 'P2', 'M2', 'D0.2' or '800'")
        if m["conv"]:
            layers.append(Layer("conv", int(m["conv"]), int(m["k"]), int(m["s"] or 1), int(m["p"] or 0)))
        elif m["pool"]:
            layers.append(Layer("pool", k=int(m["pk"]), stride=int(m["pk"]), pool="max" if m["pool"] == "M" else "avg"))
        elif m["drop"]:
            layers.append(Layer("dropout", p=float(m["drop"])))
        else:
            layers.append(Layer("fc", int(m["fc"])))
    return tuple(layers)


@dataclass(frozen=True)
class ArchSpec:
    name: str
    spec: str = ""                      # the papers' notation; empty for custom families
    description: str = ""
    family: str = "sequential"
    input_shapes: tuple = ()            # shapes it is meant for (informational); () = any
    layers: tuple[Layer, ...] = field(default=(), compare=False)

    def __post_init__(self):
        if self.spec and not self.layers:
            object.__setattr__(self, "layers", parse_layers(self.spec))


def layer_shapes(arch: ArchSpec, input_shape: tuple[int, ...], n_classes: int) -> Iterator[tuple[Layer, tuple, tuple]]:
    """Yield ``(layer, in_shape, out_shape)`` per layer, the final classifier included.

    Shapes are per sample (no batch). An fc layer after a conv flattens its input.
    """
    shape = tuple(input_shape)
    for layer in (*arch.layers, Layer("fc", n_classes)):
        if layer.kind == "conv":
            if len(shape) != 3:
                raise ValueError(f"architecture {arch.name!r}: conv layer needs [C, H, W] input, got {shape}")
            c, h, w = shape
            h2 = (h + 2 * layer.padding - layer.k) // layer.stride + 1
            w2 = (w + 2 * layer.padding - layer.k) // layer.stride + 1
            if h2 < 1 or w2 < 1:
                raise ValueError(f"architecture {arch.name!r}: input {shape} too small for {layer}")
            out = (layer.out, h2, w2)
        elif layer.kind == "pool":
            if len(shape) != 3:
                raise ValueError(f"architecture {arch.name!r}: pooling needs [C, H, W] input, got {shape}")
            out = (shape[0], shape[1] // layer.k, shape[2] // layer.k)
        elif layer.kind == "dropout":
            out = shape
        else:
            out = (layer.out,)
        yield layer, shape, out
        shape = out


def weight_layer(layer: Layer, in_shape: tuple, bias: bool = True) -> nn.Module:
    """The ``nn.Linear`` / ``nn.Conv2d`` for a conv or fc layer (flattening handled by the caller)."""
    if layer.kind == "conv":
        return nn.Conv2d(in_shape[0], layer.out, layer.k, layer.stride, layer.padding, bias=bias)
    n_in = 1
    for d in in_shape:
        n_in *= d
    return nn.Linear(n_in, layer.out, bias=bias)


class Flatten(nn.Module):
    def forward(self, x):
        return x.flatten(1)


class TimeDistributed(nn.Module):
    """Apply a stateless layer to ``[T, B, ...]`` by merging T into the batch (BN therefore
    normalises over batch x time)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x):
        T, B = x.shape[:2]
        y = self.module(x.reshape(T * B, *x.shape[2:]))
        return y.reshape(T, B, *y.shape[1:])


def build_sequential(arch: ArchSpec, input_shape, n_classes: int, *,
                     activation: Callable[[Layer, tuple], nn.Module],
                     norm: bool = False, bias: bool = True, pool_max_ok: bool = True,
                     time_major: bool = False) -> nn.Sequential:
    """Build weight layer -> [BatchNorm] -> activation for every hidden layer, pooling,
    dropout and the classifier (no activation after it).

    ``activation(layer, out_shape)`` makes the nonlinearity (``nn.ReLU`` for ANNs, a spiking
    neuron for SNNs). With ``time_major=True`` every non-spiking module is wrapped in
    :class:`TimeDistributed` so the network maps ``[T, B, ...]`` -> ``[T, B, n_classes]``.
    """
    if arch.family != "sequential":
        raise ValueError(f"architecture {arch.name!r} (family {arch.family!r}) is not a sequential spec")
    mods: list[nn.Module] = []
    wrap = TimeDistributed if time_major else (lambda m: m)
    specs = list(layer_shapes(arch, input_shape, n_classes))
    for i, (layer, in_shape, out_shape) in enumerate(specs):
        last = i == len(specs) - 1
        if layer.kind in ("conv", "fc"):
            if layer.kind == "fc" and len(in_shape) > 1:
                mods.append(wrap(Flatten()))
            mods.append(wrap(weight_layer(layer, in_shape, bias=bias)))
            if not last:
                if norm:
                    bn = nn.BatchNorm2d(layer.out) if layer.kind == "conv" else nn.BatchNorm1d(layer.out)
                    mods.append(wrap(bn))
                mods.append(activation(layer, out_shape))
        elif layer.kind == "pool":
            if layer.pool == "max" and not pool_max_ok:
                raise ValueError(f"architecture {arch.name!r}: max pooling is not supported by this rule")
            pool = nn.MaxPool2d(layer.k) if layer.pool == "max" else nn.AvgPool2d(layer.k)
            mods.append(wrap(pool))
        elif layer.kind == "dropout":
            mods.append(wrap(nn.Dropout(layer.p)))
    return nn.Sequential(*mods)


BUILTIN_ARCHS = [
    ArchSpec("fc800", "800", "784-800-10 MLP (Lee et al. 2016; Diehl et al. 2015)"),
    ArchSpec("mlp128", "128", "small MLP for the 8x8 digits set (64-128-10)"),
    ArchSpec("mlp400x2", "400-400", "400-400 MLP (TSSL-BP Fashion-MNIST)"),
    ArchSpec("convnet", "16C3p1-P2-32C3p1-P2-128", "small conv net: 16C3-P2-32C3-P2-128 (same padding)"),
    ArchSpec("lenet5", "20C5-P2-50C5-P2-200", "LeNet 20C5-P2-50C5-P2-200 (Lee et al. 2020 MNIST)"),
]


@hookimpl
def snn_suite_archs():
    return list(BUILTIN_ARCHS)


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
