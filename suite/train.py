"""The host-owned training and evaluation loop, and the matrix of cells it runs.

A :class:`Cell` (rule x dataset x arch x seed, plus its settings) is a small frozen, picklable
value: any executor -- this process, a process pool, a cluster -- runs ``run_cell(cell)`` and
gets the same rows for the same cell.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import random
import resource
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

import suite
from suite.data import validation_split
from suite.gradnorms import GradNorms
from suite.results import write_atomic
from suite.rule import Context, check_options


@dataclass(frozen=True)
class Cell:
    rule: str
    dataset: str
    arch: str
    seed: int = 0
    timesteps: tuple[int, ...] | None = None    # None: the rule's own T
    epochs: int | None = None                   # None: the rule's default
    batch_size: int | None = None
    backend: str = "torch"
    options: tuple[tuple[str, Any], ...] = ()   # rule hyper-parameter overrides
    data_root: str | None = None
    limit_train: int | None = None              # use the first N training samples (quick runs)
    limit_test: int | None = None
    preset: str | None = None
    device: str = "cpu"
    command: str = ""
    # validation accuracy after every epoch on the first N validation samples; None: all of them, 0: off
    curve: int | None = None
    val_split: str = "auto"                     # "auto": the dataset's fixed validation split; "none": train on all
    limit_val: int | None = None
    evaluate_test: bool = True                  # False (tuning trials): validation only, the test set is never read
    select: str = "last"                        # "best_val": test the epoch with the best validation accuracy
    save_models: bool = False                   # keep the trained model in OUT/models/<cell_id>.pt

    def config(self) -> dict:
        d = asdict(self)
        # curve and save_models only add outputs (they never change training), so they are not part of the cell's identity
        for k in ("data_root", "command", "preset", "curve", "save_models"):
            d.pop(k)
        d["options"] = sorted([list(kv) for kv in self.options])
        return d

    @property
    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.config(), sort_keys=True, default=str).encode()).hexdigest()[:12]

    @property
    def cell_id(self) -> str:
        return f"{self.rule}__{self.dataset}__{self.arch}__{self.backend}__s{self.seed}__{self.config_hash}"


class NonFiniteLoss(RuntimeError):
    pass


def environment() -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "suite": suite.__version__,
           "platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _peak_mem_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _batches(n: int, batch_size: int, generator: torch.Generator | None):
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for i in range(0, n, batch_size):
        yield order[i:i + batch_size]


def _checkpoint_path(ckpt_dir: Path | None, cell: Cell) -> Path | None:
    return None if ckpt_dir is None else Path(ckpt_dir) / f"{cell.cell_id}.pt"


def _save_checkpoint(path: Path, state: dict) -> None:
    write_atomic(path, lambda tmp: torch.save(state, tmp))


def _count_correct(rule, model, ctx, x, y, timesteps, n_rows, device, batch_size, counter=None) -> torch.Tensor:
    """Correct predictions at each evaluated T over (x, y) in batches; ``counter`` (an op counter
    already entered) is told about every batch after the first."""
    correct = torch.zeros(n_rows)
    for i, idx in enumerate(_batches(len(y), batch_size, None)):
        if i and counter is not None:
            counter.next_batch(len(idx))
        logits = rule.evaluate(model, x[idx].to(device), timesteps, ctx)
        correct += (logits.argmax(-1) == y[idx].to(device).unsqueeze(0)).float().sum(1).cpu()
    return correct


def _validation_point(rule, model, ctx, x, y, timesteps, rows_T, device, bs, epoch, train_time, train_loss,
                      cell) -> dict:
    """Validation accuracy at every T on (x, y) after an epoch. The rule's generator is swapped for
    one seeded per epoch, so the point is reproducible and the training draws are exactly those of
    a run without it."""
    train_gen, ctx.generator = ctx.generator, torch.Generator().manual_seed(cell.seed * 1_000_003 + 4 + epoch)
    model.eval()
    ctx.phase = "val"
    try:
        with torch.no_grad():
            correct = _count_correct(rule, model, ctx, x, y, timesteps, len(rows_T), device, max(bs, 256))
    finally:
        ctx.generator, ctx.phase = train_gen, "train"
        model.train()
    acc = [float(c / max(len(y), 1)) for c in correct]
    if cell.curve is not None:  # asked for on the command line: show it as it comes
        print(f"[val] {cell.rule}/{cell.dataset}/{cell.arch} s{cell.seed} epoch {epoch}: "
              + ", ".join(f"T={T}: {a:.4f}" if T is not None else f"{a:.4f}" for T, a in zip(rows_T, acc))
              + f" ({len(y)} validation samples, {train_time:.0f} s training)", file=sys.stderr, flush=True)
    return {"epoch": epoch, "train_time_s": train_time, "train_loss": train_loss, "n_val": len(y),
            "val_accuracy": acc}


def _row_history(history: list[dict], k: int) -> list[dict]:
    """Per epoch: mean training loss, the first / last weight-gradient norm ratio (autograd rules, see
    :mod:`suite.gradnorms`) and (where measured) validation accuracy at the k-th evaluated T."""
    return [{**{h: p[h] for h in ("epoch", "train_time_s", "train_loss", "n_val", "grad_norm_ratio") if h in p},
             **({"val_accuracy": p["val_accuracy"][k]} if "val_accuracy" in p else {})} for p in history]


class StopCell(BaseException):
    """Raised by an ``on_epoch`` callback of :func:`run_cell` (a tuner's pruner) to abandon a cell:
    it propagates out of ``run_cell`` instead of becoming a failed row."""


def run_cell(cell: Cell, host=None, progress: bool = False, checkpoint_dir: Path | None = None,
             on_epoch=None) -> list[dict]:
    """Train and evaluate one cell; always returns rows (status ok / nan / failed / skipped).

    ``on_epoch(point)``, if given, is called after every epoch with the epoch's history point
    (``epoch``, ``train_loss``, ``val_accuracy`` per evaluated T, ...); it may raise
    :class:`StopCell` to abandon the cell."""
    if host is None:
        from suite.host import create_host
        host = create_host()
    base = {"rule": cell.rule, "dataset": cell.dataset, "arch": cell.arch, "backend": cell.backend,
            "seed": cell.seed, "suite_version": suite.__version__, "config_hash": cell.config_hash,
            "cell_id": cell.cell_id, "preset": cell.preset, "command": cell.command, "device": cell.device}
    t_list: list = list(cell.timesteps) if cell.timesteps else [None]

    def fail(status: str, error: str, rows_T=None):
        return [{**base, "T": T, "status": status, "error": error,
                 "finished_at": datetime.now(timezone.utc).isoformat()} for T in (rows_T or t_list)]

    try:
        rule = host.rule(cell.rule)
        base.update(paper=rule.paper, plugin_version=rule.version, encoding=rule.encoding)
        dataset = host.dataset(cell.dataset)
        arch = host.arch(cell.arch)
        hp = base["hp"] = check_options(rule, dict(cell.options))
        if cell.val_split not in ("auto", "none"):
            raise ValueError(f"val_split {cell.val_split!r}: expected 'auto' (the dataset's validation split) or 'none'")
        if cell.select not in ("last", "best_val"):
            raise ValueError(f"select {cell.select!r}: expected 'last' or 'best_val'")
        if cell.select == "best_val" and (cell.val_split == "none" or cell.curve == 0):
            raise ValueError("select 'best_val' needs per-epoch validation: a validation split and --curve other than 0")
        base["encoding"] = "events" if dataset.kind == "events" and rule.temporal else hp.get("encoding", rule.encoding)
    except Exception as exc:
        return fail("failed", f"{type(exc).__name__}: {exc}")

    if rule.temporal:
        timesteps = tuple(cell.timesteps) if cell.timesteps else (int(hp["T"]),)
        train_T = int(hp["T"]) if ("T" in dict(cell.options) or not cell.timesteps) else max(timesteps)
        if "T" not in hp and not cell.timesteps:
            return fail("failed", f"rule {rule.name!r} has no default T; pass --timesteps")
    else:
        timesteps, train_T = (), None
    rows_T = list(timesteps) or [None]
    base["train_T"] = train_T
    # "auto" becomes the best backend the rule supports on this device (fused on CPU, triton on
    # CUDA); the row records the resolved name, the cell id keeps "auto".
    from suite.kernels import resolve_backend
    backend = base["backend"] = rule.backend_used(resolve_backend(cell.backend, rule.backends(), cell.device),
                                                  cell.device)
    if not rule.supports(arch, dataset.name) or backend not in rule.backends():
        what = (f"backend {backend!r} (supported: {', '.join(rule.backends())})"
                if backend not in rule.backends() else f"architecture {arch.name!r} on {dataset.name!r}")
        return fail("skipped", f"rule {rule.name!r} does not support {what}", rows_T)

    try:
        return _train_and_evaluate(cell, rule, dataset, arch, hp, timesteps, train_T, rows_T, base,
                                   host, progress, _checkpoint_path(checkpoint_dir, cell), on_epoch)
    except NonFiniteLoss as exc:
        return fail("nan", str(exc), rows_T)
    except Exception as exc:
        tb = traceback.format_exc(limit=-3)
        return fail("failed", f"{type(exc).__name__}: {exc}\n{tb}", rows_T)


def _train_and_evaluate(cell, rule, dataset, arch, hp, timesteps, train_T, rows_T, base, host, progress, ckpt,
                        on_epoch=None):
    seed_everything(cell.seed)
    device = torch.device(cell.device)
    train = dataset.load("train", cell.data_root)
    if cell.val_split == "auto":
        split = validation_split(dataset, len(train))
        xtr, ytr = train.x[split.train][:cell.limit_train], train.y[split.train][:cell.limit_train]
        xval, yval = train.x[split.val][:cell.limit_val], train.y[split.val][:cell.limit_val]
        base["val_split"] = {**split.describe(), "n_val_used": len(yval)}
    else:
        xtr, ytr = train.x[:cell.limit_train], train.y[:cell.limit_train]
        xval = yval = None
        base["val_split"] = None
    del train
    epochs = int(cell.epochs if cell.epochs is not None else hp.get("epochs", 1))
    bs = int(cell.batch_size or hp.get("batch_size", 64))
    ctx = Context(hp=hp, T=train_T or 1, timesteps=timesteps, arch=arch, dataset=dataset.name,
                  input_shape=tuple(dataset.input_shape), n_classes=dataset.n_classes, backend=base["backend"],
                  seed=cell.seed, epochs=epochs, batch_size=bs, steps_per_epoch=math.ceil(len(ytr) / bs),
                  device=str(device), data_kind=dataset.kind)
    ctx.generator.manual_seed(cell.seed * 1_000_003 + 1)
    shuffle = torch.Generator().manual_seed(cell.seed * 1_000_003 + 2)
    n_curve = 0 if yval is None or cell.curve == 0 else len(yval) if cell.curve is None else min(cell.curve, len(yval))

    model = rule.build(arch, tuple(dataset.input_shape), dataset.n_classes, base["backend"], hp).to(device)
    optimizer, scheduler, interval = rule.configure_optimizer(model, ctx)
    start_epoch, train_time, last, history = 0, 0.0, {}, []
    best = None  # select="best_val": (score, epoch, model state on the CPU) of the best validation epoch so far
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        ctx.generator.set_state(state["generator"])
        shuffle.set_state(state["shuffle"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, train_time, ctx.step = state["epoch"], state["train_time"], state["step"]
        history, best = state.get("history", []), state.get("best")

    grad_norms, grad_layers = GradNorms(model), None
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=epochs * ctx.steps_per_epoch, initial=start_epoch * ctx.steps_per_epoch,
                   desc=f"{cell.rule}/{cell.dataset}/{cell.arch}/s{cell.seed}", file=sys.stderr, leave=False)
    for epoch in range(start_epoch, epochs):
        ctx.epoch = epoch
        model.train()
        t0 = time.perf_counter()
        loss_sum, loss_n = 0.0, 0
        for idx in _batches(len(ytr), bs, shuffle):
            xb, yb = xtr[idx].to(device), ytr[idx].to(device)
            last = rule.train_step(model, (xb, yb), optimizer, ctx) or {}
            grad_norms.record()
            loss = last.get("loss")
            if loss is not None and not math.isfinite(loss):
                raise NonFiniteLoss(f"non-finite loss {loss} at epoch {epoch}, step {ctx.step}; run stopped")
            if loss is not None:
                loss_sum, loss_n = loss_sum + loss * len(idx), loss_n + len(idx)
            if scheduler is not None and interval == "step":
                scheduler.step()
            ctx.step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{v:.4g}" for k, v in last.items() if isinstance(v, float)}, refresh=False)
        if scheduler is not None and interval == "epoch":
            scheduler.step()
        train_time += time.perf_counter() - t0
        train_loss = loss_sum / loss_n if loss_n else None
        if n_curve:
            point = _validation_point(rule, model, ctx, xval[:n_curve], yval[:n_curve], timesteps, rows_T, device,
                                      bs, epoch + 1, train_time, train_loss, cell)
        else:
            point = {"epoch": epoch + 1, "train_time_s": train_time, "train_loss": train_loss}
        norms = grad_norms.epoch()
        if norms is not None:
            point["grad_norm_ratio"], grad_layers = norms["first_last_ratio"], norms["layers"]
        history.append(point)
        if cell.select == "best_val" and (best is None or max(point["val_accuracy"]) > best[0]):
            best = (max(point["val_accuracy"]), epoch + 1,
                    {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()})
        if on_epoch is not None:
            on_epoch(point)
        if ckpt is not None and epoch + 1 < epochs:
            _save_checkpoint(ckpt, {"model": model.state_dict(), "epoch": epoch + 1, "step": ctx.step,
                                    "history": history, "best": best,
                                    "optimizer": optimizer.state_dict() if optimizer is not None else None,
                                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                                    "generator": ctx.generator.get_state(), "shuffle": shuffle.get_state(),
                                    "torch_rng": torch.get_rng_state(), "train_time": train_time})
    if bar is not None:
        bar.close()

    # The model tested: the last epoch's, or (select="best_val") the best validation epoch's.
    selected = history[-1] if history else None
    if best is not None and best[1] != epochs:
        model.load_state_dict(best[2])
        selected = history[best[1] - 1]
    base["selected_epoch"] = selected["epoch"] if selected else epochs
    # Validation at every T: the selected epoch's point where it covered the whole split, else one pass now.
    val_acc = None
    if yval is not None:
        if selected is not None and selected.get("n_val") == len(yval):
            val_acc = selected["val_accuracy"]
        else:
            val_acc = _validation_point(rule, model, ctx, xval, yval, timesteps, rows_T, device, bs, epochs,
                                        train_time, None, cell)["val_accuracy"]
    n_samples = len(ytr)
    del xtr, ytr, xval, yval
    if not cell.evaluate_test:
        return [{**base, "T": T, "accuracy": None, "val_accuracy": val_acc[k] if val_acc is not None else None,
                 "train_time_s": train_time, "status": "ok", "error": None, "epochs": epochs, "n_train": n_samples,
                 "finished_at": datetime.now(timezone.utc).isoformat(),
                 "extra": {"history": _row_history(history, k), "test": "not evaluated (tuning trial)"}}
                for k, T in enumerate(rows_T)]

    # The test set is read here, once: one pass at T_max, accuracy (and op counts) read at every T.
    test = dataset.load("test", cell.data_root)
    xte, yte = test.x[:cell.limit_test], test.y[:cell.limit_test]
    model.eval()
    ctx.phase = "test"
    ctx.generator.manual_seed(cell.seed * 1_000_003 + 3)
    T_max = max(timesteps) if timesteps else 1
    eval_bs = max(bs, 256)
    counter = rule.op_counter(model, T_max, min(eval_bs, len(yte)))
    counter.input_events = rule.input_events(ctx)
    t0 = time.perf_counter()
    with counter, torch.no_grad():
        correct = _count_correct(rule, model, ctx, xte, yte, timesteps, len(rows_T), device, eval_bs, counter)
    eval_time = time.perf_counter() - t0
    finished = datetime.now(timezone.utc).isoformat()
    metrics = host.metrics() if host is not None else []
    rows = []
    for k, T in enumerate(rows_T):
        ops = counter.at(T)
        extra = {"layers": ops["layers"], "spike_rates": ops["spike_rates"], "eval_time_s": eval_time,
                 # further op-count keys (activations, neuron_updates, macs_effective, energy_model, ...)
                 **{k2: v for k2, v in ops.items() if k2 not in ("synops", "macs", "energy_pj", "spikes_per_sample")},
                 "final_train": {k2: v for k2, v in last.items() if isinstance(v, (int, float))},
                 "arch_spec": arch.describe(),
                 "history": _row_history(history, k)}
        if grad_layers is not None:  # the last epoch trained in this process (per epoch: history)
            extra["grad_norms"] = {"first_last_ratio": history[-1].get("grad_norm_ratio"), "layers": grad_layers}
        for metric in metrics:
            extra.update(metric(model, rule, ctx, {"T": T, "ops": ops}) or {})
        rows.append({**base, "T": T, "accuracy": float(correct[k] / len(yte)),
                     "val_accuracy": val_acc[k] if val_acc is not None else None, "synops": ops["synops"],
                     "macs": ops["macs"], "energy_pj": ops["energy_pj"],
                     "spikes_per_sample": ops["spikes_per_sample"], "train_time_s": train_time,
                     "samples_per_s": epochs * n_samples / train_time if train_time > 0 else None,  # train_time spans resumed chunks
                     "peak_mem_mb": _peak_mem_mb(cell.device), "status": "ok", "error": None,
                     "epochs": epochs, "n_train": n_samples, "n_test": len(yte), "finished_at": finished,
                     "extra": extra})
    if cell.save_models:
        from suite.models import save_model_of_cell
        save_model_of_cell(ckpt, rows, cell, rule, arch, dataset, hp, model, base, train_T, timesteps)
    if ckpt is not None and ckpt.is_file():
        ckpt.unlink()
    return rows


__all__ = ["Cell", "StopCell", "run_cell", "environment", "seed_everything"]
