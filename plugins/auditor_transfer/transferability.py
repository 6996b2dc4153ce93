"""``transfer.transferability``: how well a model's features (and its own class probabilities) suit a target
labelled task (the audit data's labels; its classes need not be the model's), estimated without fine-tuning; each
reference model is scored too, so that candidates can be ranked.

- LogME: You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer Learning" (ICML 2021).
- LEEP: Nguyen et al., "LEEP: A New Measure to Evaluate Transferability of Learned Representations" (ICML 2020).
- NCE: Tran, Nguyen & Hassner, "Transferability and Hardness of Supervised Classification Tasks" (ICCV 2019).
- H-score: Bao et al., "An Information-theoretic Approach to Transferability in Task Transfer Learning"
  (ICIP 2019).
- Linear probe: cross-validated accuracy of a ridge classifier on the standardised features (the linear
  evaluation protocol used throughout representation-learning papers).

Formulas are in :mod:`auditor_transfer.stats`. The check shards by rows: each shard returns its rows' feature
vectors and raw outputs for every scored model (``rows × d``, never the inputs); the driver reads the gathered
outputs as one pass would and computes every score on the gathered features.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from auditor import AuditContext, CheckResult, ModelHandle, Need, SkipCheck, param
from auditor.outputs import predictions_of
from auditor.shards import Plan, RowShards, Shard, ShardedCheck, gather_rows, sampled_rows
from auditor_transfer._common import forward, jsonable, model_named, resolve_layers, spatial_param
from auditor_transfer.stats import (
    encode,
    hscore_and_rank,
    interleaved_folds,
    label_entropy,
    leep,
    logme,
    nce,
    ridge_probe_predictions,
)


class Transferability(ShardedCheck):
    """LogME, LEEP, NCE, H-score and linear-probe accuracy of a layer's features for the audit data's labels."""

    name = "transfer.transferability"

    class Params:
        layer: str = param("penultimate", "Feature layer: 'penultimate' or a tensor name.")
        reference_layer: str | None = param(None, "Feature layer of the references; null: 'layer' if the reference "
                "has that tensor, else its penultimate features.")
        limit: int = param(2000, "Samples used (stratified, seeded).", minimum=10)
        folds: int = param(5, "Folds of the linear probe.", minimum=2)
        probe_alpha: float = param(1.0, "Ridge penalty of the linear probe (on standardised features).", minimum=0)
        include_references: bool = param(True, "Also score each reference model, under by_model.")
        spatial: str = spatial_param()

    needs = frozenset({Need.DATA, Need.LABELS})
    metrics_doc = {
        "logme": "LogME (You et al. 2021): mean over target classes of the maximised log evidence per sample of "
                 "Bayesian linear regression from the features to the one-hot label; higher is better; "
                 "unbounded (typically −2..2), compare between models on the same data only",
        "leep": "LEEP (Nguyen et al. 2020) from the model's own class probabilities; ≤ 0, higher is better; "
                "−label_entropy for an uninformative model (below for a confidently wrong one), 0 for a perfect one",
        "nce": "negative conditional entropy −H(Y|Z) of the target label given the model's predicted class "
               "(Tran et al. 2019); in [−label_entropy, 0], higher is better",
        "hscore": "H-score tr(cov(f)⁺ cov(E[f|Y])) (Bao et al. 2019); in [0, hscore_max], higher is better",
        "hscore_max": "upper bound of hscore: min(classes − 1, feature rank)",
        "probe_accuracy": "cross-validated accuracy of a ridge linear probe on the standardised features; 0..1",
        "chance_accuracy": "share of the most frequent target class (what a constant guess scores)",
        "label_entropy": "entropy H(Y) of the target labels in nats (the scale of leep and nce)",
        "n": "samples", "n_classes": "target classes", "feature_dim": "length of the feature vector",
        "layer": "the feature tensor",
        "by_model": "the same scores for 'model' and each reference, by name",
    }

    #: Rows per shard: each shard returns its rows' feature vectors and raw outputs for every model.
    shards = RowShards(rows=1024)

    def plan(self, ctx: AuditContext, p: Params) -> Plan:
        """The stratified sample, the target codes, the models scored and their feature tensors."""
        rows, notes = sampled_rows(ctx, int(p.limit))
        full = ctx.require_data()
        y = full.y if rows is None or full.y is None else np.asarray(full.y)[rows]
        if y is None:
            raise SkipCheck("needs labels (data.y)")
        codes, classes = encode(y)
        if len(classes) < 2:
            raise SkipCheck("the target labels have a single class")
        notes = notes[-1:] if rows is not None else []
        tensors = {"model": resolve_layers(ctx.model, str(p.layer), 1)[0]}
        if p.include_references:
            for name, ref in ctx.references.items():
                layer = self._reference_layer(ref, str(p.layer), p.reference_layer, notes, name)
                tensors[name] = resolve_layers(ref, layer, 1)[0]
        return Plan(rows=rows, state={"codes": codes, "classes": classes, "y": y, "tensors": tensors}, notes=notes)

    def run_shard(self, ctx: AuditContext, p: Params, plan: Plan, shard: Shard) -> Any:
        """Every scored model's feature vectors (``rows × d``) and raw audited outputs on the shard's rows."""
        tensors = {name: [tensor] for name, tensor in plan.state["tensors"].items()}
        return forward(ctx, tensors, ctx.require_data(), str(p.spatial))

    def merge(self, ctx: AuditContext, p: Params, plan: Plan, partials: Sequence[Any]) -> CheckResult:
        """Score each model on the gathered features and predictions (read as one pass would read them)."""
        st = plan.state
        codes, classes, notes = st["codes"], st["classes"], list(plan.notes)
        n = len(codes)
        base = {"n": n, "n_classes": len(classes), "label_entropy": label_entropy(codes),
                "chance_accuracy": float(np.bincount(codes).max() / len(codes))}
        folds = interleaved_folds(codes, int(p.folds))
        by_model: dict[str, dict[str, Any]] = {}
        got = gather_rows(partials)
        for name, tensor in st["tensors"].items():
            feats = got["features"][name][0]
            pred = predictions_of(model_named(ctx, name), got["raw"][name], y=st["y"])
            out: dict[str, Any] = {"layer": tensor, "feature_dim": int(feats.shape[1])}
            out["logme"] = logme(feats, codes)
            out["hscore"], rank = hscore_and_rank(feats, codes)
            out["hscore_max"] = min(len(classes) - 1, rank)
            if rank >= n - 1:
                notes.append(f"{name}: the features have as many dimensions as samples; hscore saturates at "
                             f"its maximum (use more samples or spatial: mean)")
            probe = ridge_probe_predictions(feats, codes, folds, float(p.probe_alpha))
            out["probe_accuracy"] = float(np.mean(probe == codes))
            if pred.probs is not None and pred.labels is not None:
                out["leep"] = leep(pred.probs, codes)
                out["nce"] = nce(pred.labels, codes)
            else:
                notes.append(f"{name}: not a classifier, so no leep/nce")
            by_model[name] = jsonable(out)
        metrics: dict[str, Any] = {**base, **by_model["model"]}
        if len(by_model) > 1:
            metrics["by_model"] = by_model
        notes.append(f"linear probe: ridge (alpha {p.probe_alpha}) on standardised features, "
                     f"{p.folds} stratified folds")
        return CheckResult(metrics=jsonable(metrics), notes=notes)

    @staticmethod
    def _reference_layer(ref: ModelHandle, layer: str, reference_layer: str | None, notes: list[str],
                         name: str) -> str:
        if reference_layer is not None:
            return reference_layer
        if layer == "penultimate":
            return layer
        try:
            ref.layer_names([layer])
            return layer
        except ValueError:
            notes.append(f"{name}: has no tensor '{layer}'; its penultimate features are used")
            return "penultimate"
