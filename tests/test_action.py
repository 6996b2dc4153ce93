"""action.yml (the composite GitHub Action): its inputs are used, every auditor option it passes exists, its
default formats are installed, and its audit, diff, summary and gate steps do what they say when run in bash."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from auditor.cli import main
from auditor.plugins import build_registry

REPO = Path(__file__).resolve().parents[1]
ACTION = yaml.safe_load((REPO / "action.yml").read_text())
STEPS: list[dict[str, Any]] = ACTION["runs"]["steps"]


def _step(name: str) -> dict[str, Any]:
    return next(s for s in STEPS if s.get("name") == name)


def test_inputs_are_used_and_options_exist() -> None:
    assert ACTION["runs"]["using"] == "composite"
    text = yaml.safe_dump(STEPS)
    for name in ACTION["inputs"]:
        assert f"inputs.{name}" in text, f"input {name} is never used"
    uses = [s["uses"] for s in STEPS if "uses" in s]
    assert {u.split("@")[0] for u in uses} == {"actions/setup-python", "actions/upload-artifact",
                                                "github/codeql-action/upload-sarif"}
    commands = []
    for s in STEPS:
        for m in re.finditer(r"\bauditor ((?:run|diff) [^|;&>\n]*)", s.get("run", "")):
            commands.append(shlex.split(m.group(1)))
    assert {c[0] for c in commands} == {"run", "diff"}
    for cmd in commands:
        options = {o for p in main.commands[cmd[0]].params for o in p.opts}
        flags = [a for a in cmd[1:] if a.startswith("-")]
        assert flags and set(flags) <= options, (cmd, set(flags) - options)
    assert "markdown" in shlex.split(_step("Compare with the baseline report")["run"].split("--format", 1)[1])[0]
    formats = ACTION["inputs"]["formats"]["default"].split(",")
    assert set(formats) <= set(build_registry().reporters) and "sarif" in formats and "markdown" in formats
    assert _step("Upload SARIF to code scanning")["with"]["sarif_file"].endswith("/report.sarif")


def _run_step(name: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    step = _step(name)
    script = step["run"]
    for key, expr in (step.get("env") or {}).items():
        assert key in env or "inputs." not in expr, (name, key)
    full = {**os.environ, **env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["bash", "-e", "-c", script], cwd=cwd, env=full, capture_output=True, text=True,
                          timeout=300, check=False)


def test_the_steps_run_the_audit_compare_summarise_and_gate(tmp_path: Path) -> None:
    if shutil.which("auditor", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("the auditor console script is not installed in this environment")
    out = tmp_path / "out.txt"
    summary = tmp_path / "summary.md"
    env = {"SPEC": str(REPO / "specs" / "demo.yaml"), "REPORT_DIR": str(tmp_path / "reports"),
           "FORMATS": "json,markdown,sarif", "GITHUB_OUTPUT": str(out), "GITHUB_STEP_SUMMARY": str(summary)}
    r = _run_step("Audit", env, tmp_path)
    assert r.returncode == 0, r.stderr
    outputs = dict(line.split("=", 1) for line in out.read_text().splitlines())
    report = json.loads((tmp_path / "reports" / "report.json").read_text())
    assert outputs == {"code": "0", "status": report["status"]}
    assert (tmp_path / "reports" / "report.sarif").exists()
    # the diff step against the same report: no regression
    env_diff = {**env, "BASELINE": str(tmp_path / "reports" / "report.json"), "GITHUB_OUTPUT": str(tmp_path / "d")}
    assert _run_step("Compare with the baseline report", env_diff, tmp_path).returncode == 0
    assert (tmp_path / "d").read_text().strip() == "code=0"
    assert "no gate regressed" in (tmp_path / "reports" / "diff.md").read_text()
    assert _run_step("Job summary", env, tmp_path).returncode == 0
    text = summary.read_text()
    assert text.startswith((tmp_path / "reports" / "report.md").read_text()) and "Audit diff" in text
    gate = {"FAIL_ON_REGRESSION": "true"}
    assert _run_step("Gate", {**gate, "AUDIT_CODE": "0", "DIFF_CODE": "0"}, tmp_path).returncode == 0
    assert _run_step("Gate", {**gate, "AUDIT_CODE": "1", "DIFF_CODE": "0"}, tmp_path).returncode == 1
    assert _run_step("Gate", {**gate, "AUDIT_CODE": "0", "DIFF_CODE": "1"}, tmp_path).returncode == 1
    assert _run_step("Gate", {"FAIL_ON_REGRESSION": "false", "AUDIT_CODE": "0", "DIFF_CODE": "1"},
                     tmp_path).returncode == 0
    assert _run_step("Gate", {**gate, "AUDIT_CODE": "4", "DIFF_CODE": ""}, tmp_path).returncode == 4
