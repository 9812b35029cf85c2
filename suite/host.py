"""The plugin host: loads every module in the ``snn_suite`` entry-point group (built-ins are
registered there too), isolates failures, checks API versions and builds the registries."""
from __future__ import annotations

import fnmatch
import importlib
import importlib.metadata as md
from dataclasses import dataclass, field
from typing import Any

import pluggy

from suite import hookspecs
from suite.hookspecs import API_VERSION

GROUP = "snn_suite"


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
    _rules: dict | None = None
    _datasets: dict | None = None
    _archs: dict | None = None
    _presets: dict | None = None

    # ----------------------------------------------------------- registries
    def _collect(self, hook_name: str, kind: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        origin: dict[str, str] = {}
        for info in self.plugins:
            if not info.ok:
                continue
            plugin = self.pm.get_plugin(info.name)
            impl = getattr(plugin, hook_name, None)
            if impl is None:
                continue
            try:
                items = impl() or []
            except Exception as exc:  # a plugin that crashes while listing is reported, others go on
                info.error = f"{hook_name}() raised {type(exc).__name__}: {exc}"
                continue
            for item in items:
                name = item["name"] if isinstance(item, dict) else item.name
                if name in out:
                    raise ValueError(f"duplicate {kind} name {name!r}: provided by plugin {origin[name]!r} "
                                     f"and plugin {info.name!r} ({info.distribution})")
                if kind == "rule" and not getattr(item, "version", ""):
                    item.version = info.version
                if kind == "rule":
                    item.distribution = info.distribution
                out[name] = item
                origin[name] = f"{info.name} ({info.distribution})"
        return out

    @property
    def rules(self) -> dict:
        if self._rules is None:
            self._rules = self._collect("snn_suite_rules", "rule")
        return self._rules

    @property
    def datasets(self) -> dict:
        if self._datasets is None:
            self._datasets = self._collect("snn_suite_datasets", "dataset")
        return self._datasets

    @property
    def archs(self) -> dict:
        if self._archs is None:
            self._archs = self._collect("snn_suite_archs", "architecture")
        return self._archs

    @property
    def presets(self) -> dict:
        if self._presets is None:
            self._presets = self._collect("snn_suite_presets", "preset")
        return self._presets

    def metrics(self) -> list:
        return [m for ms in self.pm.hook.snn_suite_metrics() for m in (ms or [])]

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
        """Comma-separated names or fnmatch patterns; ``all`` = every rule. Unknown names raise."""
        names = []
        for part in [p.strip() for p in pattern.split(",") if p.strip()]:
            if part == "all":
                matched = sorted(self.rules)
            else:
                matched = sorted(fnmatch.filter(self.rules, part))
                if not matched:
                    self.rule(part)  # raises with the valid names
            names += [m for m in matched if m not in names]
        return names

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


def create_host(extra_plugins: list[tuple[str, object]] | None = None) -> Host:
    """Load every entry point of group ``snn_suite``; a plugin that fails to import or declares
    an incompatible ``SNN_SUITE_API`` is recorded as broken and the others still load."""
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
        except Exception as exc:
            info.error = f"import failed: {type(exc).__name__}: {exc}"
            continue
        api = getattr(plugin, "SNN_SUITE_API", API_VERSION)
        if api != API_VERSION:
            info.error = f"incompatible plugin API version {api} (this host speaks version {API_VERSION})"
            continue
        try:
            pm.register(plugin, name=name)
        except Exception as exc:  # e.g. pluggy.PluginValidationError for a bad hook signature
            info.error = f"registration failed: {type(exc).__name__}: {exc}"
    pm.check_pending()
    return host


def load_module_plugin(path: str):
    """Import a plugin module by dotted path (used by tests and ``--plugin``)."""
    return importlib.import_module(path)
