"""Equal-budget tuning: ``snn-suite tune --matrix FILE.toml --out DIR``.

Every rule (and baseline) of the matrix gets one Optuna study per (dataset, architecture) with the
same budget: ``trials`` trials of at most ``epochs`` epochs on the same training samples, selected
on the dataset's validation split (the test set is never read: trials run with
``evaluate_test=False``). A trial samples the rule's declared :attr:`~suite.rule.Rule.search_space`
on top of the matrix's own options with the TPE sampler (after :func:`startup_trials` random
ones); a median pruner stops trials whose
per-epoch validation accuracy (best over the evaluated T) falls behind.

Everything lives in the output folder: the studies in ``study.journal`` (Optuna's journal storage,
safe for several processes), each trial's rows in ``trials/`` and the result in ``tuned.toml``, a
matrix file with the best options per rule and architecture that ``snn-suite run --matrix`` replays.
``--resume`` continues the studies: an interrupted trial is re-queued with the same parameters and
only finished trials (complete or pruned) count towards the budget. ``--jobs N`` runs N trials at a
time in worker processes sharing the journal; more machines can share it the same way.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from suite.matrix import Matrix, MatrixError, coerce_option
from suite.results import write_atomic

#: trial states that count towards the budget
COUNTED = ("COMPLETE", "PRUNED")


def _require_optuna():
    try:
        import optuna
    except ImportError:
        raise SystemExit("error: `snn-suite tune` needs Optuna: pip install 'snn-suite[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def suggest(trial, space: dict) -> dict:
    """Sample one point of a rule's search space."""
    out = {}
    for name, spec in space.items():
        kind, *args = spec
        if kind == "log":
            out[name] = trial.suggest_float(name, args[0], args[1], log=True)
        elif kind == "float":
            out[name] = trial.suggest_float(name, args[0], args[1])
        elif kind == "int":
            out[name] = trial.suggest_int(name, args[0], args[1])
        elif kind == "choice":
            out[name] = trial.suggest_categorical(name, list(args[0]))
        else:
            raise ValueError(f"search space of {name!r}: unknown kind {kind!r}; expected log, float, int or choice")
    return out


def check_space(rule) -> None:
    unknown = sorted(set(rule.search_space) - set(rule.defaults))
    if unknown:
        raise ValueError(f"rule {rule.name!r}: search space names option(s) {', '.join(unknown)} "
                         f"that are not among its defaults")


class Plan:
    """What one tune invocation does: the studies, their budget and where they are stored."""

    def __init__(self, matrix: Matrix, out: Path, *, trials: int, epochs: int, limit_train: int | None,
                 limit_val: int | None, seed: int, data_root=None, device: str = "cpu"):
        datasets = {e.dataset for e in matrix.entries}
        if len(datasets) != 1:
            raise MatrixError(f"tune one dataset per matrix file; this one has {', '.join(sorted(datasets))}")
        self.matrix, self.out = matrix, Path(out)
        self.trials, self.epochs, self.seed = trials, epochs, seed
        self.limit_train, self.limit_val = limit_train, limit_val
        self.data_root, self.device = data_root, device
        self.storage_path = self.out / "study.journal"

    def study_name(self, entry) -> str:
        return f"{entry.rule}/{entry.dataset}/{entry.arch}"

    def cell(self, entry, params: dict):
        from suite.train import Cell

        return Cell(rule=entry.rule, dataset=entry.dataset, arch=entry.arch, seed=self.seed,
                    timesteps=entry.timesteps, epochs=self.epochs, batch_size=entry.batch_size,
                    backend=self.matrix.backends[0], options=tuple(sorted({**dict(entry.options), **params}.items())),
                    data_root=self.data_root, limit_train=self.limit_train, limit_val=self.limit_val,
                    val_split="auto", select=self.matrix.select, evaluate_test=False, device=self.device, curve=None,
                    command="snn-suite tune (trial)")


def _storage(path: Path):
    _require_optuna()
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return JournalStorage(JournalFileBackend(str(path)))


