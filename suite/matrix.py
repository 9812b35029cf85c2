"""Matrices: what ``snn-suite run`` trains, declared once and expanded into :class:`~suite.train.Cell` s.

The command line (``--rules``/``--preset`` with ``--dataset``, ``--arch``, ...) and a matrix file
(``--matrix FILE.toml``) both become a :class:`Matrix`, so there is one path from what a user asks
for to the cells an executor runs. A matrix file::

    name = "digits"
    datasets = ["digits"]
    archs = ["mlp128", "convnet"]
    seeds = [0, 1, 2]
    timesteps = [1, 2, 4, 8, 16, 32]                   # evaluated from one pass
    epochs = 20                                        # one budget for every rule
    select = "best_val"                                # test each run's best validation epoch (or "last")
    backends = ["auto"]

    [rules.surrogate_bptt_bn]                          # one table per rule; empty: the rule's defaults

    [rules.lee_bp]                                     # per-rule overrides
    timesteps = [4, 8, 16, 32, 64]
    batch_size = 16
    options = { T = 20, lr = 3e-3 }                    # the rule's hyper-parameters (its defaults' names)

    [rules.lee_bp.archs.mlp128]                        # ... and per architecture (what `tune` writes)
    options = { lr = 2.5e-3 }

    [tune]                                             # read by `snn-suite tune` only
    trials = 12
    epochs = 10

Without overrides, ``rules = ["surrogate_bptt_bn", "lee_bp"]`` (or ``"all"``) lists the rules instead
of the tables (TOML allows one or the other), and ``presets = ["lee_bp/digits"]`` adds presets.
A bad key or value is an error naming it and its line. The file's text and its sha256 go into the
run's ``runs.jsonl``, so a results folder says exactly which matrix made it.
"""
from __future__ import annotations

import fnmatch
import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOP_KEYS = {"name", "description", "rules", "presets", "datasets", "archs", "seeds", "timesteps", "epochs",
            "batch_size", "backends", "val_split", "select", "limit_train", "limit_val", "limit_test", "tune"}
RULE_KEYS = {"timesteps", "epochs", "batch_size", "options", "archs", "note"}
ARCH_KEYS = {"timesteps", "batch_size", "options", "note"}
TUNE_KEYS = {"trials", "epochs", "limit_train", "limit_val", "seed", "timesteps", "note"}


class MatrixError(ValueError):
    """A matrix file (or option) is invalid; the message names the file, the key and its line."""


@dataclass(frozen=True)
class Entry:
    """One rule (or preset) on one dataset and architecture, before seeds and backends."""

    rule: str
    dataset: str
    arch: str
    timesteps: tuple[int, ...] | None = None
    epochs: int | None = None
    batch_size: int | None = None
    options: tuple[tuple[str, Any], ...] = ()
    preset: str | None = None


