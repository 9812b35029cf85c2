"""ANN -> SNN conversion with data-based normalisation (Diehl et al. 2015; Rueckauer et al. 2017).

The trained ReLU network is traced with ``torch.fx`` (sequential specs and timm ResNets alike)
and rewritten into a rate-coded spiking network:

1. **BatchNorm folding**: a BN directly after a conv / linear layer becomes part of its weights
   and bias (``W' = W gamma / sigma``, ``b' = (b - mu) gamma / sigma + beta``).
2. **Calibration**: the folded ANN runs on training inputs; for every ReLU ``l`` the scale
   ``lambda_l`` is the ``p``-th percentile of its *non-zero* activations (nearest rank,
   Rueckauer's robust normalisation; snntoolbox also drops zeros), or the maximum for
   ``p = 100`` (Diehl's max-norm). Layers with more than 2^24 non-zero values are estimated from
   a seeded uniform subsample.
3. **Normalisation**: every tensor of the network gets a scale ``c`` with ANN value ~= ``c``
   x SNN rate. The input is fed unchanged (analog current, ``c = 1``); a ReLU becomes an IF
   neuron with threshold 1 whose output rate approximates ``a / lambda`` (``c = lambda``); a
   weight layer whose output reaches the ReLU ``l`` (possibly through a residual add, pooling or
   flattening) gets ``W <- W c_in / lambda_l`` and ``b <- b / lambda_l`` -- for a chain this is
   Diehl's ``W_l lambda_{l-1} / lambda_l``; the classifier keeps ``c = 1`` (its accumulated
   output estimates the ANN's logits). Where a tensor of another scale meets an add or a neuron
   (the identity shortcut of a ResNet), an explicit multiplication by ``c_in / c_out`` is inserted.
   **Residual add** of the suite's resnet family (:class:`suite.archs.ResidualAdd`, kept one
   module by the tracer): the add feeds the block's ReLU ``l``, so its output gets ``c = lambda_l``;
   the branch's last conv (BN folded) and a 1x1 projection shortcut are scaled to ``lambda_l``
   through their weights, and the identity shortcut -- spikes of the block's input neurons, scale
   ``lambda_in`` -- is multiplied by ``lambda_in / lambda_l`` inside the module (its ``scale``),
   i.e. a synapse of that weight per spike. The IF neuron after the add then integrates both
   currents, as the ReLU after the ANN's add sums both terms; every neuron still emits binary spikes.
4. **Spiking**: every ReLU becomes :class:`SteppedIF` -- :class:`suite.neurons.IF` with
   threshold 1 and **reset by subtraction** (``v_reset=None``), advanced one step per call.
   Average pooling stays average pooling (linear, so it commutes with the rates); max pooling
   and other non-linear layers are refused with a :class:`ConversionError` naming the layer.

:class:`SpikingNet` simulates the result one step at a time on ``[T, B, ...]`` input currents
and returns the classifier's output per step ``[T, B, C]``; the rule's readout accumulates it.
Because each weight layer sees one step ``[B, ...]`` per call, the host's op counter counts
MACs for the analog first layer and SynOps for spike (or pooled-spike) inputs at every step.
"""
from __future__ import annotations

import copy
import math
import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from suite.neurons import IF, if_step
from suite.opcount import OpCounter

WEIGHT = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
AVG_POOL = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
            nn.AdaptiveAvgPool3d)
