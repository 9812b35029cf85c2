"""README.md opens with the two commands CI relies on; keep them and .ci/run in step."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

from suite.cli import build_parser
from suite.matrix import load_matrix
from suite.host import create_host

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_ci_runs_exactly_the_readme_test_command():
    main_job, test_cmd = _readme_commands()[:2]
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()]
    assert ci_lines[-1] == test_cmd
    assert "pytest" in test_cmd and "snn-suite run" in main_job


def test_readme_main_job_parses_and_runs_the_digits_comparison():
    main_job = _readme_commands()[0]
    argv = shlex.split(main_job.split(".venv/bin/snn-suite", 1)[1])
    args = build_parser().parse_args(argv)
    matrix = load_matrix(ROOT / args.matrix, create_host())
    assert {e.dataset for e in matrix.entries} == {"digits"} and len(matrix.seeds) == 3
    assert {"cnn", "ann2snn", "surrogate_bptt_bn", "lee_bp", "spike_bp_dropout", "tssl_bp", "sstdp"} <= {
        e.rule for e in matrix.entries}
    assert args.report and matrix.select == "best_val"