@dataclass
class Matrix:
    entries: list[Entry]
    seeds: tuple[int, ...] = (0,)
    backends: tuple[str, ...] = ("auto",)
    val_split: str = "auto"
    select: str = "last"                # "best_val": each run tests its best validation epoch
    limit_train: int | None = None
    limit_val: int | None = None
    limit_test: int | None = None
    name: str = ""
    tune: dict = field(default_factory=dict)
    source: dict | None = None          # {"path", "sha256", "text"} of a matrix file

    def cells(self, *, data_root=None, device: str = "cpu", command: str = "", curve: int | None = None) -> list:
        from suite.train import Cell

        return [Cell(rule=e.rule, dataset=e.dataset, arch=e.arch, seed=s, timesteps=e.timesteps, epochs=e.epochs,
                     batch_size=e.batch_size, backend=b, options=e.options, data_root=data_root,
                     limit_train=self.limit_train, limit_test=self.limit_test, limit_val=self.limit_val,
                     val_split=self.val_split, select=self.select, preset=e.preset, device=device, command=command, curve=curve)
                for e in self.entries for s in self.seeds for b in self.backends]

    def meta(self) -> dict:
        """What ``runs.jsonl`` records of the matrix."""
        return {"matrix": self.source} if self.source else {}

    def narrow(self, host, *, rules: str | None = None, datasets: str | None = None,
               archs: str | None = None) -> None:
        """Keep only the entries of these rules (names or patterns), datasets and architectures
        (comma-separated names): a part of a declared matrix, e.g. its conv-net cells on another
        machine. The cells kept are the file's own (same ids), so ``--resume`` mixes freely."""
        where = (self.source or {}).get("path", "the matrix")
        keep_rules = set(host.select_rules(rules)) if rules else None
        for option, text, have in (("--dataset", datasets, {e.dataset for e in self.entries}),
                                   ("--arch", archs, {e.arch for e in self.entries})):
            for name in _csv(text):
                if name not in have:
                    raise MatrixError(f"{option} {name!r}: not in {where} (it has {', '.join(sorted(have))})")
        keep_datasets, keep_archs = set(_csv(datasets)) or None, set(_csv(archs)) or None
        entries = [e for e in self.entries
                   if (keep_rules is None or e.rule in keep_rules)
                   and (keep_datasets is None or e.dataset in keep_datasets)
                   and (keep_archs is None or e.arch in keep_archs)]
        if not entries:
            given = " ".join(f"{o} {v!r}" for o, v in (("--rules", rules), ("--dataset", datasets), ("--arch", archs)) if v)
            raise MatrixError(f"{given} selects no cell of {where}")
        self.entries = entries


def _csv(text: str | None) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


# ------------------------------------------------------------------ file
def load_matrix(path, host) -> Matrix:
    """Read and check a matrix file against the host's rules, datasets, archs and presets."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise MatrixError(f"{path}: cannot read matrix file ({exc.strerror or exc})") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MatrixError(f"{path}: not valid TOML: {exc}") from None
    return parse_matrix(doc, host, _Where(path, text))


class _Where:
    """Names a key of the file with its line, for error messages."""

    def __init__(self, path: Path, text: str):
        self.path, self.lines = path, text.splitlines()
        self.text = text

    def line(self, key: str, table: str | None = None) -> int | None:
        """The line of ``key`` (within ``table`` where given), else of the table's header."""
        start = header_line = 0
        if table:
            header = re.compile(r"^\s*\[\s*" + r"\s*\.\s*".join(
                r'(?:"?%s"?)' % re.escape(p) for p in table.split(".")) + r"\s*\]")
            header_line = next((i + 1 for i, ln in enumerate(self.lines) if header.match(ln)), 0)
            start = header_line
        pat = re.compile(r'(^|[\s{,])"?' + re.escape(key) + r'"?\s*=')
        for i in range(start, len(self.lines)):
            if table and i > start and self.lines[i].lstrip().startswith("["):
                break
            if pat.search(self.lines[i].split("#", 1)[0]):
                return i + 1
        return header_line or None

    def error(self, key: str, message: str, table: str | None = None) -> MatrixError:
        n = self.line(key.rsplit(".", 1)[-1], table)
        where = f"{self.path}:{n}" if n else str(self.path)
        return MatrixError(f"{where}: {key}: {message}")


