"""``robustness.fooling``: the highest confidence a model gives to inputs nobody would recognise.

Nguyen, Yosinski & Clune, "Deep Neural Networks are Easily Fooled: High Confidence Predictions for
Unrecognizable Images" (CVPR 2015). Two probes, both black-box and batched:

- random noise: uniform over the valid range, and Gaussian with the data's mean and std (clipped);
- evolved inputs: for each class, a population evolved to maximise that class (the paper's directly encoded
  evolutionary algorithm, simplified to a (μ + λ) strategy: every parent makes one child by Gaussian mutation of
  a share of its values; the best μ of parents and children survive). The fitness is the margin
  ``log p_k − max_{j≠k} log p_j``, which keeps improving after ``p_k`` rounds to 1. A group of classes'
  populations go through the model together, one batched query per generation.

The check shards by work item (``Plan.items``): chunks of noise images and groups of classes, each noise image
and each slot of a class's population drawing from its own random stream, so the report is the same whichever
worker runs which item. The data only supplies the value range and the noise's mean and std, read batch by batch
(the sample is never held); noise images are made and scored a few model batches at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from auditor import AuditContext, CheckResult, Need, SkipCheck, param
from auditor.gallery import input_gallery
from auditor.shards import Plan, RowRandom, RowShards, Shard, ShardedCheck, sampled_rows
from auditor_robustness._common import (
    Classifier,
    ValueStats,
    chunk_rows,
    chunk_slices,
    describe_range,
    examples_param,
    head_predictions,
    limit_param,
    margins,
    range_param,
    space_note,
    space_of,
    space_range,
)

#: Share of the values mutated per child, and the mutation std as a share of the input range (large steps,
#: clipped to the range, reach the saturated inputs that maximise a class; cf. the polynomial mutation of
#: Nguyen et al.).
MUTATION_RATE = 0.1
MUTATION_SCALE = 0.5
#: Noise images per work item, and classes evolved per work item (their populations go through the model
#: together, one batched query per generation).
NOISE_CHUNK = 500
CLASS_GROUP = 4


def evolve(classifier: Classifier, classes: np.ndarray, shape: tuple[int, int, int], lo: float, hi: float, *,
           population: int, generations: int, rng: np.random.Generator | RowRandom, rate: float = MUTATION_RATE,
           scale: float = MUTATION_SCALE, on_generation: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Evolve ``population`` inputs per class in ``classes`` (column indices) to maximise that class.

    ``rng``: one random stream per individual (``len(classes) * population`` of them, class by class), so that a
    class's evolution does not depend on which classes evolve beside it; a plain generator is turned into such
    streams. Returns the best input per class ``(K, C, H, W)`` and its probabilities ``(K, classes)``.
    """
    k = len(classes)
    streams = rng if isinstance(rng, RowRandom) else RowRandom.from_generator(rng, k * population)
    target = np.repeat(classes, population)
    pop = streams.uniform(lo, hi, (k * population, *shape)).astype(np.float32)
    logp = classifier.log_probs(pop)
    fit = margins(logp, target)
    sigma = np.float32(scale * (hi - lo))
    for g in range(generations):
        step = streams.at(g)
        kept = step.random(pop.shape) >= rate  # values a child takes unchanged from its parent
        child = step.standard_normal(pop.shape, dtype=np.float32) * sigma + pop  # (built in place: one copy)
        np.copyto(child, pop, where=kept)
        np.clip(child, lo, hi, out=child)
        clogp = classifier.log_probs(child)
        cfit = margins(clogp, target)
        # (μ + λ) selection within each class: parents and children side by side, keep the best μ
        both = np.concatenate([fit.reshape(k, population), cfit.reshape(k, population)], axis=1)
        keep = np.argsort(-both, axis=1, kind="stable")[:, :population]
        rows = (np.arange(k)[:, None] * population + keep % population).ravel()
        from_child = (keep >= population).ravel()
        new = rows[from_child]
        pop, logp, fit = pop[rows], logp[rows], fit[rows]  # from the parents (one copy); children written over
        pop[from_child], logp[from_child], fit[from_child] = child[new], clogp[new], cfit[new]
        # the survivors carry their slot's stream on: slot j of a class always draws from stream j
        if on_generation is not None:
            on_generation(g + 1)
    best = fit.reshape(k, population).argmax(axis=1) + np.arange(k) * population
    return pop[best], np.exp(logp[best])


