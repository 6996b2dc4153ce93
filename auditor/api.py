"""Views of a typed report for notebooks and scripts: a pandas frame, files in any format, an HTML fragment.

(:func:`auditor.audit`, the Python entry point that runs an audit, lives in :mod:`auditor.audit_api`.)
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

from auditor.metrics import format_value, get, leaves
from auditor.results import AuditReport

if TYPE_CHECKING:
    import pandas as pd

FRAME_COLUMNS = ["check", "use", "status", "metric", "value", "baseline", "gate", "gate_status"]


def report_frame(report: AuditReport) -> pd.DataFrame:
    """One row per (check, scalar metric leaf): see :meth:`AuditReport.to_frame`."""
    try:
        import pandas as pd
    except ImportError as exc:  # pragma: no cover - pandas is in the dev extra
        raise ImportError("AuditReport.to_frame() needs pandas (pip install pandas)") from exc
    rows: list[dict[str, Any]] = []
    for c in report.checks:
        gates: dict[str, list[str]] = {}
        gate_status: dict[str, str] = {}
        for g in c.gates:
            gates.setdefault(g.metric, []).append(f"{g.op} {g.threshold:g}")
            # the worst of the gates on one metric
            if gate_status.get(g.metric) != "fail":
                gate_status[g.metric] = g.status.value
        for name, v in leaves(c.metrics).items():
            if isinstance(v, (dict, list)):
                continue  # empty containers
            b = get(c.baseline_metrics, name)
            rows.append({"check": c.id, "use": c.use, "status": c.status.value, "metric": name, "value": v,
                         "baseline": b if not isinstance(b, (dict, list)) else None,
                         "gate": ", ".join(gates.get(name, [])) or None, "gate_status": gate_status.get(name)})
        for name in gates:  # a gate on a metric the check did not report (it failed) still gets its row
            if not any(r["check"] == c.id and r["metric"] == name for r in rows):
                rows.append({"check": c.id, "use": c.use, "status": c.status.value, "metric": name, "value": None,
                             "baseline": None, "gate": ", ".join(gates[name]), "gate_status": gate_status[name]})
    return pd.DataFrame(rows, columns=FRAME_COLUMNS)


def save_report(report: AuditReport, directory: Path, formats: list[str], plugins: Any = ()) -> list[Path]:
    """Write ``report`` in ``formats`` to ``directory`` with the installed reporters (JSON first)."""
    from auditor.errors import SpecError
    from auditor.plugins import build_registry
    from auditor.runner import write_reports

    registry = build_registry(extra_plugins=plugins)
    unknown = [f for f in formats if f not in registry.reporters]
    if unknown:
        raise SpecError("formats", [f"unknown format(s) {', '.join(unknown)} "
                                    f"(available: {', '.join(sorted(registry.reporters))})"])
    return write_reports(report, Path(directory), list(formats), registry)


_COLOUR = {"pass": "#1a7f37", "info": "#0969da", "warn": "#9a6700", "fail": "#cf222e", "error": "#82071e",
           "skipped": "#6e7781"}


def _badge(status: str) -> str:
    return (f'<span style="background:{_COLOUR.get(status, "#6e7781")};color:#fff;border-radius:8px;'
            f'padding:0 6px;font-size:11px;font-weight:600">{html.escape(status)}</span>')


def report_html(report: AuditReport) -> str:
    """A compact HTML fragment for Jupyter: status, how much was gated, one row per check with its headline
    metrics and gates (the full page is ``report.save(dir, formats=["html"])``)."""
    from auditor.report.markdown import headline

    e = html.escape
    g = report.gating
    out = [f"<div><p><b>Model audit</b> {_badge(report.status.value)} <code>{e(str(report.model.get('path')))}"
           f"</code> · {g['checks_gated']} of {g['checks']} checks gated, {g['gates_met']} of {g['gates']} gates "
           "met" + (" · <b>interrupted</b>" if report.interrupted else "") + "</p>",
           '<table><thead><tr><th style="text-align:left">check</th><th>status</th>'
           '<th style="text-align:left">metrics</th><th style="text-align:left">gates</th></tr></thead><tbody>']
    for c in report.checks:
        if c.error:
            metrics = f"error: {c.error}"
        elif c.skip_reason:
            metrics = f"skipped: {c.skip_reason}"
        else:
            metrics = ", ".join(f"{k}={format_value(v, width=40)}" for k, v in headline(c))
        gates = "<br>".join(f"{_badge(x.status.value)} {e(x.message)}" for x in c.gates)
        out.append(f'<tr><td style="text-align:left"><code>{e(c.id)}</code></td><td>{_badge(c.status.value)}</td>'
                   f'<td style="text-align:left">{e(metrics)}</td><td style="text-align:left">{gates}</td></tr>')
    out.append("</tbody></table></div>")
    return "\n".join(out)
