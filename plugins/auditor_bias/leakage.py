"""``bias.leakage``: can the sensitive attribute be read back from what the model computes?

A linear probe (Alain & Bengio, "Understanding intermediate layers using linear classifier probes", 2016)
is trained to predict the sensitive column from the model's outputs or a named intermediate tensor; its
cross-validated accuracy is compared with the majority-class rate, the accuracy of a probe that learned
nothing. FairRec (Wu et al., 2021) and adversarial debiasing (Zhang, Lemoine & Mitchell, AIES 2018) measure
leakage the same way, with the adversary's accuracy on the sensitive attribute (so does the catalogue's "A
Demographic-Conditioned Variational Autoencoder…": attribute predictability from representations).

The check shards by rows: each shard returns its rows' features, the driver fits the probe on them all.
The probe is the core's standardised ridge classifier (``auditor.probes``, the decision rule of scikit-learn's
``RidgeClassifier``); predictions are pooled out of fold over stratified, seeded folds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from auditor import AuditContext, CheckResult, Finding, Need, SkipCheck, param
from auditor.outputs import predictions_of
from auditor.probes import balanced_accuracy, cross_validated_probe
from auditor.shards import Plan, RowShards, Shard, ShardedCheck, gather_rows, sampled_data
from auditor_bias._common import group_columns, group_rows


def stratified_folds(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Fold id of each row: rows of each class are shuffled and dealt round-robin to ``k`` folds."""
    n = len(labels)
    order = rng.permutation(n)
    by_class = order[np.argsort(labels[order], kind="stable")]
    # dealing consecutive rows of the class-sorted order round-robin gives each fold ~1/k of every class,
    # and continuing the count across classes keeps small classes from all landing in fold 0
    folds = np.empty(n, dtype=np.int64)
    folds[by_class] = np.arange(n) % k
    return folds


class Leakage(ShardedCheck):
    """Cross-validated linear-probe accuracy on the sensitive attribute, against the majority-class rate."""

    name = "bias.leakage"

    class Params:
        group: str | None = param(None, "The sensitive column (default: the first data.groups column).")
        features: str = param("outputs", "'outputs' (class probabilities, or the regression output), 'penultimate', "
                "or the name of an intermediate tensor.")
        folds: int = param(5, "Cross-validation folds.", minimum=2)
        alpha: float = param(1.0, "Ridge penalty of the probe (on standardised features).", minimum=0)
        max_advantage: float = param(0.05, "A warning finding when probe accuracy exceeds the majority rate by more.",
                minimum=0, maximum=1)
        limit: int = param(2000, "At most this many rows (stratified, seeded sample).", minimum=10)

    needs = frozenset({Need.DATA, Need.GROUPS})
    metrics_doc = {
        "n": "rows probed (with a group value)",
        "n_groups": "distinct values of the sensitive column",
        "feature_dim": "dimension of the probed features",
        "probe_accuracy": "out-of-fold accuracy of the probe",
        "probe_balanced_accuracy": "out-of-fold balanced accuracy (mean recall per group)",
        "majority_rate": "share of the most frequent group (accuracy of always guessing it)",
        "chance_balanced_accuracy": "1 / n_groups (balanced accuracy of a constant guess)",
        "accuracy_advantage": "probe_accuracy − majority_rate",
        "balanced_advantage": "probe_balanced_accuracy − chance_balanced_accuracy",
        "missing_group_rows": "rows without a group value (left out)",
    }

    #: Rows per shard: each shard returns its rows' probed features (outputs or one tensor), ``rows × d``.
    shards = RowShards(rows=1024)

    def plan(self, ctx: AuditContext, p: Params) -> Plan:
        """The seeded sample and its group codes (the probe's labels)."""
        rows, data, notes = sampled_data(ctx, int(p.limit))
        col = p.group if p.group is not None else group_columns(None, data)[0]
        groups = group_rows(data, [col])
        if groups.n_groups < 2:
            raise SkipCheck(f"column '{col}' has fewer than two values: nothing to predict")
        return Plan(rows=rows, notes=notes,
                    state={"col": col, "codes": groups.codes, "missing": groups.missing, "y": data.y})

    def run_shard(self, ctx: AuditContext, p: Params, plan: Plan, shard: Shard) -> Any:
        """The raw audited outputs, or the probed tensor, on the shard's rows."""
        data = ctx.require_data()
        if p.features == "outputs":
            return ctx.model.run(data.x, inputs=data.inputs)
        return ctx.activations("penultimate" if p.features == "penultimate" else [p.features], data=data)

    def merge(self, ctx: AuditContext, p: Params, plan: Plan, partials: Sequence[Any]) -> CheckResult:
        """k closed-form ridge fits on the gathered features."""
        st, what = plan.state, p.features
        col, codes, n = st["col"], st["codes"], len(st["codes"])
        keep = codes >= 0
        gathered = gather_rows(partials)
        if what == "outputs":
            pred = predictions_of(ctx.model, gathered, y=st["y"])
            feats = pred.probs if pred.probs is not None else pred.values
        else:
            feats = next(iter(gathered.values()))
        x = np.asarray(feats, dtype=np.float64).reshape(n, -1)[keep]
        lab = codes[keep]
        finite = np.all(np.isfinite(x), axis=1)
        x, lab = x[finite], lab[finite]
        # relabel to 0..K-1 over the groups that remain
        present, lab = np.unique(lab, return_inverse=True)
        if len(present) < 2:
            raise SkipCheck(f"fewer than two values of '{col}' among usable rows")
        k = int(min(p.folds, len(lab)))
        folds = stratified_folds(lab, k, ctx.rng)
        ctx.check_cancelled()
        oof = cross_validated_probe(x, lab, folds, float(p.alpha))
        counts = np.bincount(lab)
        acc = float(np.mean(oof == lab))
        bal = balanced_accuracy(lab, oof)
        majority = float(counts.max() / counts.sum())
        metrics: dict[str, Any] = {
            "n": len(lab), "n_groups": len(present), "feature_dim": int(x.shape[1]),
            "probe_accuracy": acc, "probe_balanced_accuracy": bal, "majority_rate": majority,
            "chance_balanced_accuracy": 1.0 / len(present), "accuracy_advantage": acc - majority,
            "balanced_advantage": bal - 1.0 / len(present), "missing_group_rows": st["missing"],
        }
        notes = [f"probe on {what} ({x.shape[1]} features) of {len(lab)} rows, {k}-fold stratified "
                 f"cross-validation (seeded), ridge alpha {p.alpha}"]
        notes += plan.notes
        findings: list[Finding] = []
        if acc - majority > float(p.max_advantage):
            findings.append(Finding(
                message=f"'{col}' can be predicted from {what} with {acc:.1%} accuracy (majority rate "
                        f"{majority:.1%}): the attribute leaks", severity="warn",
                data={"advantage": acc - majority}))
        if int((~finite).sum()):
            notes.append(f"{int((~finite).sum())} rows with non-finite features left out")
        return CheckResult(metrics=metrics, findings=findings, notes=notes)
