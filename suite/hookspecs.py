"""The plugin contract of snn-suite.

A plugin is a plain module (or object) with functions marked ``@suite.hookimpl``. The host
loads every module registered under the entry-point group ``snn_suite`` -- built-ins and
third-party packages alike -- and calls these hooks. Each discovery hook returns a list so
that one module may contribute several items.

A plugin may declare ``SNN_SUITE_API = <int>``; the host refuses (and lists as broken)
plugins whose declared major API version differs from :data:`API_VERSION`.

This module imports nothing from the suite: the modules that define the items (rule, data,
archs) import it, never the other way round.
"""
from __future__ import annotations

import pluggy

#: Major version of this contract. Bumped on incompatible changes to the hooks or to ``Rule``.
API_VERSION = 1

hookspec = pluggy.HookspecMarker("snn_suite")
hookimpl = pluggy.HookimplMarker("snn_suite")


# -------------------------------------------------------------------------
# Discovery
# -------------------------------------------------------------------------


@hookspec
def snn_suite_rules() -> list:
    """Return the learning rules (or baselines) this plugin provides.

    Every item is a :class:`suite.rule.Rule` instance with a unique ``name``. A duplicate
    name across plugins is an error that names both providers.
    """


@hookspec
def snn_suite_datasets() -> list:
    """Return datasets (:class:`suite.data.Dataset`) this plugin adds to the registry."""


@hookspec
def snn_suite_archs() -> list:
    """Return architecture specs (:class:`suite.archs.ArchSpec`) shared by all rules."""


@hookspec
def snn_suite_presets() -> list[dict]:
    """Return paper presets: dicts with ``name`` ("<rule>/<dataset>[-variant]"), ``rule``,
    ``dataset``, ``arch``, ``timesteps`` and optional ``epochs``, ``batch_size``, ``options``
    (rule hyper-parameters, checked against the rule's defaults) and ``note``."""


@hookspec
def snn_suite_metrics() -> list:
    """Return extra metrics: callables ``metric(model, rule, cfg, eval_result) -> dict``
    whose items are added to each result row's ``extra`` column."""
