"""``transfer.filter_shift``: divergence between the 3×3 convolution filters of the model and a reference.

Gavrikov & Keuper, "CNN Filter DB: An Empirical Investigation of Trained Convolutional Filters" (CVPR 2022),
compare the distributions of 3×3 filters of models, layer depth by layer depth, in the basis of the
filters' principal components ("eigen-filters"), by the KL divergence of the coefficient distributions.
Here, per depth: the filters of both models are pooled, the basis is the SVD of the pooled 9-vectors, each of
the 9 coefficient distributions is estimated by a histogram on shared bins (a pseudo-count of ½ per bin), and
``KL(model ‖ reference)`` and the Jensen–Shannon divergence are averaged over the 9 coefficients.

Depth: the i-th of L 3×3 convolutions (graph order) belongs to depth bin ``⌊i·B/L⌋``, so models with
different numbers of layers are compared at the same relative depth (B = the smaller count by default).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from auditor import AuditContext, Check, CheckResult, ModelHandle, Need, SkipCheck, param
from auditor_transfer._common import headlined, jsonable, pick_references, reference_param
from auditor_transfer.stats import filter_basis, histogram_divergences


def conv3x3_filters(model: ModelHandle) -> list[tuple[str, np.ndarray]]:
    """``(node name, filters (k, 9))`` of each Conv with 3×3 kernels, in graph order (one row per
    output-channel/input-channel kernel). Weights are read one tensor at a time."""
    refs = {w.name: w for w in model.weights()}
    out: list[tuple[str, np.ndarray]] = []
    for node in model.proto.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in refs:
            continue
        ref = refs[node.input[1]]
        if len(ref.shape) != 4 or tuple(ref.shape[2:]) != (3, 3):
            continue
        w = np.asarray(model.read_weight(ref), dtype=np.float64)
        out.append((node.name or node.output[0], w.reshape(-1, 9)))
    return out


def depth_bins(count: int, bins: int) -> np.ndarray:
    """Depth bin of each of ``count`` layers (relative depth)."""
    return (np.arange(count) * bins) // count


class FilterShift(Check):
    """Per-depth divergence of the 3×3 filter distributions of the model and each reference (weights only)."""

    name = "transfer.filter_shift"

    class Params:
        depth_bins: int | None = param(None, "Depth bins; null: the smaller number of 3×3 convolutions of the two "
                "models (one layer per bin when both have the same).", minimum=1)
        bins: int | None = param(None, "Histogram bins per coefficient; null: √(filters of the smaller side), 5 to 50.",
                minimum=2)
        reference: str | None = reference_param()

    needs = frozenset({Need.REFERENCE})
    metrics_doc = {
        "mean_kl": "mean over depths of KL(model ‖ reference) of the filter coefficient distributions, nats; "
                   "0 = same distribution (first reference)",
        "max_kl": "largest per-depth KL",
        "mean_js": "mean over depths of the Jensen–Shannon divergence; 0..ln 2 (0.693)",
        "max_js": "largest per-depth Jensen–Shannon divergence",
        "per_depth": "per depth bin: model/reference layers, filter counts, kl, js",
        "n_depths": "depth bins compared",
        "by_reference": "all of the above for each reference, by name",
    }

    def run(self, ctx: AuditContext, params: Params) -> CheckResult:
        """Read the filters of both models and compare them depth by depth."""
        refs = pick_references(ctx, params.reference)
        mine = conv3x3_filters(ctx.model)
        if not mine:
            raise SkipCheck("the model has no 3×3 convolutions")
        by_ref: dict[str, dict[str, Any]] = {}
        notes: list[str] = []
        for name, ref in refs.items():
            ctx.check_cancelled()
            theirs = conv3x3_filters(ref)
            if not theirs:
                notes.append(f"{name}: no 3×3 convolutions")
                continue
            by_ref[name] = jsonable(self._compare(mine, theirs, params.depth_bins, params.bins))
        if not by_ref:
            raise SkipCheck("no reference has 3×3 convolutions")
        return CheckResult(metrics=headlined(by_ref, notes), notes=notes)

    @staticmethod
    def _compare(mine: list[tuple[str, np.ndarray]], theirs: list[tuple[str, np.ndarray]],
                 n_bins: int | None, hist_bins: int | None) -> dict[str, Any]:
        nb = int(n_bins) if n_bins is not None else min(len(mine), len(theirs))
        nb = min(nb, len(mine), len(theirs))
        bm = depth_bins(len(mine), nb)
        br = depth_bins(len(theirs), nb)
        per_depth: list[dict[str, Any]] = []
        for d in range(nb):
            fm = np.concatenate([f for (_, f), b in zip(mine, bm) if b == d])
            fr = np.concatenate([f for (_, f), b in zip(theirs, br) if b == d])
            basis = filter_basis(np.concatenate([fm, fr]))
            bins = int(hist_bins) if hist_bins is not None else int(np.clip(np.sqrt(min(len(fm), len(fr))), 5, 50))
            kl, js = histogram_divergences(fm @ basis.T, fr @ basis.T, bins)
            per_depth.append({
                "depth": d,
                "model_layers": [n for (n, _), b in zip(mine, bm) if b == d],
                "reference_layers": [n for (n, _), b in zip(theirs, br) if b == d],
                "model_filters": len(fm), "reference_filters": len(fr), "bins": bins,
                "kl": float(kl.mean()), "js": float(js.mean()),
            })
        kls, jss = ([r[k] for r in per_depth] for k in ("kl", "js"))
        return {"mean_kl": float(np.mean(kls)), "max_kl": float(np.max(kls)), "mean_js": float(np.mean(jss)),
                "max_js": float(np.max(jss)), "n_depths": nb, "per_depth": per_depth}
