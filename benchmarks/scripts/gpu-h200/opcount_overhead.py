"""How much of an ann2snn test pass is operation counting, on one device?

The converted network (ann2snn's build of ``--arch``, calibrated on the inputs themselves) is
simulated for T steps on ``--batches`` batches of B random images: without a counter, with the
suite's :class:`~suite.baselines.conversion.SteppedOpCounter`, and, given ``--old FILE`` (another
``suite/opcount.py``: a variant under test, or an earlier one from ``git show REV:suite/opcount.py``),
with that file's counter. Prints seconds per batch and each counter's SynOps and spikes per sample
at T, which must agree.

    python benchmarks/scripts/gpu-h200/opcount_overhead.py --device cuda [--old old.py]

Run it alone on the machine: it is a timing.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time

import torch

from suite.baselines.conversion import SteppedOpCounter
from suite.host import create_host
from suite.rule import Context, check_options


def old_counter(path: str) -> type:
    spec = importlib.util.spec_from_file_location("opcount_old", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)

    class OtherStepped(mod.OpCounter):  # the stepped network's spike hook on that file's counter
        _spike_hook = SteppedOpCounter._spike_hook
    return OtherStepped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--arch", default="resnet8w8")
    ap.add_argument("--T", type=int, default=128)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--old", help="another suite/opcount.py to compare against")
    a = ap.parse_args()
    dev = torch.device(a.device)
    host = create_host()
    rule, arch = host.rule("ann2snn"), host.arch(a.arch)
    hp = check_options(rule, {"calibration_samples": a.batch})
    timesteps = tuple(t for t in (1, 2, 4, 10, 32, 64, 128) if t < a.T) + (a.T,)
    ctx = Context(hp=hp, T=a.T, timesteps=timesteps, arch=arch, dataset="fashion_mnist", input_shape=(1, 28, 28),
                  n_classes=10)
    torch.manual_seed(0)
    model = rule.build(arch, (1, 28, 28), 10, "torch", hp).to(dev).eval()
    xs = [torch.rand(a.batch, 1, 28, 28, generator=torch.Generator().manual_seed(i)).to(dev) for i in range(a.batches)]
    model.remember(xs[0])
    model.converted()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def timed(counter) -> float:
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            if counter is None:
                for x in xs:
                    rule.evaluate(model, x, timesteps, ctx)
            else:
                with counter:
                    for i, x in enumerate(xs):
                        if i:
                            counter.next_batch(len(x))
                        rule.evaluate(model, x, timesteps, ctx)
        sync()
        return (time.perf_counter() - t0) / len(xs)

    timed(None)  # warm-up (kernels, conversion cache)
    print(f"{a.arch} converted, T={a.T}, batch {a.batch}, {a.batches} batches on {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"  no counter:          {timed(None):.3f} s per batch")
    kinds = [("suite's counter", SteppedOpCounter)] + ([("other counter", old_counter(a.old))] if a.old else [])
    for label, cls in kinds:
        counter = cls(model.converted(), a.T, a.batch)
        counter.input_events = False
        t = timed(counter)
        ops = counter.at(a.T)
        print(f"  {label + ':':20} {t:.3f} s per batch; synops/sample {ops['synops']:.6g}, "
              f"spikes/sample {ops['spikes_per_sample']:.6g}")


if __name__ == "__main__":
    main()
