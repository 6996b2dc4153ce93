"""``robustness.blind_spots``: under-sensitivity, large moves that leave the prediction and its confidence put.

Sriram, Bhattacharjee, Khosla & Feizi, "Exploring Geometry of Blind Spots in Vision Models" (NeurIPS 2023)
find inputs that look like an image of another class yet sit in the source image's equi-confidence level set,
and observe that the source is *linearly* connected to them by a high-confidence path ("star-like" level sets).
Their Level Set Traversal needs gradients; this check measures the black-box, forward-pass part:

- toward another class: for pairs (source ``x_s`` of class ``a``, target ``x_t`` of a class ``b ≠ a``, both
  classified correctly), the largest ``α`` such that every point of ``x_s + α'(x_t − x_s)`` with ``α' ≤ α``
  (a grid of ``steps`` points, then ``refine`` bisection steps) is still predicted ``a`` with the probability of
  ``a`` within ``conf_tol`` of the source's. A pair is a blind spot when ``α ≥ alpha_threshold``: the input was
  moved at least that share of the way to an image of another class and the model did not notice.
- random: the same along random directions, with radii up to the pair's distance ``‖x_t − x_s‖₂``.

The check shards by pairs (128 a shard): the plan picks them on the driver (one streamed pass over the sample for
its predictions), each random direction comes from its pair's own stream, so the numbers do not depend on the
shard size. Within a shard, pairs are probed a chunk at a time and each stage's path points scored in whole model
batches (:func:`~auditor_robustness._common.chunk_rows`): memory is bounded by the chunk, never the shard or the
sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from auditor import AuditContext, CheckResult, SkipCheck, param
from auditor.gallery import Gallery, blind_spot_gallery, class_names
from auditor.jsonenc import number_or_none
from auditor.perturb import InputSpace
from auditor.shards import Plan, RowShards, Shard, ShardedCheck, gather_rows, sampled_rows
from auditor_robustness._common import (
    Classifier,
    Geometry,
    chunk_rows,
    chunk_slices,
    describe_range,
    examples_param,
    label_notes,
    limit_param,
    range_param,
    space_of,
    space_range,
    targets,
)


def pick_pairs(cls: np.ndarray, n_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n_pairs`` (source, target) row indices with ``cls[source] != cls[target]``, sources spread evenly."""
    n = len(cls)
    src = rng.permutation(np.resize(rng.permutation(n), n_pairs))
    tgt = rng.integers(0, n, n_pairs)
    for _ in range(64):  # rejection sampling, vectorised: redraw the targets of the same class
        same = cls[tgt] == cls[src]
        if not same.any():
            break
        tgt[same] = rng.integers(0, n, int(same.sum()))
    ok = cls[tgt] != cls[src]
    return src[ok], tgt[ok]


Batch = Callable[[np.ndarray, np.ndarray], np.ndarray]


def held_along(path: Batch, held: Batch, n: int, steps: int, refine: int, points: int | None = None) -> np.ndarray:
    """Largest ``t`` in [0, 1] per row such that ``held`` is true at every grid point ``k/steps ≤ t``, then
    refined by bisection in the first failing interval.

    ``path(t, rows)`` gives the inputs at positions ``t[i]`` on the paths ``rows[i]``; ``held(x, rows)`` says
    which of them keep the prediction and confidence. Every stage is one batched pass, made ``points`` inputs at
    a time (``None``: all at once).
    """

    def scan(t: np.ndarray, rows: np.ndarray) -> np.ndarray:
        parts = chunk_slices(len(t), points or max(len(t), 1))
        return np.concatenate([held(path(t[c], rows[c]), rows[c]) for c in parts] or [np.zeros(0, bool)])

    ts = np.arange(1, steps + 1) / steps
    grid_t = np.repeat(ts[None, :], n, axis=0).ravel()
    rows = np.repeat(np.arange(n), steps)
    ok = scan(grid_t, rows).reshape(n, steps)
    prefix = np.cumprod(ok, axis=1).sum(axis=1)  # grid points held before the first failure
    lo_t = np.asarray(prefix / steps)
    hi_t = np.minimum(lo_t + 1 / steps, 1.0)
    open_ = prefix < steps
    for _ in range(refine):
        r = np.flatnonzero(open_)
        if len(r) == 0:
            break
        mid = (lo_t[r] + hi_t[r]) / 2
        good = scan(mid, r)
        lo_t[r[good]] = mid[good]
        hi_t[r[~good]] = mid[~good]
    return lo_t


