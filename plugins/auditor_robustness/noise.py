"""``robustness.noise``: accuracy and prediction-flip rate under random noise and common corruptions, as a curve
over severities.

Kinds: additive Gaussian and uniform noise, salt-and-pepper, Gaussian blur, brightness and contrast (the common
corruptions of Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations", ICLR 2019, with the severity as a continuous parameter), and feature noise scaled per column for
tabular data. Images may come in either layout; every corruption is applied in NCHW and handed to the model in
its own layout. The sweep is the black-box test of Wicker et al., "Feature-Guided Black-Box Safety Testing of
Deep Neural Networks" (TACAS 2018) reduced to its random-perturbation baseline.

For a model that is not a classifier (regression, image-to-image) the curve holds the noise amplification
``‖f(x + n) − f(x)‖₂ / ‖n‖₂`` (median over samples), the stability measure of "Ambiguity in solving imaging
inverse problems with deep learning based operators" (Evangelista et al., 2023).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from auditor import AuditContext, CheckResult, SkipCheck, Task, param
from auditor.jsonenc import number_or_none
from auditor.perturb import ValueKind, substitute_ids
from auditor.shards import Plan, RowRandom, Shard, ShardedCheck, gather_rows, sampled_rows
from auditor_robustness._common import (
    Classifier,
    ValueStats,
    chunk_rows,
    chunk_slices,
    describe_range,
    head_predictions,
    label_notes,
    limit_param,
    range_param,
    space_note,
    space_of,
    space_range,
    targets,
)

KINDS = ("gaussian", "uniform", "salt_pepper", "blur", "brightness", "contrast", "feature", "substitute")
#: Kinds whose severity is a standard deviation (reported as ``sigma`` in the curve).
SIGMA_KINDS = ("gaussian", "feature")
#: Default severities. gaussian/uniform: fractions of the input range (scaled to input units, and noted);
#: salt_pepper: share of pixels; blur: std in pixels; brightness: shift as a share of the range;
#: contrast: share of contrast removed; feature: multiples of each column's std.
DEFAULT_SEVERITIES: dict[str, list[float]] = {
    "gaussian": [0.02, 0.05, 0.1, 0.2],
    "uniform": [0.02, 0.05, 0.1, 0.2],
    "salt_pepper": [0.01, 0.02, 0.05, 0.1],
    "blur": [0.5, 1.0, 1.5, 2.0],
    "brightness": [0.1, 0.2, 0.3, 0.4],
    "contrast": [0.2, 0.4, 0.6, 0.8],
    "feature": [0.1, 0.2, 0.5, 1.0],
    "substitute": [0.05, 0.1, 0.2, 0.3],
}
IMAGE_ONLY = ("blur", "contrast")


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """Normalised 1-D Gaussian taps with radius ``int(truncate * sigma + 0.5)`` (scipy.ndimage's rule)."""
    radius = int(truncate * sigma + 0.5)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return np.asarray(k / k.sum())


def blur(xc: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur over H and W of ``(N, C, H, W)``, edges mirrored (scipy's ``reflect``)."""
    if sigma <= 0:
        return xc.copy()
    k = gaussian_kernel(sigma)
    r = len(k) // 2
    out = xc.astype(np.float64)
    for axis in (2, 3):
        pad = [(0, 0)] * 4
        pad[axis] = (r, r)
        p = np.pad(out, pad, mode="symmetric")
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for i, weight in enumerate(k):  # one shifted slice per tap: vectorised over every sample and pixel
            acc += weight * np.take(p, np.arange(i, i + n), axis=axis)
        out = acc
    return out.astype(xc.dtype)


def corrupt(kind: str, xc: np.ndarray, severity: float, rng: np.random.Generator | RowRandom, *,
            value_lo: np.ndarray | float, value_hi: np.ndarray | float, span: float,
            column_std: np.ndarray | None) -> np.ndarray:
    """One draw of corruption ``kind`` at ``severity`` applied to canonical inputs ``xc`` (not clipped).

    ``value_lo``/``value_hi`` are the values salt-and-pepper writes (the clip range, or each column's min and
    max); ``span`` the width of the input range (brightness); ``column_std`` each value's std over the data
    (feature noise).
    """
    dt = xc.dtype
    if kind == "gaussian":
        return np.asarray(xc + dt.type(severity) * rng.standard_normal(xc.shape, dtype=dt))
    if kind == "uniform":
        return np.asarray(xc + rng.uniform(-severity, severity, xc.shape).astype(dt))
    if kind == "feature":
        assert column_std is not None, "feature noise needs each value's std"
        return np.asarray(xc + dt.type(severity) * column_std * rng.standard_normal(xc.shape, dtype=dt))
    if kind == "salt_pepper":
        n, _, h, w = xc.shape
        u = rng.random((n, 1, h, w))  # one draw per pixel (all channels of a pixel together)
        out = xc.copy()
        np.copyto(out, np.asarray(value_lo, dt), where=u < severity / 2)  # pepper
        np.copyto(out, np.asarray(value_hi, dt), where=(u >= severity / 2) & (u < severity))  # salt
        return out
    if kind == "blur":
        return blur(xc, severity)
    if kind == "brightness":
        return np.asarray(xc + dt.type(severity * span))
    if kind == "contrast":
        mean = xc.mean(axis=(2, 3), keepdims=True, dtype=np.float64)
        return np.asarray(((xc - mean) * (1.0 - severity) + mean).astype(dt))
    raise ValueError(f"unknown kind {kind!r}")


def curve_area(sev: list[float], values: list[float | None], clean: float | None) -> float | None:
    """Normalised area under ``values`` over severities (trapezoid, the clean value at severity 0 included):
    the mean of the curve over the severity range, in the curve's own units."""
    pts = sorted(zip(sev, values))
    if clean is not None and 0.0 not in sev:
        pts = sorted([(0.0, clean), *pts])
    if any(v is None for _, v in pts) or len(pts) < 2:
        return None
    s, v = np.array(pts, dtype=np.float64).T
    width = s[-1] - s[0]
    if width <= 0:
        return float(v.mean())
    return float(np.sum((v[1:] + v[:-1]) / 2 * np.diff(s)) / width)


class NoiseSweep(ShardedCheck):
    """Accuracy and flip rate over noise or corruption severities (noise amplification for non-classifiers)."""

    name = "robustness.noise"

    class Params:
        kind: str = param("gaussian", "Corruption: gaussian, uniform, salt_pepper, blur, brightness, contrast "
                "(images), feature (Gaussian noise scaled by each column's std, for tabular data) or substitute "
                "(token ids: each id replaced by another id of the vocabulary with probability severity).",
                choices=KINDS)
        sigma: float | list[float] | None = param(None, "Noise standard deviations for kind gaussian (input units) or "
                "feature (multiples of each column's std); same as severity.", minimum=0)
        severity: float | list[float] | None = param(None, "Severities: uniform: half-width (input units); "
                "salt_pepper: share of pixels; blur: std in pixels; brightness: shift as a share of the range; "
                "contrast: share of contrast removed (0..1); substitute: share of ids replaced. null: a default "
                "list for the kind.")
        clip: list[float] | None = range_param()
        repeats: int = param(1, "Independent noise draws per severity (metrics are their mean).", minimum=1)
        mask_id: int | None = param(None, "Kind substitute: replace the chosen ids by this id (a [MASK] or "
                                    "[UNK] token of the vocabulary) instead of by random other ids.", minimum=0)
        limit: int | None = limit_param(2000)

        def validate(self) -> list[str]:
            """sigma belongs to the std kinds, and never with severity; bounds per kind; mask_id to substitute."""
            if self.mask_id is not None and self.kind != "substitute":
                return [f"mask_id: applies to kind substitute, not {self.kind}"]
            if self.sigma is not None and self.kind not in SIGMA_KINDS:
                return [f"sigma: applies to kind gaussian or feature; use severity for kind {self.kind}"]
            if self.sigma is not None and self.severity is not None:
                return ["sigma: give sigma or severity, not both"]
            key, given = ("sigma", self.sigma) if self.sigma is not None else ("severity", self.severity)
            values = [] if given is None else given if isinstance(given, list) else [given]
            if given is not None and not values:
                return [f"{key}: the list of severities is empty"]
            if self.kind in ("gaussian", "uniform", "feature", "blur", "salt_pepper", "substitute") \
                    and min(values, default=0) < 0:
                return [f"{key}: severities of kind {self.kind} must be >= 0"]
            if self.kind in ("salt_pepper", "contrast", "substitute") and max(values, default=0) > 1:
                return [f"{key}: severities of kind {self.kind} are shares, at most 1"]
            return []

    metrics_doc = {
        "curve": "per severity: {sigma|severity, accuracy, flip_rate} (amplification for non-classifiers)",
        "clean_accuracy": "accuracy without noise (needs labels)",
        "accuracy_drop": "clean accuracy minus accuracy at the strongest severity",
        "max_accuracy_drop": "largest drop over the curve",
        "flip_rate": "share of predictions changed at the strongest severity",
        "max_flip_rate": "largest flip rate over the curve",
        "accuracy_auc": "mean accuracy over the severity range (normalised trapezoid, clean point at 0)",
        "flip_rate_auc": "mean flip rate over the severity range",
        "max_amplification": "non-classifiers: largest median noise amplification over the curve",
        "n": "samples evaluated",
        "worst_sigma": "the strongest sigma of the curve (kinds gaussian, feature)",
        "worst_severity": "the strongest severity of the curve (other kinds)",
    }

    def plan(self, ctx: AuditContext, params: Params) -> Plan:
        """The sample, the severities and what every shard must agree on: the value range, per-value extremes
        and standard deviations over the whole sample (gathered batch by batch), how the outputs are read."""
        p, kind = params, params.kind
        rows, notes = sampled_rows(ctx, p.limit)
        full = ctx.require_data()
        space, geo = space_of(ctx)
        task = head_predictions(ctx, full, rows).task  # decided once, from the whole sample's labels
        if space.kind is ValueKind.IDS or kind == "substitute":
            if kind != "substitute":
                space.require_arithmetic(f"kind {kind}")
            if space.kind is not ValueKind.IDS:
                raise SkipCheck(f"kind substitute replaces token ids; {space.describe()} does not hold ids")
            if space.vocab is None:
                raise SkipCheck(f"{space.describe()}: the number of valid ids is unknown (no embedding table in "
                                f"the graph); set model.vocab_size")
            severities, sev_notes = self._severities(p, "substitute")
            if p.mask_id is not None and p.mask_id >= space.vocab:
                raise SkipCheck(f"mask_id {p.mask_id} is not an id of the vocabulary (0..{space.vocab - 1})")
            notes.append(f"{space.describe()}: each id is replaced with probability severity by "
                         + (f"the mask id {p.mask_id}" if p.mask_id is not None else
                            f"a different id drawn uniformly from 0..{space.vocab - 1}"))
            notes += sev_notes
            return Plan(rows=rows, state={"ids": True, "severities": severities, "task": Task.CLASSIFICATION},
                        notes=notes)
        if kind in IMAGE_ONLY and not geo.is_image:
            raise SkipCheck(f"kind {kind} needs 4-D image inputs (got per-sample shape {list(geo.shape)})")
        severities, sev_notes = self._severities(p, kind)
        work = space.work_dtype
        notes += space_note(space, "noise is added in float and rounded and clipped back")
        # The statistics cost a pass over the whole sample (for an image folder: decoding it); only feature
        # noise and an unknown value range (no clip, not pixels or quantized values) need them.
        stats = ValueStats.of(full.x, rows, geo, full.batch_size, work, space) \
            if kind == "feature" or (p.clip is None and space.bounds is None) else None
        rng_ = space_range(space, p.clip, np.zeros(1) if stats is None else stats.extremes, geo)
        notes.append(describe_range(rng_, p.clip is not None))
        value_lo: np.ndarray | float
        value_hi: np.ndarray | float
        if rng_ is not None:
            span, value_lo, value_hi = rng_[1] - rng_[0], rng_[0], rng_[1]
        else:  # no range: each value's own extremes (the statistics were gathered)
            assert stats is not None
            span, value_lo, value_hi = float(np.ptp(stats.extremes)), stats.lo, stats.hi
        if sev_notes and kind in ("gaussian", "uniform"):
            severities = [s * span for s in severities]
            sev_notes = [f"{sev_notes[0]}, times the input range {span:g}"]
        notes += sev_notes
        state = {
            "ids": False, "severities": severities, "range": rng_, "span": span, "task": task,
            "value_lo": value_lo, "value_hi": value_hi,
            "column_std": None if stats is None else stats.std.astype(work),
        }
        return Plan(rows=rows, state=state, notes=notes)

    def run_shard(self, ctx: AuditContext, params: Params, plan: Plan, shard: Shard) -> Any:
        """Clean and corrupted predictions (or output changes) of the shard's rows. The clean inputs are held once,
        in the perturbation space; each draw is made, perturbed and scored a chunk at a time (bounded memory),
        from each row's own stream per severity and repeat: the numbers depend on neither shard nor chunk."""
        p, kind, st = params, params.kind, plan.state
        data = ctx.require_data()
        severities, n = st["severities"], data.n
        key = "severity" if st["ids"] or kind not in SIGMA_KINDS else "sigma"
        preds = np.empty((n, len(severities), p.repeats), dtype=np.int32)
        streams = shard.random(ctx)
        space, geo = space_of(ctx)
        others = ctx.companions(data=data)

        def sweep(perturb: Callable[[float, slice, RowRandom], np.ndarray],
                  score: Callable[[int, int, slice, np.ndarray], None]) -> None:
            for i, sev in enumerate(severities):
                for r in range(p.repeats):
                    ctx.check_cancelled()
                    for sl in chunks:
                        score(i, r, sl, perturb(sev, sl, streams.at(i, r).rows(sl)))
                    ctx.report_progress(i * p.repeats + r + 1, len(severities) * p.repeats, f"{key} {sev:g}")

        if st["ids"]:
            x, vocab, chunks = np.asarray(data.x), space.vocab, [slice(0, n)]  # token ids: small
            assert vocab is not None
            clean_pred, y = targets(ctx, data, ctx.predict_proba(x, data=data))

            def substituted(sev: float, sl: slice, rng: RowRandom) -> np.ndarray:
                return substitute_ids(x[sl], sev, rng, vocab, mask_id=p.mask_id)

            def predicted(i: int, r: int, sl: slice, xs: np.ndarray) -> None:
                preds[sl, i, r] = ctx.predict_proba(xs, data=data, rows=sl).argmax(axis=1)

            sweep(substituted, predicted)
            return {"clean": clean_pred, "preds": preds} | ({} if y is None else {"y": y})
        chunks = chunk_slices(n, chunk_rows(ctx.model.batch_size, geo.size))
        regression = st["task"] == Task.REGRESSION
        xc = np.empty((n, geo.c, geo.h, geo.w), dtype=space.work_dtype)
        f0: np.ndarray | None = None  # regression: the clean outputs, as the model returns them
        out_name = ctx.model.outputs[0]
        for sl in chunks:  # one read of the shard's rows, a chunk at a time
            xb = np.asarray(data.x[sl])
            xc[sl] = geo.canonical(space.to_space(xb))
            if regression:
                fb = ctx.model.run(xb, [out_name], inputs={k: v[sl] for k, v in others.items()})[out_name]
                if f0 is None:
                    f0 = np.empty((n, int(np.prod(fb.shape[1:]))), dtype=fb.dtype)
                f0[sl] = fb.reshape(len(xb), -1)
        rng_ = st["range"]

        def perturbed(sev: float, sl: slice, rng: RowRandom) -> np.ndarray:
            out = corrupt(kind, xc[sl], sev, rng, value_lo=st["value_lo"], value_hi=st["value_hi"],
                          span=st["span"], column_std=st["column_std"])
            if rng_ is not None:
                out = np.clip(out, rng_[0], rng_[1], out=out)
            return space.snap(out)  # integer-valued inputs: the values the model is really fed

        if regression:  # per sample ‖f(x+n) − f(x)‖ and ‖n‖ (in the perturbation space: pixels when declared)
            assert f0 is not None
            dn, df = np.empty(preds.shape), np.empty(preds.shape)

            def amplified(i: int, r: int, sl: slice, xn: np.ndarray) -> None:
                f1 = ctx.model.run(space.from_space(geo.to_model(xn)), [out_name],
                                   inputs={k: v[sl] for k, v in others.items()})[out_name]
                k = len(xn)
                dn[sl, i, r] = np.linalg.norm((xn.astype(np.float64) - xc[sl]).reshape(k, -1), axis=1)
                df[sl, i, r] = np.linalg.norm(f1.reshape(k, -1).astype(np.float64) - f0[sl], axis=1)

            sweep(perturbed, amplified)
            return {"dn": dn, "df": df}
        clf = Classifier.for_data(ctx, data, space, geo)
        clean = np.empty((n, 0))
        for sl in chunks:
            probs = clf.probs(xc[sl], np.arange(sl.start, sl.stop))
            if clean.shape[1] != probs.shape[1]:
                clean = np.empty((n, probs.shape[1]))
            clean[sl] = probs
        clean_pred, y = targets(ctx, data, clean)

        def classified(i: int, r: int, sl: slice, xn: np.ndarray) -> None:
            preds[sl, i, r] = clf.probs(xn, np.arange(sl.start, sl.stop)).argmax(axis=1)

        sweep(perturbed, classified)
        return {"clean": clean_pred, "preds": preds} | ({} if y is None else {"y": y})

    def merge(self, ctx: AuditContext, params: Params, plan: Plan, partials: Sequence[Any]) -> CheckResult:
        """Accuracy and flip rate (or noise amplification) per severity over every shard's rows."""
        st = plan.state
        key = "severity" if st["ids"] or params.kind not in SIGMA_KINDS else "sigma"
        notes = list(plan.notes)
        g = gather_rows(partials)
        if st["ids"]:
            others = ctx.companions(data=ctx.require_data())
            if others:
                notes.append(f"other inputs passed through unchanged: {', '.join(others)}")
        if st["task"] == Task.REGRESSION:
            return self._amplification_merge(g["dn"], g["df"], st["severities"], key, notes)
        clean, preds, y = g["clean"], g["preds"], g.get("y")
        notes += label_notes(y)
        clean_acc = None if y is None else float(np.mean(clean == y))
        curve: list[dict[str, Any]] = []
        for i, sev in enumerate(st["severities"]):
            flips = [float(np.mean(pr != clean)) for pr in preds[:, i].T]
            accs = [float(np.mean(pr == y)) for pr in preds[:, i].T] if y is not None else []
            curve.append({key: float(sev), "accuracy": float(np.mean(accs)) if accs else None,
                          "flip_rate": float(np.mean(flips))})
        return CheckResult(metrics=self._summary(curve, key, clean_acc, len(clean)), notes=notes)

    @staticmethod
    def _severities(p: Params, kind: str) -> tuple[list[float], list[str]]:
        """The severities to sweep (validated with the spec) and, for defaults, a note saying so."""
        given = p.sigma if p.sigma is not None else p.severity
        if given is None:
            default = DEFAULT_SEVERITIES[kind]
            return list(default), [f"default severities for {kind}: {default}"]
        return [float(v) for v in (given if isinstance(given, list) else [given])], []

    @staticmethod
    def _summary(curve: list[dict[str, Any]], key: str, clean_acc: float | None, n: int) -> dict[str, Any]:
        """Curve plus the scalar summaries that gates bound."""
        sev = [c[key] for c in curve]
        worst = max(range(len(curve)), key=lambda i: (abs(sev[i]), i))  # the strongest severity
        accs = [c["accuracy"] for c in curve]
        flips = [c["flip_rate"] for c in curve]
        m: dict[str, Any] = {"n": n, "curve": curve, "clean_accuracy": clean_acc}
        if clean_acc is not None:
            m["accuracy_drop"] = clean_acc - accs[worst]
            m["max_accuracy_drop"] = max(clean_acc - a for a in accs)
            m["accuracy_auc"] = curve_area(sev, accs, clean_acc)
        m["flip_rate"] = flips[worst]
        m["max_flip_rate"] = max(flips)
        m["flip_rate_auc"] = curve_area(sev, flips, 0.0)
        m["worst_" + key] = sev[worst]
        return m

    @staticmethod
    def _amplification_merge(dn_all: np.ndarray, df_all: np.ndarray, severities: list[float], key: str,
                             notes: list[str]) -> CheckResult:
        """Noise amplification ``‖f(x + n) − f(x)‖ / ‖n‖`` (median over samples) per severity; ``dn_all`` and
        ``df_all`` hold ``‖n‖`` and ``‖f(x + n) − f(x)‖`` per sample, severity and repeat."""
        curve: list[dict[str, Any]] = []
        for i, sev in enumerate(severities):
            amps, changes = [], []
            for dn, df in zip(dn_all[:, i].T, df_all[:, i].T):
                moved = dn > 0
                amps.append(float(np.median(df[moved] / dn[moved])) if moved.any() else math.nan)
                changes.append(float(np.mean(df)))
            curve.append({key: float(sev), "amplification": number_or_none(np.nanmean(amps)),
                          "output_change": float(np.mean(changes))})
        notes.append("not a classifier: the curve reports noise amplification ‖f(x+n) − f(x)‖ / ‖n‖ (median)")
        amps_all = [c["amplification"] for c in curve if c["amplification"] is not None]
        return CheckResult(metrics={"n": len(dn_all), "curve": curve,
                                    "max_amplification": max(amps_all) if amps_all else None}, notes=notes)
