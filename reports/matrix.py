"""One cell of the tox benchmark matrix: ``python -m suite.reports.matrix bench-<rule>-<dataset>-<backend>``.

tox's ``bench-{rule}-{dataset}-{backend}`` environments call this with their own name; it runs
``snn-suite run`` for that rule, dataset and backend into the shared ``--out`` directory with
``--resume`` (a finished cell is not re-run). Where the rule has a preset for the dataset
(``<rule>/<dataset>``) that preset is used; otherwise the dataset's default architecture and
time steps below. Any further arguments are passed on to ``snn-suite run`` (e.g. ``--seeds 0,1,2
--epochs 2 --limit-train 5000``; ``--arch`` or ``--timesteps`` there replace the preset).
"""
from __future__ import annotations

import sys

#: short dataset factors accepted in environment names
DATASET_ALIASES = {"fmnist": "fashion_mnist", "fashion": "fashion_mnist"}
#: architecture and time steps where a rule has no preset for the dataset
DATASET_DEFAULTS = {
    "digits": ("mlp128", "1,2,4,8"),
    "mnist": ("fc800", "1,2,4,8"),
    "fashion_mnist": ("mlp400x2", "1,2,4,8"),
    "nmnist": ("convnet", "4,8,16"),
}


def parse_env_name(name: str) -> tuple[str, str, str]:
    """``bench-<rule>-<dataset>-<backend>`` -> ``(rule, dataset, backend)``; rule names use ``_``."""
    parts = name.split("-")
    if len(parts) != 4 or parts[0] != "bench" or not all(parts[1:]):
        raise SystemExit(f"error: matrix environment {name!r} is not bench-<rule>-<dataset>-<backend>, "
                         "e.g. bench-surrogate_bptt_bn-digits-torch")
    _, rule, dataset, backend = parts
    return rule, DATASET_ALIASES.get(dataset, dataset), backend


def run_arguments(name: str, extra: list[str], host=None) -> list[str]:
    """The ``snn-suite`` argument list for matrix environment ``name`` plus ``extra``."""
    if host is None:
        from suite.host import create_host
        host = create_host()
    rule, dataset, backend = parse_env_name(name)
    if rule not in host.rules:
        raise SystemExit(f"error: no rule {rule!r} is installed (matrix environment {name}); installed: "
                         f"{', '.join(sorted(host.rules))}")
    if dataset not in host.datasets:
        raise SystemExit(f"error: no dataset {dataset!r} (matrix environment {name}); valid: "
                         f"{', '.join(sorted(host.datasets))} (aliases: {', '.join(sorted(DATASET_ALIASES))})")
    preset = f"{rule}/{dataset}"
    explicit = any(a.split("=")[0] in ("--arch", "--timesteps", "--preset", "--rules") for a in extra)
    if preset in host.presets and not explicit:
        args = ["run", "--preset", preset]
    else:
        arch, timesteps = DATASET_DEFAULTS.get(dataset, ("mlp128", "1,2,4,8"))
        args = ["run", "--rules", rule, "--dataset", dataset, "--arch", arch]
        if host.rules[rule].temporal:
            args += ["--timesteps", timesteps]
    return args + ["--backend", backend, "--resume", "--quiet", *extra]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        raise SystemExit("usage: python -m suite.reports.matrix bench-<rule>-<dataset>-<backend> [snn-suite run args]")
    from suite.cli import main as cli_main
    from suite.host import create_host

    args = run_arguments(argv[0], argv[1:], create_host())
    print("snn-suite " + " ".join(args), flush=True)
    sys.argv = ["snn-suite", *args]  # runs.jsonl records the equivalent snn-suite command
    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
