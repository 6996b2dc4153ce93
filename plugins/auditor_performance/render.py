"""The HTML figures of ``performance.metrics``: a reliability diagram (accuracy against mean confidence per
confidence bin, the diagonal a perfectly calibrated model would follow, the baseline's bins overlaid) above the
bin counts, then the generic plots of the other metrics."""

from __future__ import annotations

from typing import Any

from auditor import CheckReport, hookimpl
from auditor.report.plots import designed_section, new_figure

CHECK = "performance.metrics"


def _filled(bins: Any) -> list[dict[str, Any]]:
    """The non-empty bins of a ``calibration_bins`` list (anything else: none)."""
    if not isinstance(bins, list):
        return []
    return [b for b in bins if isinstance(b, dict) and b.get("count") and b.get("accuracy") is not None
            and b.get("confidence") is not None]


def reliability_figure(bins: list[dict[str, Any]], baseline: list[dict[str, Any]] | None = None) -> Any:
    """A matplotlib figure: top, one bar per non-empty bin spanning its edges with the bin's accuracy as height
    and a marker at its mean confidence; bottom, the sample count per bin. ``baseline`` bins (if any) are drawn
    as a dashed line over their (confidence, accuracy) points."""
    fig = new_figure(5.2, 4.4)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    full = [b for b in bins if isinstance(b, dict)]
    filled = _filled(full)
    lefts = [float(b["lower"]) for b in filled]
    widths = [float(b["upper"]) - float(b["lower"]) for b in filled]
    top.bar(lefts, [float(b["accuracy"]) for b in filled], width=widths, align="edge", color="#4c78a8",
            edgecolor="#2f4b7c", label="accuracy")
    top.plot([float(b["confidence"]) for b in filled], [float(b["accuracy"]) for b in filled], "o", ms=3,
             color="#1f2328", label="mean confidence")
    top.plot([0, 1], [0, 1], ":", color="#6e7781", label="perfect calibration")
    base = _filled(baseline)
    if base:
        top.plot([float(b["confidence"]) for b in base], [float(b["accuracy"]) for b in base], "s--", ms=3,
                 color="#e45756", label="baseline")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.02)
    top.set_ylabel("accuracy")
    top.legend(fontsize=7, loc="upper left")
    top.grid(alpha=0.3)
    bottom.bar([float(b["lower"]) for b in full], [int(b.get("count") or 0) for b in full],
               width=[float(b["upper"]) - float(b["lower"]) for b in full], align="edge", color="#9ecae9")
    bottom.set_xlabel("top-class confidence")
    bottom.set_ylabel("samples")
    bottom.grid(alpha=0.3)
    return fig


@hookimpl
def auditor_render_check(check: CheckReport, fmt: str) -> str | None:
    """The section's figures for ``performance.metrics`` in HTML; ``None`` for other checks and formats."""
    if check.use != CHECK or fmt != "html":
        return None
    bins = check.metrics.get("calibration_bins")
    if not isinstance(bins, list) or not _filled(bins):
        return None  # regression, labels-only or an older report: the generic plots
    baseline = (check.baseline_metrics or {}).get("calibration_bins")
    ece = check.metrics.get("ece")
    caption = "reliability diagram: accuracy per confidence bin"
    if isinstance(ece, float):
        caption += f" (ECE {ece:.4g})"
    if _filled(baseline):
        caption += "; dashed: the baseline"
    return designed_section(check, reliability_figure(bins, baseline), label="reliability diagram of "
                            "calibration_bins", caption=caption, skip=("calibration_bins",))
