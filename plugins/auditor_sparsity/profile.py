"""``sparsity.profile``: how sparse the layer weights are, per initializer, per layer type and overall.

Weights only (no data). Each layer weight is streamed once in bounded chunks (memory-mapped when the model
keeps its weights in external data), so a model of many GiB is audited tensor by tensor.
"""

from __future__ import annotations

from typing import Any

from auditor import AuditContext, Check, CheckResult, Finding, SkipCheck, param
from auditor_sparsity.stats import WeightStats, pq_index, weight_stats
from auditor_sparsity.weights import LayerWeight, find_layer_weights


def _indices(idx: Any, limit: int) -> list[int]:
    return [int(i) for i in list(idx)[:limit]]


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
        "sparsity": st.sparsity,
        "near_zero_fraction": st.near_zero / st.size if st.size else 0.0,
        "max_abs": st.max_abs,
        "pq_index": pq_index(st.l1, st.l2sq, st.size),
        "n_outputs": st.n_outputs,
        "zero_outputs": len(zo),
        "zero_output_indices": _indices(zo, limit),
        "n_inputs": st.n_inputs,
        "zero_inputs": len(zi),
        "zero_input_indices": _indices(zi, limit),
    }


class SparsityProfile(Check):
    """Zero fraction, near-zero fraction, structured zeros and PQ index of every layer weight.

    * ``sparsity`` = (number of exact zeros) / (number of parameters) — the quantity pruning methods
      control (Liu et al., "The Unreasonable Effectiveness of Random Pruning", ICLR 2022, report it per layer).
    * structured zeros: output filters / input channels of conv kernels (``W[o] == 0``, ``W[:, c] == 0``,
      per group for grouped convs), output / input units of matrices — what structured pruning removes
      (Learning k-Level Structured Sparse Neural Networks).
    * PQ index (Diao et al., "Pruning Deep Neural Networks from a Sparsity Perspective", ICLR 2023) with
      ``p = 1, q = 2``: ``PQ(w) = 1 - d^(1/2 - 1) ||w||_1 / ||w||_2``, in ``[0, 1 - 1/sqrt(d)]``, larger is
      sparser.

    Per layer type and overall the figures are parameter-weighted: sums of zeros over sums of parameters, and
    the PQ index of all the weights of that type seen as one vector (from the summed norms).
    Integer (quantized) weights — QDQ ``DequantizeLinear`` chains, QLinear*, *Integer — are read as
    ``(q - zero_point) * scale`` (per tensor or per axis): ``q == zero_point`` is a zero, which quantization
    produces for every ``|w| < scale / 2``; those are counted apart in ``quantization_zeros``. Weights that
    ``Constant`` / ``ConstantOfShape`` nodes or constant sub-graphs produce are read as the layer sees them.
    """

    name = "sparsity.profile"
    description = ("Sparsity of every layer weight (exact and near zeros, all-zero filters / channels / rows / "
                   "columns, PQ index), per layer type and overall; weights only, streamed tensor by tensor.")

    class Params:
        near_zero: float = param(1e-3, "Absolute threshold of the near-zero fraction: |w| <= near_zero.", minimum=0)
        max_indices: int = param(100, "At most this many indices of all-zero outputs / inputs listed per weight.",
                minimum=0)

    needs = frozenset()
    metrics_doc = {
        "weights": "per initializer (keyed by its ONNX name): node, op_type, shape, source (initializer | "
                   "Constant | ConstantOfShape | folded), quantized, params, zeros, quantization_zeros, sparsity, "
                   "near_zero_fraction, max_abs, pq_index, zero_outputs / zero_inputs (+ indices), n_outputs, "
                   "n_inputs",
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
        "layer_weights": "number of layer weights audited",
    }

    def run(self, ctx: AuditContext, params: Params) -> CheckResult:
        """Stream every layer weight once."""
        layers: list[LayerWeight] = find_layer_weights(ctx.model)
        if not layers:
            raise SkipCheck("the model has no Conv / Gemm / MatMul layer weights")
        near, limit = float(params.near_zero), int(params.max_indices)
        weights: dict[str, Any] = {}
        groups: dict[str, dict[str, float]] = {}
        totals = {"params": 0, "zeros": 0, "near": 0, "l1": 0.0, "l2sq": 0.0, "zo": 0, "zi": 0, "qz": 0}
        findings: list[Finding] = []
        for k, lw in enumerate(layers):
            ctx.report_progress(k, len(layers), lw.name)
            st = weight_stats(ctx.model, lw, near_zero=near, check=ctx.check_cancelled)
            entry = weight_entry(st, limit)
            weights[lw.name] = entry
            grp = groups.setdefault(lw.op_type, {"weights": 0, "params": 0, "zeros": 0, "near": 0, "l1": 0.0,
                                                  "l2sq": 0.0})
            for acc in (grp, totals):
                acc["params"] += st.size
                acc["zeros"] += st.zeros
                acc["near"] += st.near_zero
                acc["l1"] += st.l1
                acc["l2sq"] += st.l2sq
            grp["weights"] += 1
            totals["zo"] += entry["zero_outputs"]
            totals["qz"] += entry["quantization_zeros"]
            totals["zi"] += entry["zero_inputs"]
            if st.zeros == st.size:
                findings.append(Finding(message=f"weight '{lw.name}' of {lw.node} is entirely zero",
                                        severity="warn", location=lw.name))
        ctx.report_progress(len(layers), len(layers), "done")
        by_op = {
            op: {"weights": int(g["weights"]), "params": int(g["params"]), "zeros": int(g["zeros"]),
                 "sparsity": g["zeros"] / g["params"], "near_zero_fraction": g["near"] / g["params"],
                 "pq_index": pq_index(g["l1"], g["l2sq"], int(g["params"]))}
            for op, g in groups.items()
        }
        n = int(totals["params"])
        metrics: dict[str, Any] = {
            "layer_weights": len(layers),
            "params": n,
            "zeros": int(totals["zeros"]),
            "quantization_zeros": int(totals["qz"]),
            "sparsity": totals["zeros"] / n,
            "near_zero_fraction": totals["near"] / n,
            "pq_index": pq_index(totals["l1"], totals["l2sq"], n),
            "zero_outputs": int(totals["zo"]),
            "zero_inputs": int(totals["zi"]),
            "max_layer_sparsity": max(e["sparsity"] for e in weights.values()),
            "by_op_type": by_op,
            "weights": weights,
        }
        ext = sum(1 for lw in layers if lw.ref.external)
        notes = [f"{len(layers)} layer weights streamed in chunks"
                 + (f" ({ext} memory-mapped from external data)" if ext else "")]
        quantized = [lw for lw in layers if lw.quantized]
        if quantized:
            notes.append(f"{len(quantized)} quantized weight(s) read as (q - zero_point) * scale: their "
                         f"{int(totals['qz'])} zeros are entries stored as the zero point (values that rounded "
                         f"to 0, |w| < scale / 2), counted in quantization_zeros; not necessarily pruned weights")
        special = {src: sum(1 for lw in layers if lw.ref.source == src) for src in ("Constant", "ConstantOfShape",
                                                                                     "folded")}
        if any(special.values()):
            notes.append("weights not stored as initializers: " + ", ".join(
                f"{v} from {k}" + (" (constant sub-graphs evaluated once)" if k == "folded" else "")
                for k, v in special.items() if v))
        return CheckResult(metrics=metrics, findings=findings, notes=notes)
