"""``bias.group_metrics``: who the model fails. Per-group rates, between-group disparities with Fairlearn's
definitions, worst-group accuracy, and seeded bootstrap confidence intervals.

Every quantity is derived from three per-group, per-class counts: true positives ``TP[g, k]`` (correct
predictions of class k), positives ``P[g, k]`` (true class k) and selections ``S[g, k]`` (predicted class k),
plus the group size ``n[g]``. For class k (one-vs-rest when there are more than two classes):

- selection rate ``S/n``; TPR ``TP/P``; FPR ``(S−TP)/(n−P)``; precision ``TP/S`` (an empty denominator
  gives 0, the convention of scikit-learn's confusion matrix that Fairlearn's rates inherit);
- demographic parity difference ``max_g S/n − min_g S/n`` and ratio ``min/max`` (Fairlearn,
  ``MetricFrame.difference/ratio(method="between_groups")``);
- equalized odds difference ``max(ΔTPR, ΔFPR)`` and ratio ``min(TPR ratio, FPR ratio)`` (Hardt, Price &
  Srebro, "Equality of Opportunity in Supervised Learning", NeurIPS 2016; Fairlearn's ``worst_case``);
- equal opportunity difference ``ΔTPR`` (Hardt et al. 2016);
- accuracy difference ``max_g acc − min_g acc`` and worst-group accuracy ``min_g acc`` (the quantity
  group-robust training optimises: Sagawa et al., "Distributionally Robust Neural Networks", ICLR 2020).

Calibration error per group is the expected calibration error of Guo et al., "On Calibration of Modern Neural
Networks" (ICML 2017): ``ECE = Σ_b |B_b|/n · |acc(B_b) − conf(B_b)|`` over equal-width bins of the top-class
confidence. Confidence intervals are percentile bootstrap intervals (Efron & Tibshirani 1993) with rows
resampled within each group, so every replicate keeps the group sizes of the data. Worst-group accuracy and
intervals rather than one average follow the catalogue's Bias table ("Accuracy on the Curve…", "A Textbook Remedy
for Domain Shifts…").
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from auditor import AuditContext, CheckResult, Finding, Need, SkipCheck, Task, param
from auditor.jsonenc import number_or_none as num
from auditor.shards import PredictionShardedCheck
from auditor_bias._common import class_label, find_class, group_columns, group_rows

# bootstrap draws held in memory at once (int64 indices): bounds the working set to ~32 MB
_MAX_DRAWS = 4_000_000


@dataclass(frozen=True)
class Counts:
    """Per-group, per-class counts; leading axes (bootstrap replicates) are allowed.

    ``tp``, ``pos`` and ``sel`` are (..., G, C); ``n`` is (..., G).
    """

    tp: np.ndarray
    pos: np.ndarray
    sel: np.ndarray
    n: np.ndarray


def _tally(y: np.ndarray, p: np.ndarray, off: np.ndarray, cells: int, c1: int) -> list[np.ndarray]:
    """``tp``, ``pos`` and ``sel`` as (cells, c1) arrays: class codes ``y`` (true) and ``p`` (predicted, C for
    none) counted in the ``c1`` cells at offset ``off`` (a group's or a replicate's)."""
    true, chosen = (y + off).ravel(), (p + off).ravel()
    hit = (p == y).ravel().astype(np.float64)
    out = [np.bincount(true, weights=hit, minlength=cells * c1), np.bincount(true, minlength=cells * c1),
           np.bincount(chosen, minlength=cells * c1)]
    return [a.reshape(cells, c1).astype(np.float64) for a in out]


def group_counts(y: np.ndarray, pred: np.ndarray, codes: np.ndarray, n_groups: int, n_classes: int) -> Counts:
    """Counts of the rows with ``codes >= 0`` and ``y >= 0``; ``pred == -1`` (no prediction: NaN output)
    counts as wrong and selects no class."""
    keep = (codes >= 0) & (y >= 0)
    g, c1 = codes[keep], n_classes + 1
    tp, pos, sel = _tally(y[keep], np.where(pred[keep] < 0, n_classes, pred[keep]), g * c1, n_groups, c1)
    n = np.bincount(g, minlength=n_groups).astype(np.float64)
    return Counts(tp=tp[:, :n_classes], pos=pos[:, :n_classes], sel=sel[:, :n_classes], n=n)


def bootstrap_counts(y: np.ndarray, pred: np.ndarray, codes: np.ndarray, n_groups: int, n_classes: int,
                     replicates: int, rng: np.random.Generator) -> Counts:
    """Counts of ``replicates`` bootstrap resamples, rows drawn with replacement within each group.

    Returns arrays with a leading replicate axis. Vectorised: one ``bincount`` per group and chunk of
    replicates, never a loop over rows.
    """
    keep = (codes >= 0) & (y >= 0)
    y, g = y[keep], codes[keep]
    c1 = n_classes + 1
    p = np.where(pred[keep] < 0, n_classes, pred[keep])
    tp, pos, sel = (np.zeros((replicates, n_groups, c1)) for _ in range(3))
    n = np.zeros((replicates, n_groups))
    for gi in range(n_groups):
        rows = np.flatnonzero(g == gi)
        ng = len(rows)
        n[:, gi] = ng
        if ng == 0:
            continue
        yg, pg = y[rows], p[rows]
        step = max(1, _MAX_DRAWS // ng)
        for b0 in range(0, replicates, step):
            b1 = min(replicates, b0 + step)
            draw = rng.integers(0, ng, size=(b1 - b0, ng))
            off = (np.arange(b1 - b0) * c1)[:, None]
            tp[b0:b1, gi], pos[b0:b1, gi], sel[b0:b1, gi] = _tally(yg[draw], pg[draw], off, b1 - b0, c1)
    return Counts(tp=tp[..., :n_classes], pos=pos[..., :n_classes], sel=sel[..., :n_classes], n=n)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a / b`` with 0 where ``b == 0`` (scikit-learn's ``confusion_matrix(normalize=...)`` convention)."""
    return np.where(b > 0, a / np.where(b > 0, b, 1.0), 0.0)


