"""The HTML figures of ``bias.group_metrics``: a forest plot of every group's accuracy with its bootstrap interval
(and the baseline's, where the baseline ran), beside the headline disparities with their intervals and the gates
on them; then the generic plots of the other metrics."""

from __future__ import annotations

import math
from typing import Any

from auditor import CheckReport, hookimpl
from auditor.report.plots import designed_section, new_figure

CHECK = "bias.group_metrics"
#: The headline disparities, in the order the figure lists them.
DISPARITIES = ("demographic_parity_difference", "equalized_odds_difference", "equal_opportunity_difference",
               "accuracy_difference", "demographic_parity_ratio", "equalized_odds_ratio", "equal_opportunity_ratio")


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _interval(v: Any) -> tuple[float, float] | None:
    if isinstance(v, list) and len(v) == 2 and all(_num(x) is not None for x in v):
        return float(v[0]), float(v[1])
    return None


def _rows(ax: Any, values: list[float], ivs: list[tuple[float, float] | None], labels: list[str], title: str,
          **style: Any) -> None:
    """One row per value, top to bottom, with its interval (asymmetric ``xerr``; none where ``ivs`` has none)."""
    ys = list(range(len(values)))
    errors = [[max(v - iv[0], 0.0) if iv else 0.0 for v, iv in zip(values, ivs)],
              [max(iv[1] - v, 0.0) if iv else 0.0 for v, iv in zip(values, ivs)]]
    ax.errorbar(values, ys, xerr=errors, capsize=3, **style)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)


def forest_figure(check: CheckReport) -> Any:
    """A matplotlib figure: left, one row per group (``name (n=count)``) with its accuracy and bootstrap
    interval, the baseline's accuracy as a red cross; right, one row per headline disparity with its interval
    and a red bar at each gate's threshold. ``None`` when no group has an accuracy."""
    m = check.metrics
    raw = m.get("per_group")
    per_group: dict[str, Any] = raw if isinstance(raw, dict) else {}
    groups = [(k, r) for k, r in per_group.items() if isinstance(r, dict) and _num(r.get("accuracy")) is not None]
    if not groups:
        return None
    raw_ci = m.get("ci")
    ci: dict[str, Any] = raw_ci if isinstance(raw_ci, dict) else {}
    disp = [k for k in DISPARITIES if _num(m.get(k)) is not None]
    rows = max(len(groups), len(disp), 1)
    fig = new_figure(9.0, 1.2 + 0.32 * rows)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1]})
    acc = [float(r["accuracy"]) for _, r in groups]
    ivs = [_interval(r.get("accuracy_ci")) for _, r in groups]
    _rows(left, acc, ivs, [f"{k[:24]} (n={r.get('count')})" for k, r in groups],
          "accuracy by group" + (" (bootstrap intervals)" if any(ivs) else ""), fmt="o", color="#4c78a8",
          label="accuracy")
    base = (check.baseline_metrics or {}).get("per_group")
    if isinstance(base, dict):
        pts = [(float(b["accuracy"]), y) for y, (k, _) in enumerate(groups)
               if isinstance(b := base.get(k), dict) and _num(b.get("accuracy")) is not None]
        if pts:
            left.plot([p[0] for p in pts], [p[1] for p in pts], "x", color="#e45756", ms=7, ls="none",
                      label="baseline")
    left.legend(fontsize=7, loc="lower left")
    if disp:
        _rows(right, [float(m[k]) for k in disp], [_interval(ci.get(k)) for k in disp], disp,
              "disparities between groups", fmt="s", color="#1f2328", label="value")
        gates = [(g.threshold, disp.index(g.metric)) for g in check.gates
                 if g.metric in disp and g.op in ("min", "max")]  # a max_drop bound is a change, not a place
        if gates:
            right.plot([t for t, _ in gates], [y for _, y in gates], "|", ms=14, mew=2, color="#cf222e",
                       ls="none", label="gate")
            right.legend(fontsize=7, loc="lower right")
    else:
        right.set_visible(False)
    return fig


@hookimpl
def auditor_render_check(check: CheckReport, fmt: str) -> str | None:
    """The forest plot and the generic plots of the other metrics for ``bias.group_metrics`` in HTML."""
    if check.use != CHECK or fmt != "html":
        return None
    fig = forest_figure(check)
    if fig is None:
        return None  # one-vs-rest without accuracies, or an older report: the generic plots
    caption = "accuracy per group and the disparities, with bootstrap intervals where computed; red: gates"
    return designed_section(check, fig, label="forest plot of per_group and disparities", caption=caption,
                            skip=("per_group", "ci"))
