"""``report.sarif``: SARIF 2.1.0 for code-scanning views (GitHub code scanning, GitLab, Azure DevOps, IDEs).

One result per gate that failed or warned, per finding of severity ``warn`` or ``fail``, and per check that
errored; nothing for what passed or was only informational (code scanning lists problems). Rule ids are
``auditor/<check id>/<metric>`` for gates, ``auditor/<check id>/finding`` for findings and
``auditor/<check id>/error`` for a check that crashed. Every result points at the spec file, at the line of the
check's ``use:`` (``CheckReport.spec_line``), so that a code-scanning alert opens the spec where the check and
its gates are written. The spec path is written relative to the working folder when it lies inside it (CI runs
from the repository root, which is what code scanning resolves paths against), else as a ``file:`` URI.

The schema the output is tested against ships in ``auditor/report/schemas/sarif-schema-2.1.0.json``
(OASIS, see ``SARIF-SCHEMA-NOTICE.md`` there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from auditor.jsonenc import dumps
from auditor.report.base import Reporter
from auditor.results import AuditReport, CheckReport, Status

SARIF_SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
SCHEMA_FILE = Path(__file__).with_name("schemas") / "sarif-schema-2.1.0.json"

_LEVEL = {Status.FAIL: "error", Status.ERROR: "error", Status.WARN: "warning"}
_FINDING_LEVEL = {"fail": "error", "warn": "warning"}


def rule_id(check_id: str, what: str) -> str:
    """``auditor/<check id>/<metric or finding or error>``."""
    return f"auditor/{check_id}/{what}"


def _artifact_uri(spec_path: str, cwd: Path | None = None) -> str:
    """The spec path relative to ``cwd`` (forward slashes) when inside it, else a ``file:`` URI."""
    path = Path(spec_path)
    base = (cwd or Path.cwd()).resolve()
    full = path.resolve()
    try:
        return full.relative_to(base).as_posix()
    except ValueError:
        return full.as_uri()


class SarifReporter(Reporter):
    """SARIF 2.1.0 log with one run (see the module docstring)."""

    format = "sarif"
    filename = "report.sarif"

    def render(self, report: AuditReport, pm: Any = None) -> str:
        """The SARIF log's JSON text."""
        from auditor import __version__

        rules: dict[str, dict[str, Any]] = {}
        results: list[dict[str, Any]] = []
        uri = _artifact_uri(report.spec_path) if report.spec_path else None

        def add(c: CheckReport, what: str, level: str, text: str, description: str,
                props: dict[str, Any], key: str) -> None:
            rid = rule_id(c.id, what)
            if rid not in rules:
                rules[rid] = {"id": rid, "name": f"{c.use}:{what}",
                              "shortDescription": {"text": description},
                              "properties": {"check": c.id, "use": c.use, "plugin": c.plugin}}
            result: dict[str, Any] = {
                "ruleId": rid, "ruleIndex": list(rules).index(rid), "level": level, "message": {"text": text},
                "partialFingerprints": {"auditorResult/v1": key}, "properties": props,
            }
            if uri is not None:
                loc: dict[str, Any] = {"artifactLocation": {"uri": uri}}
                if c.spec_line is not None:
                    loc["region"] = {"startLine": c.spec_line}
                result["locations"] = [{"physicalLocation": loc}]
            results.append(result)

        for c in report.checks:
            if c.status is Status.ERROR:
                add(c, "error", "error", f"{c.id}: the check errored: {c.error or 'unknown error'}",
                    f"{c.use} ran to completion", {"status": c.status.value}, f"{c.id}/error")
            for g in c.gates:
                if g.status not in _LEVEL:
                    continue
                add(c, g.metric, _LEVEL[g.status], f"{c.id}: {g.message}",
                    f"gate on {g.metric} of {c.use}",
                    {"metric": g.metric, "op": g.op, "threshold": g.threshold, "value": g.value,
                     "baseline": g.baseline, "severity": g.severity, "status": g.status.value},
                    f"{c.id}/{g.metric}/{g.op}")
            for i, f in enumerate(c.findings):
                if f.severity not in _FINDING_LEVEL:
                    continue
                props = {"severity": f.severity, **({"location": f.location} if f.location else {})}
                add(c, "finding", _FINDING_LEVEL[f.severity], f"{c.id}: {f.message}", f"findings of {c.use}",
                    props, f"{c.id}/finding/{f.location or i}")
        run: dict[str, Any] = {
            "tool": {"driver": {"name": "onnx-auditor", "version": __version__, "semanticVersion": __version__,
                                "rules": list(rules.values())}},
            "invocations": [{"executionSuccessful": not report.interrupted,
                             **({"startTimeUtc": report.started_at} if report.started_at else {})}],
            "results": results,
            "properties": {"status": report.status.value, "interrupted": report.interrupted,
                           "model": {k: report.model.get(k) for k in ("path", "sha256")},
                           "gating": report.gating},
        }
        if uri is not None:
            run["artifacts"] = [{"location": {"uri": uri}, "roles": ["analysisTarget"]}]
        return dumps({"$schema": SARIF_SCHEMA_URI, "version": "2.1.0", "runs": [run]}) + "\n"
