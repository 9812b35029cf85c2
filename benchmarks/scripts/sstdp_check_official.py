"""Step-for-step check of the sstdp plugin against the official SSTDP code (MXHX7199/SNN-SSTDP).

The official module is NOT part of this project: fetch the repository yourself and pass the folder
that holds ``sstdp_module.py`` (its ``code/``). Both networks start from the same weights and see the
same MNIST batches; the official side is driven the way its ``sstdp_train.py`` drives it (TTFS
encoder, MSE to the paper's time targets, ``loss.backward()``, SGD lr 10, wd 1e-6, neuron reset per
batch). After each step this prints whether the output spike times agree and the largest weight
difference.

    python benchmarks/scripts/sstdp_check_official.py --official /path/to/SNN-SSTDP/code \
        --data-root /work/shared/data --steps 30
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from suite.host import create_host
from suite.plugins.sstdp import DEFAULTS, SSTDP, build_net, init_ranges, snn_suite_archs, time_targets
from suite.rule import Context


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", required=True, help="folder holding the official sstdp_module.py")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    sys.path.insert(0, args.official)
    import sstdp_module  # noqa: E402  (the official code, from the user's own checkout)

    torch.set_num_threads(1)
    train = create_host().dataset("mnist").load("train", args.data_root)
    hp = dict(DEFAULTS, init_range="5,48")
    T, delta, B = int(hp["T"]), float(hp["delta"]), int(hp["batch_size"])
    r_hidden, r_out = init_ranges(hp["init_range"], [784, 400], hp["theta"])

    off = sstdp_module.StdpLinearNetMnist(t_max=T, tau=None, threshold=hp["theta"], a=hp["A"], b=hp["B"])
    torch.manual_seed(args.seed)
    off.layer1.weight.data = torch.rand(400, 784) * r_hidden
    off.layer2.weight.data = torch.rand(10, 400) * r_out

    def reset():
        for m in off.modules():
            if hasattr(m, "reset"):
                m.reset()

    def encode(x):  # the official encoder: round((1 - x)(T - 1)) as integers
        return ((1 - x) * (T - 1)).round().int()

    off(encode(train.x[:B]))  # the official script's threshold-initialising call
    reset()
    opt = torch.optim.SGD(off.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])

    arch = next(a for a in snn_suite_archs() if a.name == "sstdp_mlp400")
    rule, net = SSTDP(), build_net(arch, (1, 28, 28), 10, hp)
    for ours, theirs in zip(net.layers, (off.layer1, off.layer2)):
        ours.weight.data.copy_(theirs.weight.data)
    ctx = Context(hp=hp, T=T, timesteps=(T,), arch=arch, dataset="mnist", input_shape=(1, 28, 28),
                  n_classes=10, epochs=100)

    perm = torch.randperm(len(train.y), generator=torch.Generator().manual_seed(0))
    same_steps = 0
    for step in range(args.steps):
        idx = perm[step * B:(step + 1) * B]
        x, y = train.x[idx], train.y[idx]
        opt.zero_grad()
        t_off = off(encode(x.flatten(1)))
        target = time_targets(t_off.detach(), y, T, delta)
        F.mse_loss(t_off, target).backward()
        opt.step()
        reset()
        t_ours, _, _ = rule.simulate(net, x, T, hp)
        rule.train_step(net, (x, y), None, ctx)
        n_diff = int((t_ours != t_off).sum())
        same_steps += n_diff == 0
        dw = [float((o.weight - t.weight.data).abs().max()) for o, t in zip(net.layers, (off.layer1, off.layer2))]
        print(f"step {step:3d}: output times differing {n_diff:3d} of {t_off.numel()}; "
              f"max |W_ours - W_official| hidden {dw[0]:.2e}, output {dw[1]:.2e}", flush=True)
    print(f"{same_steps} of {args.steps} steps with identical output spike times")


if __name__ == "__main__":
    main()