def group_rates(c: Counts) -> dict[str, np.ndarray]:
    """Per-group rates: ``accuracy`` (..., G); the others (..., G, C), one column per class (one-vs-rest)."""
    n = c.n[..., None]
    return {
        "accuracy": _div(c.tp.sum(axis=-1), c.n),
        "selection_rate": _div(c.sel, n),
        "tpr": _div(c.tp, c.pos),
        "fpr": _div(c.sel - c.tp, n - c.pos),
        "precision": _div(c.tp, c.sel),
    }


def _ratio(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``min / max`` between groups; NaN when the largest is 0 (Fairlearn divides 0 by 0)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(hi > 0, lo / np.where(hi > 0, hi, 1.0), np.nan)


def disparities(rates: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Between-group differences (max − min) and ratios (min / max) over the group axis.

    Class-wise quantities are (..., C); accuracy ones (...).
    """
    out: dict[str, np.ndarray] = {}
    for name, key in (("demographic_parity", "selection_rate"), ("tpr", "tpr"), ("fpr", "fpr")):
        r = rates[key]
        out[f"{name}_difference"] = r.max(axis=-2) - r.min(axis=-2)
        out[f"{name}_ratio"] = _ratio(r.min(axis=-2), r.max(axis=-2))
    out["equalized_odds_difference"] = np.maximum(out["tpr_difference"], out["fpr_difference"])
    # the smaller of the two ratios; an undefined one (0/0) is ignored rather than propagated
    out["equalized_odds_ratio"] = np.fmin(out["tpr_ratio"], out["fpr_ratio"])
    out["equal_opportunity_difference"] = out.pop("tpr_difference")
    out["equal_opportunity_ratio"] = out.pop("tpr_ratio")
    del out["fpr_difference"], out["fpr_ratio"]
    acc = rates["accuracy"]
    out["accuracy_difference"] = acc.max(axis=-1) - acc.min(axis=-1)
    out["worst_group_accuracy"] = acc.min(axis=-1)
    return out


_CLASSWISE = ("demographic_parity_difference", "demographic_parity_ratio", "equalized_odds_difference",
              "equalized_odds_ratio", "equal_opportunity_difference", "equal_opportunity_ratio")


def headline(d: dict[str, np.ndarray], positive: int | None) -> dict[str, np.ndarray]:
    """Scalars (per replicate) from class-wise disparities: the positive class for a binary model, else the
    worst class (largest difference, smallest ratio; undefined classes ignored)."""
    out: dict[str, np.ndarray] = {}
    for k in _CLASSWISE:
        v = d[k]
        if positive is not None:
            out[k] = v[..., positive]
        else:
            with warnings.catch_warnings():  # a class undefined in every group stays NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                out[k] = np.nanmin(v, axis=-1) if k.endswith("ratio") else np.nanmax(v, axis=-1)
    out["accuracy_difference"] = d["accuracy_difference"]
    out["worst_group_accuracy"] = d["worst_group_accuracy"]
    return out


def group_ece(probs: np.ndarray, y: np.ndarray, codes: np.ndarray, n_groups: int, bins: int) -> np.ndarray:
    """Expected calibration error of each group (Guo et al. 2017, right-closed equal-width bins of the
    top-class confidence); rows with unknown labels, missing groups or non-finite outputs are left out."""
    ok = (codes >= 0) & (y >= 0) & np.all(np.isfinite(probs), axis=1)
    p, yy, g = probs[ok], y[ok], codes[ok]
    conf = p.max(axis=1)
    hit = (p.argmax(axis=1) == yy).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    b = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    cell = g * bins + b
    size = n_groups * bins
    cnt = np.bincount(cell, minlength=size).reshape(n_groups, bins)
    acc = np.bincount(cell, weights=hit, minlength=size).reshape(n_groups, bins)
    cs = np.bincount(cell, weights=conf, minlength=size).reshape(n_groups, bins)
    tot = cnt.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, np.abs(acc - cs).sum(axis=1) / np.where(tot > 0, tot, 1), np.nan)


def _interval(samples: np.ndarray, confidence: float) -> list[float | None]:
    """Percentile interval of bootstrap replicates (NaN replicates ignored)."""
    s = samples[np.isfinite(samples)]
    if s.size == 0:
        return [None, None]
    a = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(s, [a, 1.0 - a])
    return [float(lo), float(hi)]


class GroupMetrics(PredictionShardedCheck):
    """Per-group rates and calibration, between-group disparities, worst-group accuracy, bootstrap intervals."""

    name = "bias.group_metrics"

    class Params:
        group: str | list[str] | None = param(None, "Group column, or several for their intersections (default: every "
                "data.groups column).")
        positive_class: str | int | None = param(None, "Positive class of a binary model (default: its second class). "
                "Ignored for multi-class models, which are audited one-vs-rest per class.")
        bootstrap: int = param(200, "Bootstrap replicates for the confidence intervals (0: no intervals).", minimum=0)
        confidence: float = param(0.95, "Confidence level of the percentile intervals.", minimum=0.5, maximum=0.999)
        min_group_size: int = param(30, "Groups smaller than this are flagged (their numbers are still reported).",
                minimum=1)
        ece_bins: int = param(15, "Equal-width confidence bins of the per-group calibration error.", minimum=2)

    needs = frozenset({Need.DATA, Need.LABELS, Need.GROUPS})
    metrics_doc = {
        "n": "rows used (labelled, with a group value)",
        "n_groups": "groups observed (combinations that occur, for several columns)",
        "group_columns": "the column(s) defining the groups",
        "missing_group_rows": "rows left out because a group value is missing",
        "unknown_label_rows": "rows left out because their label is not one of the model's classes",
        "mode": "'binary' (positive class) or 'one-vs-rest' (multi-class: headline = worst class)",
        "positive_class": "the positive class (binary mode)",
        "per_group": "per group: count, positives, accuracy, selection_rate, tpr, fpr, precision, "
                     "calibration_error, small, accuracy_ci (rates are {class: value} in one-vs-rest mode)",
        "demographic_parity_difference": "max − min selection rate over groups",
        "demographic_parity_ratio": "min / max selection rate over groups",
        "equalized_odds_difference": "max(TPR difference, FPR difference)",
        "equalized_odds_ratio": "min(TPR ratio, FPR ratio)",
        "equal_opportunity_difference": "max − min TPR over groups",
        "equal_opportunity_ratio": "min / max TPR over groups",
        "accuracy_difference": "max − min accuracy over groups",
        "worst_group_accuracy": "lowest group accuracy",
        "worst_group": "the group with the lowest accuracy",
        "per_class": "one-vs-rest mode: the six class-wise disparities per class",
        "ci": "{metric: [low, high]} percentile bootstrap intervals of the headline metrics",
        "small_groups": "groups with fewer than min_group_size rows",
    }

    def summarize(self, ctx: AuditContext, p: Params) -> CheckResult:
        """Compute everything from one forward pass on the audit data (shared with other checks)."""
        data = ctx.require_data()
        pred = ctx.predictions()
        if pred.task != Task.CLASSIFICATION or pred.probs is None or pred.labels is None or pred.classes is None:
            raise SkipCheck("group metrics need a classifier (the model's outputs read as regression)")
        groups = group_rows(data, group_columns(p.group, data))
        if groups.n_groups == 0:
            raise SkipCheck(f"no row has a value in {', '.join(groups.columns)}")
        y = ctx.labels()
        n_classes = pred.probs.shape[1]
        binary = n_classes == 2
        positive = None
        if binary:
            positive = 1 if p.positive_class is None else find_class(p.positive_class, pred.classes)
        counts = group_counts(y, pred.labels, groups.codes, groups.n_groups, n_classes)
        classes = [class_label(c) for c in pred.classes]

        # groups whose rows all have unknown labels are left out of the rates (their count is 0)
        keep_idx = np.flatnonzero(counts.n > 0)
        if not len(keep_idx):
            raise SkipCheck("no row with a group value has a label among the model's classes")
        remap = np.full(groups.n_groups, -1)
        remap[keep_idx] = np.arange(len(keep_idx))
        codes = np.where(groups.codes >= 0, remap[np.maximum(groups.codes, 0)], -1)
        keys = [groups.keys[i] for i in keep_idx]
        counts = Counts(tp=counts.tp[keep_idx], pos=counts.pos[keep_idx], sel=counts.sel[keep_idx],
                        n=counts.n[keep_idx])
        rates = group_rates(counts)
        disp = disparities(rates)
        head = headline(disp, positive)
        ece = group_ece(pred.probs, y, groups.codes, groups.n_groups, int(p.ece_bins))[keep_idx]

        metrics: dict[str, Any] = {
            "n": int(counts.n.sum()),
            "n_groups": len(keys),
            "group_columns": list(groups.columns),
            "missing_group_rows": groups.missing,
            "unknown_label_rows": int(np.sum((y < 0) & (groups.codes >= 0))),
            "mode": "binary" if binary else "one-vs-rest",
        }
        if positive is not None:
            metrics["positive_class"] = classes[positive]
        for k, v in head.items():
            metrics[k] = num(float(v))
        worst = int(np.argmin(rates["accuracy"]))
        metrics["worst_group"] = keys[worst]
        if not binary:
            metrics["per_class"] = {str(c): {k: num(disp[k][j]) for k in _CLASSWISE} for j, c in enumerate(classes)}

        min_size = int(p.min_group_size)
        per_group: dict[str, dict[str, Any]] = {}

        def by_class(row: np.ndarray, cast: Any = float) -> Any:
            """A rate row: the positive class's value (binary), else ``{class: value}``."""
            return cast(row[positive]) if positive is not None else {str(c): cast(v) for c, v in zip(classes, row)}

        for gi, key in enumerate(keys):
            entry: dict[str, Any] = {"count": int(counts.n[gi]), "accuracy": float(rates["accuracy"][gi])}
            entry.update({r: by_class(rates[r][gi]) for r in ("selection_rate", "tpr", "fpr", "precision")})
            entry["positives"] = by_class(counts.pos[gi], int)
            entry["calibration_error"] = None if pred.kind == "labels-only" else num(ece[gi])
            entry["small"] = bool(counts.n[gi] < min_size)
            per_group[key] = entry
        metrics["per_group"] = per_group
        small = [k for k in keys if per_group[k]["small"]]
        metrics["small_groups"] = small

        notes = [f"groups: {', '.join(groups.columns)}"
                 + (" (intersections of the observed combinations)" if len(groups.columns) > 1 else ""),
                 "rates with an empty denominator are 0 (scikit-learn/Fairlearn convention)"]
        if binary:
            notes.append(f"binary: positive class {classes[positive or 0]!r}")
        else:
            notes.append(f"{n_classes} classes: rates one-vs-rest per class; headline disparities are the worst "
                         "class (largest difference, smallest ratio)")
        if pred.kind == "labels-only":
            notes.append("the model gives labels only: calibration error is not defined")

        replicates = int(p.bootstrap)
        if replicates > 0:
            ctx.check_cancelled()
            boot = bootstrap_counts(y, pred.labels, codes, len(keys), n_classes, replicates, ctx.rng)
            brates = group_rates(boot)
            bhead = headline(disparities(brates), positive)
            conf = float(p.confidence)
            metrics["ci"] = {k: _interval(v, conf) for k, v in bhead.items()}
            for gi, key in enumerate(keys):
                per_group[key]["accuracy_ci"] = _interval(brates["accuracy"][:, gi], conf)
            notes.append(f"{replicates} bootstrap replicates, rows resampled within each group (seeded); "
                         f"{conf:.0%} percentile intervals")

        findings: list[Finding] = []
        if small:
            findings.append(Finding(
                message=f"{len(small)} group(s) with fewer than {min_size} rows: {', '.join(small[:10])}"
                        + (" …" if len(small) > 10 else "") + " (numbers reported, intervals wide)",
                severity="warn", data={"groups": small}))
        if groups.missing:
            findings.append(Finding(message=f"{groups.missing} rows have no value in {', '.join(groups.columns)} "
                                            "and are left out", severity="info",
                                    data={"count": groups.missing}))
        if len(keys) < 2:
            findings.append(Finding(message="only one group: between-group differences are 0 by definition",
                                    severity="warn"))
        return CheckResult(metrics=metrics, findings=findings, notes=notes)
