"""``performance.metrics``: how well the model does its job on the audit data.

Expected calibration error follows Guo et al., "On Calibration of Modern Neural Networks" (ICML 2017):
``ECE = Σ_b |B_b|/n · |acc(B_b) − conf(B_b)|`` over equal-width bins of the top-class confidence.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from auditor import AuditContext, CheckResult, Finding, Need, Task, param
from auditor.shards import PredictionShardedCheck

DENSE_CONFUSION_CLASSES = 100
"""Up to this many classes the report holds the whole confusion matrix; above, its largest off-diagonal cells."""


def calibration_sums(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin ``(count, correct, confidence sum)`` over ``bins`` equal-width bins of the top-class confidence
    (right-closed, as in Guo et al. 2017; the first bin holds 0 too), accumulated in blocks of rows, so millions
    of predictions need no full-size temporaries."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    count = np.zeros(bins, dtype=np.int64)
    acc_sum = np.zeros(bins)
    conf_sum = np.zeros(bins)
    for start in range(0, len(y), _BLOCK):
        pb = probs[start:start + _BLOCK]
        conf = pb.max(axis=1)
        correct = (pb.argmax(axis=1) == y[start:start + _BLOCK]).astype(np.float64)
        idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
        count += np.bincount(idx, minlength=bins)
        acc_sum += np.bincount(idx, weights=correct, minlength=bins)
        conf_sum += np.bincount(idx, weights=conf, minlength=bins)
    return count, acc_sum, conf_sum


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """ECE with ``bins`` equal-width confidence bins (see :func:`calibration_sums`)."""
    count, acc_sum, conf_sum = calibration_sums(probs, y, bins)
    nz = count > 0
    return float(np.sum(np.abs(acc_sum[nz] - conf_sum[nz])) / len(y))


def calibration_bins(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> list[dict[str, Any]]:
    """The reliability diagram's numbers: per equal-width confidence bin its edges, sample count, mean
    top-class confidence and accuracy (``None`` for an empty bin); the ECE is their count-weighted gap."""
    count, acc_sum, conf_sum = calibration_sums(probs, y, bins)
    edges = np.linspace(0.0, 1.0, bins + 1).tolist()
    return [{"lower": lo, "upper": hi, "count": n, "confidence": c / n if n else None, "accuracy": a / n if n else None}
            for lo, hi, n, c, a in zip(edges[:-1], edges[1:], count.tolist(), conf_sum.tolist(), acc_sum.tolist())]


def log_loss(probs: np.ndarray, y: np.ndarray, eps: float = float(np.finfo(np.float64).eps)) -> float:
    """Mean negative log-likelihood of the true class (probabilities clipped to [eps, 1-eps] with eps the
    float64 machine epsilon, and rows renormalised, as scikit-learn does)."""
    total = 0.0
    for start in range(0, len(y), _BLOCK):  # in blocks: no full-size temporaries for millions of rows
        p = np.clip(probs[start:start + _BLOCK], eps, 1 - eps)
        yb = y[start:start + _BLOCK]
        total += float(np.sum(np.log(p[np.arange(len(yb)), yb] / p.sum(axis=1))))
    return -total / len(y)


#: Rows per block of the blocked computations.
_BLOCK = 1 << 18


def _rows(a: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``a[keep]``, without a copy when every row is kept."""
    return a if keep.all() else a[keep]


def top_k_accuracy(probs: np.ndarray, y: np.ndarray, k: int) -> float:
    """Share of samples whose true class is among the ``k`` highest scores (ties count against)."""
    true_score = probs[np.arange(len(y)), y]
    higher = (probs > true_score[:, None]).sum(axis=1)
    return float(np.mean(higher < k))


