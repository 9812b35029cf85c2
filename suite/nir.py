"""Export a saved model to NIR, the Neuromorphic Intermediate Representation (``nir.write``).

``snn-suite export OUT/models/<cell_id>.pt -o model.nir`` writes the network as an NIR graph that
snnTorch (``snntorch.import_nir.import_from_nir``), Norse (``norse.torch.from_nir(g, dt=...)``) and
the suite's own ``nir`` baseline read. Only exact translations are written: a layer NIR cannot
express raises :class:`NIRExportError` naming the layer and the reason.

Discrete time <-> NIR's continuous time (forward Euler with step ``dt``, default ``1e-4`` s: the
value snnTorch's importer assumes; give Norse the same ``dt``). Per step ``t``:

* ``nir.LIF(tau, r, v_leak, v_threshold, v_reset)``:
  ``v[t] = v[t-1] + dt/tau (v_leak - v[t-1] + r I[t])``, spike ``z[t] = H(v[t] - v_threshold)``,
  then ``v[t] = v_reset`` where ``z[t] = 1``.
  The suite's :class:`suite.neurons.LIF` (time constant ``tau_d`` in steps, reset to ``v_reset``):
  ``tau = tau_d dt``, ``r = 1``, ``v_leak = v_reset = v_reset``. With ``decay_input=True``
  (``h = v + (x - v)/tau_d``) that is the equation itself; with ``decay_input=False``
  (``h = (1 - 1/tau_d) v + x``, snnTorch's ``Leaky`` with ``beta = 1 - 1/tau_d``) the input
  needs ``r = tau_d``: we write ``r = 1`` and multiply the weights and bias of the layer feeding
  the neuron by ``tau_d`` instead, because Norse's importer ignores ``r`` (snnTorch's honours
  it through its threshold rescaling). Both forms are the same NIR network.
* ``nir.IF(r, v_threshold, v_reset)``: ``v[t] = v[t-1] + r I[t]`` (``dt`` does not enter: the
  reading of Norse's importer, and snnTorch's asserts ``r == 1``); the suite's ``IF`` is ``r = 1``.
* ``nir.LI(tau, r, v_leak)``: as LIF without threshold; ``nir.CubaLIF``: a synaptic current
  ``I[t] = I[t-1] + dt/tau_syn (w_in x[t] - I[t-1])`` feeding the LIF equation with ``tau_mem``.
* Threshold: NIR's importers fire at ``v > v_threshold``, the suite's neurons at
  ``v >= v_threshold``; they differ only when a membrane lands exactly on the threshold, which
  analog (direct-coded, BN-folded) inputs practically never do (the round-trip tests measure it).

What is written: ``Linear``/``Conv2d`` as ``nir.Affine``/``nir.Conv2d`` (a missing bias as zeros),
batch norm folded into the layer before it (eval statistics), average pooling as
``nir.AvgPool2d``, flattening as ``nir.Flatten`` over the per-sample shape (``start_dim=0``:
NIR's types carry no batch dimension, so snnTorch's and Norse's modules take one sample per
call), dropout dropped (identity at evaluation), suite ``LIF``/``IF`` neurons that reset to a
value, and spike_bp_dropout's LIF, average-pool IF and leaky-integrator readout (``nir.LI``). The classifier's output current is the graph's output; the suite reads the prediction
from its sum over steps. Graph metadata: ``dt``, the rule, dataset, input shape, encoding and
readout, so the ``nir`` baseline evaluates the file as the suite did.

TSSL-BP's PSP filter + SRM neuron is written as ``nir.CubaLIF``, its output PSP as ``nir.LI``,
its sum pooling as ``nir.SumPool2d``, and its input normalisation folded into the first layer.

Refused (no exact NIR node): reset by subtraction (``ann2snn``, the example rule's IF: NIR's IF
and LIF reset to ``v_reset``), max pooling, lee_bp's in-step winner-take-all inhibition and
membrane clip, SSTDP's fire-once TTFS neuron, and anything unknown.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from suite.archs import Flatten, TimeDistributed
from suite.models import load_model, write_atomic
from suite.neurons import LIF

#: snnTorch's importer assumes this step (``dt = 1e-4`` in ``snntorch.import_nir``)
DEFAULT_DT = 1e-4


class NIRExportError(ValueError):
    """The network (or one layer of it) has no exact NIR form; the message names the layer and why."""


def require_nir(module: str = "nir"):
    """``nir`` (or ``nirtorch``), or a UsageError naming the extra that installs it."""
    import importlib

    from suite.validate import require

    require(module, "nir", "NIR export and the `nir` baseline")
    return importlib.import_module(module)


#: layer classes with no exact NIR form, by class name (plugins need not be importable here)
REFUSED = {
    "LeeLIF": "lee_bp's LIF neuron inhibits the other neurons of its layer within the same step "
              "(winner-take-all, kappa) and clips its membrane at -theta; NIR has no node for either",
    "LeeLayer": "lee_bp's layer couples its neurons by in-step winner-take-all inhibition and clips the "
                "membrane at -theta; NIR has no node for either",
    "SpikeOnceLayer": "SSTDP's TTFS neuron fires at most once and then stays silent (no reset); NIR's IF/LIF "
                      "reset to v_reset and fire again, and no NIR node expresses 'fire once'",
    "SpikeOnceLinear": "SSTDP's TTFS neuron fires at most once and then stays silent (no reset); NIR's IF/LIF "
                       "reset to v_reset and fire again, and no NIR node expresses 'fire once'",
    "SpikeOnceConv2d": "SSTDP's TTFS neuron fires at most once and then stays silent (no reset); NIR's IF/LIF "
                       "reset to v_reset and fire again, and no NIR node expresses 'fire once'",
    "SSTDPNet": "SSTDP's network of fire-once TTFS neurons decoded by the earliest spike has no NIR form",
    "EarliestSpikePool2d": "SSTDP's earliest-spike pooling has no NIR node",
}


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


class _Chain:
    """The NIR nodes of a feed-forward chain, built layer by layer with the per-sample shape."""

    def __init__(self, nir, input_shape, dt: float):
        self.nir, self.dt = nir, dt
        self.nodes: list[tuple[str, object]] = []
        self.input_shape = self.shape = tuple(int(d) for d in input_shape)
        self.pending = None  # a PSP filter waiting for the neuron it feeds

    def add(self, name: str, node, shape) -> None:
        self.nodes.append((name.replace(".", "_") or "layer", node))
        self.shape = tuple(int(d) for d in shape)

    def last_weight(self, name: str, what: str):
        if not self.nodes or not isinstance(self.nodes[-1][1], (self.nir.Affine, self.nir.Conv2d)):
            raise NIRExportError(f"layer {name!r}: {what} must directly follow a Linear/Conv2d layer to be "
                                 "folded into it")
        return self.nodes[-1]

    def full(self, value: float) -> np.ndarray:
        return np.full(self.shape, float(value))


def _weight(chain: _Chain, name: str, mod: nn.Module) -> None:
    nir = chain.nir
    with torch.no_grad():
        out = mod(torch.zeros(1, *chain.shape))
    bias = _np(mod.bias) if mod.bias is not None else np.zeros(mod.weight.shape[0])
    if isinstance(mod, nn.Linear):
        if len(chain.shape) != 1:
            raise NIRExportError(f"layer {name!r} (Linear) gets input of shape {chain.shape}; flatten it first")
        chain.add(name, nir.Affine(weight=_np(mod.weight), bias=bias), out.shape[1:])
    elif isinstance(mod, nn.Conv2d):
        if mod.padding_mode != "zeros" or isinstance(mod.padding, str):
            raise NIRExportError(f"layer {name!r} (Conv2d): padding {mod.padding!r}/{mod.padding_mode!r}; NIR's "
                                 "Conv2d takes explicit zero padding only")
        chain.add(name, nir.Conv2d(input_shape=np.array(chain.shape[1:]), weight=_np(mod.weight),
                                   stride=np.array(mod.stride), padding=np.array(mod.padding),
                                   dilation=np.array(mod.dilation), groups=mod.groups, bias=bias), out.shape[1:])
    else:
        raise NIRExportError(f"layer {name!r} ({type(mod).__name__}): only Linear and Conv2d weights are exported")


def _batchnorm(chain: _Chain, name: str, bn: nn.modules.batchnorm._BatchNorm) -> None:
    key, node = chain.last_weight(name, "batch norm")
    if bn.running_mean is None:
        raise NIRExportError(f"layer {name!r} ({type(bn).__name__}) keeps no running statistics; it cannot be "
                             "folded into fixed weights")
    scale = (_np(bn.weight) if bn.weight is not None else 1.0) / np.sqrt(_np(bn.running_var) + bn.eps)
    shift = (_np(bn.bias) if bn.bias is not None else 0.0) - _np(bn.running_mean) * scale
    w_shape = (-1,) + (1,) * (node.weight.ndim - 1)
    node.weight = node.weight * scale.reshape(w_shape)
    node.bias = node.bias * scale + shift


def _pool(chain: _Chain, name: str, mod: nn.Module) -> None:
    nir = chain.nir
    if isinstance(mod, (nn.MaxPool2d, nn.MaxPool1d, nn.AdaptiveMaxPool2d)):
        raise NIRExportError(f"layer {name!r} ({type(mod).__name__}): NIR has no max-pooling node")
    if not isinstance(mod, nn.AvgPool2d) or mod.ceil_mode or (mod.padding and not mod.count_include_pad) \
            or mod.divisor_override:
        raise NIRExportError(f"layer {name!r} ({type(mod).__name__}): only plain AvgPool2d maps onto nir.AvgPool2d")
    pair = lambda v: np.array(v if isinstance(v, (tuple, list)) else (v, v))
    with torch.no_grad():
        out = mod(torch.zeros(1, *chain.shape))
    chain.add(name, nir.AvgPool2d(kernel_size=pair(mod.kernel_size), stride=pair(mod.stride or mod.kernel_size),
                                  padding=pair(mod.padding)), out.shape[1:])


def _neuron(chain: _Chain, name: str, mod: LIF, dt: float) -> None:
    kind = "IF" if mod.tau is None else "LIF"
    if mod.v_reset is None:
        raise NIRExportError(f"layer {name!r} ({type(mod).__name__}): {kind} with reset by subtraction; NIR's IF and "
                             "LIF nodes reset the membrane to v_reset, so the network cannot be written exactly")
    _spiking(chain, name, mod.tau, mod.decay_input, mod.v_threshold, mod.v_reset, dt)


def _spiking(chain: _Chain, name: str, tau_d, decay_input: bool, v_threshold: float, v_reset: float,
             dt: float) -> None:
    """An IF (``tau_d`` None) or LIF neuron that resets to ``v_reset``; see the module docstring."""
    nir = chain.nir
    theta, v0 = chain.full(v_threshold), chain.full(v_reset)
    if tau_d is None:
        chain.add(name, nir.IF(r=chain.full(1.0), v_threshold=theta, v_reset=v0), chain.shape)
        return
    tau_d = float(tau_d)
    if not decay_input and tau_d != 1.0:
        # h = (1 - 1/tau_d) v + x  ==  v + (tau_d x - v) / tau_d: the input gain tau_d goes into the weights
        key, node = chain.last_weight(name, "a LIF neuron without input decay")
        node.weight = node.weight * tau_d
        node.bias = node.bias * tau_d
    chain.add(name, nir.LIF(tau=chain.full(tau_d * dt), r=chain.full(1.0), v_leak=v0, v_threshold=theta,
                            v_reset=v0), chain.shape)


def _spike_bp(chain: _Chain, name: str, mod: nn.Module, dt: float) -> None:
    """spike_bp_dropout's layers (Lee et al. 2020), matched by class name so the plugin need not be
    importable: its LIF ``h = u + I``, ``u = leak h (1 - s)`` is the no-input-decay LIF with
    ``tau_d = 1 / (1 - leak)``; ``AvgPoolIF`` is an average pool and an IF resetting to 0; the
    readout ``v[t] = leak (v[t-1] + I[t])`` is ``nir.LI`` with ``dt/tau = 1 - leak`` and
    ``r = leak / (1 - leak)``. The readout's division of ``v[t]`` by ``theta t`` (positive at each
    t, so the same prediction) is not part of the network and is not written."""
    cls = type(mod).__name__
    if cls == "SpikeBPLIF":
        _spiking(chain, name, 1.0 / (1.0 - mod.leak), False, mod.v_threshold, 0.0, dt)
    elif cls == "AvgPoolIF":
        if mod.k > 1:
            _pool(chain, name + "_pool", nn.AvgPool2d(mod.k))
        _spiking(chain, name, None, True, mod.v_threshold, 0.0, dt)
    elif cls == "LeakyIntegratorReadout":
        k = 1.0 - mod.leak
        chain.add(name, chain.nir.LI(tau=chain.full(dt / k), r=chain.full(mod.leak / k), v_leak=chain.full(0.0)),
                  chain.shape)


SPIKE_BP = ("SpikeBPLIF", "AvgPoolIF", "LeakyIntegratorReadout")
TSSL = ("PSPFilter", "TSSLNeuron", "SumPool")


def _tssl(chain: _Chain, name: str, mod: nn.Module, dt: float) -> None:
    """TSSL-BP's layers (Zhang & Li 2020), matched by class name. Its PSP filter
    ``a[t] = (1 - 1/tau_s) a[t-1] + gain x[t] / tau_s`` followed by its neuron
    ``h = (1 - 1/tau_m) u + a``, spike ``h > theta``, ``u = h (1 - s)`` is exactly ``nir.CubaLIF`` with
    ``tau_syn = tau_s dt``, ``w_in = gain``, ``tau_mem = tau_m dt``, ``r = tau_m``, reset to 0; the
    output's PSP filter alone is ``nir.LI`` (``tau = tau_s dt``, ``r = gain``); sum pooling is
    ``nir.SumPool2d``. (The neuron's surrogate and quiet-neuron terms shape only its backward pass.)"""
    nir, cls = chain.nir, type(mod).__name__
    if cls == "PSPFilter":
        _flush_psp(chain)
        chain.pending = (name, mod)
    elif cls == "TSSLNeuron":
        if chain.pending is None:
            raise NIRExportError(f"layer {name!r} (TSSLNeuron) is not fed by a PSPFilter; no NIR form is known")
        _, psp = chain.pending
        chain.pending = None
        chain.add(name, nir.CubaLIF(tau_syn=chain.full(psp.tau_s * dt), tau_mem=chain.full(mod.tau_m * dt),
                                    r=chain.full(mod.tau_m), v_leak=chain.full(0.0),
                                    v_threshold=chain.full(mod.v_threshold), v_reset=chain.full(0.0),
                                    w_in=chain.full(psp.gain)), chain.shape)
    elif cls == "SumPool":
        with torch.no_grad():
            out = mod(torch.zeros(1, *chain.shape))
        chain.add(name, nir.SumPool2d(kernel_size=np.array([mod.k, mod.k]), stride=np.array([mod.k, mod.k]),
                                      padding=np.array([0, 0])), out.shape[1:])


def _flush_psp(chain: _Chain) -> None:
    """A PSP filter not followed by a neuron (the output PSP) becomes a leaky integrator."""
    if chain.pending is not None:
        name, psp = chain.pending
        chain.pending = None
        chain.add(name, chain.nir.LI(tau=chain.full(psp.tau_s * chain.dt), r=chain.full(psp.gain),
                                     v_leak=chain.full(0.0)), chain.shape)


def _fold_input_normalisation(chain: _Chain, mean, std) -> None:
    """Fold ``x <- (x - mean) / std`` per input channel into the first weight layer (exact for a
    Linear layer and an unpadded convolution; zero padding would pad with the raw value ``mean``)."""
    nir = chain.nir
    first = next(((k, n) for k, n in chain.nodes if not isinstance(n, nir.Flatten)), None)
    if first is None or not isinstance(first[1], (nir.Affine, nir.Conv2d)):
        raise NIRExportError("the rule normalises its input per channel before the network, and the first layer is "
                             "not a Linear/Conv2d layer the normalisation could be folded into")
    key, node = first
    if isinstance(node, nir.Conv2d) and np.any(np.asarray(node.padding) != 0):
        raise NIRExportError(f"layer {key!r} (Conv2d): the rule normalises its input per channel before this zero-"
                             "padded convolution; folded into the weights the padding would change value")
    c = int(chain.input_shape[0]) if len(chain.input_shape) > 1 else 1
    mean = np.broadcast_to(np.asarray(mean, dtype=np.float64), (c,))
    std = np.broadcast_to(np.asarray(std, dtype=np.float64), (c,))
    if isinstance(node, nir.Conv2d):
        scale, shift = (1.0 / std)[None, :, None, None], (mean / std)[None, :, None, None]
    else:
        per = int(np.prod(chain.input_shape[1:])) if len(chain.input_shape) > 1 else 1
        scale, shift = np.repeat(1.0 / std, per)[None, :], np.repeat(mean / std, per)[None, :]
    w = node.weight
    node.bias = node.bias - (w * shift).reshape(w.shape[0], -1).sum(1)
    node.weight = w * scale


def _flatten(chain: _Chain, name: str) -> None:
    nir = chain.nir
    if len(chain.shape) > 1:
        chain.add(name, nir.Flatten(input_type={"input": np.array(chain.shape)}, start_dim=0, end_dim=-1),
                  (int(np.prod(chain.shape)),))


def _refusal(mod: nn.Module) -> str | None:
    return next((REFUSED[c.__name__] for c in type(mod).__mro__ if c.__name__ in REFUSED), None)


def _leaves(model: nn.Module):
    """``(name, module)`` in execution order for the sequential networks the suite builds."""
    if hasattr(model, "converted") and hasattr(model, "ann"):  # ann2snn: the converted network is what runs
        net = model.converted().net
        for node in net.graph.nodes:
            if node.op == "call_module":
                yield node.target, net.get_submodule(node.target)
            elif node.op in ("call_function", "call_method"):
                fn = getattr(node.target, "__name__", str(node.target))
                if fn not in ("flatten", "reshape", "view", "contiguous"):
                    raise NIRExportError(f"operation {node.name!r} ({fn}) of the converted network has no NIR node "
                                         "in this exporter")
                yield node.name, Flatten()
        return
    if not isinstance(model, nn.Sequential):
        for name, mod in model.named_modules():
            if name and _refusal(mod):
                raise NIRExportError(f"layer {name!r} ({type(mod).__name__}): {_refusal(mod)}")
        cls = type(model).__name__
        raise NIRExportError(f"model ({cls}): {REFUSED.get(cls, 'only sequential networks are exported')}")
    for name, mod in model.named_children():
        yield name, mod.module if isinstance(mod, TimeDistributed) else mod


def to_nir(model: nn.Module, input_shape, dt: float = DEFAULT_DT, metadata: dict | None = None,
           input_normalisation: tuple | None = None):
    """The NIR graph of ``model`` (a network a rule built, in eval mode) for inputs of ``input_shape``;
    ``input_normalisation`` = ``(mean, std)`` per channel that the rule applies before the network."""
    nir = require_nir()
    if not dt > 0:
        raise ValueError(f"dt must be > 0 (got {dt})")
    chain = _Chain(nir, input_shape, dt)
    for name, mod in _leaves(model):
        cls = type(mod).__name__
        if cls not in ("TSSLNeuron", "FixedDropout"):
            _flush_psp(chain)
        if _refusal(mod):
            raise NIRExportError(f"layer {name!r} ({cls}): {_refusal(mod)}")
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            _weight(chain, name, mod)
        elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
            _batchnorm(chain, name, mod)
        elif isinstance(mod, LIF):
            _neuron(chain, name, mod, dt)
        elif isinstance(mod, (Flatten, nn.Flatten)):
            _flatten(chain, name)
        elif cls in SPIKE_BP:
            _spike_bp(chain, name, mod, dt)
        elif cls in TSSL:
            _tssl(chain, name, mod, dt)
            continue
        elif isinstance(mod, (nn.Dropout, nn.Identity)) or cls in ("TimeFixedDropout", "FixedDropout"):
            continue
        elif isinstance(mod, (nn.AvgPool2d, nn.MaxPool2d, nn.MaxPool1d, nn.AdaptiveMaxPool2d)):
            _pool(chain, name, mod)
        else:
            raise NIRExportError(f"layer {name!r} ({cls}): no exact NIR node is known for this module")
    _flush_psp(chain)
    if not chain.nodes:
        raise NIRExportError("the model has no layers NIR can express")
    if input_normalisation:
        _fold_input_normalisation(chain, *input_normalisation)
    nodes = {"input": nir.Input(input_type={"input": np.array(input_shape)})}
    for key, node in chain.nodes:
        if hasattr(node, "weight"):
            node.weight = node.weight.astype(np.float32)
        for attr in ("bias", "tau", "tau_syn", "tau_mem", "w_in", "r", "v_leak", "v_threshold", "v_reset"):  # float32, as the importers run
            if isinstance(getattr(node, attr, None), np.ndarray) and getattr(node, attr).dtype.kind == "f":
                setattr(node, attr, getattr(node, attr).astype(np.float32))
        nodes[key] = node
    nodes["output"] = nir.Output(output_type={"output": np.array(chain.shape)})
    keys = list(nodes)
    return nir.NIRGraph(nodes=nodes, edges=list(zip(keys[:-1], keys[1:])),
                        metadata={"dt": float(dt), **(metadata or {})})


def _host():
    from suite.host import create_host
    return create_host()


def export_model(model_file, output, dt: float = DEFAULT_DT, host=None) -> "object":
    """Read a saved model, translate it and write ``output`` atomically; returns the graph."""
    nir = require_nir()
    host = host or _host()
    model, info = load_model(model_file, host=host, backend="torch")
    meta = {"source": "snn-suite", "rule": info["rule"], "plugin_version": info.get("plugin_version", ""),
            "dataset": info["dataset"], "encoding": info.get("encoding") or "direct", "input_gain": 1.0,
            "input_shape": np.array(info["input_shape"]), "cell_id": info["cell_id"],
            "train_T": int(info["train_T"] or 0)}
    try:
        rule = host.rule(info["rule"])
        norm = None
        if hasattr(rule, "nir_input"):  # the rule's input handling, in terms of the nir baseline's settings
            meta.update(rule.nir_input(dict(info["hp"]), info))
            norm = meta.pop("input_normalisation", None)
        graph = to_nir(model, tuple(info["input_shape"]), dt=dt, metadata=meta, input_normalisation=norm)
        if "readout" not in graph.metadata:
            graph.metadata["readout"] = "last" if isinstance(list(graph.nodes.values())[-2], nir.LI) else "sum"
    except NIRExportError as exc:
        raise NIRExportError(f"{model_file}: rule {info['rule']!r} cannot be exported to NIR: {exc}") from None
    write_atomic(Path(output), lambda tmp: nir.write(tmp, graph))
    return graph


__all__ = ["DEFAULT_DT", "NIRExportError", "to_nir", "export_model", "require_nir"]
