"""Executors: local, processes and Ray give the same rows; dying workers give failed rows."""
import os
import signal
from pathlib import Path

import pandas as pd
import pytest
import torch

from suite.cli import build_parser
from suite.executors import cell_resources, failure_rows, run_matrix
from suite.hookspecs import hookimpl
from suite.results import read_frame, read_rows
from suite.rule import Rule
from suite.train import Cell

TESTS = Path(__file__).resolve().parent
VOLATILE = ["train_time_s", "samples_per_s", "peak_mem_mb", "finished_at", "extra", "source"]
QUIET = {"log": lambda *a: None}


# ---------------------------------------------------------------------- faulty plugin rules
class _Faulty(Rule):
    """A linear readout whose training step fails in the way its name says."""

    name, paper, neuron = "faulty_raise", "test", "LIF"
    defaults = {"T": 2, "epochs": 1, "batch_size": 64, "marker": ""}

    def build(self, arch, input_shape, n_classes, backend, hp):
        return torch.nn.Sequential(torch.nn.Flatten(2), torch.nn.Linear(64, n_classes))

    def configure_optimizer(self, model, ctx):
        return None, None, "epoch"

    def train_step(self, model, batch, optimizer, ctx):
        self.fault(ctx.hp["marker"])
        return {"loss": 0.0}

    def fault(self, marker):
        raise RuntimeError("deliberate failure in a plugin")


class _OutOfMemory(_Faulty):
    name = "faulty_oom"

    def fault(self, marker):
        torch.empty(2 ** 62, dtype=torch.uint8)  # 4 EiB: the allocator refuses at once


class _KilledAlways(_Faulty):
    name = "faulty_killed"

    def fault(self, marker):
        with open(marker, "a") as f:
            f.write("attempt\n")
        os.kill(os.getpid(), signal.SIGKILL)


class _KilledOnce(_Faulty):
    name = "faulty_killed_once"

    def fault(self, marker):
        if not os.path.exists(marker):
            Path(marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)


class _FaultyRules:
    @hookimpl
    def snn_suite_rules(self):
        return [_Faulty(), _OutOfMemory(), _KilledAlways(), _KilledOnce()]


PLUGIN = _FaultyRules()
PLUGINS = (("faulty_rules", f"{__name__}:PLUGIN"),)  # workers import this module by name


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    env = {k: os.environ.get(k) for k in ("PYTHONPATH", "RAY_USAGE_STATS_ENABLED")}
    # Workers inherit the environment of the Ray started here; with PYTHONPATH they can import this
    # module (PLUGINS). A runtime_env would do the same but costs cold, not prestarted, workers.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env["PYTHONPATH"]) if p)
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    finally:
        for k, v in env.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    yield ray
    ray.shutdown()


def _matrix():
    small = {"epochs": 1, "limit_train": 200, "limit_test": 100}
    cells = [Cell(r, "digits", "mlp128", seed=s, timesteps=(1, 2), **small)
             for r in ("surrogate_bptt_bn", "example_rate") for s in (0, 1)]
    return cells + [Cell("cnn", "digits", "mlp128", seed=s, **small) for s in (0, 1)]


def _stable(path) -> pd.DataFrame:
    df = read_frame(path)
    # timings are measurements, not results: the per-epoch history keeps its losses and accuracies
    extra = df["extra"].map(lambda e: {k: v if k != "history" else [{h: x for h, x in p.items() if h != "train_time_s"}
                                                                    for p in v]
                                       for k, v in e.items() if k != "eval_time_s"})
    return df.drop(columns=VOLATILE).assign(extra=extra.map(repr))


# ---------------------------------------------------------------------- rows are the same everywhere
def test_local_processes_and_ray_write_identical_rows_and_resume_skips(tmp_path, ray_local):
    cells = _matrix()  # a built-in rule, the third-party fixture plugin and the CNN, two seeds each
    for executor in ("local", "processes", "ray"):
        rows = run_matrix(cells, tmp_path / executor, executor=executor, jobs=2, **QUIET)
        assert len(rows) == 10 and {r["status"] for r in rows} == {"ok"}, rows[0].get("error")
    local = _stable(tmp_path / "local")
    pd.testing.assert_frame_equal(local, _stable(tmp_path / "processes"))
    pd.testing.assert_frame_equal(local, _stable(tmp_path / "ray"))

    # --resume under Ray: finished cells are skipped exactly as locally; a lost cell file is redone
    lost = sorted((tmp_path / "ray" / "cells").glob("example_rate__*s1__*.jsonl"))
    assert len(lost) == 1
    lost[0].unlink()
    logged = []
    rows = run_matrix(cells, tmp_path / "ray", executor="ray", resume=True, log=logged.append)
    assert logged[0] == "resume: 5 of 6 cells already finished, skipping them"
    assert [(r["rule"], r["seed"]) for r in rows] == [("example_rate", 1)] * 2
    pd.testing.assert_frame_equal(local, _stable(tmp_path / "ray"))


