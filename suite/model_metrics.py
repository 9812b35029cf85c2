"""Model metrics in NeuroBench's terms, added to every row's ``extra["neurobench"]``.

Static (of the trained network, as NeuroBench's ``neurobench.metrics.static`` classes define them;
tests/test_nir.py checks them against those classes on a saved model):

* ``parameter_count`` -- elements of all parameters (``ParameterCount``);
* ``footprint_bytes`` -- bytes of all parameters and buffers (``Footprint``; buffers include batch
  norm statistics and, for ann2snn, its calibration inputs);
* ``connection_sparsity`` -- zero weights / all weights of the Linear and Conv layers
  (``ConnectionSparsity``; NeuroBench rounds to 4 decimals, we do not).

Dynamic ones, named as NeuroBench names them where they mean the same thing (per sample, at the
row's T, from the suite's own op counter, see :mod:`suite.opcount`): ``activation_sparsity``
(``ActivationSparsity``), and ``synaptic_operations`` with ``Effective_MACs`` (non-zero input x
non-zero weight pairs of analog-input layers), ``Effective_ACs`` (the suite's SynOps: NeuroBench
counts only non-zero weights, so the two agree when ``connection_sparsity`` is 0) and ``Dense``
(every layer counted densely, once per step).
"""
from __future__ import annotations

from torch import nn

from suite.hookspecs import hookimpl

WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def static_metrics(model: nn.Module) -> dict:
    params = list(model.parameters())
    zeros = total = 0
    for m in model.modules():
        if isinstance(m, WEIGHT_LAYERS):
            zeros += int((m.weight == 0).sum())
            total += m.weight.numel()
    return {"parameter_count": sum(p.numel() for p in params),
            "footprint_bytes": sum(t.numel() * t.element_size() for t in (*params, *model.buffers())),
            "connection_sparsity": zeros / total if total else None}


def neurobench_metrics(model, rule, ctx, result) -> dict:
    ops = result.get("ops") or {}
    return {"neurobench": {**static_metrics(model), "activation_sparsity": ops.get("activation_sparsity"),
                           "synaptic_operations": {"Effective_MACs": ops.get("macs_effective"),
                                                   "Effective_ACs": ops.get("synops"),
                                                   "Dense": ops.get("dense_ops")}}}


@hookimpl
def snn_suite_metrics():
    return [neurobench_metrics]
