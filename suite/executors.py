"""Executors: where the cells of a matrix run -- this process, a local process pool, or Ray.

Every executor calls :func:`suite.train.run_cell` on the same frozen :class:`~suite.train.Cell`
values, with as many torch threads as the cell's ``num_cpus`` (:meth:`suite.rule.Rule.resources`,
default 1) -- the thread count changes float summation order and hence spikes -- and hands each
finished cell's rows to :func:`suite.results.write_cell` (one atomic file per cell) as soon as it
completes. So rows are identical whichever executor ran them, and an interrupted run keeps
everything already finished.

* ``local``     -- one cell after the other in this process.
* ``processes`` -- ``jobs`` worker processes on this machine (forked from a fork server that
  imported torch once; ``spawn`` where there is none). A worker that dies
  (SIGKILL, the kernel's out-of-memory killer, a crash in native code) breaks the
  ``ProcessPoolExecutor`` and every cell in flight with it; those cells go to a fresh pool and
  run there one at a time, so the cell that killed its worker is known. Each death counts as an
  attempt; a cell that died alone after ``1 + max_retries`` attempts is written as a failed row
  with the exit signal, and the rest of the matrix goes on.
* ``ray``       -- one Ray task per cell with the resources of :meth:`suite.rule.Rule.resources`;
  Ray does placement, transport and the retries of a task whose worker died
  (``max_retries``); rows are streamed back with ``ray.wait`` as each task finishes.
"""
from __future__ import annotations

import importlib
import os
import signal
from collections import Counter, deque
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import suite
from suite.train import Cell, run_cell

EXECUTORS = ("local", "processes", "ray")
#: keys a rule's ``resources(cell)`` may return (the matching ``ray.remote`` options)
RESOURCE_KEYS = ("num_cpus", "num_gpus", "memory", "resources", "accelerator_type")

#: modules the ``processes`` executor's fork server imports once for all its workers
PRELOAD = ("suite.executors", "torch.optim", "torch._dynamo")
#: plugins registered in code travel to workers as ``(name, "module[:attribute]")`` import paths
PluginSpecs = tuple[tuple[str, str], ...]


# ---------------------------------------------------------------------- worker side
_HOSTS: dict = {}


def _import_plugin(spec: str):
    module, _, attr = spec.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, attr) if attr else obj


def new_host(plugins: PluginSpecs = ()):
    """A plugin host with the entry-point plugins plus ``plugins`` (import paths)."""
    from suite import host as host_mod  # looked up at call time: tests swap create_host

    extra = [(name, _import_plugin(spec)) for name, spec in plugins]
    return host_mod.create_host(extra_plugins=extra) if extra else host_mod.create_host()


def worker_host(plugins: PluginSpecs = ()):
    """The plugin host of a worker process, created once per process and plugin set (a pool
    process or Ray worker runs many cells)."""
    if plugins not in _HOSTS:
        _HOSTS[plugins] = new_host(plugins)
    return _HOSTS[plugins]


def execute_cell(cell: Cell, plugins: PluginSpecs = (), checkpoint_dir: str | None = None,
                 threads: int | None = None) -> list[dict]:
    """Run one cell in a worker (pool process or Ray task); never raises for a plugin's error."""
    try:
        host = worker_host(plugins)
    except Exception as exc:
        return failure_rows(cell, f"worker could not load the plugins: {type(exc).__name__}: {exc}")
    with torch_threads(threads):
        return run_cell(cell, host, checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir else None)


@contextmanager
def torch_threads(n: int | None):
    """Run with ``n`` intra-op torch threads (None: leave as is), then restore the previous count."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------- driver side
def _local_rule(cell: Cell, host=None):
    """The cell's rule if this process can load it, else None (the plugin lives on the cluster only)."""
    if host is None:
        return None
    try:
        return host.rule(cell.rule)
    except ValueError:
        return None


def failure_rows(cell: Cell, error: str, host=None) -> list[dict]:
    """Rows of status ``failed`` for a cell that returned nothing (its worker died)."""
    rule = _local_rule(cell, host)
    if rule is not None and not rule.temporal:
        rows_T: list = [None]
    elif cell.timesteps:
        rows_T = list(cell.timesteps)
    else:
        T = dict(cell.options).get("T", rule.defaults.get("T") if rule is not None else None)
        rows_T = [int(T) if T is not None else None]
    base = {"rule": cell.rule, "dataset": cell.dataset, "arch": cell.arch, "backend": cell.backend,
            "seed": cell.seed, "suite_version": suite.__version__, "config_hash": cell.config_hash,
            "cell_id": cell.cell_id, "preset": cell.preset, "command": cell.command, "device": cell.device,
            "status": "failed",
            "error": error, "finished_at": datetime.now(timezone.utc).isoformat()}
    if rule is not None:
        base.update(paper=rule.paper, plugin_version=rule.version,
                    encoding=dict(cell.options).get("encoding", rule.encoding))
    return [{**base, "T": T} for T in rows_T]


