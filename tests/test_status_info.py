"""``info``: a check that ran with no gate and no warning or failing finding asserted nothing, and must not read
as ``pass`` in any format; an audit with no gate at all is ``info`` too (exit 0)."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import fake_plugin
import pytest
import yaml
from click.testing import CliRunner
from rich.console import Console

from auditor.cli import main
from auditor.report.html import HtmlReporter
from auditor.report.junit import JUnitReporter
from auditor.report.markdown import MarkdownReporter
from auditor.results import AuditReport, Status, worst
from auditor.terminal import status_line, summary_table
from auditor.testing import run_audit


def test_worst_ranks_info_below_pass_and_above_skipped() -> None:
    assert worst([]) is Status.INFO
    assert worst([Status.SKIPPED]) is Status.INFO
    assert worst([Status.INFO, Status.SKIPPED]) is Status.INFO
    assert worst([Status.INFO, Status.PASS]) is Status.PASS  # one gate held
    assert worst([Status.INFO, Status.WARN]) is Status.WARN


def _audit(tmp_path: Path, mlp: tuple[Path, Path, Any], checks: list[dict[str, Any]]) -> dict[str, Any]:
    model, data, _ = mlp
    res = run_audit({"checks": checks}, model=model, data=data, plugins=[fake_plugin], workdir=tmp_path)
    assert res.report is not None, res.error
    assert res.exit_code == 0
    return res.doc


def test_ungated_checks_are_info_in_every_format(tmp_path: Path, mlp: tuple[Path, Path, Any]) -> None:
    # The example: a robustness number that says the model is broken, with no gate on it.
    doc = _audit(tmp_path, mlp, [
        {"use": "fake.const", "name": "attack", "with": {"metrics": {"success_rate": 1.0, "robust_accuracy": 0.0}}},
        {"use": "fake.const", "name": "noted", "with": {"metrics": {"x": 1}, "finding": "info"}},
        {"use": "fake.const", "name": "warned", "with": {"metrics": {"x": 1}, "finding": "warn"}},
    ])
    assert [c["status"] for c in doc["checks"]] == ["info", "info", "warn"]
    assert doc["status"] == "warn"
    assert doc["gating"] == {"checks": 3, "checks_gated": 0, "gates": 0, "gates_met": 0}

    md = MarkdownReporter().render(AuditReport.from_dict(doc))
    rows = [ln for ln in md.splitlines() if ln.startswith("| `")]
    assert "ℹ️ info" in rows[0] and "✅" not in rows[0] and "ℹ️ info" in rows[1]
    assert "0 of 3 checks gated, 0 of 0 gates met" in md

    root = ET.fromstring(JUnitReporter().render(AuditReport.from_dict(doc)).split("\n", 1)[1])
    cases = root.findall("testsuite/testcase")
    assert [c.find("properties/property[@name='status']").get("value") for c in cases] == ["info", "info", "warn"]
    assert "[info] no gate: this check asserted nothing" in (cases[0].find("system-out").text or "")
    assert cases[0].find("failure") is None and cases[0].find("skipped") is None

    page = HtmlReporter().render(AuditReport.from_dict(doc))
    assert '<span class="badge b-info">info</span> 2' in page  # the summary counts
    assert "0 of 3 checks gated" in page

    console = Console(record=True, width=200, file=io.StringIO())
    console.print(summary_table(doc))
    text = console.export_text()
    assert "no check of 3 gated: nothing asserted" in text
    assert status_line(doc) == "WARN: 2 info, 1 warn; no check of 3 gated: nothing asserted"


def test_an_audit_with_no_gate_is_info_and_one_gate_held_is_pass(tmp_path: Path,
                                                                  mlp: tuple[Path, Path, Any]) -> None:
    info = _audit(tmp_path, mlp, [{"use": "fake.const", "with": {"metrics": {"x": 1}}}])
    assert info["status"] == "info"
    md = MarkdownReporter().render(AuditReport.from_dict(info))
    assert md.startswith("## ℹ️ Model audit: **INFO** (no gate was checked)")
    gated = _audit(tmp_path, mlp, [{"use": "fake.const", "with": {"metrics": {"x": 1}}},
                                   {"use": "fake.const", "name": "g", "with": {"metrics": {"x": 1}},
                                    "gate": {"x": {"min": 1}}}])
    assert [c["status"] for c in gated["checks"]] == ["info", "pass"] and gated["status"] == "pass"
    assert gated["gating"] == {"checks": 2, "checks_gated": 1, "gates": 1, "gates_met": 1}


@pytest.mark.parametrize("gate, code, status", [(None, 0, "INFO"), ({"x": {"min": 2}}, 1, "FAIL")])
def test_cli_exit_code_and_last_line(tmp_path: Path, mlp: tuple[Path, Path, Any], gate: Any, code: int,
                                     status: str) -> None:
    model, _, _ = mlp
    check: dict[str, Any] = {"use": "fake.const", "with": {"metrics": {"x": 1}}}
    if gate:
        check["gate"] = gate
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump({"version": 1, "model": {"path": str(model)}, "checks": [check],
                                 "report": {"dir": str(tmp_path / "r"), "formats": ["json"]}}))
    r = CliRunner().invoke(main, ["run", str(p), "-p", "fake_plugin", "-q"])
    assert r.exit_code == code, r.output
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith(f"{status}: ")
    gated = "no check of 1 gated: nothing asserted" if not gate else "1 of 1 checks gated (0 of 1 gates met)"
    assert last.endswith(gated)
    assert json.loads((tmp_path / "r" / "report.json").read_text())["status"] == status.lower()
