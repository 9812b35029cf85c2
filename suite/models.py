"""Saved models: one finished cell's trained network with the recipe that rebuilds it.

``snn-suite run ... --save-models`` writes ``OUT/models/<cell_id>.pt`` when a cell finishes (and
``--resume`` re-runs a finished cell whose model file is missing). The file is a plain
``torch.save`` dict that ``torch.load(..., weights_only=True)`` reads -- no pickled classes, so a
file from an untrusted source cannot run code on load:

* ``format`` / ``format_version`` -- ``"snn-suite-model"`` / :data:`FORMAT_VERSION`;
* ``rule``, ``plugin_version``, ``suite_version`` -- who trained it;
* ``arch`` -- name, spec string (the papers' notation) and family, so a sequential architecture
  is rebuilt from the file alone, even one a plugin that is no longer installed registered;
* ``dataset``, ``input_shape``, ``n_classes``, ``encoding``, ``hp`` (every resolved
  hyper-parameter), ``backend`` (the one that ran), ``train_T``, ``timesteps``, ``seed``,
  ``cell_id``, ``config_hash``, ``cell`` (the cell's identity), ``selected_epoch`` (the epoch whose
  weights these are: the last, or the best validation epoch with ``select = best_val``);
* ``state_dict`` -- the trained parameters and buffers.

:func:`load_model` rebuilds the network with the rule's own ``build`` and loads the weights.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

import suite
from suite.results import write_atomic

FORMAT = "snn-suite-model"
FORMAT_VERSION = 1


class ModelFileError(ValueError):
    """A model file that is missing, unreadable or not a snn-suite model; the message names it."""


def model_path(out_dir: Path, cell_id: str) -> Path:
    return Path(out_dir) / "models" / f"{cell_id}.pt"


def _plain(value: Any) -> Any:
    """Hyper-parameters as builtins only (tuples kept), so the file loads with weights_only=True."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def recipe(cell, rule, arch, dataset, hp: dict, backend: str, train_T, timesteps, encoding: str,
           selected_epoch: int | None = None) -> dict:
    """Everything but the weights: what :func:`load_model` needs to rebuild the network."""
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "rule": rule.name, "plugin_version": rule.version, "suite_version": suite.__version__,
        "arch": {"name": arch.name, "spec": arch.spec, "family": arch.family},
        "dataset": dataset.name, "input_shape": [int(d) for d in dataset.input_shape],
        "n_classes": int(dataset.n_classes), "data_kind": dataset.kind, "encoding": encoding,
        "hp": _plain(hp), "backend": backend, "train_T": train_T,
        "timesteps": [int(t) for t in timesteps], "seed": int(cell.seed), "cell_id": cell.cell_id,
        "selected_epoch": selected_epoch,
        "config_hash": cell.config_hash, "cell": _plain(cell.config()),
    }


def save_model(path: Path, model: nn.Module, info: dict) -> Path:
    """Write ``info`` (see :func:`recipe`) and the model's weights to ``path`` atomically."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    buf = io.BytesIO()  # saved from memory, the archive is not named after the temporary file: same model, same bytes
    torch.save({**info, "state_dict": state}, buf)
    return write_atomic(path, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))


def save_model_of_cell(ckpt: Path | None, rows: list[dict], cell, rule, arch, dataset, hp: dict, model: nn.Module,
                       base: dict, train_T, timesteps) -> Path:
    """The training loop's call at the end of a cell: the model goes to ``OUT/models`` beside
    ``OUT/checkpoints`` (``ckpt`` is ``OUT/checkpoints/<cell_id>.pt``) and every row records the path."""
    if ckpt is None:
        raise ValueError("--save-models needs the run's output directory on the machine that trains the cell "
                         "(cells sent to an external Ray cluster cannot write OUT/models here)")
    path = save_model(model_path(Path(ckpt).parent.parent, cell.cell_id), model,
                      recipe(cell, rule, arch, dataset, hp, base["backend"], train_T, timesteps, base["encoding"],
                             base.get("selected_epoch")))
    for row in rows:
        row["model_path"] = str(path)
    return path


def read_model_file(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file (expected OUT/models/<cell_id>.pt written by "
                             "`snn-suite run ... --save-models`)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelFileError(f"{path}: not a readable snn-suite model file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a snn-suite model file (expected a dict with format={FORMAT!r}, "
                             "as `snn-suite run ... --save-models` writes)")
    if int(data.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelFileError(f"{path}: model format_version {data['format_version']} is newer than this "
                             f"suite's {FORMAT_VERSION}; upgrade snn-suite")
    return data


def _arch(info: dict, host):
    from suite.archs import ArchSpec

    a = info["arch"]
    if a.get("family", "sequential") == "sequential" and a.get("spec"):
        return ArchSpec(a["name"], a["spec"], family="sequential")
    return host.arch(a["name"])


def load_model(path, host=None, backend: str | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the network of a saved model (in eval mode) and return ``(model, info)``.

    ``backend`` overrides the neuron backend recorded in the file (e.g. ``"torch"`` on a machine
    without Triton); the dynamics are the same on every backend."""
    info = read_model_file(path)
    if host is None:
        from suite.host import create_host
        host = create_host()
    try:
        rule = host.rule(info["rule"])
    except (KeyError, ValueError) as exc:
        raise ModelFileError(f"{path}: trained by rule {info['rule']!r}, which is not installed here ({exc})") from exc
    model = rule.build(_arch(info, host), tuple(info["input_shape"]), int(info["n_classes"]),
                       backend or info["backend"], dict(info["hp"]))
    try:
        model.load_state_dict(info["state_dict"])
    except RuntimeError as exc:
        raise ModelFileError(f"{path}: the weights do not fit the network rule {info['rule']!r} "
                             f"v{rule.version} builds (saved by v{info.get('plugin_version')}): {exc}") from exc
    model.eval()
    return model, info


__all__ = ["FORMAT", "FORMAT_VERSION", "ModelFileError", "model_path", "recipe", "save_model", "load_model",
           "read_model_file", "write_atomic"]
