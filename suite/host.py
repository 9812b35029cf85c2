"""The plugin host: loads every module in the ``snn_suite`` entry-point group (built-ins are
registered there too), isolates failures, checks API versions and builds the registries.

A plugin is *broken* -- listed with the reason by ``snn-suite plugins`` and otherwise ignored,
while every other plugin loads -- when it fails to import, declares another ``SNN_SUITE_API``,
defines a hook this host does not know (a misspelt ``snn_suite_rule``), a hook with a wrong
signature, a hook that raises, returns something other than a list of the hook's items, or an
item whose name another plugin already provides. The registries are built once, when the host
is created, so a plugin contributes all of its items or none.
"""
from __future__ import annotations

import difflib
import fnmatch
import importlib
import importlib.metadata as md
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from suite import hookspecs
from suite.archs import ArchSpec
from suite.data import Dataset
from suite.hookspecs import API_VERSION
from suite.rule import Rule

GROUP = "snn_suite"
HOOK_PREFIX = "snn_suite_"


def _named(cls: type) -> Callable[[Any], str | None]:
    def check(item) -> str | None:
        if not isinstance(item, cls):
            return f"expected {cls.__module__}.{cls.__name__} instances, got {type(item).__name__}"
        if not isinstance(getattr(item, "name", None), str) or not item.name:
            return f"a {cls.__name__} without a name"
        return None
    return check


def _check_preset(item) -> str | None:
    if not isinstance(item, dict):
        return f"expected dicts, got {type(item).__name__}"
    missing = [k for k in ("name", "rule", "dataset", "arch") if not isinstance(item.get(k), str) or not item[k]]
    return f"preset {item.get('name')!r} lacks {', '.join(missing)}" if missing else None


def _check_metric(item) -> str | None:
    return None if callable(item) else f"expected callables, got {type(item).__name__}"


#: discovery hook -> (registry kind, item check returning an error or None)
HOOKS: dict[str, tuple[str, Callable[[Any], str | None]]] = {
    "snn_suite_rules": ("rule", _named(Rule)),
    "snn_suite_datasets": ("dataset", _named(Dataset)),
    "snn_suite_archs": ("architecture", _named(ArchSpec)),
    "snn_suite_presets": ("preset", _check_preset),
    "snn_suite_metrics": ("metric", _check_metric),
}


@dataclass
class PluginInfo:
    name: str            # entry-point name
    module: str          # module path
    distribution: str    # distribution that declared the entry point
    version: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Host:
    pm: pluggy.PluginManager
    plugins: list[PluginInfo] = field(default_factory=list)
    registries: dict[str, dict[str, Any]] = field(default_factory=lambda: {k: {} for k, _ in HOOKS.values()})
    _metrics: list = field(default_factory=list)

    # ----------------------------------------------------------- registries
    def _contributions(self, info: PluginInfo) -> dict[str, list]:
        """Every hook's items from one plugin, checked; raises ValueError saying what is wrong."""
        plugin = self.pm.get_plugin(info.name)
        out: dict[str, list] = {}
        for hook_name, (kind, check) in HOOKS.items():
            impl = getattr(plugin, hook_name, None)
            if impl is None:
                continue
            try:
                items = impl()
            except Exception as exc:
                raise ValueError(f"{hook_name}() raised {type(exc).__name__}: {exc}") from None
            if items is None:
                items = []
            if not isinstance(items, (list, tuple)):
                raise ValueError(f"{hook_name}() returned {type(items).__name__}; expected a list of {kind} items")
            for item in items:
                problem = check(item)
                if problem:
                    raise ValueError(f"{hook_name}() returned an invalid item: {problem}")
            out[kind] = list(items)
        return out

    def _load(self) -> None:
        origin: dict[tuple[str, str], str] = {}
        for info in self.plugins:
            if not info.ok:
                continue
            try:
                contrib = self._contributions(info)
                for kind, items in contrib.items():
                    if kind == "metric":
                        continue
                    names = [item["name"] if kind == "preset" else item.name for item in items]
                    for name in names:
                        if (kind, name) in origin or names.count(name) > 1:
                            other = origin.get((kind, name), f"{info.name} ({info.distribution})")
                            raise ValueError(f"duplicate {kind} name {name!r}: provided by plugin {other} "
                                             f"and plugin {info.name!r} ({info.distribution})")
            except ValueError as exc:
                self._mark_broken(info, str(exc))
                continue
            for kind, items in contrib.items():
                if kind == "metric":
                    self._metrics.extend(items)
                    continue
                for item in items:
                    name = item["name"] if kind == "preset" else item.name
                    if kind == "rule":
                        if not getattr(item, "version", ""):
                            item.version = info.version
                        item.distribution = info.distribution
                    self.registries[kind][name] = item
                    origin[(kind, name)] = f"{info.name!r} ({info.distribution})"

    def _mark_broken(self, info: PluginInfo, error: str) -> None:
        info.error = error
        if self.pm.get_plugin(info.name) is not None:
            self.pm.unregister(name=info.name)

    @property
    def rules(self) -> dict:
        return self.registries["rule"]

    @property
    def datasets(self) -> dict:
        return self.registries["dataset"]

    @property
    def archs(self) -> dict:
        return self.registries["architecture"]

    @property
    def presets(self) -> dict:
        return self.registries["preset"]

    def metrics(self) -> list:
        return list(self._metrics)

    # ----------------------------------------------------------- lookup
    def _get(self, registry: dict, name: str, kind: str):
        try:
            return registry[name]
        except KeyError:
            raise ValueError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(registry)) or '(none)'}") from None

    def rule(self, name: str):
        return self._get(self.rules, name, "rule")

    def dataset(self, name: str):
        return self._get(self.datasets, name, "dataset")

    def arch(self, name: str):
        return self._get(self.archs, name, "architecture")

    def preset(self, name: str):
        return self._get(self.presets, name, "preset")

    def select_rules(self, pattern: str) -> list[str]:
        """Comma-separated names or fnmatch patterns; ``all`` = every rule that runs without a
        rule-specific input (not ``nir``, which needs ``--set graph=``). Unknown names raise."""
        names = []
        for part in [p.strip() for p in pattern.split(",") if p.strip()]:
            if part == "all":
                matched = sorted(n for n, r in self.rules.items() if not getattr(r, "named_only", False))
            else:
                matched = sorted(fnmatch.filter(self.rules, part))
                if not matched:
                    self.rule(part)  # raises with the valid names
            names += [m for m in matched if m not in names]
        return names

    def unavailable_presets(self) -> dict[str, str]:
        """Presets that cannot run here, with the reason: their rule, dataset or architecture is
        not installed (its plugin is missing or broken)."""
        out = {}
        for name, p in sorted(self.presets.items()):
            missing = [f"{kind} {p[key]!r}" for key, kind, registry in
                       (("rule", "rule", self.rules), ("dataset", "dataset", self.datasets),
                        ("arch", "architecture", self.archs)) if p[key] not in registry]
            if missing:
                out[name] = f"needs {' and '.join(missing)}, not installed"
        return out

    def broken(self) -> list[PluginInfo]:
        return [p for p in self.plugins if not p.ok]


