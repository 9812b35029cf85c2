"""nir -- evaluate an NIR graph from any library, without training, as a row of the comparison.

``snn-suite run --rules nir --set graph=model.nir --dataset digits --timesteps 1,2,4,8`` reads the
graph (``nir.read``), turns it into a PyTorch module with ``nirtorch.nir_to_torch`` and the
per-step neuron modules below, and evaluates it like any rule: accuracy at every T from one pass,
SynOps / MACs, energy, spike rates. A network trained in snnTorch, Norse, SpikingJelly or
exported by ``snn-suite export`` thereby joins the report next to the suite's rules.

Semantics: the discrete-time reading of NIR's equations documented in :mod:`suite.nir` (forward
Euler with step ``dt``; ``--set dt=...``, default the graph's ``metadata["dt"]`` or 1e-4, the
step snnTorch's importer assumes), spikes at ``v > v_threshold`` as snnTorch and Norse fire.
Input: the dataset's samples reshaped to the graph's input type (same number of elements), fed
through the encoding ``--set encoding=`` (default ``direct``: the same analog current every
step; ``poisson`` with ``--set input_gain=``). A graph ``snn-suite export`` wrote records the
encoding its rule used, and a mismatch is an error naming the settings to pass. Prediction at T: the graph output summed over steps 1..T (spike counts, or the summed
output current of a graph that ends in a weight layer); a graph that ends in a leaky integrator
(``nir.LI``) is read from its potential at step T; ``metadata["readout"]`` (``snn-suite export``
writes it) or ``--set readout=sum|last`` decides where given.

Supported nodes: Input, Output, Affine, Linear, Conv2d, Flatten, AvgPool2d, SumPool2d, Scale,
IF, LIF, LI, CubaLIF (feed-forward; a graph with recurrent edges is refused with the node named).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from suite.baselines.conversion import SteppedOpCounter
from suite.encoders import create_encoder
from suite.hookspecs import hookimpl
from suite.rule import Rule

DEFAULTS = {
    "graph": "",          # the .nir file (required)
    "T": 8,
    "dt": 0.0,            # 0: the graph's metadata["dt"], else 1e-4
    "encoding": "direct",
    "input_gain": 1.0,    # spike probability per step = gain * x for encoding=poisson
    "readout": "auto",    # auto | sum | last
    "batch_size": 256,
    "epochs": 0,          # evaluate only
}


class NIRGraphError(ValueError):
    """A graph file that cannot be evaluated; the message names the file and the node."""


def _t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float32))


class SpikeTap(nn.Identity):
    """Marks a neuron's spikes for the host's spike recorder (one step ``[B, ...]`` per call)."""

    records_spikes = True


class _Neuron(nn.Module):
    """Per-step NIR neuron for nirtorch: ``forward(x, state) -> (output, state)``."""

    def __init__(self, **params):
        super().__init__()
        for k, v in params.items():
            self.register_buffer(k, _t(v))
        self.spikes = SpikeTap()

    def fire(self, v):
        z = (v > self.v_threshold).to(v.dtype)
        return self.spikes(z), torch.where(z > 0, self.v_reset.expand_as(v), v)


class NIRLIF(_Neuron):
    def __init__(self, node, dt: float):
        super().__init__(k=dt / np.asarray(node.tau, dtype=np.float64), r=node.r, v_leak=node.v_leak,
                         v_threshold=node.v_threshold, v_reset=node.v_reset)

    def forward(self, x, state=None):
        v = self.v_reset.expand_as(x) if state is None else state
        v = v + self.k * (self.v_leak - v + self.r * x)
        z, v = self.fire(v)
        return z, v


class NIRIF(_Neuron):
    def __init__(self, node, dt: float):
        super().__init__(r=node.r, v_threshold=node.v_threshold, v_reset=node.v_reset)

    def forward(self, x, state=None):
        v = self.v_reset.expand_as(x) if state is None else state
        z, v = self.fire(v + self.r * x)
        return z, v


class NIRCubaLIF(_Neuron):
    def __init__(self, node, dt: float):
        super().__init__(k_syn=dt / np.asarray(node.tau_syn, dtype=np.float64), w_in=node.w_in,
                         k=dt / np.asarray(node.tau_mem, dtype=np.float64), r=node.r, v_leak=node.v_leak,
                         v_threshold=node.v_threshold, v_reset=node.v_reset)

    def forward(self, x, state=None):
        i, v = (torch.zeros_like(x), self.v_reset.expand_as(x)) if state is None else state
        i = i + self.k_syn * (self.w_in * x - i)
        v = v + self.k * (self.v_leak - v + self.r * i)
        z, v = self.fire(v)
        return z, (i, v)


class NIRLI(nn.Module):
    def __init__(self, node, dt: float):
        super().__init__()
        self.register_buffer("k", _t(dt / np.asarray(node.tau, dtype=np.float64)))
        self.register_buffer("r", _t(node.r))
        self.register_buffer("v_leak", _t(node.v_leak))

    def forward(self, x, state=None):
        v = torch.zeros_like(x) if state is None else state
        v = v + self.k * (self.v_leak - v + self.r * x)
        return v, v


class Scale(nn.Module):
    def __init__(self, node):
        super().__init__()
        self.register_buffer("scale", _t(node.scale))

    def forward(self, x):
        return x * self.scale


class SampleFlatten(nn.Module):
    """``nir.Flatten`` over the per-sample dims (NIR's types have no batch dimension)."""

    def __init__(self, node):
        super().__init__()
        rank = len(np.asarray(node.input_type["input"]))
        self.start = int(node.start_dim) % rank + 1
        self.end = int(node.end_dim) % rank + 1

    def forward(self, x):
        return x.flatten(self.start, self.end)


class SumPool2d(nn.Module):
    def __init__(self, node):
        super().__init__()
        self.k, self.stride, self.padding = _pair(node.kernel_size), _pair(node.stride), _pair(node.padding)

    def forward(self, x):
        return F.avg_pool2d(x, self.k, self.stride, self.padding, count_include_pad=True, divisor_override=1)


def _pair(v) -> tuple[int, int]:
    return tuple(int(a) for a in np.broadcast_to(np.atleast_1d(np.asarray(v)), (2,)))


def _affine(node) -> nn.Linear:
    w = _t(node.weight)
    bias = getattr(node, "bias", None)
    lin = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    with torch.no_grad():
        lin.weight.copy_(w)
        if bias is not None:
            lin.bias.copy_(_t(bias))
    return lin


def _conv(node) -> nn.Conv2d:
    w = _t(node.weight)
    conv = nn.Conv2d(w.shape[1] * int(node.groups), w.shape[0], tuple(w.shape[-2:]), stride=_pair(node.stride),
                     padding=_pair(node.padding), dilation=_pair(node.dilation), groups=int(node.groups))
    with torch.no_grad():
        conv.weight.copy_(w)
        conv.bias.copy_(_t(node.bias))
    return conv


def node_map(nir, dt: float) -> dict:
    return {
        nir.Input: lambda n: nn.Identity(), nir.Output: lambda n: nn.Identity(),
        nir.Affine: _affine, nir.Linear: _affine, nir.Conv2d: _conv, nir.Flatten: SampleFlatten,
        nir.AvgPool2d: lambda n: nn.AvgPool2d(_pair(n.kernel_size), _pair(n.stride), _pair(n.padding)),
        nir.SumPool2d: SumPool2d, nir.Scale: Scale,
        nir.IF: lambda n: NIRIF(n, dt), nir.LIF: lambda n: NIRLIF(n, dt),
        nir.CubaLIF: lambda n: NIRCubaLIF(n, dt), nir.LI: lambda n: NIRLI(n, dt),
    }


def read_graph(path):
    from suite.nir import require_nir

    nir = require_nir()
    path = Path(path)
    if not str(path) or not path.is_file():
        raise NIRGraphError(f"rule 'nir': --set graph={path}: no such file (expected an NIR graph written by "
                            "nir.write, e.g. by `snn-suite export` or snnTorch/Norse's export)")
    try:
        graph = nir.read(str(path))
    except Exception as exc:
        raise NIRGraphError(f"rule 'nir': {path} is not a readable NIR graph ({type(exc).__name__}: {exc})") from exc
    if not isinstance(graph, nir.NIRGraph):
        raise NIRGraphError(f"rule 'nir': {path} holds a single {type(graph).__name__} node, not a graph")
    return nir, graph


def _check_graph(nir, graph, path) -> tuple[str, str]:
    """The input and output node names; refuses cycles and unsupported nodes, naming them."""
    supported = tuple(node_map(nir, 1.0))
    for name, node in graph.nodes.items():
        if not isinstance(node, supported):
            raise NIRGraphError(f"rule 'nir': {path}: node {name!r} ({type(node).__name__}) is not supported; "
                                f"supported: {', '.join(sorted(t.__name__ for t in supported))}")
    succ: dict[str, list[str]] = {k: [] for k in graph.nodes}
    for a, b in graph.edges:
        succ[a].append(b)
    state: dict[str, int] = {}

    def visit(n):
        state[n] = 1
        for m in succ[n]:
            if state.get(m) == 1:
                raise NIRGraphError(f"rule 'nir': {path}: recurrent edge {n!r} -> {m!r}; only feed-forward "
                                    "graphs are evaluated")
            if m not in state:
                visit(m)
        state[n] = 2

    for n in graph.nodes:
        if n not in state:
            visit(n)
    inputs = [k for k, v in graph.nodes.items() if isinstance(v, nir.Input)]
    outputs = [k for k, v in graph.nodes.items() if isinstance(v, nir.Output)]
    if len(inputs) != 1 or len(outputs) != 1:
        raise NIRGraphError(f"rule 'nir': {path}: expected one Input and one Output node, found "
                            f"{len(inputs)} and {len(outputs)}")
    return inputs[0], outputs[0]


class NIRNet(nn.Module):
    """The graph as a module: ``[T, B, *sample]`` -> logits per step ``[T, B, C]`` (readout applied)."""

    def __init__(self, path, dt: float = 0.0, readout: str = "auto"):
        super().__init__()
        from suite.nir import require_nir

        nirtorch = require_nir("nirtorch")
        nir, graph = read_graph(path)
        src, dst = _check_graph(nir, graph, path)
        meta = dict(graph.metadata or {})
        self.dt = float(dt) or float(np.asarray(meta.get("dt", 1e-4)))
        self.metadata = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in meta.items()}
        self.input_shape = tuple(int(d) for d in np.asarray(graph.nodes[src].input_type["input"]).reshape(-1))
        self.output_shape = tuple(int(d) for d in np.asarray(graph.nodes[dst].output_type["output"]).reshape(-1))
        last = [a for a, b in graph.edges if b == dst]
        if readout == "auto":
            readout = str(self.metadata.get("readout") or
                          ("last" if last and isinstance(graph.nodes[last[0]], nir.LI) else "sum"))
        if readout not in ("sum", "last"):
            raise ValueError(f"rule 'nir': readout must be auto, sum or last, got {readout!r}")
        self.readout = readout
        self.net = nirtorch.nir_to_torch(graph, node_map(nir, self.dt))

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        T, B = x_seq.shape[:2]
        x_seq = x_seq.reshape(T, B, *self.input_shape)
        state, outs = None, []
        for t in range(T):
            y, state = self.net(x_seq[t], state)
            outs.append(y.reshape(B, -1))
        out = torch.stack(outs)
        return out.cumsum(0) if self.readout == "sum" else out


