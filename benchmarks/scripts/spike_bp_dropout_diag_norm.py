"""spike_bp_dropout diagnostic with MNIST mean/std input normalisation (tuple options cannot be
passed through `--set` here): lenet5, T = 8, 1 epoch on the first 10 k training samples, 2 k test.
Usage: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scripts/spike_bp_dropout_diag_norm.py"""
import json, sys, torch
from suite.train import Cell, run_cell
torch.set_num_threads(1)
opts = {"T": 8, "input_gain": 1.0, "input_mean": (0.1307,), "input_std": (0.3081,)}
extra = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
opts.update(extra)
cell = Cell(rule="spike_bp_dropout", dataset="mnist", arch="lenet5", seed=0, timesteps=(2, 4, 8), epochs=1, batch_size=32,
            backend="fused", options=tuple(sorted(opts.items())), data_root="/work/shared/data", limit_train=10000, limit_test=2000)
rows = run_cell(cell)
r = rows[-1]
print(opts, {x["T"]: x.get("accuracy") for x in rows}, r.get("error"), r.get("train_time_s"), r["extra"].get("spike_rates") if r.get("extra") else None, flush=True)