PASS_MODULES = (nn.Identity, nn.Flatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
RELU_FUNCS = (F.relu, torch.relu)
ADD_FUNCS = (operator.add, operator.iadd, torch.add)
PASS_FUNCS = (torch.flatten, torch.reshape, F.dropout, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
              F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)
PASS_METHODS = ("flatten", "view", "reshape", "contiguous", "mean")
RELU, WEIGHT_K, BN, PASS, ADD, INPUT, OUTPUT = "relu", "weight", "bn", "pass", "add", "input", "output"

#: above this many non-zero activations in one layer the percentile comes from a subsample
PERCENTILE_SAMPLE_CAP = 1 << 24


class ConversionError(ValueError):
    """A layer the conversion cannot map onto IF neurons; the message names it."""


# ---------------------------------------------------------------------------------------- tracing
class _Tracer(fx.Tracer):
    """Keeps a residual join (:class:`suite.archs.ResidualAdd`) one module, so the converted net
    scales its operands in place and the op counter still sees what flows into it."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return getattr(m, "residual_join", False) or super().is_leaf_module(m, qualname)


def trace(ann: nn.Module) -> fx.GraphModule:
    try:
        tracer = _Tracer()
        graph = tracer.trace(ann)
        return fx.GraphModule(tracer.root, graph, type(ann).__name__)
    except Exception as exc:  # data-dependent control flow and the like
        raise ConversionError(f"cannot trace {type(ann).__name__} with torch.fx for conversion: "
                              f"{type(exc).__name__}: {exc}") from exc


def _describe(gm: fx.GraphModule, node: fx.Node) -> str:
    if node.op == "call_module":
        return f"layer {node.target!r} ({type(gm.get_submodule(node.target)).__name__})"
    fn = getattr(node.target, "__name__", str(node.target))
    return f"operation {node.name!r} ({node.op} {fn})"


def classify(gm: fx.GraphModule) -> dict[fx.Node, str]:
    """The role of every node; anything outside the convertible set raises ConversionError."""
    kinds = {}
    for node in gm.graph.nodes:
        kind = None
        if node.op == "placeholder":
            kind = INPUT
        elif node.op == "output":
            kind = OUTPUT
        elif node.op == "call_module":
            mod = gm.get_submodule(node.target)
            if isinstance(mod, nn.ReLU):
                kind = RELU
            elif isinstance(mod, WEIGHT):
                kind = WEIGHT_K
            elif isinstance(mod, NORM):
                kind = BN
            elif isinstance(mod, AVG_POOL + PASS_MODULES):
                kind = PASS
            elif getattr(mod, "residual_join", False):
                kind = ADD
            elif isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool2d)):
                raise ConversionError(f"{_describe(gm, node)} cannot be converted: max pooling has no rate-coded "
                                      "IF equivalent here; use average pooling (P<k>/A<k> instead of M<k>)")
        elif node.op == "call_function":
            if node.target in RELU_FUNCS:
                kind = RELU
            elif node.target in ADD_FUNCS and sum(isinstance(a, fx.Node) for a in node.args) == 2:
                kind = ADD
            elif node.target in PASS_FUNCS:
                kind = PASS
        elif node.op == "call_method":
            if node.target == "relu":
                kind = RELU
            elif node.target in PASS_METHODS:
                kind = PASS
        if kind is None:
            raise ConversionError(f"{_describe(gm, node)} cannot be converted to IF neurons; convertible: "
                                  "Linear/Conv, BatchNorm after them, ReLU, average pooling, residual add, "
                                  "flatten/reshape, dropout/identity")
        kinds[node] = kind
    return kinds


def check_convertible(ann: nn.Module) -> None:
    """Raise :class:`ConversionError` naming the first layer that cannot be converted."""
    gm = trace(ann)
    kinds = classify(gm)
    for node, kind in kinds.items():
        if kind == BN:
            src = node.args[0]
            if kinds.get(src) != WEIGHT_K or len(src.users) != 1:
                raise ConversionError(f"{_describe(gm, node)} cannot be folded: it does not directly follow a "
                                      "conv / linear layer used only by it")


# ---------------------------------------------------------------------------------------- folding
def fold_batchnorm(gm: fx.GraphModule) -> None:
    """Fold every BN into the conv / linear layer before it (eval-mode statistics)."""
    kinds = classify(gm)
    for node in list(gm.graph.nodes):
        if kinds.get(node) != BN:
            continue
        src = node.args[0]
        if kinds.get(src) != WEIGHT_K or len(src.users) != 1:
            raise ConversionError(f"{_describe(gm, node)} cannot be folded: it does not directly follow a "
                                  "conv / linear layer used only by it")
        layer, bn = gm.get_submodule(src.target), gm.get_submodule(node.target)
        fused = fuse_linear_bn_eval(layer, bn) if isinstance(layer, nn.Linear) else fuse_conv_bn_eval(layer, bn)
        _set_submodule(gm, src.target, fused)
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()


def _set_submodule(gm: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)


# ---------------------------------------------------------------------------------------- calibration
class _Recorder(fx.Interpreter):
    def __init__(self, gm, watch: set, sink):
        super().__init__(gm)
        self.watch, self.sink = watch, sink

    def run_node(self, n):
        out = super().run_node(n)
        if n in self.watch:
            self.sink(n, out)
        return out


@torch.no_grad()
def calibrate(gm: fx.GraphModule, data: torch.Tensor, percentile: float, batch_size: int = 256,
              seed: int = 0) -> dict[str, float]:
    """``lambda`` per ReLU node name: the ``percentile`` of its non-zero activations on ``data``
    (the maximum for ``percentile >= 100``); 1 for a layer that never fires."""
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    kinds = classify(gm)
    relus = {n for n, k in kinds.items() if k == RELU}
    n_batches = max(1, math.ceil(len(data) / batch_size))
    per_batch = max(1, PERCENTILE_SAMPLE_CAP // n_batches)
    gen = torch.Generator().manual_seed(seed)
    values: dict[fx.Node, list] = {n: [] for n in relus}
    maxima: dict[fx.Node, float] = {n: 0.0 for n in relus}

    def sink(node, out):
        nz = out[out > 0].detach().float().cpu()
        if nz.numel():
            maxima[node] = max(maxima[node], float(nz.max()))
            if percentile < 100.0:
                if nz.numel() > per_batch:
                    nz = nz[torch.randperm(nz.numel(), generator=gen)[:per_batch]]
                values[node].append(nz)

    gm.eval()
    rec = _Recorder(gm, relus, sink)
    for i in range(0, len(data), batch_size):
        rec.run(data[i:i + batch_size])
    lam = {}
    for node in relus:
        if maxima[node] <= 0.0:
            lam[node.name] = 1.0
        elif percentile >= 100.0:
            lam[node.name] = maxima[node]
        else:
            v = torch.cat(values[node])
            k = max(1, math.ceil(percentile / 100.0 * v.numel()))
            lam[node.name] = float(v.kthvalue(k).values)
    return lam


# ---------------------------------------------------------------------------------------- the SNN
class SteppedIF(IF):
    """:class:`suite.neurons.IF` (threshold 1, reset by subtraction) advanced one
    step per call with :func:`suite.neurons.if_step`; the membrane persists across the calls of
    one simulation and :meth:`SpikingNet.forward` clears it at the start of each."""

    def __init__(self):
        super().__init__(v_threshold=1.0, v_reset=None)
        self.v: torch.Tensor | None = None

    def reset_state(self) -> None:
        self.v = None

    def forward(self, x):
        v = torch.zeros_like(x) if self.v is None else self.v
        s, self.v = if_step(v, x, v_threshold=self.v_threshold, v_reset=None, surrogate=self.surrogate)
        return s


class SpikingNet(nn.Module):
    """The converted network; ``forward(x_seq [T, B, ...]) -> [T, B, C]`` runs the graph once per
    step with membranes carried between steps (causal: output t depends on steps <= t only)."""

    def __init__(self, net: fx.GraphModule, lambdas: dict[str, float], percentile: float, n_calibration: int):
        """``lambdas``: the normalisation scale per ReLU layer (module name in the ANN)."""
        super().__init__()
        self.net = net
        self.lambdas, self.percentile, self.n_calibration = lambdas, percentile, n_calibration

    def neurons(self) -> list[SteppedIF]:
        return [m for m in self.net.modules() if isinstance(m, SteppedIF)]

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        for m in self.neurons():
            m.reset_state()
        try:
            return torch.stack([self.net(x) for x in x_seq])
        finally:
            for m in self.neurons():
                m.reset_state()


class SteppedOpCounter(OpCounter):
    """The op counter for :class:`SpikingNet`: every spike output is one step ``[B, ...]`` (the
    base class would read a ``[B, ...]`` output with ``B == T`` as a time-major ``[T, B]``)."""

    def _spike_hook(self, name):
        def hook(mod, inputs, output):
            s = output.detach()
            where, _ = self._steps(name + "#spk", s.shape[0])
            self.spikes[name][where] += float((s != 0).sum())
            self.neurons[name] = s[0].numel()
        return hook


@dataclass
class _Scales:
    kinds: dict
    lam: dict
    scale: dict = field(default_factory=dict)

    def want(self, node: fx.Node) -> float | None:
        """The scale ``node``'s output should have: that of the one ReLU (or the output) it feeds
        through pass-through ops and adds; None where it branches."""
        users = list(node.users)
        if len(users) != 1:
            return None
        u = users[0]
        kind = self.kinds[u]
        if kind == RELU:
            return self.lam[u.name]
        if kind == OUTPUT:
            return 1.0
        if kind in (PASS, ADD):
            return self.want(u)
        return None


def _rescale_input(gm: fx.GraphModule, node: fx.Node, arg: fx.Node, factor: float) -> None:
    """Multiply ``node``'s input ``arg`` by ``factor`` (an explicit op; weights unchanged)."""
    if math.isclose(factor, 1.0, rel_tol=1e-12):
        return
    with gm.graph.inserting_before(node):
        scaled = gm.graph.call_function(operator.mul, (arg, float(factor)))
    node.replace_input_with(arg, scaled)


@torch.no_grad()
def convert(ann: nn.Module, calibration: torch.Tensor, percentile: float = 99.9, batch_size: int = 256,
            seed: int = 0) -> SpikingNet:
    """Convert a trained ReLU network (see the module docstring) calibrated on ``calibration``
    inputs ``[N, ...]``; ``ann`` itself is left unchanged."""
    if len(calibration) == 0:
        raise ValueError("conversion needs calibration inputs (none were recorded: train at least one batch)")
    device = next(ann.parameters()).device
    gm = trace(copy.deepcopy(ann).eval())
    fold_batchnorm(gm)
    lam = calibrate(gm, calibration.to(device), percentile, batch_size, seed)
    kinds = classify(gm)
    sc = _Scales(kinds, lam)
    for node in list(gm.graph.nodes):
        kind = kinds.get(node)
        if kind is None:  # inserted by this loop
            continue
        if kind == INPUT:
            sc.scale[node] = 1.0
        elif kind == WEIGHT_K:
            c_in = sc.scale[node.args[0]]
            c_out = sc.want(node) or c_in
            layer = gm.get_submodule(node.target)
            layer.weight.mul_(c_in / c_out)
            if layer.bias is not None:
                layer.bias.div_(c_out)
            sc.scale[node] = c_out
        elif kind == PASS:
            sc.scale[node] = sc.scale[node.args[0]]
        elif kind == ADD:
            a, b = [x for x in node.args if isinstance(x, fx.Node)]
            c_out = sc.want(node) or sc.scale[a]
            if node.op == "call_module":  # a ResidualAdd: the scales live on the module
                gm.get_submodule(node.target).scale = (sc.scale[a] / c_out, sc.scale[b] / c_out)
            else:
                for arg in (a, b):
                    _rescale_input(gm, node, arg, sc.scale[arg] / c_out)
            if node.target is operator.iadd:  # never write into a tensor another layer still reads
                node.target = operator.add
            sc.scale[node] = c_out
        elif kind == RELU:
            arg = node.args[0]
            _rescale_input(gm, node, arg, sc.scale[arg] / lam[node.name])
            name = f"if_{node.name}" if node.op != "call_module" else node.target
            if node.op == "call_module":
                _set_submodule(gm, name, SteppedIF())
            else:
                gm.add_submodule(name, SteppedIF())
                node.op, node.target, node.args, node.kwargs = "call_module", name, (node.args[0],), {}
            sc.scale[node] = lam[node.name]
    gm.graph.lint()
    gm.recompile()
    names = {n.name: (n.target if n.op == "call_module" else n.name) for n in kinds}
    return SpikingNet(gm, {names[k]: v for k, v in lam.items()}, percentile, len(calibration))
