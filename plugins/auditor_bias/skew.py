"""``bias.prediction_skew``: does the model over-predict some classes? The predicted class histogram against
the true one.

Prediction bias towards some classes (Ma et al., "Happy: A Debiased Learning Framework for Continual
Generalized Category Discovery", NeurIPS 2024) shows as a predicted histogram that differs from the label
histogram. With predicted shares ``p_k`` and true shares ``q_k``:

- ``chi2_distance = ½ Σ_k (p_k − q_k)² / (p_k + q_k)`` (the symmetric chi-square distance, in [0, 1]; Puzicha
  et al., "Non-parametric similarity measures for unsupervised texture segmentation", CVPR 1997);
- ``pearson_chi2 = Σ_k (O_k − E_k)² / E_k`` with ``O`` the predicted and ``E`` the true counts (Pearson's
  statistic, over classes that occur in the labels);
- ``total_variation = ½ Σ_k |p_k − q_k|``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from auditor import AuditContext, CheckResult, Finding, Need, SkipCheck, Task, param
from auditor.shards import PredictionShardedCheck
from auditor_bias._common import class_label


def skew_stats(pred_counts: np.ndarray, true_counts: np.ndarray) -> dict[str, float]:
    """Distances between the predicted and true class histograms (equal totals assumed for Pearson's)."""
    o = np.asarray(pred_counts, dtype=np.float64)
    e = np.asarray(true_counts, dtype=np.float64)
    p, q = o / o.sum(), e / e.sum()
    s = p + q
    nz = s > 0
    seen = e > 0
    return {
        "chi2_distance": float(0.5 * np.sum((p[nz] - q[nz]) ** 2 / s[nz])),
        "pearson_chi2": float(np.sum((o[seen] - e[seen]) ** 2 / e[seen])),
        "total_variation": float(0.5 * np.sum(np.abs(p - q))),
    }


class PredictionSkew(PredictionShardedCheck):
    """Predicted class histogram against the true one, with a chi-square distance."""

    name = "bias.prediction_skew"

    class Params:
        max_chi2_distance: float = param(0.05, "A warning finding above this chi-square distance.",
                minimum=0, maximum=1)

    needs = frozenset({Need.DATA, Need.LABELS})
    metrics_doc = {
        "n": "rows with a known label and a prediction",
        "predicted_counts": "{class: rows predicted as it}",
        "true_counts": "{class: rows labelled as it}",
        "predicted_share": "{class: predicted share}", "true_share": "{class: true share}",
        "chi2_distance": "½ Σ (p − q)² / (p + q) over classes",
        "pearson_chi2": "Σ (predicted − true count)² / true count over classes present in the labels",
        "total_variation": "½ Σ |p − q|",
        "most_overpredicted_class": "class with the largest predicted / true share ratio",
        "overprediction_ratio": "its predicted / true share (inf-free: classes absent from labels excluded)",
        "most_underpredicted_class": "class with the smallest predicted / true share ratio",
        "underprediction_ratio": "its predicted / true share",
        "predicted_absent_classes": "classes predicted but never in the labels",
    }

    def summarize(self, ctx: AuditContext, p: Params) -> CheckResult:
        """Histograms from the shared forward pass on the whole audit data."""
        pred = ctx.predictions()
        if pred.task != Task.CLASSIFICATION or pred.labels is None or pred.classes is None:
            raise SkipCheck("prediction skew needs a classifier")
        y = ctx.labels()
        ok = (y >= 0) & (pred.labels >= 0)
        if not ok.any():
            raise SkipCheck("no row has both a known label and a prediction")
        c = len(pred.classes)
        o = np.bincount(pred.labels[ok], minlength=c)
        e = np.bincount(y[ok], minlength=c)
        classes = [str(class_label(k)) for k in pred.classes]
        stats = skew_stats(o, e)
        n = int(ok.sum())
        metrics: dict[str, Any] = {
            "n": n,
            "predicted_counts": dict(zip(classes, o.tolist())),
            "true_counts": dict(zip(classes, e.tolist())),
            "predicted_share": {k: float(v) / n for k, v in zip(classes, o)},
            "true_share": {k: float(v) / n for k, v in zip(classes, e)},
            **stats,
        }
        seen = e > 0
        ratio = np.where(seen, o / np.maximum(e, 1), np.nan)
        hi, lo = int(np.nanargmax(ratio)), int(np.nanargmin(ratio))
        metrics["most_overpredicted_class"], metrics["overprediction_ratio"] = classes[hi], float(ratio[hi])
        metrics["most_underpredicted_class"], metrics["underprediction_ratio"] = classes[lo], float(ratio[lo])
        absent = [classes[i] for i in np.flatnonzero(~seen & (o > 0))]
        metrics["predicted_absent_classes"] = absent
        findings: list[Finding] = []
        if stats["chi2_distance"] > float(p.max_chi2_distance):
            findings.append(Finding(
                message=f"predicted class histogram is skewed (chi-square distance {stats['chi2_distance']:.3f}): "
                        f"class {classes[hi]!r} predicted {ratio[hi]:.2f}x as often as it occurs",
                severity="warn"))
        notes = []
        if int((~ok).sum()):
            notes.append(f"{int((~ok).sum())} rows with an unknown label or no prediction left out")
        return CheckResult(metrics=metrics, findings=findings, notes=notes)
