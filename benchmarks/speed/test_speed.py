"""One training step (forward over T, backward, optimizer step) for every contender.

Contenders: ``floor`` (the same step with ReLU: the GEMMs), ``ours-<backend>`` for every backend
that can run here, and each installed peer (SpikingJelly, snnTorch, Norse). Cases: FC
784-800-10 at T = 10 and 50 (batch 128), and the conv net 16C3p1-P2-32C3p1-P2-128 at T = 10
(batch 32). Neuron settings (``--speed-neurons``, default the one first measured, LIF tau 2
sigmoid; ``all``: LIF tau 2 and 10 and IF, each with fast_sigmoid, sigmoid, atan and rectangular):
the floor runs once per net and T, ``ours-torch`` (the reference) at the default setting only.
See conftest.py for the options and the JSON summary.
"""
from __future__ import annotations

import pytest
import torch

from contenders import (ALL_NEURONS, DEFAULT_NEURON, PEERS, Neuron, Unsupported, build, contender_names,
                         make_batch, make_step, peer_version)
from conftest import META, RESULTS

CONFIGS = [("fc", 10, 128), ("fc", 50, 128), ("conv", 10, 32)]
OUR_BACKENDS = ("torch", "fused", "triton")
ROUNDS = {("fc", 10): 10, ("fc", 50): 4, ("conv", 10): 4}


def neurons(option: str) -> list[Neuron]:
    if option == "all":
        return list(ALL_NEURONS)
    return [Neuron.parse(n) for n in option.split(",") if n]


def cases(repeats: int, settings: list[Neuron]):
    out = []
    for r in range(repeats):
        for net, T, B in CONFIGS:
            for i, n in enumerate(settings):
                for c in contender_names(OUR_BACKENDS):
                    if (c == "floor" and i) or (c == "ours-torch" and n != DEFAULT_NEURON and len(settings) > 1):
                        continue  # the floor has no neuron; the reference is timed at one setting
                    out.append((r, net, T, B, "relu" if c == "floor" else n.name, c))
    return out


def _skip_reason(contender: str, device: str) -> str | None:
    if contender in PEERS:
        version = peer_version(contender)
        if version is None:
            return f"{contender} is not installed or fails to import"
        META["peers"][contender] = version
    if contender.startswith("ours-"):
        from suite.kernels import unavailable_reason
        reason = unavailable_reason(contender[len("ours-"):])
        if reason is not None:
            return reason
        if contender == "ours-triton" and device == "cpu":
            return "triton runs on CUDA only (its CPU interpreter is for tests)"
    return None


def peak_step_memory_mb(step, device: str) -> float:
    """Peak bytes held by torch tensors during one step, above what was held before it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    # every allocation (+bytes) and free (-bytes) of the CPU allocator, in time order
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    cur = peak = 0
    for _, nbytes in events:
        cur += nbytes
        peak = max(peak, cur)
    return peak / 2 ** 20


def test_step(benchmark, request, repeat, net, T, batch, neuron, contender):
    device = request.config.getoption("--speed-device")
    key = (net, T, batch, neuron, contender)
    reason = _skip_reason(contender, device)
    if reason is not None:
        RESULTS[key]["skipped"] = reason
        pytest.skip(reason)
    torch.manual_seed(0)
    try:
        built = build(contender, net, DEFAULT_NEURON if neuron == "relu" else Neuron.parse(neuron))
    except Unsupported as exc:
        RESULTS[key]["skipped"] = str(exc)
        pytest.skip(str(exc))
    built.model.to(device)
    x, y = make_batch(net, T, batch)
    step = make_step(built, x.to(device), y.to(device))

    def timed():
        step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(2):  # first-use costs (Numba cache load, allocator warm-up) are not the step's
        timed()
    if RESULTS[key]["peak_mem_mb"] is None:
        RESULTS[key]["peak_mem_mb"] = round(peak_step_memory_mb(step, device), 1)
    benchmark.group = f"{net}-T{T}-B{batch}-{neuron}"
    benchmark.extra_info.update(net=net, T=T, batch=batch, neuron=neuron, contender=contender, repeat=repeat)
    benchmark.pedantic(timed, rounds=ROUNDS[(net, T)], iterations=1, warmup_rounds=1)
    RESULTS[key]["times_s"].extend(benchmark.stats.stats.data)
