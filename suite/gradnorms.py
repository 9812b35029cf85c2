"""Per-layer weight-gradient norms during training, the measurement behind Ledinauskas et al.'s
point that the surrogate's width makes BPTT gradients explode or vanish with depth.

The host reads the gradients a rule's ``train_step`` left on the weights (they stay there until
the next step's ``zero_grad``), so every autograd rule -- SNN or CNN twin -- is measured the same
way and no rule changes. Per epoch: the mean norm of each conv / linear weight gradient over the
steps, and ``first / last``: the input layer's mean over the classifier's (> 1: gradients grow
towards the input, < 1: they vanish; None where the last layer got no gradient at all, e.g. a
spiking net whose last hidden layer never fired). A rule whose update is not autograd leaves no
gradients and gets no entry. The norms are summed on the model's device and read once per epoch.
"""
from __future__ import annotations

import torch
from torch import nn

WEIGHTS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class GradNorms:
    def __init__(self, model: nn.Module):
        self.layers = [(name, m.weight) for name, m in model.named_modules()
                       if isinstance(m, WEIGHTS) and m.weight.requires_grad]
        self._sum = None
        self._steps = 0

    @torch.no_grad()
    def record(self) -> None:
        """After a training step: add this step's gradient norms (skipped where any is missing)."""
        grads = [w.grad for _, w in self.layers]
        if len(grads) < 2 or any(g is None for g in grads):
            return
        norms = torch.stack([g.detach().float().norm() for g in grads])
        self._sum = norms if self._sum is None else self._sum + norms
        self._steps += 1

    def epoch(self) -> dict | None:
        """The epoch's means ``{"first_last_ratio", "layers": {name: mean norm}}``; resets the sums."""
        if not self._steps:
            return None
        means = (self._sum / self._steps).cpu().tolist()
        self._sum, self._steps = None, 0
        ratio = means[0] / means[-1] if means[-1] > 0 else None  # nothing reached the last layer
        return {"first_last_ratio": ratio, "layers": {name: m for (name, _), m in zip(self.layers, means)}}