def parse_matrix(doc: dict, host, where: _Where) -> Matrix:
    from suite.kernels import available_backends

    for key in doc:
        if key not in TOP_KEYS:
            raise where.error(key, f"unknown key; valid keys: {', '.join(sorted(TOP_KEYS))}")
    name = _typed(doc, "name", str, where, default="")
    datasets = _names(doc, "datasets", host.datasets, where, "dataset")
    archs = _names(doc, "archs", host.archs, where, "architecture")
    seeds = tuple(_int_list(doc, "seeds", where, minimum=0, default=[0]))
    timesteps = _int_list(doc, "timesteps", where, minimum=1)
    epochs = _int(doc, "epochs", where, minimum=1)
    batch_size = _int(doc, "batch_size", where, minimum=1)
    backends = tuple(_typed(doc, "backends", list, where, default=["auto"]))
    for b in backends:
        if b not in available_backends():
            raise where.error("backends", f"unknown backend {b!r}; valid: {', '.join(available_backends())}")
    val_split = _typed(doc, "val_split", str, where, default="auto")
    if val_split not in ("auto", "none"):
        raise where.error("val_split", f"expected 'auto' (the dataset's validation split) or 'none', got {val_split!r}")
    select = _typed(doc, "select", str, where, default="last")
    if select not in ("last", "best_val"):
        raise where.error("select", f"expected 'last' (the last epoch) or 'best_val' (the best validation epoch), "
                                    f"got {select!r}")
    limits = {k: _int(doc, k, where, minimum=1) for k in ("limit_train", "limit_val", "limit_test")}

    rule_tables = _typed(doc, "rules", (list, str, dict), where, default=[])
    # "rules" is either the list of rules or their [rules.X] tables (TOML allows one or the other)
    if isinstance(rule_tables, dict):
        rule_names, overrides = list(rule_tables), rule_tables
    else:
        rule_names, overrides = rule_tables, {}
    if rule_names == "all":
        rule_names = sorted(host.rules)
    elif isinstance(rule_names, str):
        rule_names = host.select_rules(rule_names)
    for r in rule_names:
        if r not in host.rules:
            raise where.error("rules", f"unknown rule {r!r}; installed: {', '.join(sorted(host.rules))}",
                              table=f"rules.{r}" if r in overrides else None)
    presets = _typed(doc, "presets", list, where, default=[])
    if not rule_names and not presets:
        raise where.error("rules", "the matrix names no rules and no presets")
    if rule_names and (not datasets or not archs):
        raise where.error("datasets" if not datasets else "archs", "needed with rules (list at least one)")

    entries = []
    for r in rule_names:
        rule = host.rule(r)
        over = overrides.get(r, {})
        table = f"rules.{r}"
        if not isinstance(over, dict):
            raise where.error(table, "expected a table of overrides")
        for key in over:
            if key not in RULE_KEYS:
                raise where.error(f"{table}.{key}", f"unknown key; valid: {', '.join(sorted(RULE_KEYS))}", table)
        base_opts = _options(rule, over.get("options", {}), where, f"{table}.options", table)
        arch_over = over.get("archs", {})
        for a in arch_over:
            if a not in archs:
                raise where.error(f"{table}.archs.{a}", f"architecture not in this matrix's archs ({', '.join(archs)})",
                                  table)
        for d in datasets:
            for a in archs:
                ao = arch_over.get(a, {})
                atable = f"{table}.archs.{a}"
                for key in ao:
                    if key not in ARCH_KEYS:
                        raise where.error(f"{atable}.{key}", f"unknown key; valid: {', '.join(sorted(ARCH_KEYS))}",
                                          atable)
                opts = {**base_opts, **_options(rule, ao.get("options", {}), where, f"{atable}.options", atable)}
                ts = (_int_list(ao, "timesteps", where, minimum=1, table=atable)
                      or _int_list(over, "timesteps", where, minimum=1, table=table) or timesteps)
                entries.append(Entry(
                    rule=r, dataset=d, arch=a, timesteps=tuple(ts) if ts else None,
                    epochs=_int(over, "epochs", where, minimum=1, table=table) or epochs,
                    batch_size=(_int(ao, "batch_size", where, minimum=1, table=atable)
                                or _int(over, "batch_size", where, minimum=1, table=table) or batch_size),
                    options=tuple(sorted(opts.items()))))
    # network-major order: a partly finished run holds every method on the first networks, a complete
    # comparison there, rather than every network of the first methods
    entries.sort(key=lambda e: (datasets.index(e.dataset), archs.index(e.arch)))
    for pname in presets:
        try:
            p = host.preset(pname)
        except ValueError as exc:
            raise where.error("presets", str(exc)) from None
        entries.append(preset_entry(p, timesteps=tuple(timesteps) if timesteps else None, epochs=epochs,
                                    batch_size=batch_size))
    tune = _typed(doc, "tune", dict, where, default={})
    for key in tune:
        if key not in TUNE_KEYS:
            raise where.error(f"tune.{key}", f"unknown key; valid: {', '.join(sorted(TUNE_KEYS))}", "tune")
    for key in ("trials", "epochs", "limit_train", "limit_val"):
        _int(tune, key, where, minimum=1, table="tune")
    source = {"path": str(where.path), "sha256": hashlib.sha256(where.text.encode()).hexdigest(), "text": where.text}
    return Matrix(entries=entries, seeds=seeds, backends=backends, val_split=val_split, select=select, name=name,
                  tune=tune,
                  source=source, **limits)


