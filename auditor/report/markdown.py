"""``report.md``: compact, for a pull-request comment or ``$GITHUB_STEP_SUMMARY``."""

from __future__ import annotations

from typing import Any

from auditor.metrics import format_value, scalars
from auditor.report.base import Reporter
from auditor.results import AuditReport, CheckReport

ICON = {"pass": "✅", "info": "ℹ️", "warn": "⚠️", "fail": "❌", "error": "💥", "skipped": "⏭️"}


def cell(text: Any) -> str:
    """Text safe inside a Markdown table cell: pipes escaped, line breaks flattened."""
    return " ".join(str(text).split()).replace("|", "\\|")


def fmt_value(v: Any) -> str:
    """Short text for a metric value (see :func:`auditor.metrics.format_value`)."""
    return format_value(v, width=60)


def headline(c: CheckReport, n: int = 4) -> list[tuple[str, Any]]:
    """The metrics to show for a check in one line: the gated ones first, then its first scalars."""
    rows = scalars(c.metrics, max_keys=12, inline_lists=0)
    gated = {g.metric for g in c.gates}
    first = [(g.metric, c.metric(g.metric)) for g in c.gates]
    seen: set[str] = set()
    out: list[tuple[str, Any]] = []
    for name, v in first + [r for r in rows if r[0] not in gated]:
        if name not in seen:
            seen.add(name)
            out.append((name, v))
    return out[:max(n, len(gated))]


class MarkdownReporter(Reporter):
    """Summary table of checks, then gates and findings that need attention."""

    format = "markdown"
    filename = "report.md"

    def render(self, report: AuditReport, pm: Any = None) -> str:
        """Markdown text."""
        status = report.status.value
        model = report.model
        lines = [
            f"## {ICON.get(status, '')} Model audit: **{status.upper()}**"
            + (" (no gate was checked)" if status == "info" else ""),
            "",
            f"`{model.get('path')}` · sha256 `{str(model.get('sha256'))[:12]}` · opset {model.get('opset')} · "
            f"{model.get('device')}",
        ]
        if report.interrupted:
            lines += ["", "> **Interrupted**: this report is partial."]
        lines += ["", "| check | status | key metrics | gates |", "|---|---|---|---|"]
        for c in report.checks:
            metrics = ", ".join(f"{k}={fmt_value(v)}" for k, v in headline(c))
            gates = "; ".join(f"{ICON.get(g.status.value, '')} {g.metric} {g.op} {g.threshold:g}" for g in c.gates)
            if c.status.value == "error":
                metrics = f"error: {c.error or ''}"[:120]
            elif c.status.value == "skipped":
                metrics = f"skipped: {c.skip_reason or ''}"[:120]
            st = c.status.value
            lines.append(f"| `{c.id}` | {ICON.get(st, '')} {st} | {cell(metrics)} | {cell(gates)} |")
        failing = [(c, g) for c in report.checks for g in c.gates if g.status.value != "pass"]
        if failing:
            lines += ["", "### Gates not met", ""]
            lines += [f"- `{c.id}`: {cell(g.message)}" for c, g in failing]
        findings = [(c, f) for c in report.checks for f in c.findings if f.severity != "info"]
        if findings:
            lines += ["", "### Findings", ""]
            lines += [f"- `{c.id}` ({f.severity}): {cell(f.message)}" for c, f in findings[:50]]
        lines += ["", " · ".join(f"{k}: {v}" for k, v in report.summary.items() if v)]
        g = report.gating
        lines += ["", f"{g['checks_gated']} of {g['checks']} checks gated, {g['gates_met']} of {g['gates']} "
                      "gates met (`info`: the check ran and nothing was asserted)", ""]
        return "\n".join(lines)
