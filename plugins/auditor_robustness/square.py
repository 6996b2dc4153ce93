"""``robustness.square_attack``: the Square Attack, a query-efficient black-box attack, through ONNX Runtime only.

Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient black-box adversarial attack via
random search" (ECCV 2020). Random search on the margin loss ``L(x) = z_y(x) − max_{k≠y} z_k(x)`` (read from the
log-probabilities, which keep logit differences): a candidate changes one randomly placed square window; it is
kept when the loss goes down; a sample stops being queried as soon as it is misclassified (per-sample early
stop). The side of the square follows the paper's schedule: a share ``p`` of the pixels, ``p`` halved at 10, 50,
200, 500, 1000, 2000, 4000, 6000 and 8000 of every 10 000 queries of the budget.

- L∞: vertical-stripe initialisation (every column ±ε per channel), then squares set to ``x ± ε`` per channel.
- L2: a grid of "meta pseudo-Gaussian" bumps at initialisation; each step moves the mass of a second window
  into the square, re-scaled so that ``‖δ‖₂ = ε`` (Algorithm 3 of the paper).

Every sample gets its own square position each step (the reference implementation does this for L∞; the L2
one shares a position across the batch), and all samples still being attacked are queried in one batched
call per step. Image inputs of either layout are attacked in NCHW; other inputs as one row of features, where a
"square" is a run of consecutive features.

The check verifies what it reports: every adversarial example counted as a success lies inside the ε-ball and
the valid range (compared in float64), and is misclassified when run again through a freshly opened ONNX
Runtime session. The boundary-tilting view of Tanay & Griffin ("A Boundary Tilting Perspective on the
Phenomenon of Adversarial Examples", 2016) is why the median norm of the adversarial perturbations, not only
the success rate, is reported.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from auditor import AuditContext, CheckResult, Finding, ModelHandle, param
from auditor.gallery import adversarial_gallery, class_names
from auditor.jsonenc import number_or_none
from auditor.shards import Plan, RowRandom, Shard, ShardedCheck, gather_rows, sampled_rows
from auditor_robustness._common import (
    Classifier,
    Geometry,
    ValueStats,
    describe_range,
    examples_param,
    label_notes,
    limit_param,
    margins,
    range_param,
    space_note,
    space_of,
    space_range,
    targets,
)

#: Initial share of pixels per square: AutoAttack's default for its Square Attack (Croce & Hein, ICML 2020), also
#: the value the authors used on the MNIST challenge. Their ImageNet runs (10 000 queries) used 0.05 (L∞) and 0.1
#: (L2); with an audit's smaller budgets 0.8 fools more samples (see benchmarks/bench_robustness_square.py).
P_INIT = {"linf": 0.8, "l2": 0.8}
#: Default ε as a share of the input range (8/255 ≈ 0.03 for L∞ is the CIFAR-10 convention; 0.5 for L2).
DEFAULT_EPS = {"linf": 0.03, "l2": 0.5}


def p_selection(p_init: float, it: int, n_iters: int) -> float:
    """The share of pixels a square covers at step ``it`` of ``n_iters`` (the paper's piecewise schedule)."""
    i = int(it / n_iters * 10000)
    for bound, div in ((8000, 512), (6000, 256), (4000, 128), (2000, 64), (1000, 32), (500, 16), (200, 8),
                       (50, 4), (10, 2)):
        if i > bound:
            return p_init / div
    return p_init


@functools.lru_cache(maxsize=256)
def _pseudo_gaussian(a: int, b: int) -> np.ndarray:
    """Concentric rectangles with weight ``1/(k+1)²`` (``pseudo_gaussian_pert_rectangles``), unit norm."""
    d = np.zeros((a, b))
    ca, cb = a // 2, b // 2
    for k in range(max(a // 2 + 1, b // 2 + 1)):
        d[max(ca - k, 0):min(ca - k + 2 * k + 1, a), max(cb - k, 0):min(cb - k + 2 * k + 1, b)] += 1.0 / (k + 1) ** 2
    return np.asarray(d / np.sqrt(np.sum(d**2)))


@functools.lru_cache(maxsize=256)
def meta_pseudo_gaussian(a: int, b: int) -> np.ndarray:
    """Two pseudo-Gaussian bumps of opposite sign side by side (``meta_pseudo_gaussian_pert``), unit norm.

    Split along the rows as in the reference; a one-row window (feature vectors) is split along its length."""
    d = np.zeros((a, b))
    if a >= 2:
        d[: a // 2] = _pseudo_gaussian(a // 2, b)
        d[a // 2:] = -_pseudo_gaussian(a - a // 2, b)
    elif b >= 2:
        d[:, : b // 2] = _pseudo_gaussian(a, b // 2)
        d[:, b // 2:] = -_pseudo_gaussian(a, b - b // 2)
    else:
        d[:] = 1.0
    d = np.asarray(d / np.sqrt(np.sum(d**2)))
    d.setflags(write=False)
    return d


def _inward(bound: np.ndarray, dtype: np.dtype, lower: bool) -> np.ndarray:
    """``bound`` (float64) cast to ``dtype`` and nudged one step inward where rounding moved it outward, so
    that every value of ``dtype`` within the cast bounds also satisfies the float64 bounds."""
    b = bound.astype(dtype)
    with np.errstate(invalid="ignore"):
        bad = b.astype(np.float64) < bound if lower else b.astype(np.float64) > bound
    if bad.any():
        b[bad] = np.nextafter(b[bad], np.asarray(np.inf if lower else -np.inf, dtype))
    return b


def _rows(bound: np.ndarray, rows: np.ndarray | np.integer[Any]) -> np.ndarray:
    """``bound[rows]`` for per-value bounds; a scalar bound as it is."""
    return bound if bound.ndim == 0 else bound[rows]


@dataclass
class AttackResult:
    """Outcome of :func:`square_attack` for every input sample.

    ``x_adv``: the best point found (canonical layout, the input dtype); ``fooled``: misclassified by it (margin
    below zero); ``queries``: model queries spent on the sample (over all restarts; at success for a fooled
    one); ``margin``: its final margin loss.
    """

    x_adv: np.ndarray
    fooled: np.ndarray
    queries: np.ndarray
    margin: np.ndarray


class _Window:
    """Per-sample rectangular windows of ``(n, c, h, w)`` arrays: index arrays for gathering and scattering."""

    def __init__(self, rows0: np.ndarray, cols0: np.ndarray, sh: int, sw: int, c: int) -> None:
        n = len(rows0)
        rows = rows0[:, None] + np.arange(sh)
        cols = cols0[:, None] + np.arange(sw)
        self.index = (np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None],
                      rows[:, None, :, None], cols[:, None, None, :])
        self.rows0, self.cols0, self.sh, self.sw = rows0, cols0, sh, sw

    @classmethod
    def random(cls, rng: RowRandom, n: int, h: int, w: int, sh: int, sw: int, c: int) -> _Window:
        """Uniformly placed windows, one per sample, fully inside the image."""
        return cls(rng.integers(0, h - sh + 1, n), rng.integers(0, w - sw + 1, n), sh, sw, c)


def _window_shape(p: float, h: int, w: int, norm: str) -> tuple[int, int]:
    """Side lengths of the square for share ``p`` of the pixels (a run of ``p·w`` features for vectors)."""
    if h == 1:  # feature vectors: a run of consecutive features
        s = round(p * w)
        if norm == "l2":
            s = max(s, 3) + (1 - max(s, 3) % 2)
        return 1, min(max(s, 1), w)
    s = round(math.sqrt(p * h * w))
    if norm == "linf":
        s = min(max(s, 1), min(h, w) - 1) if min(h, w) > 1 else 1
    else:
        s = max(s, 3)
        s += 1 - s % 2
        s = min(s, h, w)
    return s, s


def square_attack(
    log_probs: Callable[..., np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    *,
    eps: float,
    norm: str = "linf",
    max_queries: int = 1000,
    p_init: float | None = None,
    lo: float = -np.inf,
    hi: float = np.inf,
    rng: np.random.Generator | RowRandom,
    restarts: int = 1,
    on_step: Callable[[int, int], None] | None = None,
    with_rows: bool = False,
) -> AttackResult:
    """Untargeted Square Attack on canonical inputs ``x`` ``(N, C, H, W)`` with true classes ``y``.

    ``log_probs(batch)`` returns the model's log-probabilities ``(n, classes)``; it is called once per step with
    every sample still being attacked (never per sample). ``max_queries`` is the budget per sample and restart
    (the initialisation is one query). Each restart starts afresh from ``x`` for the samples not yet fooled.
    ``[lo, hi]`` is the valid range (widened per value to include ``x``). ``on_step(step, active)`` is called
    after every step (progress, cancellation). With ``with_rows``, ``log_probs(batch, rows)`` also receives the
    rows of ``x`` the batch holds (a model whose other inputs must follow the rows).

    ``rng`` is one random stream per row of ``x`` (:class:`~auditor.rowrandom.RowRandom`): a sample's attack then
    depends only on its own stream, not on which other samples are attacked beside it (a plain generator is
    turned into such streams).
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be linf or l2, not {norm!r}")
    if eps <= 0:
        raise ValueError("eps must be positive")
    x = np.asarray(x)
    dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float32)
    x = x.astype(dtype, copy=False)
    y = np.asarray(y, dtype=np.int64)
    n = len(x)
    streams = rng if isinstance(rng, RowRandom) else RowRandom.from_generator(rng, n)
    if streams.n != n:
        raise ValueError(f"rng holds {streams.n} streams for {n} samples")
    p_init = P_INIT[norm] if p_init is None else float(p_init)
    x64 = x.astype(np.float64)
    lo_el = np.minimum(lo, x64)
    hi_el = np.maximum(hi, x64)
    if norm == "linf":
        lo_el, hi_el = np.maximum(lo_el, x64 - eps), np.minimum(hi_el, x64 + eps)
    elif np.all(lo_el == lo) and np.all(hi_el == hi):  # every value inside the range: scalar bounds do
        lo_el, hi_el = np.asarray(float(lo)), np.asarray(float(hi))
    lb, ub = _inward(lo_el, dtype, lower=True), _inward(hi_el, dtype, lower=False)
    x_adv = x.copy()
    fooled = np.zeros(n, dtype=bool)
    queries = np.zeros(n, dtype=np.int64)
    margin = np.full(n, np.inf)
    step = _linf_run if norm == "linf" else _l2_run
    for restart in range(max(restarts, 1)):
        todo = np.flatnonzero(~fooled)
        if len(todo) == 0:
            break

        def rows_fn(batch: np.ndarray, rows: np.ndarray, todo: np.ndarray = todo) -> np.ndarray:
            return log_probs(batch, todo[rows]) if with_rows else log_probs(batch)  # rows of x, when asked for

        best, m, q = step(rows_fn, x[todo], y[todo], _rows(lb, todo), _rows(ub, todo), eps, max_queries, p_init,
                          streams.at(restart).rows(todo), on_step)
        x_adv[todo] = best
        margin[todo] = m
        queries[todo] += q
        fooled[todo] = m < 0
    return AttackResult(x_adv=x_adv, fooled=fooled, queries=queries, margin=margin)


def _linf_run(log_probs: Callable[[np.ndarray, np.ndarray], np.ndarray], x: np.ndarray, y: np.ndarray, lb: np.ndarray,
              ub: np.ndarray, eps: float, max_queries: int, p_init: float, rng: RowRandom,
              on_step: Callable[[int, int], None] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One run of the L∞ attack (Algorithm 2 of the paper, vertical-stripe start); ``rng``: a stream per row,
    a fresh one per step (the rows still attacked, and how often a step redraws, depend on the other rows)."""
    n, c, h, w = x.shape
    dt = x.dtype.type
    e = dt(eps)
    stripes = rng.choice(np.array([-e, e], dtype=x.dtype), size=(n, c, 1, w))
    x_best = np.clip(x + stripes, lb, ub)
    margin = margins(log_probs(x_best, np.arange(n)), y)
    queries = np.ones(n, dtype=np.int64)
    signs = np.array([-e, e], dtype=x.dtype)
    for it in range(max_queries - 1):
        act = np.flatnonzero(margin >= 0)
        if len(act) == 0:
            break
        sh, sw = _window_shape(p_selection(p_init, it, max_queries), h, w, "linf")
        step_rng = rng.at(it)
        r_act = step_rng.rows(act)
        win = _Window.random(r_act, len(act), h, w, sh, sw, c)
        idx = (act[:, None, None, None], *win.index[1:])
        x_win, best_win = x[idx], x_best[idx]
        lb_win, ub_win = lb[idx], ub[idx]
        cand = np.clip(x_win + r_act.choice(signs, size=(len(act), c, 1, 1)), lb_win, ub_win)
        # A candidate that leaves the window as it is would waste a query: draw its signs again (as the
        # reference does), a few times at most (a window pinned by the valid range may never change).
        for redraw in range(8):
            same = np.all(cand == best_win, axis=(1, 2, 3))
            if not same.any():
                break
            k = np.flatnonzero(same)
            signs_k = step_rng.at(1 + redraw).rows(act[k]).choice(signs, size=(len(k), c, 1, 1))
            cand[k] = np.clip(x_win[k] + signs_k, lb_win[k], ub_win[k])
        x_new = x_best[act]
        x_new[win.index] = cand
        m = margins(log_probs(x_new, act), y[act])
        queries[act] += 1
        better = m < margin[act]
        x_best[act[better]] = x_new[better]
        margin[act[better]] = m[better]
        if on_step is not None:
            on_step(it + 1, len(act))
    return x_best, margin, queries


def _project_l2(x: np.ndarray, delta: np.ndarray, sq: np.ndarray, eps: float, lb: np.ndarray,
                ub: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``x + δ·ε/‖δ‖`` clipped to ``[lb, ub]``, in ``x``'s dtype (``sq`` estimates ``‖δ‖²`` per sample); returns
    it, its perturbation and that perturbation's squared norm.

    Built in the input's precision (float32: half the memory traffic of float64) and aimed a hair inside the
    sphere. ``‖result − x‖₂ ≤ ε`` is then guaranteed in float64: the float32 differences carry a relative error
    of at most the unit roundoff ``u`` and are summed in float64, so a row whose sum times ``1 + 3u`` stays
    within ``ε²`` is inside; any other row is measured exactly and shrunk toward ``x`` until it is.
    """
    dt = x.dtype
    scale = (eps * (1 - 1e-6) / np.sqrt(np.maximum(sq, 1e-300))).astype(dt)
    out = delta * scale[:, None, None, None]
    out += x
    np.clip(out, lb, ub, out=out)
    d = out - x
    sq_out = np.einsum("ijkl,ijkl->i", d, d, dtype=np.float64)
    u = float(np.finfo(dt).eps) / 2
    for row in np.flatnonzero(sq_out * (1 + 3 * u) > eps**2):  # rare: exact measure, shrink if needed
        x64 = x[row].astype(np.float64)
        lb_r, ub_r = _rows(lb, row), _rows(ub, row)
        for shrink in (1 - 1e-6, 1 - 1e-5, 1 - 1e-4, 1 - 1e-3, 0.99, 0.9, 0.0):  # 0: x itself, inside
            dd = out[row].astype(np.float64) - x64
            n2 = float(np.sum(dd**2))
            if n2 <= eps**2:
                break
            out[row] = np.clip((x64 + dd * (eps / np.sqrt(n2) * shrink)).astype(dt), lb_r, ub_r)
        d[row] = out[row] - x[row]
        sq_out[row] = float(np.sum((out[row].astype(np.float64) - x64) ** 2))
    return out, d, sq_out


def _l2_run(log_probs: Callable[[np.ndarray, np.ndarray], np.ndarray], x: np.ndarray, y: np.ndarray, lb: np.ndarray,
            ub: np.ndarray, eps: float, max_queries: int, p_init: float, rng: RowRandom,
            on_step: Callable[[int, int], None] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One run of the L2 attack (Algorithm 3 of the paper, grid-of-bumps start).

    Keeps each sample's best perturbation ``δ = x_best − x`` and its squared norm, so that a step touches the
    whole image only to build the candidate: the window norms come from the two windows, the new ``‖δ‖`` from
    an update of the old one.
    """
    n, c, h, w = x.shape
    dt = x.dtype
    # initialisation: a grid of meta pseudo-Gaussian bumps with random signs per sample and channel
    th = max(h // 5, 1) if h > 1 else 1
    tw = max(w // 5, 1)
    nth, ntw = h // th, w // tw
    r0, c0 = (h - nth * th) // 2, (w - ntw * tw) // 2
    delta = np.zeros(x.shape)
    bump = meta_pseudo_gaussian(th, tw)
    for i in range(nth):
        for j in range(ntw):
            sgn = rng.choice(np.array([-1.0, 1.0]), size=(n, c, 1, 1))
            delta[:, :, r0 + i * th:r0 + (i + 1) * th, c0 + j * tw:c0 + (j + 1) * tw] += bump * sgn
    x_best, d_best, sq_best = _project_l2(x, delta.astype(dt), np.sum(delta**2, axis=(1, 2, 3)), eps, lb, ub)
    margin = margins(log_probs(x_best, np.arange(n)), y)
    queries = np.ones(n, dtype=np.int64)
    signs = np.array([-1.0, 1.0])
    for it in range(max_queries - 1):
        act = np.flatnonzero(margin >= 0)
        if len(act) == 0:
            break
        na = len(act)
        d = d_best[act]
        sh, sw = _window_shape(p_selection(p_init, it, max_queries), h, w, "l2")
        r_act = rng.at(it).rows(act)  # a fresh stream per step: the rows still attacked depend on the others
        win1 = _Window.random(r_act, na, h, w, sh, sw, c)
        win2 = _Window.random(r_act, na, h, w, sh, sw, c)
        w1 = d[win1.index].astype(np.float64)
        w2 = d[win2.index].astype(np.float64)
        # the part of window 2 outside window 1 (per sample, from the windows' offsets)
        r_off = win2.rows0[:, None] + np.arange(sh) - win1.rows0[:, None]
        c_off = win2.cols0[:, None] + np.arange(sw) - win1.cols0[:, None]
        in1 = (((r_off >= 0) & (r_off < sh))[:, :, None] & ((c_off >= 0) & (c_off < sw))[:, None, :])[:, None]
        sq_w1 = np.sum(w1**2, axis=(2, 3), keepdims=True)
        sq_both = sq_w1 + np.sum(np.where(in1, 0.0, w2**2), axis=(2, 3), keepdims=True)
        bump = meta_pseudo_gaussian(sh, sw)
        new = np.broadcast_to(bump, (na, 1, sh, sw))
        if sh == sw and sh > 1:  # random orientation per sample, as the reference's random transpose
            new = np.where(r_act.random(na)[:, None, None, None] < 0.5, bump, bump.T)
        new = new * r_act.choice(signs, size=(na, c, 1, 1)) + w1 / (1e-10 + np.sqrt(sq_w1))
        budget_sq = np.maximum(eps**2 - sq_best[act], 0.0)[:, None, None, None] / c + sq_both
        new *= np.sqrt(budget_sq / np.sum(new**2, axis=(2, 3), keepdims=True))
        d[win2.index] = 0.0
        d[win1.index] = new
        sq = sq_best[act] - np.sum(sq_both, axis=(1, 2, 3)) + np.sum(new**2, axis=(1, 2, 3))
        x_new, d_new, sq_new = _project_l2(x[act], d, sq, eps, _rows(lb, act), _rows(ub, act))
        m = margins(log_probs(x_new, act), y[act])
        queries[act] += 1
        better = m < margin[act]
        keep = act[better]
        x_best[keep] = x_new[better]
        d_best[keep] = d_new[better]
        sq_best[keep] = sq_new[better]
        margin[keep] = m[better]
        if on_step is not None:
            on_step(it + 1, na)
    return x_best, margin, queries


def perturbation_norms(x: np.ndarray, x_adv: np.ndarray, norm: str) -> np.ndarray:
    """Per-sample ‖x_adv − x‖ (L∞ or L2) in float64."""
    d = (np.asarray(x_adv, np.float64) - np.asarray(x, np.float64)).reshape(len(x), -1)
    return np.asarray(np.abs(d).max(axis=1) if norm == "linf" else np.sqrt(np.sum(d**2, axis=1)))


class SquareAttack(ShardedCheck):
    """Square Attack (L∞ or L2) on the correctly classified samples, every success verified in a fresh session."""

    name = "robustness.square_attack"

    class Params:
        eps: float | None = param(None, "Radius of the perturbation ball (input units). null: 0.03 (linf) or 0.5 (l2) "
                "times the width of the input range.", minimum=0)
        norm: str = param("linf", "Threat model.", choices=("linf", "l2"))
        max_queries: int = param(1000, "Query budget per sample and restart (the initialisation counts as one).",
                minimum=1)
        p_init: float | None = param(None, "Initial share of pixels per square; null: 0.8 (AutoAttack's default; the "
                "paper's ImageNet runs used 0.05 for linf, 0.1 for l2).", minimum=0, maximum=1)
        clip: list[float] | None = range_param()
        restarts: int = param(1, "Independent runs from fresh random starts for the samples still not fooled.",
                minimum=1)
        limit: int | None = limit_param(500)
        examples: int = examples_param("adversarial examples")

        def validate(self) -> list[str]:
            """A zero radius attacks nothing."""
            return ["eps: must be positive (null: a share of the input range)"] if self.eps == 0 else []

    metrics_doc = {
        "success_rate": "share of attacked (correctly classified) samples with a verified adversarial example",
        "robust_accuracy": "share of all samples classified correctly and not fooled",
        "clean_accuracy": "accuracy on the sample before the attack",
        "median_queries": "median queries to success (successful samples)",
        "mean_queries": "mean queries to success",
        "median_perturbation_norm": "median ‖δ‖ (in the attack's norm) of the adversarial examples",
        "max_perturbation_norm": "largest ‖δ‖ of the adversarial examples (never above eps)",
        "n_attacked": "samples attacked (correctly classified ones)",
        "unverified": "examples the attack found that failed the fresh-session check (not counted)",
        "queries_total": "inputs sent to the model by the attack",
        "duration_s": "wall time of the attack",
        "eps": "the radius used (input units)",
        "norm": "the threat model (linf or l2)",
        "n": "samples in the (sampled) data",
    }

    def plan(self, ctx: AuditContext, params: Params) -> Plan:
        """The sample, the valid range and eps, decided once over the whole sample (batch by batch)."""
        p, norm = params, params.norm
        rows, notes = sampled_rows(ctx, p.limit)
        full = ctx.require_data()
        space, geo = space_of(ctx)
        space.require_arithmetic("an attack adding real-valued perturbations")
        notes += space_note(space, "the attack works in float; every query and example is rounded and clipped back "
                            "to the input's values")
        stats = ValueStats.of(full.x, rows, geo, full.batch_size, space.work_dtype, space)
        vr = space_range(space, p.clip, stats.extremes, geo)
        notes.append(describe_range(vr, p.clip is not None))
        lo, hi = vr if vr is not None else (-np.inf, np.inf)
        outside = int(np.sum(stats.lo < lo) + np.sum(stats.hi > hi)) if vr is not None else 0
        if outside:
            notes.append(f"values of {outside} input positions lie outside [{lo:g}, {hi:g}]; the range is "
                         f"widened to include each of them")
        eps = p.eps
        if eps is None:
            span = (hi - lo) if vr is not None else float(np.ptp(stats.extremes))
            eps = DEFAULT_EPS[norm] * span
            notes.append(f"eps = {eps:g} ({DEFAULT_EPS[norm]:g} of the input range {span:g}; set eps to choose)")
        return Plan(rows=rows, state={"lo": lo, "hi": hi, "eps": float(eps)}, notes=notes)

    def run_shard(self, ctx: AuditContext, params: Params, plan: Plan, shard: Shard) -> Any:
        """Attack the shard's correctly classified rows (each from its own random stream), verify what was
        found; per-row results under ``"rows"`` (gathered), counts beside them."""
        p, norm = params, params.norm
        lo, hi, eps = plan.state["lo"], plan.state["hi"], plan.state["eps"]
        data = ctx.require_data()
        space, geo = space_of(ctx)
        xc = geo.canonical(space.to_space(np.asarray(data.x)))
        clf = Classifier.for_data(ctx, data, space, geo)
        clean_probs = clf.probs(xc)
        clean_pred, y = targets(ctx, data, clean_probs)
        ref = clean_pred if y is None else y
        correct = clean_pred == ref
        idx = np.flatnonzero(correct)
        n_steps = p.restarts * p.max_queries

        def on_step(step: int, active: int) -> None:
            ctx.check_cancelled()
            ctx.report_progress(step, n_steps, f"{active} samples left")

        def log_probs(batch: np.ndarray, rows: np.ndarray) -> np.ndarray:
            # the model's other inputs, if any, follow the attacked rows
            return clf.log_probs(batch, idx[rows] if clf.inputs else None)

        t0 = time.perf_counter()
        # one random stream per sample: the attack does not depend on the shard size
        res = square_attack(log_probs, xc[idx], ref[idx], eps=eps, norm=norm, max_queries=p.max_queries,
                            p_init=p.p_init, lo=lo, hi=hi, rng=shard.random(ctx).rows(idx), restarts=p.restarts,
                            on_step=on_step, with_rows=True)
        res = dataclasses.replace(res, x_adv=space.snap(res.x_adv))  # the values the model is really fed
        duration = time.perf_counter() - t0
        found = np.flatnonzero(res.fooled)
        ok, adv_probs = self.verify_with_probs(ctx, geo, xc[idx][found], res.x_adv[found], ref[idx][found], eps,
                                               norm, lo, hi, clf, idx[found])
        good = found[ok]
        rows = data.indices[idx[good]] if data.indices is not None else shard.rows[idx[good]]
        clean = clean_probs[idx[good]]
        return {"n": data.n, "n_attacked": len(idx), "y": y, "correct": int(correct.sum()), "found": len(found),
                "queries_total": int(res.queries.sum()), "duration": duration,
                "rows": {"x": xc[idx][good], "x_adv": res.x_adv[good], "queries": res.queries[good],
                         "labels": ref[idx[good]], "rows": rows,
                         # for the report's gallery: what the model says of each verified example and its original
                         "pred": clean.argmax(axis=1), "conf": clean.max(axis=1),
                         "pred_adv": adv_probs[ok].argmax(axis=1), "conf_adv": adv_probs[ok].max(axis=1)}}

    def merge(self, ctx: AuditContext, params: Params, plan: Plan, partials: Sequence[Any]) -> CheckResult:
        """Success rate, robust accuracy, queries and norms over every shard's verified examples."""
        norm, eps = params.norm, plan.state["eps"]
        n, n_att, n_found = (sum(q[k] for q in partials) for k in ("n", "n_attacked", "found"))
        labelled = partials[0]["y"] is not None
        notes = plan.notes + label_notes(np.concatenate([q["y"] for q in partials]) if labelled else None)
        g = gather_rows([q["rows"] for q in partials])
        x_good, x_adv, q, ref_good, rows = g["x"], g["x_adv"], g["queries"], g["labels"], g["rows"]
        n_good = len(q)
        norms = perturbation_norms(x_good, x_adv, norm) if n_good else np.zeros(0)
        space, geo = space_of(ctx)
        metrics: dict[str, Any] = {
            "n": n,
            "n_attacked": n_att,
            "clean_accuracy": float(sum(p["correct"] for p in partials) / n) if labelled else None,
            "success_rate": n_good / n_att if n_att else None,
            "robust_accuracy": (n_att - n_good) / n,
            "median_queries": number_or_none(np.median(q)) if n_good else None,
            "mean_queries": number_or_none(np.mean(q)) if n_good else None,
            "median_perturbation_norm": number_or_none(np.median(norms)) if n_good else None,
            "max_perturbation_norm": number_or_none(np.max(norms)) if n_good else None,
            "unverified": int(n_found - n_good),
            "queries_total": int(sum(p["queries_total"] for p in partials)),
            "eps": float(eps),
            "norm": norm,
            "duration_s": float(sum(p["duration"] for p in partials)),
        }
        findings = []
        if n_found > n_good:
            findings.append(Finding(
                message=f"{n_found - n_good} adversarial examples failed verification in a fresh session "
                        f"(nondeterministic outputs or a margin at the rounding level); they are not counted",
                severity="warn"))
        if n_att == 0:
            notes.append("no correctly classified sample to attack")
        adversarial = space.from_space(geo.to_model(x_adv)) if n_good else x_adv
        artifacts = {"adversarial_examples": adversarial, "rows": rows, "labels": ref_good}
        gallery = None
        if n_good and params.examples:
            k = min(params.examples, n_good)  # the first k verified examples in sample (shard) order
            gallery = adversarial_gallery(
                x_good[:k], x_adv[:k], layout="NCHW" if geo.is_image else None, labels=ref_good[:k],
                predicted=g["pred"][:k], confidence=g["conf"][:k], predicted_adv=g["pred_adv"][:k],
                confidence_adv=g["conf_adv"][:k], rows=rows[:k], value_range=(plan.state["lo"], plan.state["hi"]),
                classes=class_names(ctx.model, ctx.data), total=n_good, k=k, norms={norm: norms[:k]},
                title=f"Square Attack ({norm}, eps {eps:.4g}): adversarial examples",
                space="un-normalised pixels" if space.pixels is not None else "model input values",
                channels=space.channels)
        if n_good:
            path = ctx.artifact_path("adversarial_examples.npz")
            np.savez_compressed(path, x=space.from_space(geo.to_model(x_good)), x_adv=adversarial, rows=rows,
                                labels=ref_good, queries=q)
            notes.append(f"{n_good} adversarial examples saved to {path} (x, x_adv, rows, labels, queries)")
        return CheckResult(metrics=metrics, findings=findings, notes=notes, artifacts=artifacts, gallery=gallery)

    @staticmethod
    def verify_with_probs(ctx: AuditContext, geo: Geometry, x: np.ndarray, x_adv: np.ndarray, y: np.ndarray,
                          eps: float, norm: str, lo: float, hi: float, clf: Classifier | None = None,
                          rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Which examples are inside the ε-ball and the valid range (float64) and misclassified by a freshly
        opened session of the same model (in ``clf``'s value space, with the other inputs of its ``rows``); and
        that session's probabilities for each example."""
        if len(x) == 0:
            return np.zeros(0, dtype=bool), np.zeros((0, 1))
        x64, a64 = x.astype(np.float64), x_adv.astype(np.float64)
        in_ball = perturbation_norms(x64, a64, norm) <= eps
        lo_el, hi_el = np.minimum(lo, x64), np.maximum(hi, x64)
        in_range = np.all((a64 >= lo_el) & (a64 <= hi_el), axis=(1, 2, 3))
        fresh = ModelHandle(ctx.model.config, batch_size=ctx.model.batch_size, role=ctx.model.role)
        # the audited output itself, as a user of the model reads it (not the logits the attack may have used)
        check = Classifier(fresh, geo, prefer_logits=False, space=clf.space if clf else None,
                           inputs=clf.inputs if clf else {})
        probs = check.probs(x_adv, rows if check.inputs else None)
        return in_ball & in_range & (probs.argmax(axis=1) != y), probs
