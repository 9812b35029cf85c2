"""Command line: ``snn-suite run | plugins | results | report | data``."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

import suite
from suite.data import DataError
from suite.host import create_host
from suite.validate import check_cells, check_rule_options, non_negative_int, positive_int, read_nonempty

DESCRIPTION = """\
Train and compare spiking-neural-network learning rules against conventional CNNs: one
command, one results table, one self-contained HTML report. Learning rules, datasets and
architectures are plugins (entry-point group snn_suite); 'snn-suite plugins' lists them."""


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise SystemExit(f"error: {option} expects comma-separated integers, got {text!r}") from None
    if not vals or (option == "--timesteps" and any(v < 1 for v in vals)):
        raise SystemExit(f"error: {option} expects positive integers, got {text!r}")
    return vals


def _options(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise SystemExit(f"error: --set expects KEY=VALUE, got {p!r}")
        k, v = p.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def matrix_from_args(args, host):
    """``--rules``/``--preset`` with ``--dataset``, ``--arch``, ... as a :class:`~suite.matrix.Matrix`:
    the command line and a matrix file share one path to cells."""
    from suite.matrix import Entry, Matrix, preset_entry, select_presets

    entries = []
    options = _options(args.set)
    timesteps = _ints(args.timesteps, "--timesteps") if args.timesteps else None
    if args.preset:
        # like --epochs and --batch-size, --timesteps overrides the preset's own sweep
        for p in select_presets(host, args.preset):
            entries.append(preset_entry(p, timesteps=timesteps, epochs=args.epochs, batch_size=args.batch_size,
                                        options=options))
    else:
        if not args.rules:
            raise SystemExit("error: give --rules, --preset or --matrix")
        rules = host.select_rules(args.rules)
        dataset, arch = args.dataset or "digits", args.arch or "mlp128"
        host.dataset(dataset)
        host.arch(arch)
        for r in rules:
            rule = host.rule(r)
            own = {k: v for k, v in options.items() if k in rule.defaults}
            entries.append(Entry(r, dataset, arch, timesteps, args.epochs, args.batch_size,
                                 tuple(sorted(own.items()))))
        unknown = [k for k in options if not any(k in host.rule(r).defaults for r in rules)]
        if unknown:
            valid = sorted({k for r in rules for k in host.rule(r).defaults})
            raise SystemExit(f"error: --set {', '.join(unknown)}: no selected rule has this option; "
                             f"valid: {', '.join(valid)}")
    check_rule_options(host, [(e.rule, dict(e.options), e.preset) for e in entries])
    # --set values arrive as text: typed here, so that the same setting from a matrix file is the same cell
    from dataclasses import replace

    from suite.rule import check_options
    entries = [replace(e, options=tuple(sorted((k, check_options(host.rule(e.rule), dict(e.options))[k])
                                               for k, _ in e.options))) for e in entries]
    from suite.kernels import available_backends
    backends = tuple(args.backend.split(","))
    for backend in backends:
        if backend not in available_backends():
            raise SystemExit(f"error: unknown backend {backend!r}; valid: {', '.join(available_backends())}")
    return Matrix(entries=entries, seeds=_ints(args.seeds, "--seeds"), backends=backends,
                  val_split=args.val_split, select=args.select, limit_train=args.limit_train,
                  limit_val=args.limit_val,
                  limit_test=args.limit_test)


def cmd_run(args, host) -> int:
    from suite.executors import run_matrix
    from suite.results import write_run_meta
    from suite.train import environment

    command = "snn-suite " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if args.matrix:
        given = [o for o, v in (("--preset", args.preset), ("--timesteps", args.timesteps),
                                ("--epochs", args.epochs), ("--set", args.set)) if v]
        if given:
            raise SystemExit(f"error: --matrix declares the whole matrix; drop {', '.join(given)} "
                             "(or write them into the file)")
        from suite.matrix import load_matrix
        matrix = load_matrix(args.matrix, host)
        matrix.narrow(host, rules=args.rules, datasets=args.dataset, archs=args.arch)
    else:
        matrix = matrix_from_args(args, host)
    if args.curve is not None and args.curve < 0:
        raise SystemExit(f"error: --curve expects a number of validation samples >= 0, got {args.curve}")
    cells = matrix.cells(data_root=args.data_root, device=args.device, command=command, curve=args.curve)
    if args.save_models:
        from dataclasses import replace
        cells = [replace(c, save_models=True) for c in cells]
    check_cells(host, cells, executor=args.executor, ray_address=args.ray_address)
    out = Path(args.out)
    write_run_meta(out, {"command": command, "environment": environment(), "cells": len(cells), **matrix.meta()})
    rows = run_matrix(cells, out, resume=args.resume, executor=args.executor, jobs=args.jobs,
                      progress=not args.quiet and sys.stderr.isatty(), max_retries=args.max_retries,
                      ray_address=args.ray_address, host=host)
    print(f"wrote {len(rows)} rows to {out}")
    if args.report:
        from suite.reports.html import write_report
        write_report([out], Path(args.report))
        print(f"report: {args.report}")
    return 0 if all(r.get("status") in ("ok", "skipped") for r in rows) else 1


def cmd_tune(args, host) -> int:
    from suite.matrix import load_matrix
    from suite.tune import tune

    matrix = load_matrix(args.matrix, host)
    check_cells(host, matrix.cells(data_root=args.data_root, device=args.device))
    matrix.narrow(host, rules=args.rules)
    settings = {k: getattr(args, k) if getattr(args, k) is not None else matrix.tune.get(k)
                for k in ("trials", "epochs", "limit_train", "limit_val", "seed")}
    for k in ("trials", "epochs"):
        if not settings[k] or settings[k] < 1:
            raise SystemExit(f"error: give --{k} (a positive integer) or set {k} in the matrix's [tune] table")
    tune(matrix, Path(args.out), host, trials=settings["trials"], epochs=settings["epochs"],
         limit_train=settings["limit_train"], limit_val=settings["limit_val"], seed=settings["seed"] or 0,
         jobs=args.jobs, resume=args.resume, data_root=args.data_root, device=args.device,
         executor=args.executor, ray_address=args.ray_address)
    return 0


def cmd_plugins(args, host) -> int:
    rules = []
    for name, r in sorted(host.rules.items()):
        rules.append({"name": name, "paper": r.paper, "neuron": r.neuron, "encoding": r.encoding,
                      "version": r.version, "distribution": getattr(r, "distribution", "")})
    broken = [{"plugin": p.name, "module": p.module, "distribution": p.distribution, "error": p.error}
              for p in host.broken()]
    unavailable = host.unavailable_presets()
    if args.json:
        print(json.dumps({"rules": rules, "broken": broken,
                          "datasets": sorted(host.datasets), "archs": sorted(host.archs),
                          "presets": sorted(host.presets), "unavailable_presets": unavailable}, indent=2))
        return 0
    for r in rules:
        print(f"{r['name']:<20} {r['neuron']:<5} v{r['version']:<8} [{r['distribution']}]\n    {r['paper']}")
    print(f"\ndatasets: {', '.join(sorted(host.datasets))}")
    print(f"archs:    {', '.join(sorted(host.archs))}")
    if host.presets:
        print(f"presets:  {', '.join(n + (' (unavailable)' if n in unavailable else '') for n in sorted(host.presets))}")
    for name, why in unavailable.items():
        print(f"unavailable preset {name}: {why}")
    for b in broken:
        print(f"\nBROKEN plugin {b['plugin']} ({b['module']}, {b['distribution']}): {b['error']}")
    return 0


def cmd_results(args, host) -> int:
    from suite.results import COLUMNS

    df = read_nonempty(args.dirs)
    if args.compare or args.depth:
        from suite.reports.comparison import depth_markdown, markdown
        print(((markdown(df) if args.compare else "") + ("\n" if args.compare and args.depth else "")
               + (depth_markdown(df) if args.depth else "")) if len(df) else "(no rows)")
        return 0
    if args.csv:
        cols = [c for c in COLUMNS if c not in ("hp", "extra")] if not args.all else list(df.columns)
        df[cols].to_csv(sys.stdout, index=False)
    else:
        show = ["rule", "dataset", "arch", "T", "seed", "status", "accuracy", "synops", "macs", "train_time_s"]
        print(df[show].to_string(index=False))
    return 0


def cmd_report(args, host) -> int:
    from suite.reports.html import write_report

    read_nonempty(args.dirs)
    write_report([Path(d) for d in args.dirs], Path(args.output), energy=args.energy)
    print(f"wrote {args.output}")
    return 0


def cmd_data(args, host) -> int:
    from suite.data import DataError

    names = args.names or sorted(host.datasets)
    status = 0
    for name in names:
        ds = host.dataset(name)
        try:
            if args.action == "download":
                if not hasattr(ds, "download"):
                    print(f"{name}: nothing to download")
                    continue
                print(f"{name}: downloaded to {ds.download(args.data_root)}")
            else:
                for line in ds.check(args.data_root):
                    print(f"ok  {line}")
        except DataError as exc:
            print(f"BAD {name}: {exc}", file=sys.stderr)
            status = 1
    return status


def cmd_export(args, host) -> int:
    from suite.nir import export_model

    graph = export_model(args.model, args.output, dt=args.dt, host=host)
    kinds = ", ".join(f"{k}: {type(v).__name__}" for k, v in graph.nodes.items())
    print(f"wrote {args.output} (NIR, dt={args.dt:g} s): {kinds}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="snn-suite", description=DESCRIPTION)
    p.add_argument("--version", action="version", version=f"%(prog)s {suite.__version__}",
                   help="print the version and exit")
    p.add_argument("--debug", action="store_true",
                   help="show Python tracebacks for errors (also: environment variable SNN_SUITE_DEBUG=1)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="train and evaluate a matrix of rule x dataset x arch x seed cells")
    r.add_argument("--matrix", metavar="FILE.toml",
                   help="run the matrix a TOML file declares (rules x datasets x archs x seeds x T, per-rule "
                        "overrides); see suite/matrix.py")
    r.add_argument("--rules", help="comma-separated rule names or patterns, or 'all' (with --matrix: run only "
                                   "these of the file's rules)")
    r.add_argument("--preset", help="paper preset(s) or patterns, e.g. surrogate_bptt_bn/mnist or '*/digits' (see `snn-suite plugins`)")
    r.add_argument("--dataset",
                   help="dataset name (default: digits, embedded; see `snn-suite plugins`; with --matrix: run "
                        "only these of the file's datasets, comma-separated)")
    r.add_argument("--arch",
                   help="architecture name shared by all rules (default: mlp128; see `snn-suite plugins`; with "
                        "--matrix: run only these of the file's architectures, comma-separated)")
    r.add_argument("--timesteps", help="comma-separated T values evaluated from one pass (default: rule's T)")
    r.add_argument("--seeds", default="0", help="comma-separated integer seeds, one cell each (default: 0)")
    r.add_argument("--epochs", type=positive_int,
                   help="training epochs (default: the preset's, else the rule's 'epochs')")
    r.add_argument("--batch-size", type=positive_int,
                   help="training batch size (default: the preset's, else the rule's 'batch_size')")
    r.add_argument("--backend", default="auto",
                   help="neuron backend(s), comma-separated: auto (fastest the rule supports here: fused on "
                        "CPU, triton on CUDA), torch, fused, triton")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a rule hyper-parameter")
    r.add_argument("--out", default="results", help="results directory; one file per cell in OUT/cells/ "
                                                     "(default: results)")
    r.add_argument("--data-root", help="dataset root (default $SNN_SUITE_DATA or ~/.cache/snn-suite/data)")
    r.add_argument("--resume", action="store_true", help="skip cells already finished in --out")
    r.add_argument("--executor", default="local", choices=["local", "processes", "ray"],
                   help="where cells run: this process, --jobs local processes, or Ray tasks")
    r.add_argument("--jobs", type=positive_int, default=2, help="processes (or CPUs of a Ray started here)")
    r.add_argument("--ray-address", metavar="ADDR",
                   help="existing Ray cluster (auto, HOST:PORT or ray://HOST:10001); default: $RAY_ADDRESS, "
                        "else a local Ray with --jobs CPUs")
    r.add_argument("--max-retries", type=non_negative_int, default=2,
                   help="re-runs of a cell whose worker process died (processes, ray)")
    r.add_argument("--device", default="cpu", help="torch device for every cell: cpu, cuda or cuda:N (default: cpu)")
    r.add_argument("--limit-train", type=positive_int, metavar="N",
                   help="train on the first N training samples only (quick runs)")
    r.add_argument("--limit-val", type=positive_int, metavar="N", help="use the first N validation samples")
    r.add_argument("--limit-test", type=positive_int, metavar="N", help="test on the first N test samples only")
    r.add_argument("--val-split", default="auto", choices=["auto", "none"],
                   help="auto: hold out the dataset's fixed validation split (5,000 samples for MNIST and "
                        "Fashion-MNIST, 10%% elsewhere) for per-epoch validation and selection; none: train "
                        "on the whole training set (no validation)")
    r.add_argument("--select", default="last", choices=["last", "best_val"],
                   help="which epoch's model is tested: the last, or the one with the best validation accuracy "
                        "(needs the validation split)")
    r.add_argument("--curve", type=int, metavar="N",
                   help="per-epoch validation accuracy on the first N validation samples (default: all of "
                        "them; 0: only after the last epoch); kept in each row's extra.history")
    r.add_argument("--save-models", action="store_true",
                   help="keep each finished cell's trained model in OUT/models/<cell_id>.pt (see `snn-suite export`)")
    r.add_argument("--report", metavar="HTML", help="also write the HTML report here")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_run)

    t = sub.add_parser("tune", help="tune every rule of a matrix file with one budget on the validation split "
                                    "(Optuna); writes tuned.toml for run --matrix")
    t.add_argument("--matrix", required=True, metavar="FILE.toml", help="the matrix whose rules are tuned")
    t.add_argument("--out", required=True, help="folder for the studies (study.journal), trial rows and tuned.toml")
    t.add_argument("--rules", help="tune only these rules of the matrix (names or patterns)")
    t.add_argument("--trials", type=positive_int, help="trials per rule and architecture (default: the matrix's [tune])")
    t.add_argument("--epochs", type=positive_int, help="epochs per trial (default: the matrix's [tune])")
    t.add_argument("--limit-train", type=positive_int, help="training samples per trial (default: all but validation)")
    t.add_argument("--limit-val", type=positive_int, help="validation samples per trial (default: the whole split)")
    t.add_argument("--seed", type=int, help="training seed of the trials and the sampler (default 0)")
    t.add_argument("--jobs", type=positive_int, default=1,
                   help="trials run at a time, in worker processes (or Ray tasks) sharing the study journal")
    t.add_argument("--executor", default="processes", choices=["processes", "ray"],
                   help="where parallel trials run: local worker processes, or Ray tasks (workers on other "
                        "machines need the output folder on a shared file system)")
    t.add_argument("--ray-address", metavar="ADDR",
                   help="existing Ray cluster for --executor ray (default: $RAY_ADDRESS, else a local Ray "
                        "with --jobs CPUs)")
    t.add_argument("--resume", action="store_true", help="continue the studies in --out")
    t.add_argument("--data-root", help="dataset root (default $SNN_SUITE_DATA or ~/.cache/snn-suite/data)")
    t.add_argument("--device", default="cpu", help="torch device of the trials")
    t.set_defaults(func=cmd_tune)

    pl = sub.add_parser("plugins", help="list rules, datasets, archs and broken plugins")
    pl.add_argument("--json", action="store_true", help="machine-readable output")
    pl.set_defaults(func=cmd_plugins)

    rs = sub.add_parser("results", help="print result rows")
    rs.add_argument("dirs", nargs="+", metavar="PATH",
                    help="results directories (written by `run --out`) or result files (.csv, .parquet, .jsonl)")
    rs.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    rs.add_argument("--all", action="store_true", help="with --csv: every column, 'hp' and 'extra' included")
    rs.add_argument("--compare", action="store_true",
                    help="the head-to-head tables as Markdown: accuracy at T=4, T=16 and best T (chosen on "
                         "validation) with 95 %% CI, SynOps, energy, training time, paired differences")
    rs.add_argument("--depth", action="store_true",
                    help="the depth experiment as Markdown: accuracy against depth per method and network kind "
                         "(resnet family rows), gradient-norm ratios, residual minus plain and deeper minus "
                         "shallower paired by seed")
    rs.set_defaults(func=cmd_results)

    rp = sub.add_parser("report", help="write the self-contained HTML comparison report")
    rp.add_argument("dirs", nargs="+", metavar="PATH",
                    help="results directories (written by `run --out`) or result files (.csv, .parquet, .jsonl)")
    rp.add_argument("-o", "--output", default="report.html", help="the HTML file to write (default: report.html)")
    rp.add_argument("--energy", metavar="MODEL",
                    help="recompute energy with another model: 45nm_fp32 (default of the runs), 45nm_fp16, "
                         "45nm_int32, 45nm_int8 or mac=<pJ>,ac=<pJ>[,neuron=<pJ>]")
    rp.set_defaults(func=cmd_report)

    ex = sub.add_parser("export", help="write a saved model (run --save-models) as an NIR graph")
    ex.add_argument("model", help="OUT/models/<cell_id>.pt")
    ex.add_argument("-o", "--output", default="model.nir", help="the NIR file to write (default: model.nir)")
    ex.add_argument("--dt", type=float, default=1e-4,
                    help="NIR time step in seconds (default 1e-4, the step snnTorch's importer assumes)")
    ex.set_defaults(func=cmd_export)

    d = sub.add_parser("data", help="check or download datasets")
    d.add_argument("action", choices=["check", "download"],
                   help="check: verify files (structure and sha256); download: fetch the official files")
    d.add_argument("names", nargs="*", help="dataset names (default: all)")
    d.add_argument("--data-root", help="dataset root (default $SNN_SUITE_DATA or ~/.cache/snn-suite/data)")
    d.set_defaults(func=cmd_data)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "data_root", None) is None:
        args.data_root = os.environ.get("SNN_SUITE_DATA")
    if args.debug or os.environ.get("SNN_SUITE_DEBUG", "") not in ("", "0"):
        return args.func(args, create_host())
    try:
        return args.func(args, create_host())
    except (ValueError, OSError, DataError) as exc:  # UsageError, a bad file or path
        print(f"error: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished cells are kept (`run --resume` continues)", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"error: {type(exc).__name__}: {exc}".splitlines()[0]
              + " (run with --debug or SNN_SUITE_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
