"""The peers' own training loops for the end-to-end benchmark (:mod:`benchmarks.speed.e2e`), written
the way SpikingJelly's and snnTorch's tutorials write them, on the suite's network and data.

Network: 784-800-10, batch norm on the hidden current, LIF (tau = 10, hard reset to 0, input not
decayed: beta = 0.9), the output current averaged over T, cross-entropy, AdamW (lr 1e-3, weight
decay 1e-4) with a one-cycle schedule -- what ``snn-suite run --rules surrogate_bptt_bn --arch fc800``
trains. Each library's default surrogate (SpikingJelly: sigmoid, snnTorch: atan).

Work: the suite's training part of the MNIST training set (55,000 images, reshuffled each epoch),
validation accuracy on its 5,000 held-out images after each epoch, then one pass over the 10,000
test images -- the work the suite's run does (minus its op counting and row writing, which
the suite pays for). This file imports nothing of the suite: a peer's start-up is its own.

    python benchmarks/speed/e2e_loops.py spikingjelly --data-root D --split split.npz --T 8 --batch 128

prints one JSON line: wall-clock phases, accuracies.
"""
from __future__ import annotations

import argparse
import gzip
import json
import time

T0 = time.perf_counter()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402


def read_idx(path, n_dims):
    with gzip.open(path, "rb") as f:
        data = f.read()
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(n_dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * n_dims).reshape(shape)


def load(root, split_file):
    d = f"{root}/mnist"
    xtr = torch.from_numpy(read_idx(f"{d}/train-images-idx3-ubyte.gz", 3).astype(np.float32) / 255.0).unsqueeze(1)
    ytr = torch.from_numpy(read_idx(f"{d}/train-labels-idx1-ubyte.gz", 1).astype(np.int64))
    xte = torch.from_numpy(read_idx(f"{d}/t10k-images-idx3-ubyte.gz", 3).astype(np.float32) / 255.0).unsqueeze(1)
    yte = torch.from_numpy(read_idx(f"{d}/t10k-labels-idx1-ubyte.gz", 1).astype(np.int64))
    split = np.load(split_file)
    tr, va = torch.from_numpy(split["train"]), torch.from_numpy(split["val"])
    return (xtr[tr], ytr[tr]), (xtr[va], ytr[va]), (xte, yte)


# ----------------------------------------------------------------------------- SpikingJelly
def spikingjelly_net(static: bool = False):
    """SpikingJelly's multi-step idiom (its MNIST/Fashion-MNIST examples): the image repeated over T
    through every layer, BN over T x B. ``static``: the first Linear + BN run once on the image and
    their output is repeated, as SpikingJelly's conv example does with its ``static_conv``."""
    from spikingjelly.activation_based import functional, layer, neuron

    lif = neuron.LIFNode(tau=10.0, decay_input=False, v_reset=0.0, detach_reset=False)
    if static:
        head = nn.Sequential(nn.Flatten(), nn.Linear(784, 800), nn.BatchNorm1d(800))
        tail = nn.Sequential(lif, layer.Linear(800, 10))
        functional.set_step_mode(tail, "m")
        net = nn.Sequential(head, tail)

        def run(x, T):
            out = tail(head(x).unsqueeze(0).repeat(T, 1, 1)).mean(0)
            functional.reset_net(tail)
            return out
        return net, run

    net = nn.Sequential(layer.Flatten(), layer.Linear(784, 800), layer.BatchNorm1d(800), lif, layer.Linear(800, 10))
    functional.set_step_mode(net, "m")

    def run(x, T):
        out = net(x.unsqueeze(0).repeat(T, 1, 1, 1, 1)).mean(0)
        functional.reset_net(net)
        return out

    return net, run


# ----------------------------------------------------------------------------- snnTorch
def snntorch_net(static: bool = False):
    """snnTorch's idiom (tutorial 5): a loop over steps calling the layers and ``Leaky`` with its
    membrane; the tutorial computes the first layer inside the loop, every step (BN statistics
    then per step). ``static``: the first Linear + BN hoisted out of the loop, run once."""
    import snntorch as snn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.bn1 = nn.Linear(784, 800), nn.BatchNorm1d(800)
            self.lif1 = snn.Leaky(beta=0.9, reset_mechanism="zero")
            self.fc2 = nn.Linear(800, 10)

        def forward(self, x, T):
            mem1 = self.lif1.init_leaky()
            x = x.flatten(1)
            cur = self.bn1(self.fc1(x)) if static else None
            out = 0
            for _ in range(T):
                spk1, mem1 = self.lif1(cur if static else self.bn1(self.fc1(x)), mem1)
                out = out + self.fc2(spk1)
            return out / T

    net = Net()
    return net, lambda x, T: net(x, T)


NETS = {"spikingjelly": spikingjelly_net, "spikingjelly_static": lambda: spikingjelly_net(static=True),
        "snntorch": snntorch_net, "snntorch_static": lambda: snntorch_net(static=True)}


def accuracy(net, run, x, y, T, bs=256):
    net.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), bs):
            correct += (run(x[i:i + bs], T).argmax(1) == y[i:i + bs]).sum().item()
    net.train()
    return correct / len(y)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("peer", choices=sorted(NETS))
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--split", required=True, help="npz with the suite's train/val indices")
    ap.add_argument("--T", type=int, default=8)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    t_import = time.perf_counter() - T0
    torch.manual_seed(a.seed)
    t = time.perf_counter()
    (xtr, ytr), (xva, yva), (xte, yte) = load(a.data_root, a.split)
    t_data = time.perf_counter() - t
    net, run = NETS[a.peer]()
    steps = -(-len(ytr) // a.batch)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=a.epochs * steps)
    loss_fn = nn.CrossEntropyLoss()
    train_s = val_s = 0.0
    val = None
    for _ in range(a.epochs):
        t = time.perf_counter()
        for idx in torch.randperm(len(ytr)).split(a.batch):
            loss = loss_fn(run(xtr[idx], a.T), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        train_s += time.perf_counter() - t
        t = time.perf_counter()
        val = accuracy(net, run, xva, yva, a.T)
        val_s += time.perf_counter() - t
    t = time.perf_counter()
    test = accuracy(net, run, xte, yte, a.T)
    test_s = time.perf_counter() - t
    print(json.dumps({"peer": a.peer, "import_s": t_import, "data_s": t_data, "train_s": train_s, "val_s": val_s,
                      "test_s": test_s, "val_accuracy": val, "accuracy": test, "torch_threads": torch.get_num_threads(),
                      "total_in_process_s": time.perf_counter() - T0}))


if __name__ == "__main__":
    main()
