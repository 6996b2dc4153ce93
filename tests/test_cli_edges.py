"""The command line's edges: usage errors in one line, a closed stdout pipe, interrupt exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from auditor.cli import main
from auditor.errors import ExitCode

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("args,needle", [
    (["run"], "Missing argument 'SPEC'"),
    (["run", "x.yaml", "--bogus"], "No such option '--bogus'"),
    (["run", "x.yaml", "--seed", "minus"], "'minus' is not a valid integer"),
    (["nosuchcommand"], "No such command 'nosuchcommand'"),
])
def test_usage_errors_are_one_line_exit_2(args: list[str], needle: str) -> None:
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2
    assert needle in r.stderr and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    assert r.stdout == ""


def test_interrupt_exit_code_is_130_not_a_spec_error() -> None:
    assert int(ExitCode.INTERRUPTED) == 130 and ExitCode.INTERRUPTED != ExitCode.USAGE_ERROR


def test_stdout_closed_by_its_reader_exits_quietly() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")])}
    p = subprocess.Popen([sys.executable, "-m", "auditor.cli", "checks"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.readline()
    p.stdout.close()  # like `| head -1`
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0
    assert "Traceback" not in err and "BrokenPipe" not in err
