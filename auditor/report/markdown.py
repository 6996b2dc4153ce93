"""``report.md``: compact, for a pull-request comment or ``$GITHUB_STEP_SUMMARY``."""

from __future__ import annotations

from typing import Any

from auditor.report.base import Reporter

ICON = {"pass": "✅", "info": "ℹ️", "warn": "⚠️", "fail": "❌", "error": "💥", "skipped": "⏭️"}


def cell(text: Any) -> str:
    """Text safe inside a Markdown table cell: pipes escaped, line breaks flattened."""
    return " ".join(str(text).split()).replace("|", "\\|")


def fmt_value(v: Any) -> str:
    """Short text for a metric value."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, dict)):
        s = str(v)
        return s if len(s) <= 60 else s[:57] + "..."
    return str(v)


def scalar_metrics(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Flatten nested dicts to dotted names, keeping only scalars (lists are left to richer formats)."""
    out: list[tuple[str, Any]] = []
    for k, v in metrics.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            if len(v) <= 12:
                out.extend(scalar_metrics(v, name + "."))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out.append((name, v))
    return out


class MarkdownReporter(Reporter):
    """Summary table of checks, then gates and findings that need attention."""

    format = "markdown"
    filename = "report.md"

    def render(self, report: dict[str, Any], pm: Any = None) -> str:
        """Markdown text."""
        status = report["status"]
        model = report["model"]
        lines = [
            f"## {ICON.get(status, '')} Model audit: **{status.upper()}**"
            + (" (no gate was checked)" if status == "info" else ""),
            "",
            f"`{model.get('path')}` · sha256 `{str(model.get('sha256'))[:12]}` · opset {model.get('opset')} · "
            f"{model.get('device')}",
        ]
        if report.get("interrupted"):
            lines += ["", "> **Interrupted**: this report is partial."]
        lines += ["", "| check | status | key metrics | gates |", "|---|---|---|---|"]
        for c in report["checks"]:
            metrics = ", ".join(f"{k}={fmt_value(v)}" for k, v in scalar_metrics(c["metrics"])[:4])
            gates = "; ".join(
                f"{ICON.get(g['status'], '')} {g['metric']} {g['op']} {g['threshold']:g}" for g in c["gates"]
            )
            if c["status"] == "error":
                metrics = f"error: {c.get('error', '')}"[:120]
            elif c["status"] == "skipped":
                metrics = f"skipped: {c.get('skip_reason', '')}"[:120]
            icon = ICON.get(c["status"], "")
            lines.append(f"| `{c['id']}` | {icon} {c['status']} | {cell(metrics)} | {cell(gates)} |")
        failing = [(c, g) for c in report["checks"] for g in c["gates"] if g["status"] != "pass"]
        if failing:
            lines += ["", "### Gates not met", ""]
            lines += [f"- `{c['id']}`: {cell(g['message'])}" for c, g in failing]
        findings = [(c, f) for c in report["checks"] for f in c["findings"] if f["severity"] != "info"]
        if findings:
            lines += ["", "### Findings", ""]
            lines += [f"- `{c['id']}` ({f['severity']}): {cell(f['message'])}" for c, f in findings[:50]]
        s = report.get("summary", {})
        lines += ["", " · ".join(f"{k}: {v}" for k, v in s.items() if v)]
        g = report.get("gating")
        if g:
            lines += ["", f"{g['checks_gated']} of {g['checks']} checks gated, {g['gates_met']} of {g['gates']} "
                          "gates met (`info`: the check ran and nothing was asserted)"]
        lines.append("")
        return "\n".join(lines)