class BlindSpots(ShardedCheck):
    """How far an input can move toward another class's image (or randomly) unnoticed by the model."""

    name = "robustness.blind_spots"

    class Params:
        pairs: int = param(200, "Source/target pairs probed.", minimum=1)
        conf_tol: float = param(0.05, "Largest change of the source class's probability that still counts as "
                "unchanged.", minimum=0, maximum=1)
        alpha_threshold: float = param(0.5, "A pair is a blind spot when held at least this share of the way to the "
                "target.", minimum=0, maximum=1)
        steps: int = param(16, "Grid points along each path.", minimum=1)
        refine: int = param(6, "Bisection steps after the grid (precision 1/(steps·2^refine)).", minimum=0)
        random_directions: int = param(4, "Random directions per source (radii up to the pair's distance); 0: none.",
                minimum=0)
        clip: list[float] | None = range_param()
        limit: int | None = limit_param(2000)
        examples: int = examples_param("blind spots (source, point reached, target)")

    metrics_doc = {
        "blind_spot_rate": "share of pairs held at least alpha_threshold of the way to the other class",
        "median_alpha": "median share of the way to the other class's image reached unnoticed",
        "mean_alpha": "mean of that share",
        "median_distance": "median L2 distance moved unnoticed toward the other class",
        "random_blind_spot_rate": "share of random directions held for at least alpha_threshold of the radius",
        "random_median_fraction": "median distance held along random directions, as a share of the pair distance",
        "n_pairs": "pairs probed",
        "median_pair_distance": "median L2 distance between the two images of a pair",
        "queries": "inputs sent to the model",
    }

    #: Pairs per shard (a plan of pairs: each item is a source row and a target row).
    shards = RowShards(rows=128)

    def plan(self, ctx: AuditContext, params: Params) -> Plan:
        """The sample's clean predictions (one batched pass on the driver), the pairs of correctly classified rows
        of different classes, each source's class and confidence, and the valid range."""
        p = params
        rows, notes = sampled_rows(ctx, p.limit)
        full = ctx.require_data()
        data = full if rows is None else full.subset(rows)
        space, geo = space_of(ctx)
        space.require_arithmetic("paths between inputs")
        clf = Classifier.for_data(ctx, data, space, geo)
        lo, hi, probs = np.inf, -np.inf, []
        for sl in chunk_slices(data.n, data.batch_size):  # batch by batch: the plan never holds the whole sample
            xc = geo.canonical(space.to_space(np.asarray(data.x[sl]))).astype(np.float64)
            probs.append(clf.probs(xc, np.arange(sl.start, sl.stop)))
            lo, hi = min(lo, float(xc.min())), max(hi, float(xc.max()))
        p0 = np.concatenate(probs)
        clean_pred, y = targets(ctx, data, p0)
        notes += label_notes(y)
        ref = clean_pred if y is None else y
        ok_rows = np.flatnonzero(clean_pred == ref)
        if len(np.unique(ref[ok_rows])) < 2:
            raise SkipCheck("needs correctly classified samples of at least two classes")
        vr = space_range(space, p.clip, np.array([lo, hi]), geo)
        notes.append(describe_range(vr, p.clip is not None))
        src, tgt = pick_pairs(ref[ok_rows], p.pairs, ctx.rng)
        if not len(src):  # classes so unbalanced that no source drew a target of another class
            raise SkipCheck(f"no pair of different classes among {p.pairs} sources drawn; raise pairs")
        src, tgt = ok_rows[src], ok_rows[tgt]
        cls = ref[src]
        as_rows = np.arange(data.n) if rows is None else np.asarray(rows)
        pairs = np.stack([as_rows[src], as_rows[tgt]], axis=1)  # rows of ctx.data
        notes.append(f"prediction and confidence held: same class, source-class probability within {p.conf_tol:g}")
        return Plan(rows=pairs, state={"cls": cls, "conf0": p0[src, cls], "range": vr,
                                       "queries": clf.queries}, notes=notes)

    def run_shard(self, ctx: AuditContext, params: Params, plan: Plan, shard: Shard) -> Any:
        """Scan the paths of the shard's pairs (its data: source, target, source, ... rows) a chunk of pairs at a
        time."""
        p = params
        data = ctx.require_data()
        n = len(shard.rows)
        if n == 0:
            return {"n": 0}
        space, geo = space_of(ctx)
        clf = Classifier.for_data(ctx, data, space, geo)
        # float64 values a pair holds: its two inputs, their difference, its directions and their starts
        pairs = chunk_rows(1, (3 + 2 * p.random_directions) * geo.size)
        points = chunk_rows(ctx.model.batch_size, geo.size)  # path points scored at once (whole model batches)
        parts = [self._chunk(ctx, p, plan, shard, clf, space, geo, sl, points)
                 for sl in chunk_slices(n, pairs)]
        return {**gather_rows(parts), "n": n, "queries": clf.queries}

    @staticmethod
    def _chunk(ctx: AuditContext, p: Params, plan: Plan, shard: Shard, clf: Classifier, space: InputSpace,
               geo: Geometry, sl: slice, points: int) -> dict[str, np.ndarray]:
        """Distances held by the shard's pairs ``sl`` toward their targets and along their random directions."""
        x = np.asarray(ctx.require_data().x[2 * sl.start:2 * sl.stop])
        xc = geo.canonical(space.to_space(x)).astype(np.float64)
        n, at = len(xc) // 2, sl.start  # pair i of the chunk is pair at + i of the shard
        cls, conf0 = plan.state["cls"][shard.positions], plan.state["conf0"][shard.positions]

        def held(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
            ctx.check_cancelled()
            pr = clf.probs(x, 2 * (at + rows) if clf.inputs else None)  # the source row's other inputs
            c = cls[at + rows]
            return np.asarray((pr.argmax(axis=1) == c)
                              & (np.abs(pr[np.arange(len(rows)), c] - conf0[at + rows]) <= p.conf_tol))

        xs, xt = xc[0::2], xc[1::2]
        diff = xt - xs
        dist = np.sqrt(np.sum(diff.reshape(n, -1) ** 2, axis=1))

        def toward(t: np.ndarray, rows: np.ndarray) -> np.ndarray:
            return np.asarray(xs[rows] + t[:, None, None, None] * diff[rows], np.float32)

        out = {"alpha": held_along(toward, held, n, p.steps, p.refine, points), "dist": dist}
        k = p.random_directions
        if k:
            rrows = np.repeat(np.arange(n), k)
            u = shard.random(ctx).rows(sl).standard_normal((n, k * geo.size)).reshape(n * k, geo.c, geo.h, geo.w)
            u /= np.sqrt(np.sum(u.reshape(n * k, -1) ** 2, axis=1))[:, None, None, None]
            radius = dist[rrows]
            lo, hi = plan.state["range"] or (-np.inf, np.inf)

            def randomly(t: np.ndarray, rows: np.ndarray) -> np.ndarray:
                moved = xs[rrows[rows]] + (t * radius[rows])[:, None, None, None] * u[rows]
                return np.asarray(np.clip(moved, lo, hi), np.float32)

            frac = held_along(randomly, lambda x, rows: held(x, rrows[rows]), n * k, p.steps, p.refine, points)
            moved = np.sqrt(np.sum((randomly(frac, np.arange(n * k)) - xs[rrows]).reshape(n * k, -1) ** 2, axis=1))
            out["reach"] = moved / np.maximum(radius, 1e-300)  # clipping to the valid range can shorten the move
        return out

    def merge(self, ctx: AuditContext, params: Params, plan: Plan, partials: Sequence[Any]) -> CheckResult:
        """The distances reached over every shard's pairs."""
        parts = [q for q in partials if q["n"]]
        alpha = np.concatenate([q["alpha"] for q in parts])
        dist = np.concatenate([q["dist"] for q in parts])
        thr = params.alpha_threshold
        metrics: dict[str, Any] = {
            "n_pairs": len(alpha),
            "blind_spot_rate": float(np.mean(alpha >= thr)),
            "median_alpha": float(np.median(alpha)),
            "mean_alpha": float(np.mean(alpha)),
            "median_distance": float(np.median(alpha * dist)),
            "median_pair_distance": float(np.median(dist)),
        }
        if params.random_directions:
            reach = np.concatenate([q["reach"] for q in parts])
            metrics["random_blind_spot_rate"] = float(np.mean(reach >= thr))
            metrics["random_median_fraction"] = number_or_none(np.median(reach))
        metrics["queries"] = plan.state["queries"] + sum(q["queries"] for q in parts)
        return CheckResult(metrics=metrics, notes=list(plan.notes), gallery=self._gallery(ctx, params, plan, alpha))

    @staticmethod
    def _gallery(ctx: AuditContext, p: Params, plan: Plan, alpha: np.ndarray) -> Gallery | None:
        """The first ``examples`` blind spots in pair order (the plan's, so any sharding shows the same): their two
        rows read again, the point reached rebuilt, all three scored by a classifier of their own (the check's
        ``queries`` do not count these display inputs)."""
        hit = np.flatnonzero(alpha >= p.alpha_threshold)[:p.examples]
        if not len(hit):
            return None
        data = ctx.require_data().subset(np.asarray(plan.rows)[hit].ravel())  # source, target, source, ...
        space, geo = space_of(ctx, data.x)
        if not geo.is_image:
            return None
        xc = geo.canonical(space.to_space(np.asarray(data.x))).astype(np.float64)
        xs, xt = xc[0::2], xc[1::2]
        shown = {"source": xs, "reached": xs + alpha[hit][:, None, None, None] * (xt - xs), "target": xt}
        k = len(hit)
        src = 2 * np.arange(k)
        pr = Classifier.for_data(ctx, data, space, geo).probs(np.concatenate(list(shown.values())).astype(np.float32),
                                                       np.concatenate([src, src, src + 1]))
        pr = pr.reshape(3, k, -1)
        return blind_spot_gallery(
            *shown.values(), layout="NCHW", channels=space.channels, labels=plan.state["cls"][hit],
            predicted={n: pr[i].argmax(1) for i, n in enumerate(shown)},
            confidence={n: pr[i].max(1) for i, n in enumerate(shown)}, rows=np.asarray(plan.rows)[hit, 0],
            values={"alpha": alpha[hit]}, value_range=plan.state["range"], classes=class_names(ctx.model, ctx.data),
            total=int(np.sum(alpha >= p.alpha_threshold)), k=k,
            title=f"blind spots (alpha >= {p.alpha_threshold:g}): moved toward another class's input, prediction "
                  f"and confidence held", space="un-normalised pixels" if space.pixels is not None else "")
