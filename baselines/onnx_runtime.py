"""ONNX export of a trained ANN, inference with ONNX Runtime, and the graph's MAC count.

* :func:`export_onnx` -- ``torch.onnx.export`` with the torch.export-based ("dynamo") exporter,
  the batch dimension dynamic; returns the serialised model;
* :class:`OnnxCheck` -- an ONNX Runtime CPU session that runs beside PyTorch on every
  evaluation batch and records how often the two predict the same class and the largest
  logit difference; ``summary()`` adds the per-sample (batch 1) CPU latency of both;
* :func:`onnx_macs` -- multiply-accumulates per sample read off the ONNX graph (``Conv``,
  ``Gemm``, ``MatMul``) with ONNX shape inference: an independent count to check
  :class:`suite.opcount.OpCounter` against (dense MACs = output elements x fan-in, padding
  included, for both).
"""
from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn


def export_onnx(model: nn.Module, example: torch.Tensor) -> bytes:
    """Serialise ``model`` (in eval mode) to ONNX with a dynamic batch dimension.

    ``example`` is a batch of at least two inputs (torch.export specialises a size-1 dim)."""
    if example.shape[0] < 2:
        example = example.expand(2, *example.shape[1:])
    model = _without_hooks(model).eval()
    with torch.no_grad():
        program = torch.onnx.export(model, (example.contiguous(),), dynamo=True, verbose=False, optimize=False,
                                    input_names=["x"], output_names=["logits"],
                                    dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    return program.model_proto.SerializeToString()


def _without_hooks(model: nn.Module) -> nn.Module:
    """A copy with no forward hooks: evaluation runs under the op counter's hooks, which
    torch.export would otherwise try to trace."""
    model = copy.deepcopy(model)
    for m in model.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    return model


def create_session(onnx_bytes: bytes, threads: int | None = None):
    """An ONNX Runtime CPU session; ``threads`` defaults to torch's intra-op thread count so the
    latency comparison runs both engines under the same budget."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])


def per_sample_latency(fn, x: torch.Tensor, budget_s: float = 1.0, min_runs: int = 10,
                       max_runs: int = 200, warmup: int = 3) -> dict:
    """Median wall time of ``fn(x)`` on a batch of one, repeated within ``budget_s``."""
    for _ in range(warmup):
        fn(x)
    times, start = [], time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": len(times)}


def _dims(info) -> list:
    return [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]


def onnx_macs(onnx_bytes: bytes) -> dict:
    """Per-sample MACs of every ``Conv`` / ``Gemm`` / ``MatMul`` node: ``{"total": n, "nodes": {...}}``.

    Conv: output elements x (C_in / groups x kernel area); Gemm / MatMul with a 2-D weight:
    in_features x out_features (x the non-batch leading dims of a higher-rank input)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load_from_string(onnx_bytes))
    g = model.graph
    shapes = {i.name: list(i.dims) for i in g.initializer}
    for vi in (*g.input, *g.value_info, *g.output):
        shapes.setdefault(vi.name, _dims(vi))
    nodes, total = {}, 0
    for node in g.node:
        if node.op_type == "Conv":
            w, out = shapes[node.input[1]], shapes[node.output[0]]
            macs = math.prod(out[1:]) * math.prod(w[1:])
        elif node.op_type in ("Gemm", "MatMul"):
            a, w = shapes[node.input[0]], shapes[node.input[1]]
            if len(w) != 2 or None in w:
                continue  # not a weight product (e.g. attention); none in the CNNs counted here
            trans_b = any(at.name == "transB" and at.i for at in node.attribute)
            k, n_out = (w[1], w[0]) if trans_b else (w[0], w[1])
            macs = k * n_out * math.prod(a[1:-1])
        else:
            continue
        nodes[node.name or node.output[0]] = int(macs)
        total += int(macs)
    return {"total": total, "nodes": nodes}


@dataclass
class OnnxCheck:
    """ONNX Runtime beside PyTorch on the evaluation batches of one trained model."""

    onnx_bytes: bytes
    session: object = None
    n: int = 0
    agree: int = 0
    max_abs_diff: float = 0.0
    sample: torch.Tensor | None = None
    export_s: float | None = None
    _summary: dict | None = field(default=None, repr=False)

    @classmethod
    def from_model(cls, model: nn.Module, example: torch.Tensor) -> "OnnxCheck":
        t0 = time.perf_counter()
        data = export_onnx(model, example.cpu())
        return cls(data, create_session(data), export_s=time.perf_counter() - t0)

    def run(self, x: torch.Tensor) -> np.ndarray:
        return self.session.run(None, {"x": x.detach().cpu().numpy().astype(np.float32)})[0]

    def compare(self, x: torch.Tensor, torch_logits: torch.Tensor) -> None:
        """Run ONNX Runtime on ``x`` and tally agreement with PyTorch's ``torch_logits`` ``[B, C]``."""
        ort_logits = torch.from_numpy(self.run(x))
        ref = torch_logits.detach().cpu().float()
        self.n += len(ref)
        self.agree += int((ort_logits.argmax(-1) == ref.argmax(-1)).sum())
        self.max_abs_diff = max(self.max_abs_diff, float((ort_logits - ref).abs().max()))
        if self.sample is None:
            self.sample = x[:1].detach().cpu().contiguous()

    def summary(self, model: nn.Module) -> dict:
        """Agreement, graph MACs and batch-1 CPU latency of ONNX Runtime and PyTorch (measured once)."""
        if self._summary is None:
            model = model.eval()
            device = next(model.parameters()).device
            x = self.sample
            with torch.no_grad():
                torch_lat = per_sample_latency(lambda v: model(v.to(device)), x)
            ort_lat = per_sample_latency(self.run, x)
            self._summary = {
                "exporter": "torch.onnx.export(dynamo=True)", "onnx_bytes": len(self.onnx_bytes),
                "export_s": self.export_s,
                "agreement": self.agree / self.n if self.n else None, "n_compared": self.n,
                "max_abs_logit_diff": self.max_abs_diff, "macs_graph": onnx_macs(self.onnx_bytes)["total"],
                "latency_ms_per_sample": 1e3 * ort_lat["median_s"], "latency_runs": ort_lat["runs"],
                "torch_latency_ms_per_sample": 1e3 * torch_lat["median_s"], "torch_device": str(device),
                "threads": int(torch.get_num_threads()),
            }
        return self._summary
