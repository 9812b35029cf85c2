"""Accuracy at every T from one evaluation pass: its cost against evaluating T_max alone.

The host evaluates a cell once at T_max and reads accuracy and op counts at every T of the sweep
(``Rule.evaluate`` + :class:`suite.opcount.OpCounter`). This times, for each rule and network,
that pass with the sweep ``1, 2, 4, ..., T_max`` against the same pass asked for T_max only, both
under the op counter as in a run, interleaved, ``--rounds`` each; the ratio of medians is the
price of the sweep. Needs an otherwise idle machine.

    OMP_NUM_THREADS=1 python benchmarks/speed/eval_sweep.py --out benchmarks/results/speed/eval-sweep-cpu-1t.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from suite.host import create_host
from suite.rule import Context, check_options

CASES = [("surrogate_bptt_bn", "fc800"), ("surrogate_bptt_bn", "convnet"), ("spike_bp_dropout", "fc800"),
         ("tssl_bp", "fc800")]


def timed_pass(rule, model, ctx, x, timesteps, T_max):
    counter = rule.op_counter(model, T_max, len(x))
    counter.input_events = rule.input_events(ctx)
    t = time.perf_counter()
    with counter, torch.no_grad():
        logits = rule.evaluate(model, x, timesteps, ctx)
        for T in timesteps:
            counter.at(T)
    return time.perf_counter() - t, logits


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--T-max", type=int, default=32)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    host = create_host()
    sweep = tuple(2 ** k for k in range(a.T_max.bit_length()) if 2 ** k <= a.T_max)
    if sweep[-1] != a.T_max:
        sweep += (a.T_max,)
    results = {}
    for rule_name, arch_name in CASES:
        rule, arch = host.rule(rule_name), host.arch(arch_name)
        hp = check_options(rule, {})
        torch.manual_seed(0)
        model = rule.build(arch, (1, 28, 28), 10, "auto", hp).eval()
        ctx = Context(hp=hp, T=a.T_max, timesteps=sweep, arch=arch, dataset="mnist", input_shape=(1, 28, 28),
                      n_classes=10, backend="fused", phase="test")
        x = torch.rand(a.batch, 1, 28, 28)
        times = {"sweep": [], "T_max": []}
        for r in range(a.rounds + 1):                      # round 0 warms up (Numba cache load)
            for name, ts in (("sweep", sweep), ("T_max", (a.T_max,))):
                ctx.generator.manual_seed(r)
                dt, _ = timed_pass(rule, model, ctx, x, ts, a.T_max)
                if r:
                    times[name].append(dt)
        med = {k: statistics.median(v) for k, v in times.items()}
        results[f"{rule_name}/{arch_name}"] = {"timesteps": list(sweep), "median_s": med,
                                               "ratio_sweep_over_T_max": med["sweep"] / med["T_max"],
                                               "times_s": times}
        print(f"{rule_name}/{arch_name}: sweep {med['sweep'] * 1e3:.1f} ms, T_max only {med['T_max'] * 1e3:.1f} ms, "
              f"x{med['sweep'] / med['T_max']:.3f}")
    doc = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                       "threads": torch.get_num_threads(), "loadavg_at_end": os.getloadavg()},
           "what": f"one evaluation pass of a batch of {a.batch} MNIST-shaped inputs under the op counter, "
                   f"accuracy and counts read at {list(sweep)} vs at T_max={a.T_max} only; median of {a.rounds}",
           "cases": results}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