class PerformanceMetrics(PredictionShardedCheck):
    """Accuracy, top-k, log loss, calibration error, per-class recall, confusions; MAE, RMSE, R² for regressors."""

    name = "performance.metrics"

    class Params:
        ece_bins: int = param(15, "Bins of the calibration error.", minimum=2)
        top_k: int = param(5, "k of top-k accuracy (reported when there are more than k classes).", minimum=2)

    needs = frozenset({Need.DATA, Need.LABELS})
    metrics_doc = {
        "accuracy": "share of correct top-1 predictions",
        "top*_accuracy": "share with the true class among the top k (named top{k}_accuracy, e.g. top5_accuracy)",
        "log_loss": "mean negative log-likelihood of the true class",
        "ece": "expected calibration error (equal-width bins)",
        "calibration_bins": "per confidence bin: lower, upper, count, mean confidence, accuracy (reliability diagram)",
        "balanced_accuracy": "mean per-class recall",
        "per_class_recall": "recall of each class, keyed by class label",
        "confusion_matrix": "rows true class, columns predicted class (up to 100 classes)",
        "top_confusions": "over 100 classes: the 100 largest off-diagonal cells, {true, predicted, count}",
        "mae": "mean absolute error (regression)",
        "rmse": "root mean squared error (regression)",
        "r2": "coefficient of determination (regression)",
        "nonfinite_outputs": "samples whose output has NaN or inf",
        "n": "samples evaluated (with a known label)",
        "n_classes": "columns of the model's probabilities",
        "classes": "the class label of each column",
    }

    def summarize(self, ctx: AuditContext, params: Params) -> CheckResult:
        """Compute the metrics on the whole audit data in one batched pass."""
        data = ctx.require_data()
        pred = ctx.predictions()
        findings: list[Finding] = []
        notes = [f"outputs read as {pred.kind}"]
        if pred.nonfinite:
            findings.append(Finding(message=f"{pred.nonfinite} of {data.n} samples have NaN/inf outputs",
                                    severity="fail", data={"count": pred.nonfinite}))
        if pred.task == Task.REGRESSION:
            return CheckResult(metrics=self._regression(pred.values, data.y, pred.nonfinite),
                               findings=findings, notes=notes)
        assert pred.probs is not None and pred.labels is not None and pred.classes is not None
        y = ctx.labels()
        known = y >= 0
        if not known.all():
            findings.append(Finding(message=f"{int((~known).sum())} labels are not among the model's classes",
                                    severity="warn"))
        probs, labels, y = _rows(pred.probs, known), _rows(pred.labels, known), _rows(y, known)
        finite = np.all(np.isfinite(probs), axis=1)
        n_classes = probs.shape[1]
        metrics: dict[str, Any] = {"n": len(y), "n_classes": n_classes,
                                   "accuracy": float(np.mean(labels == y)),
                                   "nonfinite_outputs": int(pred.nonfinite)}
        k = params.top_k
        pf, yf = _rows(probs, finite), _rows(y, finite)
        if n_classes > k:
            metrics[f"top{k}_accuracy"] = top_k_accuracy(pf, yf, k) * len(yf) / max(len(y), 1)
        if pred.kind == "labels-only":
            notes.append("the model gives labels only: log loss and calibration are not defined")
        elif len(yf):
            metrics["log_loss"] = log_loss(pf, yf)
            metrics["ece"] = expected_calibration_error(pf, yf, params.ece_bins)
            metrics["calibration_bins"] = calibration_bins(pf, yf, params.ece_bins)
        pred_lab = np.where(labels < 0, n_classes, labels)  # NaN rows counted as an extra "no prediction" column
        cm = np.bincount(y * (n_classes + 1) + pred_lab, minlength=n_classes * (n_classes + 1)).reshape(
            n_classes, n_classes + 1)
        support = cm.sum(axis=1)
        recall = np.where(support > 0, np.diag(cm[:, :n_classes]) / np.maximum(support, 1), np.nan)
        metrics["balanced_accuracy"] = float(np.nanmean(recall)) if np.isfinite(recall).any() else float("nan")
        metrics["per_class_recall"] = {str(c): (None if np.isnan(r) else float(r))
                                       for c, r in zip(pred.classes, recall)}
        if n_classes <= DENSE_CONFUSION_CLASSES:
            metrics["confusion_matrix"] = cm[:, :n_classes].tolist()
        else:  # an ImageNet head's 1000 x 1000 matrix is a million numbers: too big for a report, unreadable in it
            off = cm[:, :n_classes] * (1 - np.eye(n_classes, dtype=cm.dtype))
            flat = np.flatnonzero(off)
            top = flat[np.argsort(-off.ravel()[flat], kind="stable")[:DENSE_CONFUSION_CLASSES]]
            t, q = np.divmod(top, n_classes)
            metrics["top_confusions"] = [{"true": str(pred.classes[a]), "predicted": str(pred.classes[b]),
                                          "count": int(off[a, b])} for a, b in zip(t, q)]
            notes.append(f"{n_classes} classes: the confusion matrix is not stored; top_confusions lists its "
                         f"{len(top)} largest off-diagonal cells")
        metrics["classes"] = [c if isinstance(c, (int, str)) else str(c) for c in pred.classes]
        return CheckResult(metrics=metrics, findings=findings, notes=notes)

    @staticmethod
    def _regression(values: np.ndarray | None, y: np.ndarray | None, nonfinite: int) -> dict[str, Any]:
        assert values is not None and y is not None
        v = np.asarray(values, dtype=np.float64)
        t = np.asarray(y, dtype=np.float64).reshape(v.shape)
        err = v - t
        ss_res = float(np.sum(err**2))
        ss_tot = float(np.sum((t - t.mean(axis=0)) ** 2))
        return {
            "n": len(t),
            "mae": float(np.mean(np.abs(err))),
            "rmse": float(np.sqrt(np.mean(err**2))),
            "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
            "nonfinite_outputs": int(nonfinite),
        }