def preset_entry(p: dict, *, timesteps=None, epochs=None, batch_size=None, options: dict | None = None) -> Entry:
    """A preset as a matrix entry; ``timesteps``, ``epochs``, ``batch_size`` and ``options`` override its own."""
    return Entry(rule=p["rule"], dataset=p["dataset"], arch=p["arch"],
                 timesteps=timesteps or tuple(p.get("timesteps") or ()) or None,
                 epochs=epochs if epochs is not None else p.get("epochs"),
                 batch_size=batch_size or p.get("batch_size"),
                 options=tuple(sorted({**p.get("options", {}), **(options or {})}.items())), preset=p["name"])


def select_presets(host, text: str) -> list[dict]:
    """Presets named in ``--preset``: comma-separated names or shell patterns (``'*/digits'``)."""
    out = []
    for name in (n.strip() for n in text.split(",") if n.strip()):
        if any(ch in name for ch in "*?["):
            matched = sorted(n for n in host.presets if fnmatch.fnmatchcase(n, name))
            if not matched:
                raise MatrixError(f"--preset {name!r} matches no preset; valid: {', '.join(sorted(host.presets))}")
            out.extend(host.preset(n) for n in matched)
        else:
            out.append(host.preset(name))
    return out


# ------------------------------------------------------------------ typed values
def _typed(doc: dict, key: str, types, where: _Where, default=None, table: str | None = None):
    if key not in doc:
        return default
    v = doc[key]
    if not isinstance(v, types) or (types is int and isinstance(v, bool)):
        want = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise where.error(f"{table}.{key}" if table else key, f"expected {want}, got {v!r}", table)
    return v


def _int(doc, key, where, minimum=None, table=None):
    v = _typed(doc, key, int, where, table=table)
    if v is not None and minimum is not None and v < minimum:
        raise where.error(f"{table}.{key}" if table else key, f"expected an integer >= {minimum}, got {v}", table)
    return v


def _int_list(doc, key, where, minimum=None, default=None, table=None):
    v = _typed(doc, key, list, where, default=default, table=table)
    if v is None:
        return None
    if not v or any(not isinstance(i, int) or isinstance(i, bool) or (minimum is not None and i < minimum) for i in v):
        raise where.error(f"{table}.{key}" if table else key,
                          f"expected a non-empty list of integers >= {minimum}, got {v!r}", table)
    return list(v)


def _names(doc, key, registry, where, what):
    v = _typed(doc, key, list, where, default=[])
    for n in v:
        if n not in registry:
            raise where.error(key, f"unknown {what} {n!r}; installed: {', '.join(sorted(registry))}")
    return list(v)


def _options(rule, opts, where: _Where, key: str, table: str) -> dict:
    """Options from a TOML table, type-checked against the rule's defaults."""
    if not isinstance(opts, dict):
        raise where.error(key, "expected a table such as { lr = 1e-3 }", table)
    out = {}
    for k, v in opts.items():
        if k not in rule.defaults:
            raise where.error(f"{key}.{k}", f"rule {rule.name!r} has no such option; valid: "
                                            f"{', '.join(sorted(rule.defaults))}", table)
        try:
            out[k] = coerce_option(rule, k, v)
        except ValueError as exc:
            raise where.error(f"{key}.{k}", str(exc), table) from None
    return out


def coerce_option(rule, key: str, value):
    """A typed value (TOML, a tuned trial) checked against the type of the rule's default."""
    d = rule.defaults[key]
    if isinstance(d, bool):
        ok = isinstance(value, bool)
    elif isinstance(d, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(d, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(d, (tuple, list)):
        ok = isinstance(value, (list, tuple))
        value = tuple(value) if ok else value
    elif isinstance(d, str):
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        raise ValueError(f"expected a value like the default {d!r} ({type(d).__name__}), got {value!r}")
    return value
