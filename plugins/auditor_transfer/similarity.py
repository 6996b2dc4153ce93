"""``transfer.similarity``: how alike the model and a reference represent and classify the same inputs.

- Linear CKA (Kornblith, Norouzi, Lee & Hinton, "Similarity of Neural Network Representations Revisited",
  ICML 2019): ``CKA = HSIC(K, L)/sqrt(HSIC(K, K)·HSIC(L, L))`` with ``K = XXᵀ``, ``L = YYᵀ``; biased HSIC
  ``tr(KHLH)/(n−1)²`` or the unbiased estimator of Song et al. (2012); for many samples the minibatch
  estimator of Nguyen, Raghu & Kornblith (ICLR 2021).
- RSA (Kriegeskorte, Mur & Bandettini 2008): Spearman correlation of the representational dissimilarity
  matrices (1 − Pearson correlation between samples).
- Prediction agreement, and complementary knowledge after Roth et al., "Fantastic Gains and Where to Find
  Them: On the Existence and Prospect of General Knowledge Transfer between Any Pretrained Model" (ICLR 2024):
  the share of samples one model classifies correctly and the other does not, both ways.

Features of every requested layer (plus the penultimate one) come from one pass per model. The check shards by
rows. Linear CKA's exact estimator (one batch, biased HSIC) comes from feature-space sums that add up over shards:
``HSIC = ‖XcᵀYc‖²/(n−1)²`` with ``XcᵀYc = XᵀY − sₓs_yᵀ/n`` (``d × d`` per layer, never ``n × n``). What needs
every pair of samples takes the ``n × n`` route: RSA (its RDMs), the unbiased estimator and layers wider than
:data:`SUMS_MAX_DIM` gather the shards' features (``n × d``, what one pass holds) and compute on the driver. The
minibatch estimator shards by minibatch: each shard computes its batch's CKA and RSA terms (memory
O(batch² · layers)), which add up in batch order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from auditor import AuditContext, CheckResult, Need, Task, param
from auditor.outputs import encode_labels, predictions_of
from auditor.shards import Plan, RowShards, Shard, ShardedCheck, gather_rows, sampled_rows, summed
from auditor_transfer._common import (
    forward,
    headlined,
    jsonable,
    pick_references,
    reference_param,
    resolve_layers,
    spatial_param,
)
from auditor_transfer.stats import CKAAccumulator, RSAAccumulator, feature_sums

# Up to this many samples CKA uses one batch (exact estimator, O(n²) memory); above, minibatches of 1024.
FULL_MAX = 2048
AUTO_MINIBATCH = 1024
#: The widest layer whose CKA comes from feature-space sums (d × d): no larger than the largest Gram matrix
#: (n × n) the exact estimator builds; a wider layer's n × n Gram matrix is the smaller one.
SUMS_MAX_DIM = FULL_MAX


class Similarity(ShardedCheck):
    """Linear CKA and RSA between layers of the model and a reference, prediction agreement, complementary knowledge."""

    name = "transfer.similarity"

    class Params:
        layers: str | list[str] = param("penultimate", "Model layers: 'penultimate', 'all' (every "
                "activation-producing node, subsampled to max_layers) or a list of tensor names.")
        reference_layers: str | list[str] | None = param(None, "Reference layers, same forms; null: the same rule (or "
                "names) as layers.")
        max_layers: int = param(8, "With 'all', at most this many layers, evenly spaced (first and last kept).",
                minimum=1)
        limit: int = param(1000, "Samples used (stratified, seeded).", minimum=4)
        minibatch: int | None = param(None, f"Minibatch CKA with batches of this size; null: exact if the sample has "
                f"at most {FULL_MAX} rows, else batches of {AUTO_MINIBATCH}.", minimum=4)
        unbiased: bool | None = param(None, "Use the unbiased HSIC estimator (Song et al. 2012); null: unbiased for "
                "minibatches, biased (the classic linear CKA) for one batch.")
        rsa: bool = param(True, "Also compute RSA (O(n²) per layer, like CKA).")
        spatial: str = spatial_param()
        reference: str | None = reference_param()

    needs = frozenset({Need.DATA, Need.REFERENCE})
    metrics_doc = {
        "cka": "linear CKA of the penultimate features of the model and the (first) reference; 0 unrelated, "
               "1 identical up to rotation and isotropic scaling",
        "rsa": "Spearman correlation of the two penultimate RDMs; −1..1, 1 same geometry",
        "cka_matrix": "CKA of every model layer (rows) with every reference layer (columns)",
        "rsa_matrix": "RSA of every model layer (rows) with every reference layer (columns)",
        "model_layers": "tensor names of the matrix rows",
        "reference_layers": "tensor names of the matrix columns",
        "agreement": "share of samples whose predicted class is the same for both models",
        "model_accuracy": "accuracy of the model on the sample (labelled data)",
        "reference_accuracy": "accuracy of the reference on the sample (labelled data)",
        "model_only_correct": "complementary knowledge: share the model gets right and the reference wrong",
        "reference_only_correct": "complementary knowledge: share the reference gets right and the model wrong",
        "both_correct": "share both get right",
        "both_wrong": "share both get wrong",
        "by_reference": "all of the above for each reference, by name",
        "n": "samples compared",
        "batches": "CKA minibatches (1: exact estimator)",
        "unbiased": "whether the unbiased HSIC estimator was used",
    }

    #: Rows per shard: each shard returns its rows' raw outputs and CKA sums (or features) for every model.
    shards = RowShards(rows=512)

    def plan(self, ctx: AuditContext, p: Params) -> Plan:
        """The seeded sample, the layers of every model, the estimator and the route (see the module docstring)."""
        rows, notes = sampled_rows(ctx, int(p.limit))
        refs = pick_references(ctx, p.reference)
        m_layers = resolve_layers(ctx.model, p.layers, int(p.max_layers))
        layers = {"model": (m_layers, ctx.model.penultimate())}
        for name, ref in refs.items():
            layers[name] = (self._reference_layers(ref, p.layers, p.reference_layers, int(p.max_layers)),
                            ref.penultimate())
        full = ctx.require_data()
        n = full.n if rows is None else len(rows)
        size = int(p.minibatch) if p.minibatch is not None else (n if n <= FULL_MAX else AUTO_MINIBATCH)
        splits = np.array_split(np.arange(n), max(1, int(np.ceil(n / size))))
        unbiased = bool(p.unbiased) if p.unbiased is not None else len(splits) > 1
        if unbiased and min(len(s) for s in splits) < 4:
            raise ValueError("the unbiased estimator needs at least 4 samples per minibatch")
        route = "batches" if len(splits) > 1 else "gather" if p.rsa or unbiased else "sums"
        state = {"layers": {k: (own, list(dict.fromkeys(own + ([pen] if pen else [])))) for k, (own, pen) in
                            layers.items()}, "pen": {k: pen for k, (_, pen) in layers.items()},
                 "splits": splits, "unbiased": unbiased, "route": route, "y": None if full.y is None else
                 (full.y if rows is None else np.asarray(full.y)[rows]), "rows": rows}
        notes = notes[-1:] if rows is not None else []
        if len(splits) > 1:
            notes.append(f"minibatch CKA over {len(splits)} batches of about {size} samples"
                         + ("; RSA is the mean over batches" if p.rsa else "") + "; one shard per minibatch")
        elif route == "gather":
            notes.append(("RSA compares every pair of samples" if p.rsa else "the unbiased estimator needs every "
                          "pair of samples") + ": the shards' features (n × d per layer) are gathered and compared "
                         "on the driver (n × n)")
        return Plan(items=len(splits), items_per_shard=1, state=state, notes=notes) if route == "batches" else \
            Plan(rows=rows, state=state, notes=notes)

    def _accumulators(self, st: dict[str, Any], rsa: bool) -> tuple[dict[str, CKAAccumulator], dict[str, Any]]:
        sizes = {k: len(every) for k, (_, every) in st["layers"].items()}
        refs = [k for k in sizes if k != "model"]
        return ({k: CKAAccumulator(sizes["model"], sizes[k], unbiased=st["unbiased"]) for k in refs},
                {k: RSAAccumulator(sizes["model"], sizes[k]) if rsa else None for k in refs})

    @staticmethod
    def _add(cka: dict[str, CKAAccumulator], rsa: dict[str, Any], feats: dict[str, list[np.ndarray]]) -> None:
        for name in cka:
            cka[name].add(feats["model"], feats[name])
            if rsa[name] is not None:
                rsa[name].add(feats["model"], feats[name])

    def run_shard(self, ctx: AuditContext, p: Params, plan: Plan, shard: Shard) -> Any:
        """The shard's raw outputs with its CKA sums (or, on the n × n route, its features); for the minibatch
        estimator (a plan of minibatches), its minibatch's raw outputs and CKA/RSA terms."""
        st, spatial = plan.state, str(p.spatial)
        tensors = {name: every for name, (_, every) in st["layers"].items()}
        if st["route"] != "batches":
            got = forward(ctx, tensors, ctx.require_data(), spatial)
            if st["route"] == "sums" and all(f.shape[1] <= SUMS_MAX_DIM for fs in got["features"].values()
                                             for f in fs):
                got["sums"] = {k: feature_sums(got["features"]["model"], f) for k, f in got["features"].items()
                               if k != "model"}
                del got["features"]
            return got
        full = ctx.require_data()
        idx = st["splits"][int(shard.rows[0])]
        got = forward(ctx, tensors, full.subset(idx if st["rows"] is None else st["rows"][idx]), spatial)
        cka, rsa = self._accumulators(st, bool(p.rsa))
        self._add(cka, rsa, got["features"])
        return {"raw": got["raw"], "cka": cka, "rsa": rsa}

    def merge(self, ctx: AuditContext, p: Params, plan: Plan, partials: Sequence[Any]) -> CheckResult:
        """CKA from the summed sums or the gathered features, RSA, agreement from the gathered outputs."""
        st, notes = plan.state, list(plan.notes)
        raw = gather_rows([q["raw"] for q in partials])
        cka, rsa = self._accumulators(st, bool(p.rsa))
        if st["route"] == "batches":  # in batch order: the sums one accumulator over every batch holds
            for q in partials:
                for name in cka:
                    cka[name].absorb(q["cka"][name])
                    if rsa[name] is not None:
                        rsa[name].absorb(q["rsa"][name])
        elif "sums" in partials[0]:
            for name, total in summed([q["sums"] for q in partials]).items():
                cka[name].add_sums(total)
        else:
            if st["route"] == "sums":
                notes.append(f"a layer has more than {SUMS_MAX_DIM} features: CKA from the n × n Gram matrices "
                             "of the shards' gathered features")
            self._add(cka, rsa, gather_rows([q["features"] for q in partials]))
        y = st["y"]
        m_layers, m_all = st["layers"]["model"]
        m_pen = st["pen"]["model"]
        m_pred = predictions_of(ctx.model, raw["model"], y=y)
        by_ref: dict[str, dict[str, Any]] = {}
        for name in cka:
            r_layers, r_all = st["layers"][name]
            rows = [m_all.index(t) for t in m_layers]
            cols = [r_all.index(t) for t in r_layers]
            out: dict[str, Any] = {"model_layers": m_layers, "reference_layers": r_layers}
            pen = st["pen"][name]
            for kind, acc in (("cka", cka[name]), ("rsa", rsa[name])):
                if acc is not None:  # the layer matrix, and its penultimate cell as the headline
                    mat = acc.result()
                    out[f"{kind}_matrix"] = mat[np.ix_(rows, cols)]
                    if m_pen and pen:
                        out[kind] = mat[m_all.index(m_pen), r_all.index(pen)]
            r_pred = predictions_of(ctx.references[name], raw[name], y=y)
            if m_pred.task == Task.CLASSIFICATION and r_pred.task == Task.CLASSIFICATION and \
                    m_pred.labels is not None and r_pred.labels is not None:
                assert m_pred.classes is not None and r_pred.classes is not None
                out.update(self._agreement(m_pred.labels, m_pred.classes, r_pred.labels, r_pred.classes, y))
            else:
                notes.append(f"{name}: prediction agreement needs two classifiers")
            by_ref[name] = jsonable(out)
        if not m_pen:
            notes.append("no penultimate layer found in the model: no headline cka/rsa")
        metrics = {**headlined(by_ref, notes), "n": sum(len(s) for s in st["splits"]), "batches": len(st["splits"]),
                   "unbiased": st["unbiased"]}
        return CheckResult(metrics=metrics, notes=notes)

    @staticmethod
    def _reference_layers(ref: Any, layers: Any, reference_layers: Any, max_layers: int) -> list[str]:
        if reference_layers is not None:
            return resolve_layers(ref, reference_layers, max_layers)
        if isinstance(layers, str) and layers in ("penultimate", "all", "every"):
            return resolve_layers(ref, layers, max_layers)
        try:
            return resolve_layers(ref, layers, max_layers)
        except ValueError as exc:
            raise ValueError(f"{exc} (in the reference {ref.path}); set reference_layers") from None

    @staticmethod
    def _agreement(m_lab: np.ndarray, m_cls: tuple[Any, ...], r_lab: np.ndarray, r_cls: tuple[Any, ...],
                   y: np.ndarray | None) -> dict[str, Any]:
        """Agreement by class label (the two models may order their classes differently) and, with labels,
        the four cells of the correct/incorrect table."""
        mc = np.asarray([str(c) for c in m_cls] + ["<none>"], dtype=object)
        rc = np.asarray([str(c) for c in r_cls] + ["<none>"], dtype=object)
        # a row with NaN output has label -1: it maps to "<none>" and agrees with nothing
        m_names = mc[np.where(m_lab < 0, len(m_cls), m_lab)]
        r_names = rc[np.where(r_lab < 0, len(r_cls), r_lab)]
        agree = (m_names == r_names) & (m_lab >= 0) & (r_lab >= 0)
        out: dict[str, Any] = {"agreement": float(agree.mean())}
        if y is not None:
            ym = encode_labels(y, m_cls)
            yr = encode_labels(y, r_cls)
            cm = (m_lab == ym) & (ym >= 0)
            cr = (r_lab == yr) & (yr >= 0)
            out.update({
                "model_accuracy": float(cm.mean()),
                "reference_accuracy": float(cr.mean()),
                "model_only_correct": float((cm & ~cr).mean()),
                "reference_only_correct": float((cr & ~cm).mean()),
                "both_correct": float((cm & cr).mean()),
                "both_wrong": float((~cm & ~cr).mean()),
            })
        return out