def _objective(plan: Plan, entry, host):
    optuna = _require_optuna()
    from suite.results import write_cell
    from suite.train import StopCell, run_cell

    rule = host.rule(entry.rule)

    def objective(trial):
        params = {k: coerce_option(rule, k, v) for k, v in suggest(trial, rule.search_space).items()}
        cell = plan.cell(entry, params)

        def on_epoch(point):
            if "val_accuracy" in point:
                trial.report(max(point["val_accuracy"]), point["epoch"])
                if trial.should_prune():
                    raise StopCell()

        try:
            rows = run_cell(cell, host, on_epoch=on_epoch)
        except StopCell:
            raise optuna.TrialPruned() from None
        write_cell(plan.out / "trials", f"{cell.cell_id}__t{trial.number}",
                   [{**r, "extra": {**(r.get("extra") or {}), "trial": trial.number, "params": params}} for r in rows])
        status = rows[0].get("status")
        trial.set_user_attr("status", status)
        trial.set_user_attr("val_accuracy", [r.get("val_accuracy") for r in rows])
        trial.set_user_attr("train_time_s", rows[0].get("train_time_s"))
        if status != "ok":
            # a diverged or crashed trial is a real outcome of these parameters: it counts, scoring zero
            trial.set_user_attr("error", (rows[0].get("error") or "")[:500])
            return 0.0
        return max(r["val_accuracy"] for r in rows)

    return objective


def _counted(study) -> int:
    optuna = _require_optuna()
    states = tuple(getattr(optuna.trial.TrialState, s) for s in COUNTED)
    return len(study.get_trials(deepcopy=False, states=states))


def _work(plan: Plan, entry, worker: int) -> None:
    """One worker on one study: start trials while fewer than the budget are finished or running."""
    optuna = _require_optuna()
    from suite.executors import torch_threads
    from suite.host import create_host

    host = create_host()
    storage = _storage(plan.storage_path)
    name = plan.study_name(entry)
    # seeded per worker and by the trials already there, so a resumed study draws new points
    seed = plan.seed * 1000 + worker * 100_003 + len(optuna.load_study(study_name=name, storage=storage).trials)
    study = optuna.load_study(study_name=name, storage=storage, sampler=_sampler(plan, seed), pruner=_pruner(plan))
    objective = _objective(plan, entry, host)
    running = optuna.trial.TrialState.RUNNING
    with torch_threads(1 if os.environ.get("SNN_SUITE_TUNE_WORKER") else None):
        while _counted(study) + len(study.get_trials(deepcopy=False, states=(running,))) < plan.trials:
            study.optimize(objective, n_trials=1, catch=())


