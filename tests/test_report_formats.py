"""Markdown (pull-request comments, $GITHUB_STEP_SUMMARY) and JUnit XML (CI test reporters) from one real audit
with a passing, a failing, an erroring, a skipped and a warning check."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import fake_plugin
import numpy as np
import pytest
from builders import blobs, mlp_numpy, mlp_weights, write_mlp
from sklearn.metrics import accuracy_score

from auditor.report.junit import JUnitReporter
from auditor.report.markdown import MarkdownReporter
from auditor.results import AuditReport
from auditor.testing import run_audit


@pytest.fixture(scope="module")
def audit(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], float]:
    tmp = tmp_path_factory.mktemp("formats")
    w = mlp_weights()
    model = write_mlp(tmp / "m.onnx", w)
    x, y = blobs(w=w)
    np.savez(tmp / "d.npz", x=x, y=y)
    spec = {"data": {"path": str(tmp / "d.npz"), "y": "y"}, "checks": [
        {"use": "performance.metrics", "gate": {"accuracy": {"min": 0.999}, "ece": {"max": 1.0}}},
        {"use": "fake.crash"},
        {"use": "fake.const", "name": "skips", "with": {"skip": True}},
        {"use": "fake.const", "name": "warns", "with": {"metrics": {"score": 0.5}, "finding": "warn"}},
        {"use": "fake.const", "name": "passes", "with": {"metrics": {"score": 0.9}},
         "gate": {"score": {"min": 0.8}}},
    ]}
    res = run_audit(spec, model=model, plugins=[fake_plugin], workdir=tmp)
    assert res.report is not None, res.error
    return res.doc, float(accuracy_score(y, mlp_numpy(x, w).argmax(1)))


def test_markdown_is_a_compact_summary(audit: tuple[dict[str, Any], float]) -> None:
    doc, acc = audit
    md = MarkdownReporter().render(AuditReport.from_dict(doc))
    assert md.startswith("## 💥 Model audit: **ERROR**")  # an error is worse than a failed gate
    rows = [ln for ln in md.splitlines() if ln.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == [c["id"] for c in doc["checks"]]
    perf = rows[0]
    assert "❌ fail" in perf and f"accuracy={acc:.4g}" in perf and "❌ accuracy min 0.999" in perf
    assert "✅ ece max 1" in perf
    assert "💥 error | error: RuntimeError: boom" in rows[1]
    assert "⏭️ skipped | skipped: asked to skip" in rows[2]
    assert "⚠️ warn" in rows[3] and "✅ pass" in rows[4]
    gates = md[md.index("### Gates not met"):]
    assert f"- `performance.metrics`: accuracy = {acc:.6g} (min 0.999)" in gates
    assert "- `warns` (warn): look" in md
    tail = md.rstrip().splitlines()
    assert tail[-3] == "pass: 1 · warn: 1 · fail: 1 · error: 1 · skipped: 1"
    assert tail[-1].startswith("2 of 5 checks gated, 2 of 3 gates met")
    assert len(md) < 65536  # GitHub's limit for a comment and a step summary


def test_junit_has_one_testcase_per_check(audit: tuple[dict[str, Any], float]) -> None:
    doc, acc = audit
    root = ET.fromstring(JUnitReporter().render(AuditReport.from_dict(doc)).split("\n", 1)[1])
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [c["id"] for c in doc["checks"]]
    assert [c.get("classname") for c in cases] == [c["use"] for c in doc["checks"]]
    # The counts that reporters show are the children that are there, and the audit's summary.
    for el in (root, suite):
        assert int(el.get("tests", -1)) == len(cases)
        assert int(el.get("failures", -1)) == sum(c.find("failure") is not None for c in cases) == 1
        assert int(el.get("errors", -1)) == sum(c.find("error") is not None for c in cases) == 1
        assert int(el.get("skipped", -1)) == sum(c.find("skipped") is not None for c in cases) == 1
    for case, check in zip(cases, doc["checks"]):
        assert float(case.get("time", "x")) == pytest.approx(check["duration_s"], abs=1e-3)
        assert len([ch for ch in case if ch.tag in ("failure", "error", "skipped")]) <= 1
    fail = cases[0].find("failure")
    assert fail is not None and fail.get("type") == "GateFailed"
    assert fail.get("message") == f"accuracy = {acc:.6g} (min 0.999)"
    out = cases[0].find("system-out")
    assert out is not None and f"accuracy = {acc!r}" in (out.text or "")
    err = cases[1].find("error")
    assert err is not None and err.get("message") == "RuntimeError: boom"
    skipped = cases[2].find("skipped")
    assert skipped is not None and skipped.get("message") == "asked to skip"
    warn_out = cases[3].find("system-out")
    assert warn_out is not None and "[warn] look" in (warn_out.text or "")  # a warning is not a failure


def test_reports_written_by_the_cli_are_the_rendered_ones(tmp_path: Path, audit: tuple[dict[str, Any], float]) -> None:
    from auditor.plugins import build_registry
    from auditor.runner import write_reports

    doc, _ = audit
    registry = build_registry(extra_plugins=[fake_plugin])
    written = write_reports(doc, tmp_path, ["json", "markdown", "junit", "html"], registry)
    assert [p.name for p in written] == ["report.json", "report.md", "junit.xml", "report.html"]
    assert (tmp_path / "report.md").read_text() == MarkdownReporter().render(AuditReport.from_dict(doc))
    assert (tmp_path / "report.html").read_text().startswith("<!DOCTYPE html>")


def test_every_format_tells_the_same_audit(audit: tuple[dict[str, Any], float]) -> None:
    """HTML, SARIF, the model card, the terminal summary and the Python API's frame, rendered from the same
    report.json: each check's status and each gate's value are the JSON report's."""
    import html as htmllib
    import io
    import json
    import re

    from rich.console import Console

    from auditor.card import render_card
    from auditor.plugins import build_registry
    from auditor.report.html import HtmlReporter
    from auditor.report.sarif import SarifReporter
    from auditor.terminal import print_summary

    doc, _ = audit
    report = AuditReport.from_dict(doc)
    page = HtmlReporter().render(report, build_registry().pm)
    sarif = json.loads(SarifReporter().render(report))["runs"][0]
    card = render_card(report)
    console = Console(record=True, width=160, file=io.StringIO(), color_system=None)
    print_summary(console, report)
    term = console.export_text()
    frame = report.to_frame()
    for c in doc["checks"]:
        st = c["status"]
        assert f'{htmllib.escape(c["id"])} <span class="badge b-{st}">{st}</span></h2>' in page, c["id"]
        assert re.search(rf"#### `{re.escape(c['id'])}` \({re.escape(c['use'])}\): \S+ {st}\n", card), c["id"]
        assert re.search(rf"│ {re.escape(c['id'])}\s+│ {st}\s", term), c["id"]
        if st == "error":
            assert any(r["ruleId"] == f"auditor/{c['id']}/error" and r["level"] == "error" for r in sarif["results"])
        for g in c["gates"]:
            row = frame[(frame["check"] == c["id"]) & (frame["metric"] == g["metric"])]
            assert len(row) == 1 and row["value"].iloc[0] == g["value"] and row["gate_status"].iloc[0] == g["status"]
            found = [r for r in sarif["results"] if r["ruleId"] == f"auditor/{c['id']}/{g['metric']}"]
            if g["status"] == "pass":
                assert found == []
            else:
                assert len(found) == 1 and found[0]["properties"]["value"] == g["value"]
            assert f"{htmllib.escape(g['message'])}</td>" in page
    assert sarif["properties"]["gating"] == doc["gating"] and sarif["properties"]["status"] == doc["status"]
    assert doc["status"] == "error" and 'class="badge b-error">error</span></h1>' in page