def cell_resources(cell: Cell, host=None) -> dict:
    """Ray options for one cell: the rule's :meth:`~suite.rule.Rule.resources`, else the default."""
    from suite.rule import default_resources

    rule = _local_rule(cell, host)
    res = dict(rule.resources(cell) if rule is not None else default_resources(cell))
    unknown = sorted(set(res) - set(RESOURCE_KEYS))
    if unknown:
        raise ValueError(f"rule {cell.rule!r}: resources() returned unknown key(s) {', '.join(unknown)}; "
                         f"valid: {', '.join(RESOURCE_KEYS)}")
    return res


def cell_threads(cell: Cell, host=None) -> int:
    """Torch threads for a cell under every executor: its whole ``num_cpus``, at least one."""
    return _threads(cell_resources(cell, host))


def _threads(resources: dict) -> int:
    return max(1, int(resources.get("num_cpus", 1)))


def _exit_reason(code: int) -> str:
    if code >= 0:
        return f"exit status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"
    return f"{name}, as sent by `kill -9` or the out-of-memory killer" if name == "SIGKILL" else name


def run_local(todo: list[Cell], finish: Callable, *, host, checkpoint_dir: Path | None = None,
              progress: bool = False, **_) -> None:
    """One cell after the other in this process (a SIGKILL here ends the run; ``--resume`` goes on)."""
    for cell in todo:
        with torch_threads(cell_threads(cell, host)):
            rows = run_cell(cell, host, progress=progress, checkpoint_dir=checkpoint_dir)
        finish(cell, rows)


def _process_context():
    """Workers fork from a server process that imported torch once (``forkserver``): a pool
    re-created after a worker died starts in a fraction of a second, not seconds. Nothing but
    imports happen in that server (no threads, no CUDA), so its forks are as clean as ``spawn``."""
    import multiprocessing as mp

    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))
    return ctx


def run_processes(todo: list[Cell], finish: Callable, *, jobs: int = 2, plugins: PluginSpecs = (),
                  checkpoint_dir: Path | None = None, max_retries: int = 2, host=None, log=print, **_) -> None:
    """``jobs`` cells at a time in a process pool; cells lost with a dead worker re-run alone."""
    import concurrent.futures as cf
    from concurrent.futures.process import BrokenProcessPool

    jobs = max(1, int(jobs))
    ckpt = str(checkpoint_dir) if checkpoint_dir is not None else None
    queue, suspects, deaths = deque(todo), deque(), Counter()
    while queue or suspects:
        with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=_process_context()) as pool:
            running: dict = {}
            workers: dict = {}
            lost: list[Cell] = []
            while (queue or suspects or running) and not lost:
                # Suspects of a crash run alone: if the pool breaks then, the cell is the culprit.
                while (suspects and not running) or (queue and not suspects and len(running) < jobs):
                    cell = suspects.popleft() if suspects else queue.popleft()
                    running[pool.submit(execute_cell, cell, plugins, ckpt, cell_threads(cell, host))] = cell
                    workers.update(getattr(pool, "_processes", None) or {})  # for the exit codes
                done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                if any(isinstance(f.exception(), BrokenProcessPool) for f in done):
                    cf.wait(running)  # the broken pool fails every other future at once
                    done = set(running)
                for fut in done:
                    cell = running.pop(fut)
                    exc = fut.exception()
                    if exc is None:
                        finish(cell, fut.result())
                    elif isinstance(exc, BrokenProcessPool):
                        lost.append(cell)
                    else:  # e.g. rows that could not be pickled back
                        finish(cell, failure_rows(cell, f"worker raised {type(exc).__name__}: {exc}", host))
        deaths.update(lost)
        if len(lost) > 1:  # any of them may have killed the worker: each re-runs alone to tell
            log(f"a worker process died with {len(lost)} cells in flight; re-running them one at a time")
            suspects.extend(lost)
        elif lost:  # it died alone, so it is the culprit; only now can it fail
            cell = lost[0]
            codes = sorted({p.exitcode for p in workers.values()
                            if p.exitcode not in (None, 0, -signal.SIGTERM)})
            how = "; ".join(_exit_reason(c) for c in codes) or "exit code unknown"
            if deaths[cell] > max_retries:
                finish(cell, failure_rows(cell, f"worker process died ({how}) in each of {deaths[cell]} "
                                                f"attempt(s)", host))
            else:
                log(f"worker died ({how}) running {cell.cell_id}; retry {deaths[cell]} of {max_retries}")
                suspects.append(cell)


