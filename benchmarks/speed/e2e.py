"""End to end: one MNIST epoch plus validation and the test pass, the suite's CLI against the peers'
own training loops (:mod:`e2e_loops`), back to back on the same data, network, batch and T.

Each contender is a fresh process timed from launch to exit (imports, data, training, validation,
test, and for the suite its op counting and row writing); the contenders run interleaved,
``--repeats`` rounds, and the summary gives every round's wall time, the median, and each peer's
ratio ``suite / peer`` per round (min, median, max). Needs an otherwise idle machine: a ratio taken
while something else runs on the other core is not a measurement.

    OMP_NUM_THREADS=1 python benchmarks/speed/e2e.py --data-root ../shared/data --repeats 3 \\
        --out benchmarks/results/speed/e2e-mnist-fc800-T8.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS = ("spikingjelly", "spikingjelly_static", "snntorch", "snntorch_static")


def suite_command(a, out: Path) -> list[str]:
    exe = shutil.which("snn-suite", path=str(Path(sys.executable).parent)) or "snn-suite"
    return [exe, "run", "--rules", "surrogate_bptt_bn", "--dataset", "mnist", "--arch", "fc800",
            "--timesteps", str(a.T), "--epochs", str(a.epochs), "--set", f"batch_size={a.batch}",
            "--data-root", a.data_root, "--out", str(out), "--quiet"]


def run_suite(a, work: Path, k: int) -> dict:
    out = work / f"suite-{k}"
    t = time.perf_counter()
    subprocess.run(suite_command(a, out), check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    row = json.loads(next((out / "cells").glob("*.jsonl")).read_text().splitlines()[0])
    if row["status"] != "ok":
        raise RuntimeError(f"suite run failed: {row.get('error')}")
    return {"wall_s": wall, "train_s": row["train_time_s"], "test_s": row["extra"]["eval_time_s"],
            "accuracy": row["accuracy"], "val_accuracy": row["val_accuracy"], "backend": row["backend"]}


def run_peer(a, peer: str, split: Path) -> dict:
    cmd = [sys.executable, str(HERE / "e2e_loops.py"), peer, "--data-root", a.data_root, "--split", str(split),
           "--T", str(a.T), "--batch", str(a.batch), "--epochs", str(a.epochs)]
    t = time.perf_counter()
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t
    got = json.loads(res.stdout.strip().splitlines()[-1])
    return {"wall_s": wall, **{k: got[k] for k in ("train_s", "val_s", "test_s", "import_s", "data_s",
                                                   "accuracy", "val_accuracy")}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--T", type=int, default=8)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--out", required=True, help="summary JSON")
    a = ap.parse_args(argv)
    peers = [p for p in a.peers.split(",") if p]

    import numpy as np
    from suite.data import validation_split
    from suite.host import create_host
    ds = create_host().dataset("mnist")
    split = validation_split(ds, ds.counts["train"])
    rounds: dict[str, list[dict]] = {c: [] for c in ("suite", *peers)}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        np.savez(work / "split.npz", train=split.train.numpy(), val=split.val.numpy())
        for k in range(a.repeats):
            rounds["suite"].append(run_suite(a, work, k))
            for p in peers:
                rounds[p].append(run_peer(a, p, work / "split.npz"))
            print(f"round {k + 1}: " + ", ".join(f"{c} {r[-1]['wall_s']:.1f} s" for c, r in rounds.items()),
                  file=sys.stderr, flush=True)
    summary = {c: {"wall_s": [r["wall_s"] for r in rs], "median_wall_s": statistics.median(r["wall_s"] for r in rs),
                   "train_s": [r["train_s"] for r in rs], "accuracy": [r["accuracy"] for r in rs], "rounds": rs}
               for c, rs in rounds.items()}
    ratios = {p: sorted(s["wall_s"] / q["wall_s"] for s, q in zip(rounds["suite"], rounds[p])) for p in peers}
    train_ratios = {p: sorted(s["train_s"] / q["train_s"] for s, q in zip(rounds["suite"], rounds[p])) for p in peers}
    result = {
        "what": (f"MNIST fc800 (784-800-10, BN, LIF tau 10), T={a.T}, batch {a.batch}, {a.epochs} epoch(s) on the "
                 f"{len(split.train)} training images + validation on {len(split.val)} + test on 10000; "
                 "each contender a fresh process, wall time launch to exit"),
        "command": " ".join([Path(sys.executable).name, "benchmarks/speed/e2e.py", *(argv or sys.argv[1:])]),
        "suite_command": " ".join(suite_command(a, Path("OUT"))),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "python": platform.python_version()},
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "wall_ratio_suite_over_peer": {p: {"min": r[0], "median": statistics.median(r), "max": r[-1]}
                                       for p, r in ratios.items()},
        "train_ratio_suite_over_peer": {p: {"min": r[0], "median": statistics.median(r), "max": r[-1]}
                                        for p, r in train_ratios.items()},
        "contenders": summary,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    for p, r in result["wall_ratio_suite_over_peer"].items():
        print(f"suite / {p}: {r['min']:.2f}-{r['max']:.2f}x (median {r['median']:.2f}x) wall; "
              f"training {train_ratios[p][0]:.2f}-{train_ratios[p][-1]:.2f}x")


if __name__ == "__main__":
    main()
