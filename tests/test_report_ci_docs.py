"""docs/ci.md: the GitHub Actions workflow and the GitLab CI job parse, use only commands and options the
auditor has, and the command they run writes every file they publish."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from auditor.cli import main
from auditor.errors import ExitCode
from auditor.plugins import build_registry

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "ci.md"


def yaml_blocks() -> list[dict[str, Any]]:
    text = DOC.read_text()
    return [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, flags=re.S)]


def shell_texts(doc: Any) -> list[str]:
    """Every string under a ``run:`` (GitHub) or ``script:``/``before_script:`` (GitLab) key."""
    out: list[str] = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k in ("run", "script", "before_script"):
                out += [v] if isinstance(v, str) else [x for x in v if isinstance(x, str)]
            else:
                out += shell_texts(v)
    elif isinstance(doc, list):
        for v in doc:
            out += shell_texts(v)
    return out


def auditor_commands(doc: Any) -> list[list[str]]:
    cmds = []
    for text in shell_texts(doc):
        # A command, not prose in an echo ("auditor run: exit 1", "auditor run exit $code").
        for m in re.finditer(r"\bauditor ((?:run|diff|checks|schema|plugins) +(?!exit\b)[^\s:][^|;&>\n]*)", text):
            cmds.append(shlex.split(m.group(1)))
    return cmds


def test_blocks_parse_into_a_github_workflow_and_a_gitlab_job() -> None:
    _, gh, gl = yaml_blocks()  # the first block uses the composite action (tests/test_action.py)
    # PyYAML reads the bare key `on` as True (YAML 1.1); GitHub reads it as the trigger key.
    assert set(gh[True]) == {"pull_request", "push"} and gh["jobs"]["release"]["needs"] == "audit"
    steps = gh["jobs"]["audit"]["steps"]
    assert any(s.get("uses", "").startswith("mikepenz/action-junit-report") for s in steps)
    assert all(s.get("if", "").startswith("always()") for s in steps if "uses" in s and "upload" in s["uses"])
    job = gl["model-audit"]
    assert job["artifacts"]["reports"]["junit"] == "reports/junit.xml" and job["artifacts"]["when"] == "always"
    assert gl["release"]["needs"] == ["model-audit"]


def test_documented_commands_and_options_exist() -> None:
    registry = build_registry()
    cmds = [c for doc in yaml_blocks() for c in auditor_commands(doc)]
    assert {c[0] for c in cmds} == {"run", "diff"}
    for args in cmds:
        command = main.commands[args[0]]
        assert isinstance(command, click.Command)
        ctx = command.make_context(args[0], list(args[1:]))  # unknown options or bad values raise
        if args[0] == "run":
            formats = ctx.params["formats"].split(",")
            assert set(formats) <= set(registry.reporters), formats


def test_exit_code_table_matches_the_cli() -> None:
    rows = dict(re.findall(r"^\| (\d+) \| ([^|]+) \|", DOC.read_text(), flags=re.M))
    assert {int(k) for k in rows} == {int(c) for c in ExitCode}
    assert "gate failed" in rows[str(int(ExitCode.GATE_FAILED))]
    assert "loaded" in rows[str(int(ExitCode.LOAD_ERROR))]


def test_the_documented_run_writes_every_published_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the workflow's `auditor run` line on the demo spec; every reports/ file the workflows read exists."""
    _, gh, gl = yaml_blocks()
    (run,) = [c for c in auditor_commands(gh) if c[0] == "run"]
    run = [a if a != "audit.yaml" else str(REPO / "specs" / "demo.yaml") for a in run]
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, [*run, "-q"], env={"CI": "true"})
    assert r.exit_code == 0, r.output
    text = "\n".join(shell_texts(gh) + shell_texts(gl)) + yaml.safe_dump(gh) + yaml.safe_dump(gl)
    published = set(re.findall(r"reports/([\w.]+\.(?:json|md|xml|html))", text)) - {"diff.md"}
    assert published == {"report.json", "report.md", "junit.xml", "report.html"}
    for name in published:
        assert (tmp_path / "reports" / name).stat().st_size > 0
    # The diff step as documented, against the same report: nothing regressed, exit 0.
    (diff,) = [c for c in auditor_commands(gh) if c[0] == "diff"]
    (tmp_path / "last-release").mkdir()
    (tmp_path / "last-release" / "report.json").write_text((tmp_path / "reports" / "report.json").read_text())
    d = CliRunner().invoke(main, diff)
    assert d.exit_code == 0 and d.stdout.startswith("## Audit diff: ✅ no gate regressed")