# ---------------------------------------------------------------------- dying workers
# Raising and out-of-memory (the allocator refuses) cells fail inside run_cell under every executor;
# under `processes` each dead worker costs a fresh pool of cold workers, so that run keeps to one kill.
FAULTS = {"processes": ("cnn", "faulty_raise", "faulty_oom", "faulty_killed"),
          "ray": ("faulty_raise", "faulty_oom", "cnn", "faulty_killed", "faulty_killed_once")}


@pytest.mark.parametrize("executor", ["processes", "ray"])
def test_raising_oom_and_killed_workers_give_failed_rows_and_the_rest_goes_on(tmp_path, executor, request):
    if executor == "ray":
        request.getfixturevalue("ray_local")
    marker = {r: tmp_path / f"{r}.marker" for r in ("faulty_killed", "faulty_killed_once")}
    cells = [Cell(r, "digits", "mlp128", epochs=1, limit_train=200, limit_test=100) if r == "cnn" else
             Cell(r, "digits", "mlp128", timesteps=(1, 2), epochs=1, limit_train=64, limit_test=64,
                  options=(("marker", str(marker.get(r, ""))),)) for r in FAULTS[executor]]
    out = tmp_path / "out"
    run_matrix(cells, out, executor=executor, jobs=2, max_retries=1, plugins=PLUGINS, **QUIET)

    rows = {}
    for row in read_rows(out):
        rows.setdefault(row["rule"], []).append(row)
    assert {rule: {r["status"] for r in rs} for rule, rs in rows.items()} == {
        "faulty_raise": {"failed"}, "faulty_oom": {"failed"}, "faulty_killed": {"failed"}, "cnn": {"ok"},
        **({"faulty_killed_once": {"ok"}} if executor == "ray" else {})}
    assert "deliberate failure in a plugin" in rows["faulty_raise"][0]["error"]
    assert "can't allocate memory" in rows["faulty_oom"][0]["error"]
    died = rows["faulty_killed"][0]["error"]
    assert ("SIGKILL" in died) if executor == "processes" else ("WorkerCrashedError" in died), died
    assert [r["T"] for r in rows["faulty_killed"]] == [1, 2]  # one failed row per T, as for any cell
    # bounded: the first run plus max_retries=1 re-run
    assert marker["faulty_killed"].read_text().count("attempt") == 2


# ---------------------------------------------------------------------- driver-side pieces
def test_resources_default_and_failure_rows_follow_the_rule(host):
    cpu = Cell("surrogate_bptt_bn", "digits", "mlp128")
    assert cell_resources(cpu, host) == {"num_cpus": 1, "num_gpus": 0}
    assert cell_resources(Cell("cnn", "digits", "mlp128", device="cuda"), host) == {"num_cpus": 1, "num_gpus": 1}
    assert cell_resources(Cell("on_cluster_only", "digits", "mlp128"), host)["num_cpus"] == 1

    assert [r["T"] for r in failure_rows(Cell("cnn", "digits", "mlp128", timesteps=(1, 2)), "x", host)] == [None]
    assert [r["T"] for r in failure_rows(Cell("surrogate_bptt_bn", "digits", "mlp128", timesteps=(2, 4)), "x",
                                         host)] == [2, 4]
    rows = failure_rows(cpu, "worker died", host)
    assert [r["T"] for r in rows] == [host.rule("surrogate_bptt_bn").defaults["T"]]
    assert rows[0]["status"] == "failed" and rows[0]["cell_id"] == cpu.cell_id and rows[0]["paper"]


def test_a_rule_can_ask_for_more_and_bad_keys_are_refused():
    class Big(_Faulty):
        name = "big"

        def resources(self, cell):
            return {"num_cpus": 4, "num_gpus": 0.5, "memory": 2 ** 30}

    class Bad(_Faulty):
        name = "bad"

        def resources(self, cell):
            return {"cpus": 4}

    class Rules:
        @hookimpl
        def snn_suite_rules(self):
            return [Big(), Bad()]

    from suite.host import create_host

    host = create_host(extra_plugins=[("rules", Rules())])
    assert cell_resources(Cell("big", "digits", "mlp128"), host)["num_gpus"] == 0.5
    with pytest.raises(ValueError, match="unknown key.*cpus.*valid: num_cpus"):
        cell_resources(Cell("bad", "digits", "mlp128"), host)


def test_cli_options_and_unknown_executor(tmp_path):
    args = build_parser().parse_args(["run", "--rules", "cnn", "--executor", "ray", "--ray-address", "auto",
                                      "--max-retries", "3"])
    assert (args.executor, args.ray_address, args.max_retries) == ("ray", "auto", 3)
    with pytest.raises(ValueError, match="unknown executor 'dask'; valid: local, processes, ray"):
        run_matrix([Cell("cnn", "digits", "mlp128")], tmp_path, executor="dask")
