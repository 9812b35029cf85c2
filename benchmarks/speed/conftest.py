"""Speed suite settings, the collector of every timed round, and the summary it writes.

Options (``tox -e bench -- --speed-repeats 5`` etc.):

* ``--speed-threads N`` (default 1): torch threads for every contender (the fused backend's
  loops use as many). One thread is
  the default because the 2-core machine this was written on is shared: a second thread only
  measures the other tenants.
* ``--speed-repeats R`` (default 3): every (net, T, contender) is benchmarked R times, the
  repeats outermost, so contenders interleave and a burst of load hits all of them alike.
* ``--speed-neurons`` (default ``lif-tau2-sigmoid``): comma-separated neuron settings
  (``lif-tau<T>-<surrogate>``, ``if-<surrogate>``) or ``all``;
* ``--speed-device cpu|cuda``, ``--speed-out DIR`` (default benchmarks/results/speed),
  ``--speed-tag TAG`` (summary file suffix).

At the end the median over all rounds of all repeats is taken per contender and the ratios to
the GEMM floor (same step with ReLU) and to the fastest installed peer are printed and written
to ``DIR/speed-<device>-<threads>t[-TAG].json``.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch

RESULTS: dict = defaultdict(lambda: {"times_s": [], "peak_mem_mb": None, "skipped": None})
META: dict = {"peers": {}}


def pytest_addoption(parser):
    g = parser.getgroup("speed")
    g.addoption("--speed-threads", type=int, default=1)
    g.addoption("--speed-repeats", type=int, default=3)
    g.addoption("--speed-neurons", default="lif-tau2-sigmoid")
    g.addoption("--speed-device", default="cpu")
    g.addoption("--speed-out", default=str(Path(__file__).resolve().parents[1] / "results" / "speed"))
    g.addoption("--speed-tag", default="", help="suffix of the summary file name")


def pytest_configure(config):
    # peers warn about their own deprecations; the suite's warnings-as-errors is for our tests
    config.addinivalue_line("filterwarnings", "ignore::UserWarning")
    config.addinivalue_line("filterwarnings", "ignore::RuntimeWarning")


def pytest_generate_tests(metafunc):
    if "repeat" in metafunc.fixturenames:
        from test_speed import cases, neurons

        params = cases(metafunc.config.getoption("--speed-repeats"),
                       neurons(metafunc.config.getoption("--speed-neurons")))
        metafunc.parametrize("repeat,net,T,batch,neuron,contender", params,
                             ids=[f"{n}-T{t}-B{b}-{nn}-{c}-r{r}" for r, n, t, b, nn, c in params])


@pytest.fixture(scope="session", autouse=True)
def speed_threads(request):
    n = request.config.getoption("--speed-threads")
    torch.set_num_threads(n)  # the fused backend's Numba loops split over the same count
    META.update(threads=n, device=request.config.getoption("--speed-device"))
    return n


def _summary() -> dict:
    """Per net, T, batch and neuron setting: every contender's median, with the floor of that net and T."""
    floors: dict = {}
    by_case: dict = defaultdict(dict)
    for (net, T, batch, neuron, contender), r in RESULTS.items():
        entry = {"median_ms": statistics.median(r["times_s"]) * 1e3 if r["times_s"] else None,
                 "rounds": len(r["times_s"]), "peak_mem_mb": r["peak_mem_mb"]}
        if r["skipped"]:
            entry["skipped"] = r["skipped"]
        if contender == "floor":
            floors[(net, T, batch)] = entry
        else:
            by_case[(net, T, batch, neuron)][contender] = entry
    out = {}
    for (net, T, batch, neuron), case in by_case.items():
        case = out[f"{net}-T{T}-B{batch}-{neuron}"] = {"floor": dict(floors.get((net, T, batch), {})), **case}
        floor = (case.get("floor") or {}).get("median_ms")
        peers = {c: e["median_ms"] for c, e in case.items()
                 if c in META["peers"] and e.get("median_ms") is not None}
        best_peer = min(peers, key=peers.get) if peers else None
        for c, e in case.items():
            if e.get("median_ms") is None:
                continue
            if floor:
                e["x_floor"] = round(e["median_ms"] / floor, 3)
            if best_peer:
                e["x_fastest_peer"] = round(e["median_ms"] / peers[best_peer], 3)
                e["fastest_peer"] = best_peer
    return out


def pytest_sessionfinish(session, exitstatus):
    if not RESULTS:
        return
    cases = _summary()
    cfg = session.config
    out = Path(cfg.getoption("--speed-out"))
    out.mkdir(parents=True, exist_ok=True)
    doc = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
                       "cpu_count": os.cpu_count(), "torch": torch.__version__,
                       "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                       "loadavg_at_end": os.getloadavg()},
           "threads": META.get("threads"), "device": META.get("device"), "peers": META["peers"],
           "SJ_LIF_CUDA_IMPLEMENTATION": os.environ.get("SJ_LIF_CUDA_IMPLEMENTATION", "auto"),
           "repeats": cfg.getoption("--speed-repeats"), "neurons": cfg.getoption("--speed-neurons"),
           "step": "forward over T + cross-entropy on the time-mean output + backward + SGD(momentum) step",
           "statistic": "median over all timed rounds of all repeats; peak_mem_mb: peak bytes allocated "
                        "during one step (torch profiler on CPU, max_memory_allocated on CUDA)",
           "cases": cases}
    tag = cfg.getoption("--speed-tag")
    path = out / f"speed-{META.get('device', 'cpu')}-{META.get('threads')}t{'-' + tag if tag else ''}.json"
    path.write_text(json.dumps(doc, indent=1))
    lines = [f"speed suite: median step time, ratio to floor and to the fastest peer -> {path}"]
    for name, case in cases.items():
        lines.append(f"  {name}")
        for c, e in sorted(case.items(), key=lambda kv: kv[1].get("median_ms") or float("inf")):
            if e.get("median_ms") is None:
                lines.append(f"    {c:18s} skipped: {e.get('skipped')}")
                continue
            mem = f"{e['peak_mem_mb']:8.1f} MB" if e.get("peak_mem_mb") is not None else ""
            lines.append(f"    {c:18s} {e['median_ms']:9.2f} ms  x{e.get('x_floor', float('nan')):.3f} floor  "
                         f"x{e.get('x_fastest_peer', float('nan')):.3f} fastest peer  {mem}")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    text = "\n".join(lines)
    if reporter is not None:
        reporter.write_line(text)
    else:
        print(text)
