import importlib.metadata as md
import json
import re
import types

import pytest

from suite import host as host_mod
from suite.hookspecs import hookimpl
from suite.rule import Rule

BUILTIN_RULES = {"surrogate_bptt_bn", "cnn"}


def test_builtins_and_third_party_discovered(host):
    assert BUILTIN_RULES <= set(host.rules)
    # the fixture package in tests/fixtures is pip-installed and found through its entry point
    rule = host.rule("example_rate")
    assert rule.distribution == "snn-suite-example-rule"
    assert rule.version == "0.3.1"
    assert host.rule("surrogate_bptt_bn").distribution == "snn-suite"
    assert "example_mlp32" in host.archs and "digits" in host.datasets


def test_no_builtin_plugin_is_broken(host):
    assert [p for p in host.broken() if p.distribution == "snn-suite"] == []


def _fake_ep(name, value, dist="broken-dist"):
    ep = md.EntryPoint(name=name, value=value, group="snn_suite")
    return ep, dist, "9.9"


def test_broken_plugins_listed_and_others_still_load(monkeypatch):
    real = host_mod._entry_points()
    bad_api = types.ModuleType("bad_api_plugin")
    bad_api.SNN_SUITE_API = 99
    import sys

    monkeypatch.setitem(sys.modules, "bad_api_plugin", bad_api)
    monkeypatch.setattr(host_mod, "_entry_points", lambda: real + [
        _fake_ep("zz_missing", "no_such_module_for_snn_suite"),
        _fake_ep("zz_badapi", "bad_api_plugin"),
    ])
    h = host_mod.create_host()
    broken = {p.name: p.error for p in h.broken()}
    assert "ModuleNotFoundError" in broken["zz_missing"]
    assert "incompatible plugin API version 99" in broken["zz_badapi"]
    assert BUILTIN_RULES <= set(h.rules)


def test_plugin_that_crashes_while_listing_is_reported():
    class Crashy:
        @hookimpl
        def snn_suite_rules(self):
            raise RuntimeError("boom")

    h = host_mod.create_host(extra_plugins=[("crashy", Crashy())])
    assert "cnn" in h.rules
    assert "boom" in {p.name: p.error for p in h.broken()}["crashy"]


def test_duplicate_rule_name_names_both_providers():
    class Dup(Rule):
        name = "cnn"

        def build(self, *a):
            raise AssertionError

    class P:
        @hookimpl
        def snn_suite_rules(self):
            return [Dup()]

    h = host_mod.create_host(extra_plugins=[("dup_plugin", P())])
    error = {p.name: p.error for p in h.broken()}["dup_plugin"]
    assert re.search(r"duplicate rule name 'cnn': provided by plugin 'cnn' \(snn-suite\) and plugin 'dup_plugin'", error)
    assert h.rule("cnn").distribution == "snn-suite"


def test_unknown_names_list_valid_ones(host):
    with pytest.raises(ValueError, match="valid: .*surrogate_bptt_bn"):
        host.rule("nope")
    with pytest.raises(ValueError, match="valid: .*fc800"):
        host.arch("nope")
    with pytest.raises(ValueError, match="valid: .*digits"):
        host.dataset("nope")
    assert host.select_rules("surr*,cnn") == ["surrogate_bptt_bn", "cnn"]


def test_plugins_cli_json(capsys):
    from suite.cli import main

    assert main(["plugins", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    names = {r["name"]: r for r in out["rules"]}
    assert names["example_rate"]["distribution"] == "snn-suite-example-rule"
    assert names["surrogate_bptt_bn"]["neuron"] == "LIF"
    assert "arXiv:2006.04436" in names["surrogate_bptt_bn"]["paper"]


def test_option_validation(host):
    from suite.rule import check_options

    rule = host.rule("surrogate_bptt_bn")
    assert check_options(rule, {"alpha": "2.5"})["alpha"] == 2.5
    with pytest.raises(ValueError, match="valid options: .*alpha"):
        check_options(rule, {"alhpa": 1})


def test_sequence_options_from_the_command_line(host):
    """``--set input_mean=(0.1307,)`` arrives as a string and must become a tuple of numbers."""
    from suite.rule import check_options

    rule = host.rule("tssl_bp")
    assert check_options(rule, {"input_mean": "(0.1307,)"})["input_mean"] == (0.1307,)
    assert check_options(rule, {"input_std": "0.2,0.3"})["input_std"] == (0.2, 0.3)
    assert check_options(rule, {"input_mean": "()"})["input_mean"] == ()
    with pytest.raises(ValueError, match="input_mean.*comma-separated numbers"):
        check_options(rule, {"input_mean": "mean"})
