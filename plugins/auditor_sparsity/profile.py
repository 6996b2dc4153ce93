"""``sparsity.profile``: how sparse the layer weights are, per initializer, per layer type and overall.

* ``sparsity`` = (number of exact zeros) / (number of parameters) — the quantity pruning methods control
  (Liu et al., "The Unreasonable Effectiveness of Random Pruning", ICLR 2022, report it per layer).
* structured zeros: output filters / input channels of conv kernels (``W[o] == 0``, ``W[:, c] == 0``, per
  group for grouped convs), output / input units of matrices — what structured pruning removes (Learning
  k-Level Structured Sparse Neural Networks).
* PQ index (Diao et al., "Pruning Deep Neural Networks from a Sparsity Perspective", ICLR 2023) with
  ``p = 1, q = 2``: ``PQ(w) = 1 - d^(1/2 - 1) ||w||_1 / ||w||_2``, in ``[0, 1 - 1/sqrt(d)]``, larger is sparser.

Per layer type and overall the figures are parameter-weighted: sums of zeros over sums of parameters, and the
PQ index of all the weights of that type seen as one vector (from the summed norms). Integer (quantized)
weights — QDQ ``DequantizeLinear`` chains, QLinear*, *Integer — are read as ``(q - zero_point) * scale`` (per
tensor or per axis): ``q == zero_point`` is a zero, which quantization produces for every ``|w| < scale / 2``;
those are counted apart in ``quantization_zeros``. Weights that ``Constant`` / ``ConstantOfShape`` nodes or
constant sub-graphs produce are read as the layer sees them.

Weights only (no data). Each layer weight is streamed once in bounded chunks (memory-mapped when the model
keeps its weights in external data), so a model of many GiB is audited tensor by tensor.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from auditor import AuditContext, Check, CheckResult, Finding, param
from auditor_sparsity.stats import WeightStats, pq_index, weight_stats
from auditor_sparsity.weights import audited, require_layers


def weight_entry(st: WeightStats, limit: int) -> dict[str, Any]:
    """The per-initializer metrics of ``sparsity.profile``."""
    lw = st.lw
    zo, zi = st.zero_outputs(), st.zero_inputs()
    return {
        "node": lw.node,
        "op_type": lw.op_type,
        "kind": lw.kind,
        "shape": list(lw.shape),
        "via": list(lw.via),
        "source": lw.ref.source,
        "external": bool(lw.ref.external),
        "quantized": lw.quantized,
        "params": st.size,
        "zeros": st.zeros,
        "quantization_zeros": st.zeros if lw.quantized else 0,
        "nonfinite": st.nonfinite,
        "sparsity": st.sparsity,
        "near_zero_fraction": st.near_zero / st.size if st.size else 0.0,
        "max_abs": st.max_abs,
        "pq_index": pq_index(st.l1, st.l2sq, st.size),
        "n_outputs": st.n_outputs,
        "zero_outputs": len(zo),
        "zero_output_indices": zo[:limit].tolist(),
        "n_inputs": st.n_inputs,
        "zero_inputs": len(zi),
        "zero_input_indices": zi[:limit].tolist(),
    }


def pooled(stats: list[WeightStats]) -> dict[str, Any]:
    """Parameter-weighted figures of several weights seen as one vector."""
    n = sum(st.size for st in stats)
    zeros = sum(st.zeros for st in stats)
    return {"params": n, "zeros": zeros, "sparsity": zeros / n,
            "near_zero_fraction": sum(st.near_zero for st in stats) / n,
            "pq_index": pq_index(sum(st.l1 for st in stats), sum(st.l2sq for st in stats), n)}


class SparsityProfile(Check):
    """Sparsity of every layer weight (exact and near zeros, all-zero filters / channels, PQ index); weights only."""

    name = "sparsity.profile"

    class Params:
        near_zero: float = param(1e-3, "Absolute threshold of the near-zero fraction: |w| <= near_zero.", minimum=0)
        max_indices: int = param(100, "At most this many indices of all-zero outputs / inputs listed per weight.",
                minimum=0)

    needs = frozenset()
    metrics_doc = {
        "weights": "per initializer (keyed by its ONNX name): node, op_type, shape, source (initializer | "
                   "Constant | ConstantOfShape | folded), quantized, params, zeros, quantization_zeros, nonfinite, "
                   "sparsity, near_zero_fraction, max_abs, pq_index, zero_outputs / zero_inputs (+ indices), "
                   "n_outputs, n_inputs",
        "by_op_type": "per consuming op type: weights, params, zeros, sparsity, near_zero_fraction, pq_index",
        "params": "parameters in layer weights",
        "zeros": "exact zeros in layer weights",
        "quantization_zeros": "zeros inside quantized weights (q == zero_point: rounded to zero, not "
                              "necessarily pruned)",
        "sparsity": "zeros / params over all layer weights",
        "near_zero_fraction": "share of layer-weight parameters with |w| <= near_zero",
        "pq_index": "PQ index (p=1, q=2) of all layer weights as one vector",
        "zero_outputs": "all-zero output filters / units over all layers",
        "zero_inputs": "unread input channels / units over all layers",
        "max_layer_sparsity": "largest per-weight sparsity",
        "all_zero_weights": "layer weights that are zero throughout (the layer passes nothing on)",
        "nonfinite": "NaN and infinite values in layer weights (a broken export or a diverged training run)",
        "layer_weights": "number of layer weights audited",
    }

    def run(self, ctx: AuditContext, params: Params) -> CheckResult:
        """Stream every layer weight once."""
        layers = require_layers(ctx.model)
        stats = [weight_stats(ctx.model, lw, near_zero=float(params.near_zero), check=ctx.check_cancelled)
                 for lw in audited(ctx, layers)]
        weights = {st.lw.name: weight_entry(st, int(params.max_indices)) for st in stats}
        by_op: dict[str, list[WeightStats]] = {}
        for st in stats:
            by_op.setdefault(st.lw.op_type, []).append(st)
        qz = sum(e["quantization_zeros"] for e in weights.values())
        metrics: dict[str, Any] = {
            "layer_weights": len(layers),
            **pooled(stats),
            "quantization_zeros": qz,
            "zero_outputs": sum(e["zero_outputs"] for e in weights.values()),
            "zero_inputs": sum(e["zero_inputs"] for e in weights.values()),
            "max_layer_sparsity": max(e["sparsity"] for e in weights.values()),
            "all_zero_weights": sum(1 for st in stats if st.zeros == st.size),
            "nonfinite": sum(st.nonfinite for st in stats),
            "by_op_type": {op: {"weights": len(group), **pooled(group)} for op, group in by_op.items()},
            "weights": weights,
        }
        findings = [Finding(message=f"weight '{st.lw.name}' of {st.lw.node} is entirely zero", severity="warn",
                            location=st.lw.name) for st in stats if st.zeros == st.size]
        findings += [Finding(message=f"weight '{st.lw.name}' of {st.lw.node} has {st.nonfinite} NaN / infinite "
                                     "values", severity="warn", location=st.lw.name) for st in stats if st.nonfinite]
        ext = sum(1 for lw in layers if lw.ref.external)
        notes = [f"{len(layers)} layer weights streamed in chunks"
                 + (f" ({ext} memory-mapped from external data)" if ext else "")]
        quantized = [lw for lw in layers if lw.quantized]
        if quantized:
            notes.append(f"{len(quantized)} quantized weight(s) read as (q - zero_point) * scale: their "
                         f"{qz} zeros are entries stored as the zero point (values that rounded "
                         f"to 0, |w| < scale / 2), counted in quantization_zeros; not necessarily pruned weights")
        source = Counter(lw.ref.source for lw in layers)
        made = [f"{source[k]} from {k}" for k in ("Constant", "ConstantOfShape", "folded") if source[k]]
        if made:
            notes.append("weights not stored as initializers: " + ", ".join(made)
                         + (" (constant sub-graphs evaluated once)" if source["folded"] else ""))
        return CheckResult(metrics=metrics, findings=findings, notes=notes)
