"""The networks the speed suite trains, built with every contender's spiking neuron.

Every contender gets the same layers, input, loss and optimizer; only the neuron differs:

* ``fc``: 784-800-10, a LIF layer after the hidden Linear, the classifier read out as the mean
  over T of its output current (no neuron after it, as in :func:`suite.archs.build_sequential`);
* ``conv``: the built-in ``convnet`` arch 16C3p1-P2-32C3p1-P2-128 on 1x28x28.

Weight layers see ``[T*B, ...]`` (time merged into the batch) for every contender, peers included,
so the comparison isolates the neuron's multi-step dynamics. The floor is the same step with
``nn.ReLU`` in place of the neuron: its cost is the GEMMs plus one cheap elementwise op.

Neuron settings (:class:`Neuron`): LIF with tau = 2 or 10, or IF; v_th = 1, hard reset to 0,
input decayed by 1/tau (SpikingJelly's ``LIFNode`` convention); surrogate fast_sigmoid, sigmoid,
atan or rectangular, each library's own implementation of that shape at its default width.
A peer without that surrogate or neuron is skipped with the reason (snnTorch has no rectangular
surrogate, Norse no atan or rectangular). Norse's ``LIF`` is its current-based LIF (an extra
synaptic state), its only multi-step LIF module; its IF is ``IAF``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from suite.archs import ArchSpec, build_sequential

NETS = {
    "fc": (ArchSpec("fc800", "800"), (784,)),
    "conv": (ArchSpec("convnet", "16C3p1-P2-32C3p1-P2-128"), (1, 28, 28)),
}
N_CLASSES = 10
V_TH = 1.0
SURROGATES = ("fast_sigmoid", "sigmoid", "atan", "rectangular")


@dataclass(frozen=True)
class Neuron:
    kind: str = "lif"          # "lif" | "if"
    tau: float | None = 2.0    # None for IF
    surrogate: str = "sigmoid"

    @property
    def name(self) -> str:
        return f"lif-tau{self.tau:g}-{self.surrogate}" if self.kind == "lif" else f"if-{self.surrogate}"

    @classmethod
    def parse(cls, name: str) -> "Neuron":
        """``lif-tau10-atan`` / ``if-sigmoid``."""
        kind, _, rest = name.partition("-")
        if kind == "if":
            return cls("if", None, rest)
        tau, _, surrogate = rest.partition("-")
        if kind != "lif" or not tau.startswith("tau") or surrogate not in SURROGATES:
            raise ValueError(f"neuron setting {name!r}: expected lif-tau<T>-<surrogate> or if-<surrogate>, "
                             f"surrogate one of {', '.join(SURROGATES)}")
        return cls("lif", float(tau[3:]), surrogate)


#: the setting the suite was first measured at (SpikingJelly's LIFNode defaults)
DEFAULT_NEURON = Neuron()
#: every setting the kernel targets are stated for
ALL_NEURONS = tuple(Neuron(k, t, s) for k, t in (("lif", 2.0), ("lif", 10.0), ("if", None)) for s in SURROGATES)


class Unsupported(Exception):
    """A peer has no implementation of the requested neuron or surrogate."""


@dataclass
class Built:
    model: nn.Module
    after_step: Callable[[], None] = lambda: None   # peers with stateful neurons reset here


def _sequential(net: str, activation) -> nn.Module:
    arch, shape = NETS[net]
    return build_sequential(arch, shape, N_CLASSES, activation=activation, time_major=True)


def build_ours(net: str, backend: str, n: Neuron = DEFAULT_NEURON) -> Built:
    from suite.neurons import IF, LIF

    def neuron(layer, shape):
        if n.kind == "if":
            return IF(v_threshold=V_TH, v_reset=0.0, surrogate=n.surrogate, backend=backend)
        return LIF(tau=n.tau, v_threshold=V_TH, v_reset=0.0, surrogate=n.surrogate, backend=backend)
    return Built(_sequential(net, neuron))


def build_floor(net: str) -> Built:
    return Built(_sequential(net, lambda layer, shape: nn.ReLU()))


class _PerStep(nn.Module):
    """Runs a single-step peer neuron over t (the peer's idiom) on ``[T, B, ...]``."""

    def __init__(self, cell: nn.Module, init_state: Callable, call: Callable):
        super().__init__()
        self.cell, self.init_state, self.call = cell, init_state, call

    def forward(self, x):
        state = self.init_state(x[0])
        out = []
        for xt in x:
            s, state = self.call(self.cell, xt, state)
            out.append(s)
        return torch.stack(out)


def _pick(table: dict, n: Neuron, peer: str):
    if n.surrogate not in table:
        raise Unsupported(f"{peer} has no {n.surrogate} surrogate")
    return table[n.surrogate]


def build_spikingjelly(net: str, n: Neuron = DEFAULT_NEURON) -> Built:
    from spikingjelly.activation_based import functional, neuron, surrogate

    surr = _pick({"fast_sigmoid": surrogate.SuperSpike, "sigmoid": surrogate.Sigmoid, "atan": surrogate.ATan,
                  "rectangular": surrogate.Rect}, n, "SpikingJelly")

    def make(layer, shape):
        if n.kind == "if":
            return neuron.IFNode(v_threshold=V_TH, v_reset=0.0, surrogate_function=surr(), step_mode="m")
        return neuron.LIFNode(tau=n.tau, v_threshold=V_TH, v_reset=0.0, decay_input=True,
                              surrogate_function=surr(), step_mode="m")
    model = _sequential(net, make)
    return Built(model, lambda: functional.reset_net(model))


def build_snntorch(net: str, n: Neuron = DEFAULT_NEURON) -> Built:
    import snntorch
    from snntorch import surrogate

    grad = _pick({"fast_sigmoid": surrogate.fast_sigmoid, "sigmoid": surrogate.sigmoid, "atan": surrogate.atan},
                 n, "snnTorch")

    def neuron(layer, shape):  # IF is Leaky without leak (beta = 1), snnTorch's own idiom for it
        cell = snntorch.Leaky(beta=1.0 if n.kind == "if" else 1.0 - 1.0 / n.tau, threshold=V_TH,
                              reset_mechanism="zero", spike_grad=grad())
        return _PerStep(cell, lambda x0: torch.zeros_like(x0), lambda c, x, mem: c(x, mem))
    return Built(_sequential(net, neuron))


def build_norse(net: str, n: Neuron = DEFAULT_NEURON) -> Built:
    from norse.torch import IAF, LIF, IAFParameters, LIFParameters

    method = _pick({"fast_sigmoid": "super", "sigmoid": "tanh"}, n, "Norse")

    class NorseNeuron(nn.Module):
        def __init__(self):
            super().__init__()
            if n.kind == "if":
                self.cell = IAF(p=IAFParameters(v_th=torch.as_tensor(V_TH), v_reset=torch.as_tensor(0.0),
                                                method=method))
            else:
                self.cell = LIF(p=LIFParameters(tau_mem_inv=torch.as_tensor(1.0 / (n.tau * 1e-3)),
                                                v_th=torch.as_tensor(V_TH), v_reset=torch.as_tensor(0.0),
                                                method=method))

        def forward(self, x):
            return self.cell(x)[0]
    return Built(_sequential(net, lambda layer, shape: NorseNeuron()))


#: peer name -> (import name, builder)
PEERS = {"spikingjelly": ("spikingjelly", build_spikingjelly), "snntorch": ("snntorch", build_snntorch),
         "norse": ("norse", build_norse)}


def peer_version(name: str) -> str | None:
    """The installed peer's version, or None when it is missing or fails to import."""
    try:
        mod = importlib.import_module(PEERS[name][0])
    except Exception:
        return None
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(name)
    except PackageNotFoundError:
        return getattr(mod, "__version__", "unknown")


def contender_names(our_backends) -> list[str]:
    return ["floor"] + [f"ours-{b}" for b in our_backends] + list(PEERS)


def build(name: str, net: str, neuron: Neuron = DEFAULT_NEURON) -> Built:
    """Contender ``name``'s network; raises :class:`Unsupported` where a peer lacks the neuron."""
    if name == "floor":
        return build_floor(net)
    if name.startswith("ours-"):
        return build_ours(net, name[len("ours-"):], neuron)
    return PEERS[name][1](net, neuron)


def make_batch(net: str, T: int, batch: int, seed: int = 0):
    """Binary input spikes (rate 0.2) and labels, the same for every contender."""
    g = torch.Generator().manual_seed(seed)
    shape = NETS[net][1]
    x = (torch.rand((T, batch, *shape), generator=g) < 0.2).float()
    y = torch.randint(0, N_CLASSES, (batch,), generator=g)
    return x, y


def make_step(built: Built, x: torch.Tensor, y: torch.Tensor, lr: float = 0.05):
    """One training step: forward over T, cross-entropy on the time-averaged output, backward, SGD."""
    model = built.model
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x).mean(0), y)
        loss.backward()
        opt.step()
        built.after_step()
        return loss
    return step


__all__ = ["NETS", "Built", "build", "contender_names", "make_batch", "make_step",
           "peer_version", "PEERS", "Neuron", "DEFAULT_NEURON", "ALL_NEURONS", "Unsupported"]
