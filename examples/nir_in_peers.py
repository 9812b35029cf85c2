"""Load an NIR graph in snnTorch and in Norse (their own importers) and measure its test accuracy.

    python examples/nir_in_peers.py digits.nir --dataset digits --T 8

For graphs written by ``snn-suite export`` from a direct-coded rule: every step gets the same
analog input and the prediction is the output summed over T steps (the graph's metadata says
which encoding and readout the suite used). NIR's types have no batch dimension, so both
libraries run one sample per call.
"""
from __future__ import annotations

import argparse
import warnings
import contextlib
import io
import logging
import time

import nir
import numpy as np
import torch


def run_snntorch(path, x, T):
    import snntorch.utils
    from snntorch.import_nir import import_from_nir

    with contextlib.redirect_stdout(io.StringIO()):  # it prints its threshold rescaling with every array in full
        net = import_from_nir(nir.read(path))
    outs = []
    for sample in x:
        snntorch.utils.reset(net)
        outs.append(torch.stack([net(sample)[0] for _ in range(T)]))
    return torch.stack(outs, 1)


def run_norse(path, x, T, dt):
    from norse.torch import from_nir

    net = from_nir(nir.read(path), dt=dt)
    outs = []
    for sample in x:
        state, steps = None, []
        for _ in range(T):
            y, state = net(sample, state)
            steps.append(y)
        outs.append(torch.stack(steps))
    return torch.stack(outs, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("graph")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--T", type=int, default=8)
    p.add_argument("--data-root")
    args = p.parse_args()
    meta = nir.read(args.graph).metadata
    if meta.get("encoding", "direct") != "direct":
        raise SystemExit(f"error: {args.graph}: input encoding {meta['encoding']!r}; this script feeds analog input "
                         "(direct) only")
    from suite.host import create_host

    test = create_host().dataset(args.dataset).load("test", args.data_root)
    shape = tuple(int(d) for d in np.asarray(meta.get("input_shape", test.x.shape[1:])))
    x, y = test.x.float().reshape(len(test.y), *shape), test.y
    dt = float(meta.get("dt", 1e-4))
    warnings.filterwarnings("ignore", category=FutureWarning)  # Norse's torch.jit.script on import
    logging.disable(logging.WARNING)  # Norse logs that r != 1 is unusual for IF; the suite writes r = 1 anyway
    with torch.no_grad():
        for name, fn in (("snnTorch", lambda: run_snntorch(args.graph, x, args.T)),
                         ("Norse", lambda: run_norse(args.graph, x, args.T, dt))):
            t0 = time.perf_counter()
            out = fn()
            pred = (out.sum(0) if meta.get("readout", "sum") == "sum" else out[-1]).argmax(-1)
            print(f"{name}: accuracy {float((pred == y).float().mean()):.4f} at T={args.T} on {len(y)} "
                  f"{args.dataset} test samples ({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
