"""cnn -- the conventional network of the same architecture: ReLU, trained the ANN way.

One row per cell with ``T`` empty and MACs counted. Event data (frames ``[B, T, C, H, W]``)
is summed over time into one image.
"""
from __future__ import annotations

import torch
from torch import nn

from suite.archs import build_sequential
from suite.hookspecs import hookimpl
from suite.rule import Rule

DEFAULTS = {
    "batch_norm": False,
    "optimizer": "adam",
    "lr": 1e-3,
    "weight_decay": 0.0,
    "lr_schedule": "cosine",
    "batch_size": 64,
    "epochs": 10,
    "encoding": "none",
}


class CNN(Rule):
    name = "cnn"
    paper = "Conventional ANN baseline (ReLU, backpropagation, cross-entropy)"
    neuron = "ReLU"
    encoding = "none"
    temporal = False
    defaults = DEFAULTS

    def build(self, arch, input_shape, n_classes, backend, hp):
        return build_sequential(arch, input_shape, n_classes, norm=hp["batch_norm"],
                                activation=lambda layer, shape: nn.ReLU())

    def forward(self, model, x, T, ctx):
        if x.dim() == len(ctx.input_shape) + 2:  # event frames [B, T, C, H, W]: sum over time
            x = x.sum(1, dtype=torch.float32)
        return model(x).unsqueeze(0)


@hookimpl
def snn_suite_rules():
    return [CNN()]
