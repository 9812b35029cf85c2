"""Packaging and command-line conventions: extras, LICENSE, --version, help on every option."""
from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

import pytest

import suite
from suite.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _names(reqs) -> set[str]:
    return {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower() for r in reqs}


def test_test_and_heavy_optional_tools_are_extras_not_runtime_dependencies():
    runtime = _names(PYPROJECT["project"]["dependencies"])
    extras = {k: _names(v) for k, v in PYPROJECT["project"]["optional-dependencies"].items()}
    assert not runtime & {"pytest", "pytest-benchmark", "ray", "tox", "snntorch", "norse"}
    assert extras["ray"] == {"ray"} and extras["tune"] == {"optuna"}
    assert "optuna" not in runtime
    # README's test command installs [test]: everything the tests import beyond the runtime
    assert {"pytest", "ray", "optuna", "neurobench", "spikingjelly", "tox"} <= extras["test"]
    assert {"pytest-benchmark", "snntorch", "norse", "spikingjelly"} <= extras["peers"]
    assert PYPROJECT["project"]["version"] == suite.__version__


def test_license_file_matches_pyproject():
    assert PYPROJECT["project"]["license"] == {"text": "MIT"}
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"snn-suite {suite.__version__}"


def _parsers(parser: argparse.ArgumentParser, prefix="snn-suite"):
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{prefix} {name}")


def test_every_option_and_command_has_help_and_the_description_is_plain_text():
    parser = build_parser()
    missing = [f"{where} {a.option_strings or a.dest}" for where, p in _parsers(parser) for a in p._actions
               if not isinstance(a, argparse._SubParsersAction) and not (a.help and a.help.strip())]
    assert missing == []
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert all(c.help for c in sub._choices_actions)
    assert "``" not in parser.description and ":mod:" not in parser.description
    assert "Train and compare spiking" in parser.format_help()
