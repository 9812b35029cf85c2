"""Checks of what a user typed, made before any cell starts: option values, rule
hyper-parameters, the device, the data files and the optional packages a choice needs.

Every failure is a :class:`UsageError` with a one-line message that names the option (or the
file) and what was expected; the command line prints it without a traceback.
"""
from __future__ import annotations

import argparse
import importlib.util
import os

from suite.data import DataError
from suite.rule import check_options


class UsageError(ValueError):
    """A mistake in the command line, a matrix or the environment, not a bug."""


def _int_at_least(minimum: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value
    parse.__name__ = what  # argparse names the type in its own messages
    return parse


#: argparse ``type=`` for counts: epochs, batch size, jobs, sample limits
positive_int = _int_at_least(1, "a positive integer")
#: argparse ``type=`` for retries
non_negative_int = _int_at_least(0, "an integer >= 0")


def require(module: str, extra: str, purpose: str) -> None:
    """Raise naming the extra to install when ``module`` is missing."""
    if importlib.util.find_spec(module) is None:
        raise UsageError(f"{purpose} needs the Python package {module!r}, which is not installed; "
                         f"install it with: pip install 'snn-suite[{extra}]'")


def check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {device!r}: expected cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: CUDA is not available on this machine "
                             f"(torch {torch.__version__}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    elif dev.type != "cpu":
        raise UsageError(f"--device {device!r}: expected cpu, cuda or cuda:N")


def check_backends(backends: list[str]) -> None:
    from suite.kernels import available_backends, unavailable_reason

    for backend in backends:
        if backend not in available_backends():
            raise UsageError(f"--backend {backend!r}: unknown backend; valid: {', '.join(available_backends())}")
        reason = None if backend == "auto" else unavailable_reason(backend)
        if reason is not None:
            raise UsageError(f"--backend {backend}: cannot run on this machine ({reason})")


def check_rule_options(host, plans) -> None:
    """Each planned cell's hyper-parameters (a preset's, then ``--set``'s) parse against its rule."""
    for rule_name, options, preset in plans:
        try:
            check_options(host.rule(rule_name), options)
        except ValueError as exc:
            where = f"preset {preset!r} or --set" if preset else "--set"
            raise UsageError(f"{where}: {exc}") from None


def check_data(host, datasets, root) -> None:
    """Every dataset's files are present and intact under the data root."""
    for name in sorted(set(datasets)):
        try:
            host.dataset(name).verify_files(root)
        except DataError as exc:
            raise UsageError(f"dataset {name!r}: {exc}") from None


def read_nonempty(paths):
    """The rows of results directories or files as a frame; raises when there are none."""
    from suite.results import read_frame

    df = read_frame(*paths)
    if not len(df):
        raise UsageError(f"no result rows found in {', '.join(map(str, paths))} (expected cells/*.jsonl "
                         "written by `snn-suite run --out DIR`, or a .csv, .parquet or .jsonl file of rows)")
    return df


def runs_remotely(executor: str, ray_address: str | None) -> bool:
    """Cells run on an existing Ray cluster, whose devices and files this machine cannot see."""
    return executor == "ray" and bool(ray_address or os.environ.get("RAY_ADDRESS"))


def check_cells(host, cells, *, executor: str = "local", ray_address: str | None = None) -> None:
    """Everything ``snn-suite run`` can know to be wrong before the first of ``cells`` starts."""
    unavailable = host.unavailable_presets()
    for preset in sorted({c.preset for c in cells if c.preset in unavailable}):
        raise UsageError(f"--preset {preset}: {unavailable[preset]} (see `snn-suite plugins`)")
    check_rule_options(host, [(c.rule, dict(c.options), c.preset) for c in cells])
    if executor == "ray":
        require("ray", "ray", "--executor ray")
    if any(c.rule == "nir" for c in cells):
        require("nirtorch", "nir", "rule 'nir'")
    if runs_remotely(executor, ray_address):
        if any(c.save_models for c in cells):
            raise UsageError("--save-models writes OUT/models on this machine, which cells on a remote Ray cluster "
                             "cannot reach; use --executor local or processes to keep the models")
        return
    for device in sorted({c.device for c in cells}):
        check_device(device)
    check_backends(sorted({c.backend for c in cells}))
    for root in {c.data_root for c in cells}:
        check_data(host, [c.dataset for c in cells if c.data_root == root], root)
