"""``sparsity.filters``: degenerate convolution filters, after Gavrikov & Keuper, "CNN Filter DB: An Empirical
Investigation of Trained Convolutional Filters" (CVPR 2022).

A filter is the kernel ``W[o]`` of one output channel (``in/groups × kh × kw``). Categories, disjoint in this
order (the paper's §4: "degenerated" filters):

* zero: ``max |W[o]| == 0``;
* near-zero: ``max |W[o]| < near_zero_ratio · max |W|`` (the paper's sparsity criterion, 1 % of the layer's
  largest magnitude);
* constant: ``max W[o] - min W[o] <= constant_tol · max |W|`` (zero variance: the filter only averages).

``degenerate_fraction`` = degenerate filters / filters. For 3×3 kernels the variance entropy is
``H = -Σ_i λ_i log λ_i / log 9`` with ``λ_i`` the explained-variance ratios of the PCA of all the layer's
``out × in`` 3×3 slices (as flattened 9-vectors, centred); low values flag filters collapsed onto few patterns,
values near 1 random-looking ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from auditor import AuditContext, Check, CheckResult, Finding, SkipCheck, param
from auditor_sparsity.stats import weight_stats
from auditor_sparsity.weights import LayerWeight, audited, require_layers


class _SliceScatter:
    """Running sum and scatter matrix of the ``kh·kw`` kernel slices of a conv layer (one pass)."""

    def __init__(self, lw: LayerWeight, k: int) -> None:
        self.lw = lw
        self.n = 0
        self.sum = np.zeros(k)
        self.scatter = np.zeros((k, k))
        self.k = k

    def __call__(self, rows: slice, v: np.ndarray) -> None:
        x = np.transpose(v, self.lw.perm).reshape(-1, self.k).astype(np.float64)
        self.n += x.shape[0]
        self.sum += x.sum(axis=0)
        self.scatter += x.T @ x

    def variance_ratios(self) -> np.ndarray:
        """Explained-variance ratios of the principal components of the centred slices, descending."""
        mean = self.sum / max(self.n, 1)
        cov = self.scatter - self.n * np.outer(mean, mean)
        lam = np.clip(np.linalg.eigvalsh(cov)[::-1], 0.0, None)
        total = lam.sum()
        return lam / total if total > 0 else np.zeros_like(lam)


def variance_entropy(ratios: np.ndarray) -> float:
    """Shannon entropy of the explained-variance ratios, normalised by ``log(k)`` to ``[0, 1]``: 0 when all
    kernel slices vary along one direction (no diversity), 1 when they spread evenly over all ``k``
    directions (as random, untrained filters do). CNN Filter DB's "variance entropy"; 0 if all slices are
    equal."""
    p = ratios[ratios > 0]
    if p.size == 0:
        return 0.0
    return float(-np.sum(p * np.log(p)) / np.log(len(ratios)))


class DegenerateFilters(Check):
    """All-zero, near-zero and constant filters of every convolution, and the variance entropy of 3×3 kernels."""

    name = "sparsity.filters"

    class Params:
        near_zero_ratio: float = param(0.01, "A filter is near-zero when its max |w| is below this fraction of the "
                "layer's max |w|.", minimum=0, maximum=1)
        constant_tol: float = param(0.0, "A filter is constant when max - min <= constant_tol x the layer's max |w|.",
                minimum=0)
        max_indices: int = param(1000, "At most this many filter indices listed per category and layer.", minimum=0)

    needs = frozenset()
    metrics_doc = {
        "layers": "per conv weight (keyed by initializer name): node, filters, zero_filters, near_zero_filters, "
                  "constant_filters, degenerate_filters, degenerate_fraction, *_indices, kernel, "
                  "variance_entropy (3×3 kernels only), variance_ratios",
        "conv_layers": "number of conv layers audited",
        "filters": "output filters over all conv layers",
        "zero_filters": "all-zero filters over all layers",
        "near_zero_filters": "near-zero (not all-zero) filters over all layers",
        "constant_filters": "constant (not zero / near-zero) filters over all layers",
        "degenerate_filters": "zero + near-zero + constant filters",
        "degenerate_fraction": "degenerate_filters / filters",
        "max_degenerate_fraction": "largest per-layer degenerate fraction",
        "degenerate_layers": "conv layers whose every filter is degenerate (e.g. a constant fill: each filter "
                             "only averages its inputs, all alike)",
        "min_variance_entropy": "lowest 3×3 variance entropy over the layers (absent without 3×3 kernels)",
    }

    def run(self, ctx: AuditContext, params: Params) -> CheckResult:
        """One pass per conv weight."""
        ratio, tol = float(params.near_zero_ratio), float(params.constant_tol)
        layers = {lw.name: _filters(ctx, lw, ratio, tol, int(params.max_indices))
                  for lw in audited(ctx, require_layers(ctx.model, "conv"))}
        findings: list[Finding] = []
        for name, e in layers.items():
            n, degenerate = e["filters"], e["degenerate_filters"]
            if n and degenerate == n:
                findings.append(Finding(message=f"every filter of '{e['node']}' is degenerate", severity="warn",
                                        location=name))
            elif degenerate:
                findings.append(Finding(message=f"{degenerate} of {n} filters of '{e['node']}' are degenerate",
                                        severity="info", location=name,
                                        data={"zero": e["zero_filters"], "near_zero": e["near_zero_filters"],
                                              "constant": e["constant_filters"]}))
        metrics: dict[str, Any] = {"conv_layers": len(layers)}
        for key in ("filters", "zero_filters", "near_zero_filters", "constant_filters", "degenerate_filters"):
            metrics[key] = sum(e[key] for e in layers.values())
        filters, degenerate = metrics["filters"], metrics["degenerate_filters"]
        metrics["degenerate_fraction"] = degenerate / filters if filters else 0.0
        metrics["max_degenerate_fraction"] = max(e["degenerate_fraction"] for e in layers.values())
        metrics["degenerate_layers"] = sum(1 for e in layers.values() if e["filters"] == e["degenerate_filters"])
        metrics["layers"] = layers
        entropies = [e["variance_entropy"] for e in layers.values() if "variance_entropy" in e]
        if entropies:
            metrics["min_variance_entropy"] = min(entropies)
        return CheckResult(metrics=metrics, findings=findings,
                           notes=[f"near-zero: max |w| < {ratio:g} x layer max; constant: range <= {tol:g} x max"])


def _filters(ctx: AuditContext, lw: LayerWeight, ratio: float, tol: float, limit: int) -> dict[str, Any]:
    """One conv weight's entry of ``layers``."""
    kernel = list(lw.layer_shape[2:])
    scatter = _SliceScatter(lw, 9) if kernel == [3, 3] else None
    st = weight_stats(ctx.model, lw, per_output=True, check=ctx.check_cancelled, on_chunk=scatter)
    if st.nonfinite:
        raise SkipCheck(f"weight '{lw.name}' of {lw.node} has {st.nonfinite} NaN / infinite values (no filter "
                        "statistics; sparsity.profile counts them)")
    assert st.out_max_abs is not None and st.out_min is not None and st.out_max is not None
    zero = st.out_max_abs == 0
    near = ~zero & (st.out_max_abs < ratio * st.max_abs)
    # a one-weight filter (a 1x1 depthwise kernel: per-channel scaling) has no spread to lose, so it is never
    # "constant"; otherwise a BatchNorm folded into such a conv would read as a layer of degenerate filters
    single = int(np.prod(lw.layer_shape)) == zero.size
    const = ~zero & ~near & ((st.out_max - st.out_min) <= tol * st.max_abs) & (not single)
    entry: dict[str, Any] = {"node": lw.node, "op_type": lw.op_type, "kernel": kernel, "filters": int(zero.size)}
    for key, mask in (("zero", zero), ("near_zero", near), ("constant", const)):
        entry[f"{key}_filters"] = int(mask.sum())
        entry[f"{key}_filter_indices"] = np.flatnonzero(mask)[:limit].tolist()
    entry["degenerate_filters"] = int(zero.sum() + near.sum() + const.sum())
    entry["degenerate_fraction"] = entry["degenerate_filters"] / zero.size if zero.size else 0.0
    if scatter is not None:
        ratios = scatter.variance_ratios()
        entry["variance_ratios"] = [float(r) for r in ratios]
        entry["variance_entropy"] = variance_entropy(ratios)
    return entry
