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
"""

from __future__ import annotations

from typing import Any

import numpy as np

from auditor import AuditContext, Check, CheckResult, Need, Task, param
from auditor.outputs import encode_labels
from auditor_transfer._common import (
    as_vectors,
    data_for,
    forward,
    jsonable,
    pick_references,
    reference_param,
    resolve_layers,
    spatial_param,
)
from auditor_transfer.stats import CKAAccumulator, RSAAccumulator

# Up to this many samples CKA uses one batch (exact estimator, O(n²) memory); above, minibatches of 1024.
FULL_MAX = 2048
AUTO_MINIBATCH = 1024


class Similarity(Check):
    """Representation similarity (CKA, RSA), prediction agreement and complementary knowledge between the
    model and each reference, on the same samples.

    Features of every requested layer (plus the penultimate one) come from one pass per model, one minibatch
    at a time; each minibatch adds its centred Gram matrices to the running HSIC sums and is dropped, so
    memory is O(batch² · layers).
    """

    name = "transfer.similarity"
    description = ("Linear CKA and RSA between layers of the model and a reference (layer-by-layer matrices, "
                   "headline for the penultimate features), prediction agreement and complementary knowledge.")

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

    def run(self, ctx: AuditContext, p: Params) -> CheckResult:
        """Gather features minibatch by minibatch, accumulate CKA/RSA, compare predictions."""
        sample = ctx.sample(int(p.limit))
        refs = pick_references(ctx, p.reference)
        notes = list(sample.notes[-1:]) if sample is not ctx.data else []
        model = ctx.model
        spatial = str(p.spatial)
        m_layers = resolve_layers(model, p.layers, int(p.max_layers))
        m_pen = model.penultimate()
        m_all = list(dict.fromkeys(m_layers + ([m_pen] if m_pen else [])))
        ref_data = {name: data_for(sample, ref) for name, ref in refs.items()}
        r_layers: dict[str, list[str]] = {}
        r_all: dict[str, list[str]] = {}
        r_pen: dict[str, str | None] = {}
        for name, ref in refs.items():
            r_layers[name] = self._reference_layers(ref, p.layers, p.reference_layers, int(p.max_layers))
            r_pen[name] = ref.penultimate()
            pen = r_pen[name]
            r_all[name] = list(dict.fromkeys(r_layers[name] + ([pen] if pen else [])))

        n = sample.n
        size = int(p.minibatch) if p.minibatch is not None else (n if n <= FULL_MAX else AUTO_MINIBATCH)
        splits = np.array_split(np.arange(n), max(1, int(np.ceil(n / size))))
        unbiased = bool(p.unbiased) if p.unbiased is not None else len(splits) > 1
        if unbiased and min(len(s) for s in splits) < 4:
            raise ValueError("the unbiased estimator needs at least 4 samples per minibatch")
        cka = {name: CKAAccumulator(len(m_all), len(r_all[name]), unbiased=unbiased) for name in refs}
        rsa = {name: RSAAccumulator(len(m_all), len(r_all[name])) for name in refs}
        m_labels: list[np.ndarray] = []
        r_labels: dict[str, list[np.ndarray]] = {name: [] for name in refs}
        m_task: Task | None = None
        r_task: dict[str, Task | None] = dict.fromkeys(refs)
        m_classes: tuple[Any, ...] | None = None
        r_classes: dict[str, tuple[Any, ...] | None] = dict.fromkeys(refs)
        y = sample.y
        for done, idx in enumerate(splits):
            ctx.check_cancelled()
            yb = None if y is None else y[idx]
            mp = forward(model, sample.x[idx], m_all, task=m_task, y=yb,
                         inputs=ctx.companions(model, sample, idx))
            m_task, m_classes = mp.predictions.task, mp.predictions.classes
            m_feats = [as_vectors(mp.layers[t], len(idx), spatial) for t in m_all]
            if mp.predictions.labels is not None:
                m_labels.append(mp.predictions.labels)
            for name, ref in refs.items():
                rp = forward(ref, ref_data[name].x[idx], r_all[name], task=r_task[name], y=yb,
                             inputs=ctx.companions(ref, ref_data[name], idx))
                r_task[name], r_classes[name] = rp.predictions.task, rp.predictions.classes
                r_feats = [as_vectors(rp.layers[t], len(idx), spatial) for t in r_all[name]]
                cka[name].add(m_feats, r_feats)
                if p.rsa:
                    rsa[name].add(m_feats, r_feats)
                if rp.predictions.labels is not None:
                    r_labels[name].append(rp.predictions.labels)
            ctx.report_progress(done + 1, len(splits), "minibatches")

        by_ref: dict[str, dict[str, Any]] = {}
        for name in refs:
            cm = cka[name].result()
            rm = rsa[name].result() if p.rsa else None
            rows = [m_all.index(t) for t in m_layers]
            cols = [r_all[name].index(t) for t in r_layers[name]]
            out: dict[str, Any] = {
                "model_layers": m_layers,
                "reference_layers": r_layers[name],
                "cka_matrix": cm[np.ix_(rows, cols)],
            }
            pen = r_pen[name]
            if m_pen and pen:
                out["cka"] = cm[m_all.index(m_pen), r_all[name].index(pen)]
            if rm is not None:
                out["rsa_matrix"] = rm[np.ix_(rows, cols)]
                if m_pen and pen:
                    out["rsa"] = rm[m_all.index(m_pen), r_all[name].index(pen)]
            if m_task == Task.CLASSIFICATION and r_task[name] == Task.CLASSIFICATION and m_labels and r_labels[name]:
                rc = r_classes[name]
                assert m_classes is not None and rc is not None
                out.update(self._agreement(np.concatenate(m_labels), m_classes, np.concatenate(r_labels[name]),
                                           rc, y))
            else:
                notes.append(f"{name}: prediction agreement needs two classifiers")
            by_ref[name] = jsonable(out)
        if not m_pen:
            notes.append("no penultimate layer found in the model: no headline cka/rsa")
        first = next(iter(by_ref))
        metrics: dict[str, Any] = {**by_ref[first], "by_reference": by_ref, "n": int(n),
                                   "batches": len(splits), "unbiased": unbiased}
        if len(splits) > 1:
            notes.append(f"minibatch CKA over {len(splits)} batches of about {size} samples"
                         + ("; RSA is the mean over batches" if p.rsa else ""))
        if len(refs) > 1:
            notes.append(f"headline metrics are for reference '{first}'")
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