class NIRBaseline(Rule):
    name = "nir"
    paper = "NIR graph evaluated without training (Pedersen et al. 2024, Nat. Commun. 15:8122, doi:10.1038/s41467-024-52259-9)"
    neuron = "NIR"
    encoding = "direct"
    defaults = DEFAULTS
    named_only = True  # not part of --rules all: it needs --set graph=

    def build(self, arch, input_shape, n_classes, backend, hp):
        if not hp["graph"]:
            raise NIRGraphError("rule 'nir' needs the graph file: --set graph=FILE.nir")
        net = NIRNet(hp["graph"], hp["dt"], hp["readout"])
        if int(np.prod(net.input_shape)) != int(np.prod(input_shape)):
            raise NIRGraphError(f"rule 'nir': {hp['graph']}: the graph's input type {net.input_shape} does not "
                                f"match the dataset's samples {tuple(input_shape)} (element counts differ)")
        if int(np.prod(net.output_shape)) != n_classes:
            raise NIRGraphError(f"rule 'nir': {hp['graph']}: the graph has {int(np.prod(net.output_shape))} "
                                f"outputs, the dataset {n_classes} classes")
        meta = net.metadata
        if meta.get("source") == "snn-suite":
            want = {"encoding": meta.get("encoding", "direct"), "input_gain": float(meta.get("input_gain", 1.0))}
            if want["encoding"] != "poisson":
                want.pop("input_gain")
            wrong = {k: v for k, v in want.items() if hp[k] != v}
            if wrong:
                raise NIRGraphError(f"rule 'nir': {hp['graph']} was exported from a {meta.get('rule')!r} model whose "
                                    f"input was encoded with {want}; pass "
                                    + " ".join(f"--set {k}={v}" for k, v in want.items()))
        return net

    def encode(self, x, T, ctx):
        if ctx.data_kind == "events":
            return super().encode(x, T, ctx)
        name = ctx.hp["encoding"]
        kwargs = {"gain": float(ctx.hp["input_gain"])} if name == "poisson" else {}
        return create_encoder(name, **kwargs)(x, T, ctx.generator)

    def configure_optimizer(self, model, ctx):
        return None, None, "epoch"

    def readout(self, outputs):
        return outputs  # NIRNet applies the graph's readout itself

    def train_step(self, model, batch, optimizer, ctx):
        return {}  # a fixed graph: --epochs given for the other rules of a run leaves it unchanged

    def op_counter(self, model, T, batch_size):
        return SteppedOpCounter(model, T, batch_size)


@hookimpl
def snn_suite_rules():
    return [NIRBaseline()]
