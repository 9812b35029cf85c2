"""Repro: heap corruption (glibc 'corrupted double-linked list' / 'free(): invalid next size', or a
segfault) in the backward of a tiny timm ResNet trained on the embedded digits with one torch thread.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scripts/onednn_one_thread_crash.py     # crashes here
    .venv/bin/python benchmarks/scripts/onednn_one_thread_crash.py                       # 2 threads: runs
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scripts/onednn_one_thread_crash.py --no-mkldnn   # runs

Seen 2026-12-03 on the 2-core AMD EPYC with torch 2.14.1 (CPU), on the suite's code before and after
that day's changes; random inputs of the same shape did not trigger it, the digits images do. The
suite runs every cell with one thread per CPU it asks for (one by default), so an ann2snn or cnn
cell on such a network could hit it; tests/test_ann2snn.py's timm-ResNet test trains with the
default thread count and passes.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from test_ann2snn import TINY_RESNET  # noqa: E402

from suite.host import create_host  # noqa: E402
from suite.rule import check_options  # noqa: E402

if "--no-mkldnn" in sys.argv:
    torch.backends.mkldnn.enabled = False
host = create_host()
rule = host.rule("ann2snn")
train = host.dataset("digits").load("train")
model = rule.build(TINY_RESNET, (1, 8, 8), 10, "torch", check_options(rule, {})).ann
opt = torch.optim.SGD(model.parameters(), lr=0.01)
torch.manual_seed(0)
for epoch in range(3):
    for idx in torch.randperm(len(train.y)).split(64):
        loss = torch.nn.functional.cross_entropy(model(train.x[idx]), train.y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"epoch {epoch}: ok ({torch.get_num_threads()} threads, mkldnn {torch.backends.mkldnn.enabled})", flush=True)