def _entry_points():
    """(entry point, distribution name, version) for the group, de-duplicated by name."""
    seen = {}
    for dist in md.distributions():
        for ep in dist.entry_points:
            if ep.group == GROUP and ep.name not in seen:
                seen[ep.name] = (ep, dist.metadata["Name"], dist.version)
    return [seen[k] for k in sorted(seen)]


def _hook_names() -> list[str]:
    return sorted(n for n in vars(hookspecs) if n.startswith(HOOK_PREFIX))


def _unknown_hooks(plugin) -> str | None:
    """A plugin function named like a hook this host does not define (a misspelling, or a hook
    of a newer host): the plugin would silently contribute nothing, so it is refused."""
    known = _hook_names()
    unknown = sorted(n for n in dir(plugin) if n.startswith(HOOK_PREFIX) and n not in known
                     and callable(getattr(plugin, n, None)))
    if not unknown:
        return None
    hints = []
    for n in unknown:
        close = difflib.get_close_matches(n, known, n=1)
        hints.append(f"{n}()" + (f" (did you mean {close[0]}?)" if close else ""))
    return f"unknown hook {', '.join(hints)}; this host's hooks: {', '.join(known)}"


def _register(pm: pluggy.PluginManager, plugin, name: str) -> str | None:
    """Register ``plugin``; the reason it cannot be, or None."""
    problem = _unknown_hooks(plugin)
    if problem:
        return problem
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:  # a hook whose arguments the spec does not have
        return f"wrong hook signature: {exc}"
    except Exception as exc:
        return f"registration failed: {type(exc).__name__}: {exc}"
    # a hook implementation renamed with @hookimpl(specname=...) to a name the contract lacks
    unspecified = [c.name for c in pm.get_hookcallers(plugin) or [] if not c.has_spec()]
    if unspecified:
        pm.unregister(name=name)
        return f"unknown hook {', '.join(unspecified)}; this host's hooks: {', '.join(_hook_names())}"
    return None


def create_host(extra_plugins: list[tuple[str, object]] | None = None) -> Host:
    """Load every entry point of group ``snn_suite`` plus ``extra_plugins`` and build the
    registries. A plugin that cannot take part (see the module docstring) is recorded as broken
    with the reason, and the others still load: nothing a plugin does makes this raise."""
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    host = Host(pm)
    candidates = [(ep.name, ep.value, dist, ver, ep.load) for ep, dist, ver in _entry_points()]
    for name, obj in extra_plugins or []:
        candidates.append((name, getattr(obj, "__name__", repr(obj)), "(registered in code)", "", lambda o=obj: o))
    for name, value, dist, ver, load in candidates:
        info = PluginInfo(name, value, dist, ver)
        host.plugins.append(info)
        try:
            plugin = load()
        except (Exception, SystemExit) as exc:
            info.error = f"import failed: {type(exc).__name__}: {exc}"
            continue
        api = getattr(plugin, "SNN_SUITE_API", API_VERSION)
        if api != API_VERSION:
            info.error = f"incompatible plugin API version {api} (this host speaks version {API_VERSION})"
            continue
        info.error = _register(pm, plugin, name)
    pm.check_pending()  # cannot raise: every hook without a spec was refused above
    host._load()
    return host


def load_module_plugin(path: str):
    """Import a plugin module by dotted path (used by tests and ``--plugin``)."""
    return importlib.import_module(path)
