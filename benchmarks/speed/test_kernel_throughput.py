"""Throughput of the multi-step LIF alone (forward + backward), against the memory roofline.

Per element and step the least a fused LIF must move is 24 bytes in float32: the forward reads
``x`` and writes the spikes and the membrane ``h`` (12 B), the backward reads ``dL/ds`` and ``h``
and writes ``dL/dx`` (12 B). GB/s below is those 24 B per element over the measured time; the
roofline is a same-size ``copy_`` (8 B per element: read + write) measured in the same session,
so ``x_roofline`` = our GB/s / copy GB/s (1.0 = as fast as streaming memory allows). SpikingJelly's
multi-step LIF (its Triton kernels on CUDA, its fused autograd loop on the CPU) runs on the same
shapes. Summary: ``DIR/kernel-<device>-<threads>t[-TAG].json`` (``--speed-*`` options of conftest.py).
"""
from __future__ import annotations

import json
import os
import statistics
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from contenders import DEFAULT_NEURON, V_TH, peer_version

TAU = DEFAULT_NEURON.tau

SHAPES = {"cpu": [(10, 128 * 800), (50, 128 * 800)], "cuda": [(10, 1 << 22), (50, 1 << 22)]}
CONTENDERS = ("copy", "ours-fused", "ours-triton", "spikingjelly")
BYTES_PER_ELEMENT = {"copy": 8, "lif": 24}
_TIMES: dict = defaultdict(list)


def _params(device_kind):
    return [(T, N, c) for T, N in SHAPES[device_kind] for c in CONTENDERS]


@pytest.fixture(scope="module", autouse=True)
def kernel_summary(request):
    yield
    if not _TIMES:
        return
    cfg = request.config
    device = cfg.getoption("--speed-device")
    rows: dict = defaultdict(dict)
    for (T, N, c), times in _TIMES.items():
        med = statistics.median(times)
        nbytes = T * N * BYTES_PER_ELEMENT["copy" if c == "copy" else "lif"]
        rows[f"T{T}-N{N}"][c] = {"median_ms": med * 1e3, "GB_per_s": nbytes / med / 1e9}
    for case in rows.values():
        roof = case.get("copy", {}).get("GB_per_s")
        sj = case.get("spikingjelly", {}).get("median_ms")
        for c, e in case.items():
            if roof:
                e["x_roofline"] = round(e["GB_per_s"] / roof, 3)
            if sj and c != "copy":
                e["time_x_spikingjelly"] = round(e["median_ms"] / sj, 3)
    tag = cfg.getoption("--speed-tag")
    out = Path(cfg.getoption("--speed-out"))
    out.mkdir(parents=True, exist_ok=True)
    doc = {"device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
           "threads": torch.get_num_threads(), "dtype": "float32", "surrogate": "sigmoid",
           "bytes_counted": "LIF 24 B/element (fwd x->s,h; bwd ds,h->dx); copy 8 B/element",
           "spikingjelly": peer_version("spikingjelly"),
           "SJ_LIF_CUDA_IMPLEMENTATION": os.environ.get("SJ_LIF_CUDA_IMPLEMENTATION", "auto"), "cases": rows}
    (out / f"kernel-{device.split(':')[0]}-{torch.get_num_threads()}t{'-' + tag if tag else ''}.json").write_text(
        json.dumps(doc, indent=1))


def pytest_generate_tests(metafunc):
    if "contender" in metafunc.fixturenames and "N" in metafunc.fixturenames:
        kind = "cuda" if metafunc.config.getoption("--speed-device").startswith("cuda") else "cpu"
        params = _params(kind)
        metafunc.parametrize("T,N,contender", params, ids=[f"T{t}-N{n}-{c}" for t, n, c in params])


def _lif_fn(contender, x, g):
    if contender == "spikingjelly":
        from spikingjelly.activation_based import neuron, surrogate
        node = neuron.LIFNode(tau=TAU, v_threshold=V_TH, v_reset=0.0, surrogate_function=surrogate.Sigmoid(),
                              step_mode="m").to(x.device)

        def run():
            node.reset()
            node(x).backward(g)
        return run
    from suite.kernels import get_backend
    from suite.surrogates import create_surrogate
    backend = get_backend(contender[len("ours-"):])
    sg = create_surrogate("sigmoid")

    def run():
        backend.multi_step(x, tau=TAU, v_threshold=V_TH, v_reset=0.0, surrogate=sg).backward(g)
    return run


def test_kernel_throughput(benchmark, request, T, N, contender):
    device = request.config.getoption("--speed-device")
    if contender == "spikingjelly" and peer_version("spikingjelly") is None:
        pytest.skip("spikingjelly is not installed or fails to import")
    if contender.startswith("ours-"):
        from suite.kernels import unavailable_reason
        reason = unavailable_reason(contender[len("ours-"):])
        if reason is None and contender == "ours-triton" and not device.startswith("cuda"):
            reason = "triton runs on CUDA only (its CPU interpreter is for tests)"
        if reason is not None:
            pytest.skip(reason)
    g0 = torch.Generator().manual_seed(0)
    x = (torch.randn(T, N, generator=g0) * 0.6 + 0.6).to(device).requires_grad_()
    g = torch.randn(T, N, generator=g0).to(device)
    if contender == "copy":
        dst = torch.empty_like(g)
        fn = lambda: dst.copy_(g)  # noqa: E731
    else:
        fn = _lif_fn(contender, x, g)

    def timed():
        fn()
        x.grad = None
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(2):
        timed()
    benchmark.group = f"kernel-T{T}-N{N}"
    benchmark.pedantic(timed, rounds=8, iterations=1, warmup_rounds=1)
    _TIMES[(T, N, contender)].extend(benchmark.stats.stats.data)
