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

**Depth** (:class:`ResNetArch`, family ``"resnet"``): the CIFAR ResNets of He et al. 2016 §4.2
(depth 6n+2: a 3x3 stem, three stages of n basic blocks at 16, 32, 64 channels times
``width / 16``, stride 2 into stages 2 and 3, global average pooling, the classifier) and their
*plain* twins of the same depth (``residual=False``: the same convolutions without shortcuts,
He et al.'s VGG-style plain nets). :func:`build_network` builds a spec for every rule -- ReLU for
the CNN twin and the ANN that ann2snn converts, a spiking neuron for an SNN -- so the networks
compared differ in the nonlinearity only. Batch norm is part of a resnet-family spec
(``resnet8`` / ``resnet8_nobn``), not a rule option, for the same reason.

The residual join is **addition into the membrane** (the shortcut joins the block's input
current, before the block's last neuron): ``s_out = LIF(BN(conv2(h)) + shortcut(s_in))``, the
spiking form of He et al.'s ``relu(F(x) + x)``. Why this one and not SEW-ResNet's spike
addition ``SN(F(s)) + s``: (1) its ANN twin is the standard ResNet block, so the CNN row and the
SNN row are the same topology; (2) ann2snn converts it as it is -- the add sits before a ReLU, so
both operands are rescaled to that neuron's threshold and every layer still emits binary spikes
(SEW's sums are multi-valued and its ANN twin would be ``relu(F(x)) + x``, a different network);
(3) it is what Ledinauskas et al. trained (standard ResNet topology, BN on the input currents).
Its cost, argued by SEW-ResNet: a spiking neuron after the add means the block cannot express an
exact identity, which is one thing the depth experiment measures (plain vs residual).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
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

    def describe(self) -> dict:
        """What a result row records of the network (``extra.arch_spec``)."""
        return {"family": self.family, "spec": self.spec}


def layer_shapes(arch: ArchSpec, input_shape: tuple[int, ...], n_classes: int) -> Iterator[tuple[Layer, tuple, tuple]]:
    """Yield ``(layer, in_shape, out_shape)`` per layer, the final classifier included.

    Shapes are per sample (no batch). An fc layer after a conv flattens its input.
    """
    shape = tuple(input_shape)
    for layer in (*arch.layers, Layer("fc", n_classes)):
        if layer.kind == "conv":
            out = conv_shape(arch, layer, shape)
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


def conv_shape(arch: ArchSpec, layer: Layer, shape: tuple) -> tuple:
    """Output ``[C, H, W]`` of conv ``layer`` on a ``shape`` input (errors name ``arch``)."""
    if len(shape) != 3:
        raise ValueError(f"architecture {arch.name!r}: conv layer needs [C, H, W] input, got {shape}")
    c, h, w = shape
    h2 = (h + 2 * layer.padding - layer.k) // layer.stride + 1
    w2 = (w + 2 * layer.padding - layer.k) // layer.stride + 1
    if h2 < 1 or w2 < 1:
        raise ValueError(f"architecture {arch.name!r}: input {shape} too small for {layer}")
    return (layer.out, h2, w2)


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


#: layers whose output for a sample depends on that sample alone, in any mode
PER_SAMPLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.AvgPool2d, nn.MaxPool2d, nn.Identity, Flatten)


def _batch_norm_over_copies(bn: nn.modules.batchnorm._BatchNorm, x0: torch.Tensor, T: int) -> torch.Tensor:
    """Training-mode ``bn`` over T copies of ``x0`` stacked on the batch, computed on ``x0``: the
    copies have the same mean and (biased) variance, hence the same output and gradient; the
    running variance gets the unbiased correction of the ``T x`` larger sample, as over the copies."""
    y = F.batch_norm(x0, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    if bn.track_running_stats:
        with torch.no_grad():
            mean, var = torch.batch_norm_update_stats(x0, None, None, 0.0)  # biased var; faster than var_mean
            n = T * (x0.numel() // x0.shape[1])
            bn.num_batches_tracked.add_(1)
            momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            bn.running_mean.lerp_(mean, momentum)
            bn.running_var.lerp_(var * (n / max(n - 1, 1)), momentum)
    return y


class TimeDistributed(nn.Module):
    """Apply a stateless layer to ``[T, B, ...]`` by merging T into the batch (BN therefore
    normalises over batch x time).

    Static input: where ``x`` is one step broadcast over T (``stride(0) == 0``, what the
    ``direct`` encoder gives), a per-sample layer or a batch norm runs on that one step and its
    output is broadcast again -- the same values for a T-th of the work, and autograd sums the
    gradient over T before the weight gradient (one GEMM instead of T). The layer's
    ``static_steps`` is T meanwhile, so that a forward hook marked ``static_aware`` (the op
    counter's) charges all T steps; any other hook on the layer turns the shortcut off."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def _static_ok(self) -> bool:
        m = self.module
        hooks = [*m._forward_hooks.values(), *m._forward_pre_hooks.values()]
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return not hooks
        return isinstance(m, PER_SAMPLE) and all(getattr(h, "static_aware", False) for h in hooks)

    def forward(self, x):
        T, B = x.shape[:2]
        if T > 1 and x.stride(0) == 0 and self._static_ok():
            m = self.module
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
                y = _batch_norm_over_copies(m, x[0], T)
            else:
                m.static_steps = T
                try:
                    y = m(x[0])
                finally:
                    del m.static_steps
            return y.unsqueeze(0).expand(T, *y.shape)
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


RESNET_FAMILY = "resnet"


@dataclass(frozen=True)
class ResNetArch(ArchSpec):
    """A CIFAR-style ResNet (``residual=True``) or its plain twin, depth ``6n + 2`` weight layers
    on the main path (the 1x1 projection shortcuts are not counted, as in He et al.)."""

    family: str = RESNET_FAMILY
    depth: int = 8
    width: int = 16                 # stage-1 channels; stages 2 and 3 have 2x and 4x
    residual: bool = True
    batch_norm: bool = True

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.depth, int) or self.depth < 8 or (self.depth - 2) % 6:
            raise ValueError(f"architecture {self.name!r}: depth {self.depth!r} cannot be built by the resnet "
                             "family; expected 6n + 2 with n >= 1 (8, 14, 20, 26, ...)")
        if not isinstance(self.width, int) or self.width < 1:
            raise ValueError(f"architecture {self.name!r}: width {self.width!r}; expected a positive integer "
                             "(stage-1 channels, 16 in He et al.)")

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 2) // 6

    def describe(self) -> dict:
        return {**super().describe(), "depth": self.depth, "width": self.width, "residual": self.residual,
                "batch_norm": self.batch_norm}


class ResidualAdd(nn.Module):
    """``main + shortcut``: the residual join, a module so that the op counter sees what flows
    into it and the conversion can give each operand its own scale (``scale``, set by
    :func:`suite.baselines.conversion.convert`; ``(1, 1)`` otherwise). ``time_major``: inputs
    are ``[T, B, ...]``."""

    residual_join = True

    def __init__(self, time_major: bool = False):
        super().__init__()
        self.time_major = time_major
        self.scale = (1.0, 1.0)

    def forward(self, main, shortcut):
        a, b = self.scale
        return (main if a == 1.0 else main * a) + (shortcut if b == 1.0 else shortcut * b)

    def extra_repr(self) -> str:
        return f"scale={self.scale}" if self.scale != (1.0, 1.0) else ""


class BasicBlock(nn.Module):
    """conv3x3 -> [BN] -> act -> conv3x3 -> [BN] (-> + shortcut) -> act; the shortcut is the
    identity or, where shape changes, a 1x1 convolution [+ BN] (He et al.'s option B)."""

    def __init__(self, branch: nn.Sequential, act: nn.Module, add: ResidualAdd | None,
                 shortcut: nn.Module | None):
        super().__init__()
        self.branch, self.act, self.add, self.shortcut = branch, act, add, shortcut

    def forward(self, x):
        h = self.branch(x)
        if self.add is not None:
            h = self.add(h, x if self.shortcut is None else self.shortcut(x))
        return self.act(h)


def build_resnet(arch: ResNetArch, input_shape, n_classes: int, *,
                 activation: Callable[[Layer, tuple], nn.Module], time_major: bool = False) -> nn.Sequential:
    """The network of a :class:`ResNetArch`; ``activation`` and ``time_major`` as in
    :func:`build_sequential`. Convolutions have a bias only where no BN follows."""
    if arch.family != RESNET_FAMILY:
        raise ValueError(f"architecture {arch.name!r} (family {arch.family!r}) is not a resnet spec")
    if len(input_shape) != 3:
        raise ValueError(f"architecture {arch.name!r}: a resnet needs [C, H, W] input, got {tuple(input_shape)}")
    wrap = TimeDistributed if time_major else (lambda m: m)
    norm = arch.batch_norm

    def conv_bn(c_in, c_out, k, stride, shape):
        layer = Layer("conv", c_out, k, stride, k // 2)
        out = conv_shape(arch, layer, shape)
        mods = [wrap(weight_layer(layer, shape, bias=not norm))]
        if norm:
            mods.append(wrap(nn.BatchNorm2d(c_out)))
        return mods, layer, out

    mods, layer, shape = conv_bn(input_shape[0], arch.width, 3, 1, tuple(input_shape))
    mods.append(activation(layer, shape))
    for stage, c in enumerate((arch.width, 2 * arch.width, 4 * arch.width)):
        for i in range(arch.blocks_per_stage):
            stride = 2 if stage and i == 0 else 1
            first, layer1, mid = conv_bn(shape[0], c, 3, stride, shape)
            second, layer2, out = conv_bn(c, c, 3, 1, mid)
            branch = nn.Sequential(*first, activation(layer1, mid), *second)
            add = shortcut = None
            if arch.residual:
                add = ResidualAdd(time_major)
                if stride != 1 or shape[0] != c:
                    shortcut = nn.Sequential(*conv_bn(shape[0], c, 1, stride, shape)[0])
            mods.append(BasicBlock(branch, activation(layer2, out), add, shortcut))
            shape = out
    mods += [wrap(nn.AdaptiveAvgPool2d(1)), wrap(Flatten()), wrap(nn.Linear(shape[0], n_classes))]
    return nn.Sequential(*mods)


def build_network(arch: ArchSpec, input_shape, n_classes: int, *,
                  activation: Callable[[Layer, tuple], nn.Module], norm: bool = False, bias: bool = True,
                  pool_max_ok: bool = True, time_major: bool = False) -> nn.Sequential:
    """:func:`build_sequential` or :func:`build_resnet` by the spec's family (``norm``, ``bias``
    and ``pool_max_ok`` apply to sequential specs; a resnet spec carries its own BN)."""
    if arch.family == RESNET_FAMILY:
        return build_resnet(arch, input_shape, n_classes, activation=activation, time_major=time_major)
    return build_sequential(arch, input_shape, n_classes, activation=activation, norm=norm, bias=bias,
                            pool_max_ok=pool_max_ok, time_major=time_major)


def depth_archs(depths=(8, 14, 20), widths=(16, 8)) -> list[ResNetArch]:
    """``resnet<d>`` / ``plain<d>`` with BN, ``..._nobn`` without; ``w<k>`` marks a width other than 16."""
    out = []
    for d in depths:
        for w in widths:
            for residual in (True, False):
                for bn in (True, False):
                    name = f"{'resnet' if residual else 'plain'}{d}{'' if w == 16 else f'w{w}'}{'' if bn else '_nobn'}"
                    kind = "ResNet" if residual else "plain (no shortcuts)"
                    out.append(ResNetArch(name, description=f"CIFAR-style {kind}, depth {d}, width {w}-{2 * w}-{4 * w}"
                                          f"{', BN' if bn else ', no BN'}", depth=d, width=w, residual=residual,
                                          batch_norm=bn, input_shapes=((1, 28, 28), (2, 34, 34), (3, 32, 32))))
    return out


BUILTIN_ARCHS = [
    ArchSpec("fc800", "800", "784-800-10 MLP (Lee et al. 2016; Diehl et al. 2015)"),
    ArchSpec("mlp128", "128", "small MLP for the 8x8 digits set (64-128-10)"),
    ArchSpec("mlp400x2", "400-400", "400-400 MLP (TSSL-BP Fashion-MNIST)"),
    ArchSpec("convnet", "16C3p1-P2-32C3p1-P2-128", "small conv net: 16C3-P2-32C3-P2-128 (same padding)"),
    ArchSpec("lenet5", "20C5-P2-50C5-P2-200", "LeNet 20C5-P2-50C5-P2-200 (Lee et al. 2020 MNIST)"),
    *depth_archs(),
]


@hookimpl
def snn_suite_archs():
    return list(BUILTIN_ARCHS)


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
