"""``junit.xml``: one testcase per check; gate failures as failures, check errors as errors."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from auditor.report.base import Reporter
from auditor.results import AuditReport, CheckReport, Status


def gate_failed(c: CheckReport) -> bool:
    """A failed check, or a skipped one whose gates could not be met (it fails the audit, so it is a failure
    here too)."""
    return c.status is Status.FAIL or (c.status is Status.SKIPPED and any(g.status is Status.FAIL for g in c.gates))


class JUnitReporter(Reporter):
    """JUnit XML accepted by common CI test reporters (GitLab, Jenkins, GitHub test-report actions)."""

    format = "junit"
    filename = "junit.xml"

    def render(self, report: AuditReport, pm: Any = None) -> str:
        """XML text."""
        checks = report.checks
        interrupted = bool(report.interrupted)
        counts = {
            "tests": len(checks) + interrupted,
            "failures": sum(gate_failed(c) for c in checks),
            "errors": sum(c.status is Status.ERROR for c in checks) + interrupted,
            "skipped": sum(c.status is Status.SKIPPED and not gate_failed(c) for c in checks),
        }
        attrs = {k: str(v) for k, v in counts.items()}
        suites = ET.Element("testsuites", {"name": "onnx-auditor", **attrs})
        suite = ET.SubElement(suites, "testsuite", {
            "name": f"audit {report.model.get('path')}", "timestamp": report.started_at,
            "time": f"{report.duration_s:.3f}", **attrs,
        })
        for c in checks:
            case = ET.SubElement(suite, "testcase", classname=c.use, name=c.id, time=f"{c.duration_s:.3f}")
            # JUnit has no "ran, nothing asserted": an info check is a passing testcase that says so.
            props = ET.SubElement(case, "properties")
            ET.SubElement(props, "property", name="status", value=c.status.value)
            failed = [g for g in c.gates if g.status is Status.FAIL]
            if c.status is Status.ERROR:
                el = ET.SubElement(case, "error", message=str(c.error or "")[:500], type="CheckError")
                # the body keeps the traceback, so a CI test report shows where the check raised
                el.text = str(c.error or "") + (f"\n\n{c.traceback}" if c.traceback else "")
            elif gate_failed(c):
                msg = "; ".join(g.message for g in failed) or "; ".join(
                    f.message for f in c.findings if f.severity == "fail")
                el = ET.SubElement(case, "failure", message=msg[:500], type="GateFailed")
                el.text = msg
            elif c.status is Status.SKIPPED:
                ET.SubElement(case, "skipped", message=str(c.skip_reason or ""))
            out = ["[info] no gate: this check asserted nothing"] if c.status is Status.INFO else []
            out += [f"{k} = {v}" for k, v in c.metrics.items() if isinstance(v, (int, float, str))]
            out += [f"[{g.status.value}] {g.message}" for g in c.gates]
            out += [f"[{f.severity}] {f.message}" for f in c.findings]
            if out:
                ET.SubElement(case, "system-out").text = "\n".join(out)
        if interrupted:
            # A run that was stopped did not pass, even when every check it ran did: say so as an error.
            case = ET.SubElement(suite, "testcase", classname="auditor", name="audit interrupted", time="0.000")
            ET.SubElement(case, "error", message="the audit was interrupted: this report is partial",
                          type="Interrupted").text = "the audit was interrupted (Ctrl-C or SIGTERM)"
        ET.indent(suites)
        return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