def run_ray(todo: list[Cell], finish: Callable, *, jobs: int = 2, plugins: PluginSpecs = (),
            checkpoint_dir: Path | None = None, max_retries: int = 2, host=None, ray_address: str | None = None,
            runtime_env: dict | None = None, log=print, **_) -> None:
    """One Ray task per cell on the cluster at ``ray_address`` (or ``$RAY_ADDRESS``, or the Ray this
    process is already connected to); with neither, on a private local Ray with ``jobs`` CPUs."""
    from suite.validate import require

    require("ray", "ray", "--executor ray")
    import ray
    from ray.exceptions import RayError

    started = False
    if not ray.is_initialized():
        if ray_address is None and "RAY_ADDRESS" not in os.environ:
            # A private single-node Ray for this run: no dashboard, no usage report over the network.
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            ray.init(num_cpus=max(1, int(jobs)), include_dashboard=False, runtime_env=runtime_env)
            started = True
        else:
            ray.init(address=ray_address, runtime_env=runtime_env)
    # Checkpoints only where every worker shares this file system: a Ray this run started itself.
    ckpt = str(checkpoint_dir) if (started and checkpoint_dir is not None) else None
    res = ray.cluster_resources()
    log(f"ray: {len(todo)} cells on {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs "
        f"({'a local Ray started for this run' if started else 'an existing Ray cluster'})")
    remote = ray.remote(execute_cell)
    pending: dict = {}
    try:
        for cell in todo:
            need = cell_resources(cell, host)
            ref = remote.options(max_retries=int(max_retries), retry_exceptions=False,
                                 name=f"snn-suite:{cell.cell_id}", **need).remote(cell, plugins, ckpt, _threads(need))
            pending[ref] = cell
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                cell = pending.pop(ref)
                try:
                    rows = ray.get(ref)
                except RayError as exc:  # worker died / killed for memory / node lost
                    reason = str(exc).strip().splitlines()
                    rows = failure_rows(cell, f"Ray task failed (max_retries={max_retries}): "
                                              f"{type(exc).__name__}: {' '.join(reason[:3])}", host)
                finish(cell, rows)
    finally:
        for ref in pending:  # interrupted: leave no orphan tasks on the cluster
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()


_RUNNERS = {"local": run_local, "processes": run_processes, "ray": run_ray}


def run_matrix(cells: Iterable[Cell], out_dir: Path, *, resume: bool = False, executor: str = "local",
               jobs: int = 2, progress: bool = False, log=print, max_retries: int = 2,
               ray_address: str | None = None, runtime_env: dict | None = None,
               plugins: PluginSpecs = (), host=None) -> list[dict]:
    """Run every cell with ``executor`` and write its rows atomically as it finishes.

    ``resume`` skips cells whose file in ``out_dir`` holds a final status (ok / nan / skipped),
    for every executor alike. ``plugins`` names plugins registered in code, as import paths, so
    that worker processes can register them too. Returns all rows written by this call.
    """
    from suite.models import model_path
    from suite.results import cell_done, write_cell

    if executor not in _RUNNERS:
        raise ValueError(f"unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
    if int(max_retries) < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    cells, out_dir = list(cells), Path(out_dir)
    todo = [c for c in cells if not (resume and cell_done(out_dir, c.cell_id)
                                     and (not c.save_models or model_path(out_dir, c.cell_id).is_file()))]
    if resume and len(todo) < len(cells):
        log(f"resume: {len(cells) - len(todo)} of {len(cells)} cells already finished, skipping them")
    written: list[dict] = []

    def finish(cell: Cell, rows: list[dict]) -> None:
        write_cell(out_dir, cell.cell_id, rows)
        written.extend(rows)
        st = rows[0]["status"] if rows else "?"
        best = ", ".join(f"T={r['T']}: {r['accuracy']:.4f}" for r in rows if r.get("accuracy") is not None)
        log(f"[{st}] {cell.rule} {cell.dataset} {cell.arch} seed={cell.seed}  {best or rows[0].get('error', '')}"
            .splitlines()[0])

    if not todo:
        return written
    if host is None or plugins:
        host = new_host(plugins)  # runs the local cells; for the others, resources and failure rows
    _RUNNERS[executor](todo, finish, jobs=jobs, plugins=tuple(plugins), checkpoint_dir=out_dir / "checkpoints",
                       progress=progress, max_retries=int(max_retries), host=host, ray_address=ray_address,
                       runtime_env=runtime_env, log=log)
    return written


__all__ = ["EXECUTORS", "run_matrix", "execute_cell", "failure_rows", "cell_resources", "new_host", "worker_host"]
