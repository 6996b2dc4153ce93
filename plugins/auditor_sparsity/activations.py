"""``sparsity.activations``: dead units, activation sparsity, feature rank, and neural collapse.

For each layer (default: every nonlinearity's output) on a seeded sample of the data, with units on the channel
axis of image tensors and the last axis of sequences (other axes are positions):

* ``dead_units``: units never active, i.e. ``max over samples and positions <= active_threshold`` (dead ReLUs;
  "AP: Selective Activation…" and "Using Degeneracy in the Loss Landscape…" count them);
* ``zero_fraction``: share of exact zeros among all activation values;
* ``effective_rank`` / ``rank_99``: of the centred (N, units) feature matrix, positions averaged
  (Andriushchenko et al. 2023: SAM lowers this feature rank).

With labels, the penultimate features (the input of the classifier head) get the neural collapse measures of
Papyan et al. (2020), see :func:`neural_collapse`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx

from auditor import AuditContext, CheckResult, Finding, Need, SkipCheck, Task, param
from auditor.graph import layer_outputs, subgraphs
from auditor.shards import Plan, RowShards, Shard, ShardedCheck, sampled_rows
from auditor_sparsity.spectral import effective_rank, energy_rank
from auditor_sparsity.weights import find_layer_weights, head_weight

# Nonlinearities whose outputs are "units that fire" (the default layers).
ACTIVATION_OPS = frozenset({"Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Gelu", "Clip", "HardSwish",
                            "HardSigmoid", "Softplus", "Mish", "ThresholdedRelu", "Sigmoid", "Tanh"})


def unit_axis(ndim: int, layout: str | None, override: int | None) -> int:
    """The axis that indexes units: the given one; else 1 for (N, D) and for image tensors in NCHW, the last
    axis for (N, T, D) sequences and NHWC images."""
    if override is not None:
        return override % ndim
    if ndim == 3 or (ndim >= 4 and layout == "NHWC"):
        return ndim - 1
    return 1


def unit_view(a: np.ndarray, axis: int) -> np.ndarray:
    """``(N, positions, units)``: every other axis (spatial, sequence) becomes positions."""
    moved = np.moveaxis(a, axis, -1)
    return moved.reshape(moved.shape[0], -1, moved.shape[-1])


def feature_rank(features: np.ndarray, fraction: float = 0.99) -> tuple[float, int]:
    """Effective rank (Roy & Vetterli 2007) of the centred ``(N, D)`` feature matrix's singular values, and
    the number of principal components explaining ``fraction`` of the variance (the feature rank of
    Andriushchenko et al., "Sharpness-Aware Minimization Leads to Low-Rank Features", NeurIPS 2023)."""
    x = np.asarray(features, dtype=np.float64)
    s = np.linalg.svd(x - x.mean(axis=0), compute_uv=False)
    return effective_rank(s), energy_rank(s, fraction)  # the variance of component i is s_i^2 / N


def neural_collapse(h: np.ndarray, y: np.ndarray, head: np.ndarray | None = None) -> dict[str, float | int | None]:
    """Neural collapse measures of Papyan, Han & Donoho, "Prevalence of neural collapse during the terminal
    phase of deep learning training" (PNAS 2020), on features ``h`` (N, D) with class indices ``y``:

    * ``nc1`` = Tr(Σ_W Σ_B^†) / C, with Σ_W = (1/N) Σ_i (h_i - μ_{y_i})(h_i - μ_{y_i})^T and
      Σ_B = (1/C) Σ_c (μ_c - μ_G)(μ_c - μ_G)^T (within-class variability relative to between-class);
    * ``equinorm_cv`` = std / mean of ||μ_c - μ_G||;
    * ``equiangular_std`` = std of cos(μ_c - μ_G, μ_c' - μ_G) over c ≠ c';
    * ``etf_distance`` = || M^T M / ||M^T M||_F - (I - 11^T/C) / ||I - 11^T/C||_F ||_F with M the centred class
      means (0 for a simplex equiangular tight frame);
    * ``nc3_self_duality`` (when the head ``W`` (C, D) is given) = || W / ||W||_F - M^T / ||M||_F ||_F.

    Only the classes present in ``y`` count (``C`` of them, at least 2).
    """
    h = np.asarray(h, dtype=np.float64)
    classes = np.unique(y)
    c = len(classes)
    inv = np.searchsorted(classes, y)
    counts = np.bincount(inv, minlength=c).astype(np.float64)
    means = np.zeros((c, h.shape[1]))
    np.add.at(means, inv, h)
    means /= counts[:, None]
    mu_g = h.mean(axis=0)
    centred = means - mu_g  # (C, D): rows are the centred class means
    within = h - means[inv]
    sigma_w = within.T @ within / len(h)
    sigma_b = centred.T @ centred / c
    nc1 = float(np.trace(sigma_w @ np.linalg.pinv(sigma_b, hermitian=True)) / c)
    norms = np.linalg.norm(centred, axis=1)
    out: dict[str, float | int | None] = {
        "classes": c,
        "nc1": nc1,
        "equinorm_cv": float(norms.std() / norms.mean()) if norms.mean() > 0 else None,
    }
    if np.all(norms > 0):
        unit = centred / norms[:, None]
        cos = unit @ unit.T
        off = cos[~np.eye(c, dtype=bool)]
        out["equiangular_std"] = float(off.std())
        out["mean_cosine"] = float(off.mean())
    gram = centred @ centred.T
    etf = np.eye(c) - np.ones((c, c)) / c
    gn = np.linalg.norm(gram)
    out["etf_distance"] = float(np.linalg.norm(gram / gn - etf / np.linalg.norm(etf))) if gn > 0 else None
    if head is not None and head.shape == centred.shape and np.linalg.norm(centred) > 0:
        w = head / np.linalg.norm(head)
        out["nc3_self_duality"] = float(np.linalg.norm(w - centred / np.linalg.norm(centred)))
    return out


class Activations(ShardedCheck):
    """Dead units, zero activations and feature rank per layer; neural collapse of the penultimate features."""

    name = "sparsity.activations"

    class Params:
        layers: str | list[str] = param("activations", "'activations' (outputs of nonlinearities), 'every', "
                                        "'penultimate', or tensor names.")
        limit: int = param(1000, "Samples used (seeded, stratified).", minimum=2)
        active_threshold: float = param(0.0, "A unit is active on an input when its value exceeds this.")
        unit_axis: int | None = param(None, "Axis of the units in every layer (default: 1, or the last for "
                                      "sequences / NHWC).")
        max_indices: int = param(100, "At most this many dead-unit indices listed per layer.", minimum=0)

    needs = frozenset({Need.DATA})
    metrics_doc = {
        "layers": "per tensor: op_type, units, dead_units, dead_fraction, dead_unit_indices, zero_fraction, "
                  "effective_rank, rank_99",
        "units": "units over all layers",
        "dead_units": "dead units over all layers",
        "dead_fraction": "dead_units / units",
        "max_dead_fraction": "largest per-layer dead fraction",
        "zero_fraction": "share of zero activation values over all layers",
        "samples": "samples used",
        "neural_collapse": "on the penultimate features with labels: classes, nc1, equinorm_cv, "
                           "equiangular_std, mean_cosine, etf_distance, nc3_self_duality",
    }

    def _layers(self, ctx: AuditContext, which: str | list[str]) -> list[str]:
        if which == "activations":
            return layer_outputs(ctx.model.base.graph, ACTIVATION_OPS)
        try:
            return ctx.model.layer_names(which)
        except ValueError as exc:
            raise SkipCheck(str(exc)) from None

    shards = RowShards(rows=512)

    def plan(self, ctx: AuditContext, params: Params) -> Plan:
        """The seeded sample (stratified by label) and the layers to gather."""
        rows, notes = sampled_rows(ctx, params.limit)
        names = self._layers(ctx, params.layers)
        pen = ctx.model.penultimate()
        with_pen = ctx.require_data().y is not None and pen is not None
        wanted = list(dict.fromkeys(names + ([pen] if with_pen and pen is not None else [])))
        hidden = _in_subgraphs(ctx.model.base.graph) if params.layers == "activations" else ""
        if not wanted:
            raise SkipCheck(f"no layers to analyse: {hidden or 'no nonlinearity in the model'}; set layers:")
        return Plan(rows=rows, state={"names": names, "pen": pen if with_pen else None, "wanted": wanted,
                                      "found_pen": pen is not None},
                    notes=(notes[-1:] if rows is not None else []) + ([f"not analysed: {hidden}"] if hidden else []))

    def run_shard(self, ctx: AuditContext, params: Params, plan: Plan, shard: Shard) -> Any:
        """Per layer: each unit's largest activation, the per-sample mean of each unit, the zero count; the
        penultimate features and labels (``n × units`` at most, never the inputs)."""
        data = ctx.require_data()
        st = plan.state
        if data.n == 0:
            return {"n": 0}
        acts = ctx.activations(st["wanted"], data=data)
        layers: dict[str, Any] = {}
        for name in st["names"]:
            ctx.check_cancelled()
            act = np.asarray(acts[name])
            if act.ndim < 2 or act.dtype.kind != "f":
                continue
            v = unit_view(act, unit_axis(act.ndim, ctx.model.layout, params.unit_axis))
            layers[name] = {"max": v.max(axis=(0, 1)), "feats": v.mean(axis=1), "nonzero": int(np.count_nonzero(act)),
                            "size": int(act.size), "shape": list(act.shape[1:])}
        out: dict[str, Any] = {"n": data.n, "layers": layers}
        if st["pen"] is not None:
            # a regressor's targets are no classes: None (the predictions are cached for the labels' use)
            out["labels"] = ctx.labels(data) if ctx.predictions(data).task == Task.CLASSIFICATION else None
            out["pen"] = np.asarray(acts[st["pen"]]).reshape(data.n, -1)
        return out

    def merge(self, ctx: AuditContext, params: Params, plan: Plan, partials: Sequence[Any]) -> CheckResult:
        """Dead units, feature ranks and zero shares over every shard's rows; neural collapse on the gathered
        penultimate features."""
        st = plan.state
        parts = [q for q in partials if q["n"]]
        n = sum(q["n"] for q in parts)
        ops = {nd.output[0]: nd.op_type for nd in ctx.model.proto.graph.node if nd.output}
        layers: dict[str, Any] = {}
        zeros: dict[str, tuple[int, int]] = {}  # (zero values, values) per layer
        for name in st["names"]:
            got = [q["layers"][name] for q in parts if name in q["layers"]]
            if not got:
                continue
            dead = np.max([g["max"] for g in got], axis=0) <= params.active_threshold
            erank, r99 = feature_rank(np.concatenate([g["feats"] for g in got]))
            size = sum(g["size"] for g in got)
            zeros[name] = size - sum(g["nonzero"] for g in got), size
            layers[name] = {
                "op_type": ops.get(name),
                "shape": got[0]["shape"],
                "units": len(dead),
                "dead_units": int(dead.sum()),
                "dead_fraction": float(dead.mean()),
                "dead_unit_indices": np.flatnonzero(dead)[:params.max_indices].tolist(),
                "zero_fraction": float(zeros[name][0] / size),
                "effective_rank": erank,
                "rank_99": r99,
            }
        findings = [Finding(message=f"every unit of '{name}' is dead on the data", severity="warn", location=name)
                    for name, e in layers.items() if e["dead_units"] == e["units"]]
        metrics: dict[str, Any] = {"samples": int(n), "layers": layers}
        if layers:
            units, dead_units = (sum(e[key] for e in layers.values()) for key in ("units", "dead_units"))
            metrics.update({
                "units": units, "dead_units": dead_units, "dead_fraction": dead_units / units,
                "max_dead_fraction": max(e["dead_fraction"] for e in layers.values()),
                "zero_fraction": sum(z for z, _ in zeros.values()) / sum(v for _, v in zeros.values()),
            })
        notes = list(plan.notes)
        pen = st["pen"]
        if pen is not None and parts and any(q["labels"] is None for q in parts):
            notes.append("neural collapse needs class labels: not measured on a regressor")
        elif pen is not None and parts:
            labels = np.concatenate([q["labels"] for q in parts])
            known = labels >= 0
            feats = np.concatenate([q["pen"] for q in parts])[known]
            if len(np.unique(labels[known])) >= 2:
                metrics["neural_collapse"] = {"features": pen, **neural_collapse(feats, labels[known],
                                                                                 _head(ctx, pen, labels[known]))}
            else:
                notes.append("neural collapse needs at least two classes in the sample")
        elif not st["found_pen"]:
            notes.append("no penultimate layer found: neural collapse not measured")
        return CheckResult(metrics=metrics, findings=findings, notes=notes)


def _in_subgraphs(graph: onnx.GraphProto) -> str:
    """What nonlinearities sit inside control-flow subgraphs (``If`` branches, ``Loop`` / ``Scan`` bodies), whose
    intermediate values ONNX Runtime cannot return as model outputs; empty when none do."""
    found = [(path.split("/")[1], n.op_type) for path, g in subgraphs(graph) for n in g.node
             if n.op_type in ACTIVATION_OPS]
    if not found:
        return ""
    ops = Counter(op for _, op in found)
    return (f"the {len(found)} nonlinearities inside control-flow subgraphs ("
            f"{', '.join(f'{op} x{k}' for op, k in sorted(ops.items()))}; in node "
            f"{', '.join(repr(o) for o in dict.fromkeys(o for o, _ in found))}), whose values ONNX Runtime "
            "does not return")


def _head(ctx: AuditContext, pen: str, y: np.ndarray) -> np.ndarray | None:
    """The classifier head's weights as (classes present, features), for the self-duality measure."""
    got = head_weight(ctx.model, find_layer_weights(ctx.model), pen)
    if got is None or got[0].kind != "matrix" or len(got[0].shape) != 2:
        return None
    head, w = got
    return np.asarray((w.T if head.out_axis == 1 else w)[np.unique(y)] * head.alpha)