class Fooling(ShardedCheck):
    """Confidence on unrecognisable inputs: noise, and inputs evolved to maximise each class."""

    name = "robustness.fooling"

    class Params:
        n_noise: int = param(1000, "Random inputs per noise distribution (uniform, Gaussian).", minimum=1)
        generations: int = param(100, "Generations of the evolutionary search (one batched query each).", minimum=0)
        population: int = param(16, "Population per class.", minimum=1)
        classes: list[int] | None = param(None, "Class columns to evolve inputs for; null: every class, at most "
                "max_classes of them (a seeded choice).", minimum=0)
        max_classes: int = param(20, "Most classes evolved when classes is null.", minimum=1)
        threshold: float = param(0.99, "Confidence at or above which an input counts as fooling the model.",
                minimum=0, maximum=1)
        clip: list[float] | None = range_param()
        limit: int | None = limit_param(2000)
        examples: int = examples_param("evolved inputs")

    needs = frozenset[Need]()
    metrics_doc = {
        "max_confidence": "highest confidence on any unrecognizable input (noise or evolved)",
        "noise_max_confidence": "highest top-class confidence on random noise",
        "noise_fooled_rate": "share of noise inputs classified with confidence >= threshold",
        "evolved_mean_confidence": "mean over classes of the best evolved input's confidence in its class",
        "evolved_min_confidence": "the lowest of those",
        "fooled_class_rate": "share of evolved classes reaching the threshold",
        "uniform": "uniform noise: max_confidence, mean_confidence, fooled_rate",
        "gaussian": "Gaussian noise: max_confidence, mean_confidence, fooled_rate",
        "per_class": "per class: highest confidence in it from uniform noise, Gaussian noise, evolution",
        "queries": "inputs sent to the model",
        "n_classes_evolved": "classes inputs were evolved for",
    }

    #: One work item a shard: a chunk of noise images, or a few classes' evolution (see :meth:`plan`).
    shards = RowShards(rows=1)

    def plan(self, ctx: AuditContext, params: Params) -> Plan:
        """The value range and noise statistics (from the data), the classes to evolve, and the work items:
        chunks of ``NOISE_CHUNK`` noise images, groups of at most ``CLASS_GROUP`` classes to evolve."""
        p = params
        notes: list[str] = []
        data = rows = None
        if ctx.data is not None:
            rows, notes = sampled_rows(ctx, p.limit)
            data = ctx.data if rows is None else ctx.data.subset(rows)
            notes = ["statistics from all rows"] if rows is None else notes
            first = np.asarray(data.x[:1])
        else:
            shape = ctx.model.input.shape
            dims = [d for d in (shape or ())[1:] if isinstance(d, int)]
            if not shape or len(dims) != len(shape) - 1:
                raise SkipCheck("no data, and the model input has unknown dimensions")
            first = np.zeros((1, *dims), np.float32)
        space, geo = space_of(ctx, first)
        space.require_arithmetic("noise images")
        fed = None  # the sample's rows (of ctx.data) whose other per-sample inputs the synthetic inputs take
        if ctx.model.sample_inputs:
            others = ", ".join(ctx.model.sample_inputs)
            if data is None:
                raise SkipCheck(f"the model takes other per-sample input(s) {others} besides "
                                f"'{ctx.model.input.name}', and without data there are no rows to take them from")
            fed = np.arange(data.n) if rows is None else rows
            notes.append(f"other per-sample input(s) {others} fed unchanged from the sample: noise image i takes "
                         f"those of sample row i mod {len(fed)}, class k's population those of row k mod {len(fed)}")
        # the value range and the moments, batch by batch: the sample is never held whole
        stats = None if data is None else ValueStats.of(data.x, None, geo, data.batch_size, np.float32, space)
        if p.clip is None and space.bounds is None and stats is None:
            raise SkipCheck("no data: set clip: [lo, hi] so that the noise has a range")
        extremes = np.zeros(1) if stats is None else stats.extremes
        lo, hi = space_range(space, p.clip, extremes, geo) or (float(extremes[0]), float(extremes[-1]))
        if p.clip is not None:
            notes.append(describe_range((lo, hi), True))
        elif space.bounds is not None:  # declared pixels or a quantized input
            notes += space_note(space, "noise and evolution in float, rounded and clipped back")
        else:
            notes.append(f"noise and evolution within [{lo:g}, {hi:g}] (inferred from the data)")
        mu, sd = stats.overall() if stats is not None else ((lo + hi) / 2, (hi - lo) / 4)
        notes.append(f"Gaussian noise: mean {mu:.4g}, std {sd:.4g}, clipped")
        clf = Classifier(ctx.model, geo, space=space, inputs=self._fed(ctx, fed, np.zeros(1, np.int64)))
        n_classes = clf.probs(np.full((1, geo.c, geo.h, geo.w), (lo + hi) / 2, np.float32)).shape[1]
        names = None if data is None else head_predictions(ctx, data).classes  # one batch, not a whole pass
        labels = [str(c) for c in (names if names is not None and len(names) == n_classes else range(n_classes))]
        classes = self._classes(p, n_classes, ctx.rng, notes)
        # a work item's populations held at once: at most CLASS_GROUP classes, fewer where large inputs need it
        group = min(CLASS_GROUP, chunk_rows(1, p.population * geo.size))
        units: list[tuple[str, Any]] = [("noise", (i, min(i + NOISE_CHUNK, p.n_noise)))
                                        for i in range(0, p.n_noise, NOISE_CHUNK)]
        units += [("classes", classes[i:i + group]) for i in range(0, len(classes), group)]
        state = {"lo": lo, "hi": hi, "mu": mu, "sd": sd, "first": first, "fed": fed, "units": units, "classes": classes,
                 "labels": labels, "n_classes": n_classes, "probe_queries": clf.queries}
        return Plan(state=state, notes=notes, items=len(units))

    def run_shard(self, ctx: AuditContext, params: Params, plan: Plan, shard: Shard) -> Any:
        """The work items of the shard: noise images' probabilities, or the evolved classes' best confidences."""
        p, st = params, plan.state
        space, geo = space_of(ctx, st["first"])
        clf = Classifier(ctx.model, geo, space=space)
        shape3 = (geo.c, geo.h, geo.w)
        lo, hi = st["lo"], st["hi"]
        out: dict[str, Any] = {"uniform": [], "gaussian": [], "evolved": [], "evolved_x": []}
        for item in np.asarray(shard.rows).tolist():
            kind, what = st["units"][item]
            if kind == "noise":  # made and scored in chunks of whole model batches (each image has its stream)
                for c in chunk_slices(what[1] - what[0], chunk_rows(ctx.model.batch_size, geo.size)):
                    pos = np.arange(what[0] + c.start, what[0] + c.stop)
                    clf.inputs = self._fed(ctx, st["fed"], pos)
                    uni = RowRandom.for_positions(ctx.seed, ctx.check_id, pos, 1).uniform(lo, hi, (len(pos), *shape3))
                    out["uniform"].append(clf.probs(uni.astype(np.float32)))
                    gau = RowRandom.for_positions(ctx.seed, ctx.check_id, pos, 2).normal(st["mu"], st["sd"], uni.shape)
                    out["gaussian"].append(clf.probs(np.clip(gau, lo, hi).astype(np.float32)))
                continue
            classes = np.asarray(what, dtype=np.int64)
            slots = (classes[:, None] * p.population + np.arange(p.population)).ravel()
            clf.inputs = self._fed(ctx, st["fed"], np.repeat(classes, p.population))

            def on_generation(g: int) -> None:
                ctx.check_cancelled()
                ctx.report_progress(g, p.generations, "generations")

            evo_x, evo_p = evolve(clf, classes, shape3, lo, hi, population=p.population,
                                  generations=p.generations, on_generation=on_generation,
                                  rng=RowRandom.for_positions(ctx.seed, ctx.check_id, slots, 3))
            out["evolved"].append(evo_p)
            out["evolved_x"].append(evo_x if geo.is_image and p.examples else evo_x[:0])
        out["queries"] = clf.queries
        return out

    def merge(self, ctx: AuditContext, params: Params, plan: Plan, partials: Sequence[Any]) -> CheckResult:
        """Noise statistics over every chunk, evolved confidences of every class, per class and overall."""
        p, st = params, plan.state
        n_classes, classes, labels = st["n_classes"], st["classes"], st["labels"]
        uni = np.concatenate([a for q in partials for a in q["uniform"]])
        gau = np.concatenate([a for q in partials for a in q["gaussian"]])
        evo_p = np.concatenate([a for q in partials for a in q["evolved"]] or [np.zeros((0, n_classes))])
        evo_conf = evo_p[np.arange(len(classes)), classes]
        thr = p.threshold

        def noise_stats(pr: np.ndarray) -> dict[str, float]:
            top = pr.max(axis=1)
            return {"max_confidence": float(top.max()), "mean_confidence": float(top.mean()),
                    "fooled_rate": float(np.mean(top >= thr))}

        u, g_ = noise_stats(uni), noise_stats(gau)
        per_class: dict[str, Any] = {}
        for j in range(n_classes):
            entry: dict[str, Any] = {"uniform": float(uni[:, j].max()), "gaussian": float(gau[:, j].max())}
            hit = np.flatnonzero(classes == j)
            entry["evolved"] = float(evo_conf[hit[0]]) if len(hit) else None
            per_class[labels[j]] = entry
        noise_max = max(u["max_confidence"], g_["max_confidence"])
        metrics: dict[str, Any] = {
            "max_confidence": max(noise_max, float(evo_conf.max()) if len(evo_conf) else 0.0),
            "noise_max_confidence": noise_max,
            "noise_fooled_rate": (u["fooled_rate"] + g_["fooled_rate"]) / 2,
            "evolved_mean_confidence": float(evo_conf.mean()) if len(evo_conf) else None,
            "evolved_min_confidence": float(evo_conf.min()) if len(evo_conf) else None,
            "fooled_class_rate": float(np.mean(evo_conf >= thr)) if len(evo_conf) else None,
            "uniform": u,
            "gaussian": g_,
            "per_class": per_class,
            "n_classes_evolved": len(classes),
            "queries": st["probe_queries"] + sum(q["queries"] for q in partials),
        }
        gallery = None
        space, geo = space_of(ctx, st["first"])
        if geo.is_image and p.examples and len(classes):
            evo_x = np.concatenate([a for q in partials for a in q["evolved_x"]])
            names = labels if labels != [str(j) for j in range(n_classes)] else None
            gallery = input_gallery(
                evo_x, layout="NCHW", predicted=evo_p.argmax(axis=1), confidence=evo_p.max(axis=1),
                labels=classes, panel="evolved", k=p.examples, value_range=(st["lo"], st["hi"]),
                classes=names, total=len(classes), channels=space.channels,
                title="inputs evolved to maximise a class (label: the class evolved for)",
                notes=[f"the best evolved input of the first {min(p.examples, len(classes))} classes evolved, in "
                       f"class order, after {p.generations} generations"])
        return CheckResult(metrics=metrics, notes=list(plan.notes), gallery=gallery)

    @staticmethod
    def _fed(ctx: AuditContext, fed: np.ndarray | None, at: np.ndarray) -> dict[str, np.ndarray]:
        """The other per-sample inputs of synthetic inputs numbered ``at`` (noise positions, or each individual's
        class): those of sample row ``at mod m`` of the rows ``fed`` (none for a model with one data input)."""
        return {} if fed is None else ctx.companions(rows=fed[at % len(fed)])

    @staticmethod
    def _classes(p: Params, n_classes: int, rng: np.random.Generator, notes: list[str]) -> np.ndarray:
        """The class columns to evolve inputs for."""
        if p.classes is not None:
            cls = np.array(sorted(set(int(c) for c in p.classes)), dtype=np.int64)
            if len(cls) and cls.max() >= n_classes:
                raise ValueError(f"classes: the model has {n_classes} classes (columns 0..{n_classes - 1})")
            return cls
        if n_classes <= p.max_classes:
            return np.arange(n_classes)
        cls = np.sort(rng.choice(n_classes, p.max_classes, replace=False))
        notes.append(f"evolved {p.max_classes} of {n_classes} classes (seeded choice; set classes to pick)")
        return cls
