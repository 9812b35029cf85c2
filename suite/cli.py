"""Command line: ``snn-suite run | plugins | results | report | data``."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from suite.host import create_host


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


def _presets(host, text: str) -> list[dict]:
    """Presets named in ``--preset``: comma-separated names or shell patterns (``'*/digits'``)."""
    import fnmatch

    out = []
    for name in (n.strip() for n in text.split(",") if n.strip()):
        if any(ch in name for ch in "*?["):
            matched = sorted(n for n in host.presets if fnmatch.fnmatchcase(n, name))
            if not matched:
                raise SystemExit(f"error: --preset {name!r} matches no preset; valid: {', '.join(sorted(host.presets))}")
            out.extend(host.preset(n) for n in matched)
        else:
            out.append(host.preset(name))
    return out


def cmd_run(args, host) -> int:
    from suite.train import Cell, run_matrix
    from suite.results import write_run_meta
    from suite.train import environment

    command = "snn-suite " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    plans = []  # (rule, dataset, arch, timesteps, epochs, options, preset)
    options = _options(args.set)
    timesteps = _ints(args.timesteps, "--timesteps") if args.timesteps else None
    if args.preset:
        # like --epochs and --batch-size, --timesteps overrides the preset's own sweep
        for p in _presets(host, args.preset):
            plans.append((p["rule"], p["dataset"], p["arch"], timesteps or tuple(p.get("timesteps") or ()) or None,
                          args.epochs if args.epochs is not None else p.get("epochs"),
                          args.batch_size or p.get("batch_size"), {**p.get("options", {}), **options}, p["name"]))
    else:
        if not args.rules:
            raise SystemExit("error: give --rules (or --preset)")
        rules = host.select_rules(args.rules)
        host.dataset(args.dataset)
        host.arch(args.arch)
        for r in rules:
            rule = host.rule(r)
            own = {k: v for k, v in options.items() if k in rule.defaults}
            plans.append((r, args.dataset, args.arch, timesteps, args.epochs, args.batch_size, own, None))
        unknown = [k for k in options if not any(k in host.rule(r).defaults for r in rules)]
        if unknown:
            valid = sorted({k for r in rules for k in host.rule(r).defaults})
            raise SystemExit(f"error: --set {', '.join(unknown)}: no selected rule has this option; "
                             f"valid: {', '.join(valid)}")
    seeds = _ints(args.seeds, "--seeds")
    if args.curve is not None and args.curve < 1:
        raise SystemExit(f"error: --curve expects a positive number of test samples, got {args.curve}")
    from suite.kernels import available_backends
    for backend in args.backend.split(","):
        if backend not in available_backends():
            raise SystemExit(f"error: unknown backend {backend!r}; valid: {', '.join(available_backends())}")
    cells = [Cell(rule=r, dataset=d, arch=a, seed=s, timesteps=ts, epochs=ep, batch_size=bs, backend=b,
                  options=tuple(sorted(opts.items())), data_root=args.data_root, limit_train=args.limit_train,
                  limit_test=args.limit_test, preset=pre, device=args.device, command=command,
                  curve=args.curve or 0)
             for (r, d, a, ts, ep, bs, opts, pre) in plans for s in seeds for b in args.backend.split(",")]
    out = Path(args.out)
    write_run_meta(out, {"command": command, "environment": environment(), "cells": len(cells)})
    rows = run_matrix(cells, out, resume=args.resume, executor=args.executor, jobs=args.jobs,
                      progress=not args.quiet and sys.stderr.isatty(), max_retries=args.max_retries,
                      ray_address=args.ray_address)
    print(f"wrote {len(rows)} rows to {out}")
    if args.report:
        from suite.reports.html import write_report
        write_report([out], Path(args.report))
        print(f"report: {args.report}")
    return 0 if all(r.get("status") in ("ok", "skipped") for r in rows) else 1


def cmd_plugins(args, host) -> int:
    rules = []
    for name, r in sorted(host.rules.items()):
        rules.append({"name": name, "paper": r.paper, "neuron": r.neuron, "encoding": r.encoding,
                      "version": r.version, "distribution": getattr(r, "distribution", "")})
    broken = [{"plugin": p.name, "module": p.module, "distribution": p.distribution, "error": p.error}
              for p in host.broken()]
    if args.json:
        print(json.dumps({"rules": rules, "broken": broken,
                          "datasets": sorted(host.datasets), "archs": sorted(host.archs),
                          "presets": sorted(host.presets)}, indent=2))
        return 0
    for r in rules:
        print(f"{r['name']:<20} {r['neuron']:<5} v{r['version']:<8} [{r['distribution']}]\n    {r['paper']}")
    print(f"\ndatasets: {', '.join(sorted(host.datasets))}")
    print(f"archs:    {', '.join(sorted(host.archs))}")
    if host.presets:
        print(f"presets:  {', '.join(sorted(host.presets))}")
    for b in broken:
        print(f"\nBROKEN plugin {b['plugin']} ({b['module']}, {b['distribution']}): {b['error']}")
    return 0


def cmd_results(args, host) -> int:
    from suite.results import COLUMNS, read_frame

    df = read_frame(*args.dirs)
    if args.csv:
        cols = [c for c in COLUMNS if c != "extra"] if not args.all else list(df.columns)
        df[cols].to_csv(sys.stdout, index=False)
    else:
        show = ["rule", "dataset", "arch", "T", "seed", "status", "accuracy", "synops", "macs", "train_time_s"]
        print(df[show].to_string(index=False) if len(df) else "(no rows)")
    return 0


def cmd_report(args, host) -> int:
    from suite.reports.html import write_report

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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="snn-suite", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="train and evaluate a matrix of rule x dataset x arch x seed cells")
    r.add_argument("--rules", help="comma-separated rule names or patterns, or 'all'")
    r.add_argument("--preset", help="paper preset(s) or patterns, e.g. surrogate_bptt_bn/mnist or '*/digits' (see `snn-suite plugins`)")
    r.add_argument("--dataset", default="digits")
    r.add_argument("--arch", default="mlp128")
    r.add_argument("--timesteps", help="comma-separated T values evaluated from one pass (default: rule's T)")
    r.add_argument("--seeds", default="0")
    r.add_argument("--epochs", type=int)
    r.add_argument("--batch-size", type=int)
    r.add_argument("--backend", default="auto",
                   help="neuron backend(s), comma-separated: auto (fastest the rule supports here: fused on "
                        "CPU, triton on CUDA), torch, fused, triton")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a rule hyper-parameter")
    r.add_argument("--out", default="results")
    r.add_argument("--data-root", help="dataset root (default $SNN_SUITE_DATA or ~/.cache/snn-suite/data)")
    r.add_argument("--resume", action="store_true", help="skip cells already finished in --out")
    r.add_argument("--executor", default="local", choices=["local", "processes", "ray"],
                   help="where cells run: this process, --jobs local processes, or Ray tasks")
    r.add_argument("--jobs", type=int, default=2, help="processes (or CPUs of a Ray started here)")
    r.add_argument("--ray-address", metavar="ADDR",
                   help="existing Ray cluster (auto, HOST:PORT or ray://HOST:10001); default: $RAY_ADDRESS, "
                        "else a local Ray with --jobs CPUs")
    r.add_argument("--max-retries", type=int, default=2,
                   help="re-runs of a cell whose worker process died (processes, ray)")
    r.add_argument("--device", default="cpu")
    r.add_argument("--limit-train", type=int)
    r.add_argument("--limit-test", type=int)
    r.add_argument("--curve", type=int, metavar="N",
                   help="also measure test accuracy on the first N test samples after every epoch "
                        "(printed, and kept in each row's extra.curve)")
    r.add_argument("--report", metavar="HTML", help="also write the HTML report here")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_run)

    pl = sub.add_parser("plugins", help="list rules, datasets, archs and broken plugins")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(func=cmd_plugins)

    rs = sub.add_parser("results", help="print result rows")
    rs.add_argument("dirs", nargs="+")
    rs.add_argument("--csv", action="store_true")
    rs.add_argument("--all", action="store_true", help="with --csv: every column, 'extra' included")
    rs.set_defaults(func=cmd_results)

    rp = sub.add_parser("report", help="write the self-contained HTML comparison report")
    rp.add_argument("dirs", nargs="+")
    rp.add_argument("-o", "--output", default="report.html")
    rp.add_argument("--energy", metavar="MODEL",
                    help="recompute energy with another model: 45nm_fp32 (default of the runs), 45nm_fp16, "
                         "45nm_int32, 45nm_int8 or mac=<pJ>,ac=<pJ>[,neuron=<pJ>]")
    rp.set_defaults(func=cmd_report)

    d = sub.add_parser("data", help="check or download datasets")
    d.add_argument("action", choices=["check", "download"])
    d.add_argument("names", nargs="*")
    d.add_argument("--data-root")
    d.set_defaults(func=cmd_data)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "data_root", None) is None:
        import os
        args.data_root = os.environ.get("SNN_SUITE_DATA")
    host = create_host()
    try:
        return args.func(args, host)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
