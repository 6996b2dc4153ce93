"""``transfer.attribution_distance``: do the model and a reference look at the same parts of the input?

Song, Chen, Wang, Shen & Song, "Deep Model Transferability from Attribution Maps" (NeurIPS 2019) compare
models by the distance between their attribution maps on shared unlabelled inputs. Here the maps are

- occlusion (Zeiler & Fergus 2014), forward passes only: ``a_p(x) = s_c(x) − s_c(x with patch p replaced by
  the baseline)``, where ``s_c`` is the explained class's logit (the input of a final Softmax; by default,
  because probabilities saturate for confident samples and then carry no map), its probability, or a
  regressor's output;
- gradient × input (Shrikumar et al. 2016): ``a(x) = x ⊙ ∂s_c/∂x`` with ``s_c`` the class logit, when a
  differentiable backend (the ``torch`` plugin) is installed; image maps are summed over channels.

Per sample the distance is the cosine distance ``1 − ⟨a, b⟩/(‖a‖‖b‖)`` of the flattened maps (Song et al.);
the Spearman rank correlation of the maps is reported beside it.

The check shards by rows: the plan predicts the sample once per model (the class each explains); each shard
explains its rows with every model and returns each row's distance and correlation, which the driver gathers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from auditor import ArraySource, AuditContext, CheckResult, ModelHandle, Need, SkipCheck, Task, param
from auditor import graph as G
from auditor.outputs import Predictions, encode_labels, predictions_of
from auditor.shards import Plan, RowShards, Shard, ShardedCheck, gather_rows, sampled_data
from auditor_transfer._common import data_for, headlined, jsonable, model_named, pick_references, reference_param
from auditor_transfer.stats import spearman_rows

# Occluded copies are built and run this many bytes at a time (all patches of several samples per batch).
CHUNK_BYTES = 64 << 20


def spatial_axes(x: np.ndarray, layout: str | None) -> tuple[int, int] | None:
    """The (H, W) axes of a batch of images, or None for inputs that are not images."""
    if x.ndim != 4:
        return None
    return (1, 2) if layout == "NHWC" else (2, 3)


def patch_masks(shape: tuple[int, ...], axes: tuple[int, int] | None, patch: int) -> np.ndarray:
    """Boolean masks (P, *shape) of the occlusion patches of one sample: ``patch`` × ``patch`` squares over
    all channels of an image, or runs of ``patch`` consecutive values of any other input."""
    if axes is None:
        d = int(np.prod(shape))
        groups = np.arange(d) // patch
        masks = np.asarray(groups[None, :] == np.arange(groups[-1] + 1)[:, None])
        return masks.reshape((-1, *shape))
    h, w = shape[axes[0] - 1], shape[axes[1] - 1]
    gh, gw = -(-h // patch), -(-w // patch)
    cell = (np.arange(h)[:, None] // patch) * gw + (np.arange(w)[None, :] // patch)  # (H, W) patch id
    masks = cell[None] == np.arange(gh * gw)[:, None, None]  # (P, H, W)
    # broadcast over the channel axis of the sample
    chan = 0 if axes == (2, 3) else 2
    masks = np.expand_dims(masks, axis=1 + chan)
    return np.broadcast_to(masks, (gh * gw, *shape))


def logit_tensor(model: ModelHandle) -> str | None:
    """The pre-softmax scores: the input of the Softmax node producing an audited output, if there is one."""
    producers = G.produced_tensors(model.proto.graph)
    zip_tensor = {z.output: z.tensor for z in model.zipmaps.values()}
    for out in model.outputs:
        node = producers.get(zip_tensor.get(out, out))
        if node is not None and node.op_type == "Softmax":
            return str(node.input[0])
    return None


class Scorer:
    """What a model's attributions explain, for any batch of inputs: the class logits (the input of a final
    Softmax) when ``score`` is ``"logit"`` and the graph has one, else the class probabilities as the
    auditor reads them (or a regressor's values)."""

    def __init__(self, model: ModelHandle, score: str, task: Task,
                 inputs: dict[str, np.ndarray] | None = None) -> None:
        self.model = model
        self.task = task
        self.logits = logit_tensor(model) if score == "logit" else None
        #: the model's other per-sample inputs of the explained rows (batch-first; empty for one input)
        self.inputs = inputs or {}

    def companions(self, rows: np.ndarray, repeat: int = 1) -> dict[str, np.ndarray]:
        """The other inputs of the explained rows ``rows``, each row repeated ``repeat`` times in a row (the
        occluded copies of one sample follow each other)."""
        return {k: np.repeat(np.asarray(v)[rows], repeat, axis=0) for k, v in self.inputs.items()}

    @property
    def kind(self) -> str:
        """``logit`` or ``probability`` (``value`` for regressors)."""
        if self.logits is not None:
            return "logit"
        return "probability" if self.task == Task.CLASSIFICATION else "value"

    def __call__(self, x: np.ndarray, inputs: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Scores of ``x``; ``inputs``: the other per-sample inputs of its rows (default: those of every
        explained row, for ``x`` holding those rows)."""
        others = inputs if inputs is not None else self.inputs
        if self.logits is not None:
            z = np.asarray(self.model.run(x, [self.logits], inputs=others)[self.logits], dtype=np.float64)
            return z.reshape(len(x), -1)
        pred = predictions_of(self.model, self.model.run(x, inputs=others), task=self.task)
        return np.asarray(pred.probs if pred.probs is not None else pred.values, dtype=np.float64).reshape(len(x), -1)


def occlusion_maps(score: Scorer, x: np.ndarray, targets: np.ndarray, *, patch: int, baseline: np.ndarray,
                   check: Any = None) -> np.ndarray:
    """Occlusion attributions (n, P): the drop of the target score when each patch takes the baseline value.

    Every occluded copy of a chunk of samples is built at once (``np.where`` over a (chunk, P, ...) array) and
    run through the model in its batches; never one call per sample.
    """
    axes = spatial_axes(x, score.model.layout)
    shape = tuple(x.shape[1:])
    masks = patch_masks(shape, axes, patch)
    n_p = len(masks)
    clean = score(x)[np.arange(len(x)), targets]
    per_sample = n_p * int(np.prod(shape)) * max(x.dtype.itemsize, 4)
    chunk = max(1, CHUNK_BYTES // max(per_sample, 1))
    out = np.empty((len(x), n_p))
    for start in range(0, len(x), chunk):
        if check is not None:
            check()
        xb = x[start:start + chunk]
        occluded = np.where(masks[None], baseline.astype(x.dtype)[None, None], xb[:, None])  # (b, P, *shape)
        rows = np.arange(start, start + len(xb))
        s = score(occluded.reshape((-1, *shape)), score.companions(rows, n_p)).reshape(len(xb), n_p, -1)
        t = targets[start:start + chunk]
        out[start:start + chunk] = clean[start:start + chunk, None] - s[np.arange(len(xb)), :, t]
    return out


class AttributionDistance(ShardedCheck):
    """Distance between the attribution maps of the model and each reference on the same inputs."""

    name = "transfer.attribution_distance"

    class Params:
        limit: int = param(64, "Samples explained.", minimum=1)
        method: str = param("auto", "'auto': gradient × input when a gradient backend (the torch plugin) is "
                "installed, else occlusion.", choices=["auto", "occlusion", "gradient"])
        patch: int | None = param(None, "Occlusion patch: side in pixels for images (null: an eighth of the smaller "
                "side), consecutive values for other inputs (null: 1).", minimum=1)
        baseline: str = param("zero", "Value an occluded patch takes: 0, or the per-feature mean of the sample.",
                choices=["zero", "mean"])
        score: str = param("logit", "Score explained: the class logit (the input of a final Softmax; probabilities "
                "when the graph has none) or the class probability (saturates for confident samples).",
                choices=["logit", "probability"])
        target: str = param("predicted", "Class explained: each model's own predicted class, or the true label (when "
                "both models know the label's class).", choices=["predicted", "label"])
        reference: str | None = reference_param()

    needs = frozenset({Need.DATA, Need.REFERENCE})
    metrics_doc = {
        "distance": "mean over samples of the cosine distance 1 − cos between the two maps; 0 same direction, "
                    "1 unrelated, 2 opposite (first reference)",
        "distance_std": "standard deviation of the per-sample cosine distance",
        "rank_correlation": "mean over samples of the Spearman correlation of the two maps; −1..1",
        "n": "samples with two non-zero maps (the others are left out)",
        "map_size": "values per attribution map",
        "method": "occlusion or gradient×input",
        "by_reference": "all of the above for each reference, by name",
    }

    #: Rows per shard: each shard explains its rows with every model and compares the maps row by row.
    shards = RowShards(rows=32)

    def plan(self, ctx: AuditContext, p: Params) -> Plan:
        """The seeded sample; the method; each model's explained class per sample (one prediction pass over
        the sample here, so every shard explains the class a whole pass would pick) and its occlusion baseline."""
        rows, sample, notes = sampled_data(ctx, int(p.limit))
        refs = pick_references(ctx, p.reference)
        method = str(p.method)
        if method == "auto":
            method = "occlusion"
            try:  # every model must be differentiable by a gradient backend, else all use occlusion
                for m in [ctx.model, *refs.values()]:
                    ctx.gradients(m)
                method = "gradient"
            except SkipCheck as exc:
                notes.append(f"gradient × input unavailable ({exc}); occlusion used instead")
        y = sample.y if p.target == "label" else None
        if p.target == "label" and y is None:
            raise SkipCheck("target 'label' needs labels (data.y)")
        targets: dict[str, np.ndarray] = {}
        base: dict[str, np.ndarray | None] = {}
        tasks: dict[str, Task] = {}
        explained: set[str] = set()
        for name, model in {"model": ctx.model, **refs}.items():
            part = data_for(sample, model)
            pred = predictions_of(model, model.run(part.x, inputs=ctx.companions(model, part)), y=sample.y)
            if method == "gradient" and pred.task != Task.CLASSIFICATION:
                raise SkipCheck("gradient × input explains a class logit: the models must be classifiers")
            targets[name], tasks[name] = self._targets(pred, y), pred.task
            base[name] = np.asarray(part.x, dtype=np.float64).mean(axis=0) \
                if method == "occlusion" and p.baseline == "mean" else None
            explained.add(Scorer(model, str(p.score), pred.task).kind)
        notes.append(f"attributions by {'gradient × input' if method == 'gradient' else 'occlusion'}"
                     + (f", patch {self._patch(sample.x, ctx.model, p.patch)}, explaining the class "
                        f"{' / '.join(sorted(explained))}" if method == "occlusion" else ""))
        return Plan(rows=rows, notes=notes, state={"method": method, "targets": targets, "tasks": tasks,
                                                       "base": base})

    def run_shard(self, ctx: AuditContext, p: Params, plan: Plan, shard: Shard) -> Any:
        """Every model's maps of the shard's rows; per reference, each row's cosine distance and rank
        correlation to the model's map (rows where both maps are non-zero)."""
        data = ctx.require_data()
        at = slice(shard.start, shard.start + data.n)
        maps, st = {}, plan.state
        for name in st["targets"]:  # the model first, then the references
            ctx.check_cancelled()
            model = model_named(ctx, name)
            part = data_for(data, model)
            maps[name] = self._maps(ctx, model, np.asarray(part.x), st["targets"][name][at], st["method"], p,
                                    st["tasks"][name], st["base"][name], ctx.companions(model, part))
            if maps[name].shape[1:] != maps["model"].shape[1:]:
                raise ValueError(f"attribution maps of the model {maps['model'].shape[1:]} and of '{name}' "
                                 f"{maps[name].shape[1:]} differ in shape")
        a = maps.pop("model")
        return {"map_size": int(a.shape[1]), "rows": {name: self._per_row(a, b) for name, b in maps.items()}}

    def merge(self, ctx: AuditContext, p: Params, plan: Plan, partials: Sequence[Any]) -> CheckResult:
        """The per-row distances of every shard, gathered, summarised per reference."""
        rows = gather_rows([q["rows"] for q in partials])
        method = "gradient×input" if plan.state["method"] == "gradient" else "occlusion"
        by_ref = {name: jsonable(self._summary(r["distance"], r["rho"], partials[0]["map_size"], method))
                  for name, r in rows.items()}
        notes = list(plan.notes)
        return CheckResult(metrics=headlined(by_ref, notes), notes=notes)

    @staticmethod
    def _patch(x: np.ndarray | ArraySource, model: ModelHandle, patch: int | None) -> int:
        if patch is not None:
            return int(patch)
        axes = spatial_axes(np.asarray(x[:1]), model.layout)
        if axes is None:
            return 1
        return max(1, min(x.shape[axes[0]], x.shape[axes[1]]) // 8)

    def _maps(self, ctx: AuditContext, model: ModelHandle, x: np.ndarray, targets: np.ndarray, method: str,
              p: Params, task: Task, base: np.ndarray | None, others: dict[str, np.ndarray] | None = None
              ) -> np.ndarray:
        """Attribution maps (n, map size) of one model explaining ``targets``; ``base``: the occlusion baseline
        (null: zero); ``others``: its other per-sample inputs for the rows of ``x``, held fixed (never
        occluded, never differentiated)."""
        if method == "gradient":
            backend = ctx.gradients(model)
            # a backend written for one-input models need not take inputs=: pass it only when there are some
            raw = backend.input_gradients(x, targets, of="logit", inputs=others) if others else \
                backend.input_gradients(x, targets, of="logit")
            g = np.asarray(raw, dtype=np.float64)
            a = g * np.asarray(x, dtype=np.float64)
            axes = spatial_axes(x, model.layout)
            if axes is not None:  # sum over channels: one value per pixel, whatever the layout
                a = a.sum(axis=3 if axes == (1, 2) else 1)
            return a.reshape(len(x), -1)
        scorer = Scorer(model, str(p.score), task, others)
        return occlusion_maps(scorer, x, targets, patch=self._patch(x, model, p.patch),
                              baseline=base if base is not None else np.zeros(x.shape[1:]), check=ctx.check_cancelled)

    @staticmethod
    def _targets(pred: Predictions, y: np.ndarray | None) -> np.ndarray:
        if pred.task != Task.CLASSIFICATION:
            assert pred.values is not None
            return np.zeros(len(pred.values), dtype=np.int64)  # the (first) output value
        assert pred.labels is not None and pred.classes is not None
        if y is None:
            return np.asarray(np.maximum(pred.labels, 0))
        t = encode_labels(y, pred.classes)
        if (t < 0).any():
            raise SkipCheck("target 'label': some labels are not among a model's classes")
        return t

    @staticmethod
    def _per_row(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
        """Cosine distance and Spearman correlation of each row's two maps (rows where both are non-zero)."""
        na = np.linalg.norm(a, axis=1)
        nb = np.linalg.norm(b, axis=1)
        ok = (na > 0) & (nb > 0)
        cos = np.sum(a[ok] * b[ok], axis=1) / (na[ok] * nb[ok])
        return {"distance": 1.0 - cos, "rho": spearman_rows(a[ok], b[ok]) if ok.any() else np.zeros(0)}

    @staticmethod
    def _summary(dist: np.ndarray, rho: np.ndarray, map_size: int, method: str) -> dict[str, Any]:
        ok = len(dist) > 0
        return {
            "distance": float(dist.mean()) if ok else float("nan"),
            "distance_std": float(dist.std()) if ok else float("nan"),
            "rank_correlation": float(np.nanmean(rho)) if np.isfinite(rho).any() else float("nan"),
            "n": len(dist),
            "map_size": map_size,
            "method": method,
        }