def startup_trials(trials: int) -> int:
    """Trials the TPE sampler draws at random before it models the finished ones: half the budget,
    at most Optuna's default of 10. Optuna's default alone left every study of up to 10 trials a
    seeded random search (the same points for a rule in every study, whatever the data)."""
    return max(1, min(10, trials // 2))


def _sampler(plan: Plan, seed: int):
    optuna = _require_optuna()
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(plan.trials))


def _pruner(plan: Plan):
    optuna = _require_optuna()
    # no pruning before a quarter of the trials have finished, nor in the first half of a trial's epochs:
    # a low learning rate starts slowly, and an early cut would tune for speed of start, not for accuracy
    return optuna.pruners.MedianPruner(n_startup_trials=max(3, plan.trials // 4), n_warmup_steps=plan.epochs // 2)


def _worker_main(plan: Plan, entry, worker: int) -> None:
    os.environ["SNN_SUITE_TUNE_WORKER"] = "1"
    _work(plan, entry, worker)


def _requeue_interrupted(study) -> int:
    """Trials left RUNNING by an interrupted tune: marked failed and queued again with their parameters."""
    optuna = _require_optuna()
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for t in stale:
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"requeued_from": t.number})
    return len(stale)


def tune(matrix: Matrix, out, host, *, trials: int, epochs: int, limit_train: int | None = None,
         limit_val: int | None = None, seed: int = 0, jobs: int = 1, resume: bool = False, data_root=None,
         device: str = "cpu", executor: str = "processes", ray_address: str | None = None, log=None) -> Path:
    """Run every study of the matrix to its budget; returns the path of ``tuned.toml``."""
    _require_optuna()
    log = log or (lambda *a: print(*a, flush=True))
    out = Path(out)
    plan = Plan(matrix, out, trials=trials, epochs=epochs, limit_train=limit_train, limit_val=limit_val,
                seed=seed, data_root=data_root, device=device)
    if plan.storage_path.exists() and not resume:
        raise SystemExit(f"error: {plan.storage_path} exists: pass --resume to continue those studies, "
                         "or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    for e in matrix.entries:
        check_space(host.rule(e.rule))
    storage = _storage(plan.storage_path)
    entries = _study_entries(matrix)
    n_train = _n_train(plan, entries[0], host)
    budget = {"trials": trials, "epochs_per_trial": epochs, "training_samples": n_train,
              "sample_epochs_per_study": trials * epochs * n_train, "selection": "validation split",
              "sampler": f"TPE after {startup_trials(trials)} random trials", "pruner": "median on per-epoch validation accuracy", "tuning_seed": seed}
    log(f"budget per study: {trials} trials x {epochs} epochs x {n_train} training samples "
        f"= {trials * epochs * n_train:,} sample-epochs (pruned trials use fewer), selected on validation")
    t_all = time.perf_counter()
    stop_ray = _start_ray(jobs, ray_address) if executor == "ray" else None
    try:
        _tune_studies(plan, host, storage, entries, budget, jobs, executor, log)
    finally:
        if stop_ray:
            stop_ray()
    path = write_tuned(plan, host, storage, entries, budget, time.perf_counter() - t_all)
    log(f"wrote {path}")
    return path


def _tune_studies(plan: Plan, host, storage, entries, budget: dict, jobs: int, executor: str, log) -> None:
    """Every study to its budget, one after another."""
    optuna = _require_optuna()
    trials = plan.trials
    for entry in entries:
        rule = host.rule(entry.rule)
        if not rule.supports(host.arch(entry.arch), entry.dataset):
            log(f"{plan.study_name(entry)}: skipped (the rule does not support this architecture)")
            continue
        study = optuna.create_study(study_name=plan.study_name(entry), storage=storage, direction="maximize",
                                    load_if_exists=True)
        study.set_user_attr("budget", budget)
        requeued = _requeue_interrupted(study)
        if not rule.search_space:
            study.set_user_attr("note", "the rule declares no search space: its options as given")
        t0 = time.perf_counter()
        if rule.search_space and _counted(study) < trials:
            _run_workers(plan, entry, jobs, executor)
        best = best_trial(study, trials)
        log(f"{plan.study_name(entry)}: {_counted(study)} trials"
            + (f" ({requeued} re-queued after an interruption)" if requeued else "")
            + (f", best validation accuracy {best.value:.4f} (trial {best.number})" if best else "")
            + f", {time.perf_counter() - t0:.0f} s")


def _run_workers(plan: Plan, entry, jobs: int, executor: str) -> None:
    """``jobs`` workers on one study: in this process (1), worker processes, or Ray tasks."""
    if executor == "ray":
        import ray

        ray.get([ray.remote(num_cpus=1)(_worker_main).remote(plan, entry, w) for w in range(jobs)])
    elif jobs > 1:
        from suite.executors import _process_context

        ctx = _process_context()
        procs = [ctx.Process(target=_worker_main, args=(plan, entry, w)) for w in range(jobs)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        bad = [p.exitcode for p in procs if p.exitcode]
        if bad:
            raise RuntimeError(f"tune workers of {plan.study_name(entry)} exited with {bad}")
    else:
        _work(plan, entry, 0)


def _start_ray(jobs: int, ray_address: str | None):
    """Connect to Ray (``ray_address``, ``$RAY_ADDRESS``, or a private local Ray with ``jobs`` CPUs);
    returns the function that stops a Ray started here. Workers on other machines must see the
    study journal at the same path (a shared file system)."""
    from suite.validate import require

    require("ray", "ray", "snn-suite tune --executor ray")
    import ray

    if ray.is_initialized():
        return None
    if ray_address is None and "RAY_ADDRESS" not in os.environ:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=max(1, int(jobs)), include_dashboard=False, log_to_driver=False)
        return ray.shutdown
    ray.init(address=ray_address)
    return None


def _study_entries(matrix: Matrix) -> list:
    seen, out = set(), []
    for e in matrix.entries:
        if (e.rule, e.dataset, e.arch) not in seen:
            seen.add((e.rule, e.dataset, e.arch))
            out.append(e)
    return out


def _n_train(plan: Plan, entry, host) -> int:
    from suite.data import validation_split

    ds = host.dataset(entry.dataset)
    n = len(validation_split(ds, len(ds.load("train", plan.data_root))).train)
    return min(n, plan.limit_train) if plan.limit_train else n


def best_trial(study, trials: int):
    """The best of the first ``trials`` finished trials (by number): extra trials that parallel
    workers may have started past the budget do not count, so every rule gets the same budget."""
    optuna = _require_optuna()
    done = sorted(study.get_trials(deepcopy=False, states=tuple(getattr(optuna.trial.TrialState, s)
                                                                 for s in COUNTED)), key=lambda t: t.number)[:trials]
    complete = [t for t in done if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None


# ------------------------------------------------------------------ tuned.toml
def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int,)):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} to TOML")


