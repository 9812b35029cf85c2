"""surrogate_bptt_bn -- surrogate-gradient BPTT with batch normalisation of input currents.

Ledinauskas, Ruseckas, Juršėnas, Buračas (2020), *Training Deep Spiking Neural Networks*,
arXiv:2006.04436.

Mechanism (as the abstract and its citing work describe it; the full text was not available):

* LIF neurons, ``u[t] = beta * u[t-1] + BN(W o[t])``, ``o = H(u - theta)``, hard reset
  ``u <- u (1 - o)``;
* the gradient of H is replaced by a surrogate whose width is *the* knob the paper tunes to
  avoid exploding (too wide) and vanishing (too narrow) gradients through time: SuperSpike's
  fast sigmoid ``1 / (1 + alpha |u - theta|)^2`` with ``alpha = 10`` by default;
* batch normalisation on every hidden layer's input current, with statistics over
  batch x time (one BN shared by all steps);
* full back-propagation through time; direct (analog) input; readout = time-averaged output
  current, cross-entropy loss; T = 10 (the paper's "as low as 10").

Choices where the paper gives no number (documented, overridable): beta = 0.9, AdamW with
lr 1e-3 and weight decay 1e-4, one-cycle schedule, batch 64.

Measured here (tests/test_surrogate_bptt_bn.py, 6 hidden layers of 128, T = 10, digits):
first/last layer gradient-norm ratio ~5e18 at alpha = 0.05 (explodes), ~12 at alpha = 1,
~4e-3 at alpha = 10 and ~3e-5 at alpha = 50 (vanishes). alpha = 10 trains the shallow
paper-scale MLPs well; for deep networks set ``--set alpha=1``. Every run records the same ratio,
averaged over each epoch (``extra.history[].grad_norm_ratio``, :mod:`suite.gradnorms`).

Networks: the sequential specs and the resnet family of :mod:`suite.archs` (``resnet8`` ...
``resnet20``, their plain twins ``plain8`` ..., ``_nobn`` without BN, ``w8`` at half width), with
the shortcut added to the input current of the block's last LIF layer (BN before the add, as on
every hidden layer). For a resnet-family spec BN is part of the architecture and the
``batch_norm`` option is not read.
"""
from __future__ import annotations

from suite.archs import RESNET_FAMILY, build_network
from suite.hookspecs import hookimpl
from suite.neurons import LIF
from suite.rule import Rule

DEFAULTS = {
    "T": 10,
    "beta": 0.9,
    "v_threshold": 1.0,
    "surrogate": "fast_sigmoid",
    "alpha": 10.0,
    "batch_norm": True,
    "detach_reset": False,
    "encoding": "direct",
    "optimizer": "adamw",
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "lr_schedule": "onecycle",
    "batch_size": 64,
    "epochs": 10,
    "grad_clip": 0.0,
}

SEARCH_SPACE = {
    "lr": ("log", 3e-4, 1e-2),
    "alpha": ("log", 1.0, 30.0),          # surrogate width: the paper's main knob for depth
    "beta": ("float", 0.5, 0.99),
    "v_threshold": ("float", 0.5, 2.0),
    "weight_decay": ("log", 1e-6, 1e-2),
}


class SurrogateBPTTBN(Rule):
    name = "surrogate_bptt_bn"
    paper = ("Ledinauskas, Ruseckas, Jursenas, Buracas (2020). Training Deep Spiking Neural Networks. "
             "arXiv:2006.04436")
    neuron = "LIF"
    encoding = "direct"
    defaults = DEFAULTS
    search_space = SEARCH_SPACE

    def backends(self):
        from suite.kernels import available_backends

        return tuple(available_backends())

    def supports(self, arch, dataset):
        return arch.family in ("sequential", RESNET_FAMILY)

    def build(self, arch, input_shape, n_classes, backend, hp):
        tau = 1.0 / (1.0 - hp["beta"])
        return build_network(
            arch, input_shape, n_classes, norm=hp["batch_norm"], time_major=True,
            activation=lambda layer, shape: LIF(tau=tau, v_threshold=hp["v_threshold"], v_reset=0.0,
                                                surrogate=hp["surrogate"], alpha=hp["alpha"], decay_input=False,
                                                detach_reset=hp["detach_reset"], backend=backend))


@hookimpl
def snn_suite_rules():
    return [SurrogateBPTTBN()]


@hookimpl
def snn_suite_presets():
    return [
        {"name": "surrogate_bptt_bn/digits", "rule": "surrogate_bptt_bn", "dataset": "digits", "arch": "mlp128",
         "timesteps": [1, 2, 4, 8], "epochs": 20},
        {"name": "surrogate_bptt_bn/mnist", "rule": "surrogate_bptt_bn", "dataset": "mnist", "arch": "fc800",
         "timesteps": [1, 2, 4, 8], "epochs": 5},
    ]