def _inline(d: dict) -> str:
    return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in sorted(d.items())) + " }"


def write_tuned(plan: Plan, host, storage, entries, budget: dict, seconds: float) -> Path:
    """A matrix file: the input matrix with each rule's best options per architecture."""
    optuna = _require_optuna()
    m = plan.matrix
    lines = [f"# Tuned by `snn-suite tune` from {m.source['path'] if m.source else 'the command line'}"
             + (f" (sha256 {m.source['sha256'][:12]})" if m.source else ""),
             f"# Budget per rule and architecture: {budget['trials']} trials x {budget['epochs_per_trial']} epochs "
             f"x {budget['training_samples']} training samples; {budget['sampler']} sampler, median pruner; "
             f"selected on the validation split (tuning seed {budget['tuning_seed']}); the test set was not read.",
             f"# Tuning took {seconds:.0f} s in this invocation.", ""]
    name = m.name or "matrix"
    lines += [f"name = {_toml_value(name + '-tuned')}"]
    datasets = sorted({e.dataset for e in m.entries})
    archs = list(dict.fromkeys(e.arch for e in m.entries))
    lines += [f"datasets = {_toml_value(datasets)}", f"archs = {_toml_value(archs)}",
              f"seeds = {_toml_value(list(m.seeds))}", f"backends = {_toml_value(list(m.backends))}",
              f"val_split = {_toml_value(m.val_split)}", f"select = {_toml_value(m.select)}"]
    for k in ("limit_train", "limit_val", "limit_test"):
        if getattr(m, k):
            lines.append(f"{k} = {getattr(m, k)}")
    by_rule: dict[str, list] = {}
    for e in entries:
        by_rule.setdefault(e.rule, []).append(e)
    for rule_name, es in by_rule.items():
        rule = host.rule(rule_name)
        first = es[0]
        lines += ["", f"[rules.{rule_name}]"]
        if first.timesteps:
            lines.append(f"timesteps = {_toml_value(list(first.timesteps))}")
        if first.epochs:
            lines.append(f"epochs = {first.epochs}")
        common = {k: v for k, v in first.options
                  if all(dict(e.options).get(k, object()) == v for e in es)}
        if common:
            lines.append(f"options = {_inline(common)}")
        for e in es:
            if not rule.supports(host.arch(e.arch), e.dataset):
                continue  # run --matrix gives it a skipped row saying why
            study = optuna.load_study(study_name=plan.study_name(e), storage=storage)
            best = best_trial(study, plan.trials)
            own = {k: v for k, v in e.options if k not in common}
            if best is not None:
                own.update({k: coerce_option(rule, k, v) for k, v in best.params.items()})
            lines += ["", f"[rules.{rule_name}.archs.{e.arch}]"]
            if best is not None:
                lines.append(f"# best of {min(_counted(study), plan.trials)} trials: validation accuracy "
                             f"{best.value:.4f} (trial {best.number})")
            elif rule.search_space:
                lines.append("# no trial finished: the options as given")
            else:
                lines.append("# the rule declares no search space: its options as given")
            if e.batch_size and e.batch_size != first.batch_size:
                lines.append(f"batch_size = {e.batch_size}")
            if e.timesteps and e.timesteps != first.timesteps:
                lines.append(f"timesteps = {_toml_value(list(e.timesteps))}")
            if own:
                lines.append(f"options = {_inline(own)}")
        if first.batch_size:
            # batch size is per rule: write it once on the rule's table
            idx = lines.index(f"[rules.{rule_name}]")
            lines.insert(idx + 1, f"batch_size = {first.batch_size}")
    path = write_atomic(plan.out / "tuned.toml", lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    write_atomic(plan.out / "budget.json", lambda tmp: Path(tmp).write_text(json.dumps(budget, indent=2) + "\n"))
    return path
