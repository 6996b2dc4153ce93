"""What the robustness checks share: the input's geometry (any image layout), the valid value range, a stratified
sample, and batched black-box access to the model's class probabilities.

Every perturbation is built in one canonical layout, ``(N, C, H, W)`` (a vector input is ``(N, 1, 1, D)``), and
turned into the model's own layout only when it is queried. So an NHWC model and the same model exported NCHW
see the same random draws and give the same numbers, and the attacks need one code path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from auditor import ArraySource, AuditContext, Dataset, ModelHandle, SkipCheck, Task, param
from auditor.gallery import MAX_EXAMPLES
from auditor.jsonenc import number_or_none
from auditor.outputs import predictions_of, softmax, squeeze_scores
from auditor.perturb import InputSpace, ValueKind, input_space

#: Smallest probability used when taking logs (a probability of exactly 0 must not give -inf margins).
TINY = 1e-300


@dataclass(frozen=True)
class Geometry:
    """How a per-sample input of shape ``shape`` maps to canonical ``(C, H, W)``.

    ``layout`` is ``"NCHW"``/``"NHWC"`` for 4-D image inputs and ``None`` for anything else, which is flattened
    to ``(1, 1, D)`` (tabular rows, sequences): "spatial" operations then run along the features.
    """

    shape: tuple[int, ...]
    layout: str | None
    c: int
    h: int
    w: int

    @classmethod
    def of(cls, x: np.ndarray | ArraySource, model_layout: str | None) -> Geometry:
        """The geometry of batch ``x`` (batch-first) for a model whose layout is ``model_layout``."""
        shape = tuple(int(d) for d in x.shape[1:])
        if len(shape) == 3 and model_layout in ("NCHW", "NHWC"):
            if model_layout == "NCHW":
                c, h, w = shape
            else:
                h, w, c = shape
            return cls(shape, model_layout, c, h, w)
        return cls(shape, None, 1, 1, int(np.prod(shape)) if shape else 1)

    @property
    def is_image(self) -> bool:
        """Whether the input is a 4-D image batch."""
        return self.layout is not None

    @property
    def size(self) -> int:
        """Number of values per sample."""
        return self.c * self.h * self.w

    def canonical(self, x: np.ndarray) -> np.ndarray:
        """Model layout -> ``(N, C, H, W)`` (a copy, C-contiguous)."""
        x = np.asarray(x)
        if self.layout == "NHWC":
            return np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))
        return np.array(x.reshape(len(x), self.c, self.h, self.w), copy=True)

    def to_model(self, xc: np.ndarray) -> np.ndarray:
        """``(N, C, H, W)`` -> the model's layout (C-contiguous)."""
        if self.layout == "NHWC":
            return np.ascontiguousarray(np.transpose(xc, (0, 2, 3, 1)))
        return np.ascontiguousarray(xc).reshape((len(xc), *self.shape))


#: A chunk of a shard holds about this many bytes of float64 work values (a transient copy per step).
CHUNK_BYTES = 64 << 20


def chunk_rows(model_batch: int, values_per_row: int) -> int:
    """Rows per chunk when a check perturbs and scores a shard piece by piece: whole model batches (so the model
    sees the same batches as with the shard in one piece, and gives the same outputs), as many as fit in
    :data:`CHUNK_BYTES` of float64 values, at least one batch."""
    batch = max(1, int(model_batch))
    per_batch = batch * max(1, int(values_per_row)) * 8
    return batch * max(1, CHUNK_BYTES // per_batch)


def chunk_slices(n: int, rows: int) -> list[slice]:
    """``[0:rows], [rows:2·rows], ...`` covering ``n`` rows."""
    return [slice(s, min(s + rows, n)) for s in range(0, n, rows)]


def range_param(default: list[float] | None = None) -> Any:
    """The ``clip`` field every check here declares (``clip: list[float] | None = range_param()``)."""
    return param(default, "Valid input range [lo, hi]; perturbed inputs are clipped to it. null: inferred for "
                 "images ([0, 1] or [0, 255] when the data lies there, else the data's min and max), no clipping "
                 "for other inputs.",
                 schema={"type": ["array", "null"], "items": {"type": "number"}, "minItems": 2, "maxItems": 2})


def examples_param(what: str) -> Any:
    """The ``examples`` field of the checks that show inputs in the report's gallery."""
    return param(4, f"{what[0].upper()}{what[1:]} shown in the HTML report's gallery (the first ones in sample "
                 f"order, stored small in report.json; 0: none).", minimum=0, maximum=MAX_EXAMPLES)


def limit_param(default: int | None) -> Any:
    """The ``limit`` field every check here declares (``limit: int | None = limit_param(500)``)."""
    return param(default, "Audit at most this many rows, a seeded sample stratified by label (noted in the "
                 "report); null: every row.", minimum=1)


def value_range(clip: Sequence[float] | None, x: np.ndarray, geometry: Geometry) -> tuple[float, float] | None:
    """The ``clip`` parameter, or the range inferred from the data for images (``None``: no clipping)."""
    if clip is not None:
        lo, hi = float(clip[0]), float(clip[1])
        if not lo < hi:
            raise ValueError(f"clip: lo must be below hi (got [{lo:g}, {hi:g}])")
        return lo, hi
    if not geometry.is_image:
        return None
    lo, hi = float(np.min(x)), float(np.max(x))
    if lo >= 0 and hi <= 1:
        return 0.0, 1.0
    if lo >= 0 and hi <= 255:
        return 0.0, 255.0
    return lo, hi


def describe_range(rng: tuple[float, float] | None, given: bool) -> str:
    """A note for the report saying which range was used and why."""
    if rng is None:
        return "no clipping (not an image input; set clip: [lo, hi] to bound the inputs)"
    how = "given" if given else "inferred from the data"
    return f"inputs clipped to [{rng[0]:g}, {rng[1]:g}] ({how})"


def sample(ctx: AuditContext, limit: int | None) -> tuple[Dataset, list[str]]:
    """The audit data, or a seeded sample stratified by label when it has more than ``limit`` rows; the
    notes say which."""
    data = ctx.require_data()
    sub = ctx.sample(limit, data)
    notes = [sub.notes[-1]] if sub is not data and sub.notes else [f"all {data.n} rows"]
    return sub, notes


@dataclass
class Classifier:
    """Batched black-box access to a classifier: class scores for inputs in canonical layout.

    Reads the outputs the way :meth:`auditor.AuditContext.predictions` does (``interpret``), but without first
    running the whole data set, so that a sampled audit of a large data set costs only its sample. When the
    model ends in a Softmax, the logits entering it are read instead (``prefer_logits``): margins stay exact
    where float32 probabilities saturate to 0 and 1. Once the first call has shown which output holds the score
    matrix, later calls fetch only that one and skip the general reading (attacks call this thousands of
    times). ``queries`` counts the inputs sent to the model.

    ``space`` maps the float perturbations back to what the input takes (rounded and clipped for uint8
    images); ``inputs`` holds the model's other per-sample inputs for the sample's rows (``Dataset.inputs``):
    a query of rows ``rows`` of the sample gets theirs, a query of as many inputs as the sample has rows (or a
    multiple: stacked copies) gets them all, in order.
    """

    model: ModelHandle
    geometry: Geometry
    task: Task = Task.CLASSIFICATION
    prefer_logits: bool = True
    queries: int = 0
    space: InputSpace | None = None
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    _matrix: tuple[str, bool] | None = None  # (tensor name, holds logits) once known

    @classmethod
    def for_data(cls, ctx: AuditContext, data: Dataset, geometry: Geometry, **kw: Any) -> Classifier:
        """A classifier for inputs derived from the rows of ``data`` (its other inputs and value space)."""
        space = kw.pop("space", None) or input_space(ctx.model, data.x, pixels=data.pixels)
        return cls(ctx.model, geometry, space=space, inputs=ctx.companions(data=data), **kw)

    def _companions(self, n: int, rows: np.ndarray | None) -> dict[str, np.ndarray]:
        if not self.inputs:
            return {}
        if rows is not None:
            return {k: np.asarray(v)[rows] for k, v in self.inputs.items()}
        m = len(next(iter(self.inputs.values())))
        if m and n % m == 0:
            return {k: np.concatenate([np.asarray(v)] * (n // m)) if n != m else np.asarray(v)
                    for k, v in self.inputs.items()}
        raise ValueError(f"{n} queries do not match the {m} rows whose other model inputs are known")

    def scores(self, x: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
        """Class scores ``(N, C)`` for inputs in the model's layout, and whether they are logits (else
        probabilities)."""
        self.queries += len(x)
        if self.space is not None:
            x = self.space.from_space(x)
        inputs = self._companions(len(x), rows)
        if self._matrix is not None:
            name, logits = self._matrix
            return squeeze_scores(np.asarray(self.model.run(x, [name], inputs=inputs)[name], dtype=np.float64)), logits
        logits_name = self.model.logits_tensor() if self.prefer_logits else None
        if logits_name is not None:
            z = np.asarray(self.model.run(x, [logits_name], inputs=inputs)[logits_name], dtype=np.float64)
            z = squeeze_scores(z)
            if z.ndim == 2 and z.shape[1] >= 2:
                self._matrix = (logits_name, True)
                return z, True
        raw = self.model.run(x, inputs=inputs)
        p = predictions_of(self.model, raw, task=self.task)
        if p.probs is None:
            raise SkipCheck("the model is not a classifier")
        if p.kind in ("probabilities", "logits", "label+probabilities"):
            # interpret read the first float matrix output with at least two columns
            name = next(k for k, v in raw.items() if np.asarray(v).dtype.kind == "f"
                        and np.ndim(squeeze_scores(v)) == 2 and np.shape(v)[1] >= 2)
            self._matrix = (name, p.kind == "logits")
        return p.probs, False

    def probs(self, xc: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Class probabilities ``(N, C)`` (float64) for canonical inputs ``xc`` (of the sample's ``rows``)."""
        return self.probs_model_layout(self.geometry.to_model(xc), rows)

    def probs_model_layout(self, x: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Class probabilities for inputs already in the model's layout."""
        s, logits = self.scores(x, rows)
        return softmax(s) if logits else s

    def log_probs(self, xc: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Log-probabilities for canonical inputs: ``log_softmax`` of logits (exact logit differences), else
        ``log`` of the probabilities (floored at :data:`TINY`)."""
        s, logits = self.scores(self.geometry.to_model(xc), rows)
        if logits:
            z = s - s.max(axis=1, keepdims=True)
            return np.asarray(z - np.log(np.exp(z).sum(axis=1, keepdims=True)))
        return np.asarray(np.log(np.maximum(s, TINY)))


def space_range(space: InputSpace, clip: Sequence[float] | None, xc: np.ndarray,
                geometry: Geometry) -> tuple[float, float] | None:
    """The valid range of a perturbed input: ``clip`` when given, else a quantized input's dtype range (uint8:
    [0, 255]) or pixel space's [0, 1], else the range :func:`value_range` infers."""
    if clip is None and space.bounds is not None and (space.kind is ValueKind.QUANTIZED or space.pixels is not None):
        return space.bounds
    return value_range(clip, xc, geometry)


def margins(log_probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Margin loss of Carlini & Wagner / Square Attack: ``log p_y - max_{k != y} log p_k`` per row.

    Equal to the logit margin ``z_y - max_{k != y} z_k`` for a softmax output; negative exactly when the
    predicted class is not ``y``.
    """
    n = len(y)
    rows = np.arange(n)
    true = log_probs[rows, y].copy()
    other = log_probs.copy()
    other[rows, y] = -np.inf
    return np.asarray(true - other.max(axis=1))


@dataclass(frozen=True)
class ValueStats:
    """Per-value statistics of canonical inputs over many rows, gathered batch by batch (a plan never holds
    the whole sample): each value's min, max, mean and standard deviation, and the overall min, max, mean and
    standard deviation."""

    lo: np.ndarray
    hi: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    n: int

    @property
    def min(self) -> float:
        """Smallest value of any row."""
        return float(self.lo.min())

    @property
    def max(self) -> float:
        """Largest value of any row."""
        return float(self.hi.max())

    def overall(self) -> tuple[float, float]:
        """Mean and standard deviation of every value of every row together (from the per-value ones: the
        within-value and between-value parts of the variance)."""
        mu = float(self.mean.mean())
        return mu, float(np.sqrt(np.mean(self.std**2) + np.mean((self.mean - mu) ** 2)))

    @classmethod
    def of(cls, x: Any, rows: np.ndarray | None, geometry: Geometry, batch: int,
           dtype: Any = np.float32, space: InputSpace | None = None) -> ValueStats:
        """Statistics of rows ``rows`` (``None``: all) of batch-first ``x`` in canonical layout, in ``dtype``
        (in ``space``'s perturbation space when given: the values a perturbation sees); the standard deviation
        combines per-batch means and squared deviations (Chan et al.), in float64."""
        idx = np.arange(len(x)) if rows is None else np.asarray(rows)
        lo = hi = mean = m2 = None
        n = 0
        for start in range(0, max(len(idx), 1), batch):
            part = idx[start:start + batch]
            if len(part) == 0:
                break
            raw = np.asarray(x[part])
            xc: np.ndarray = geometry.canonical(raw if space is None else space.to_space(raw)).astype(dtype)
            b_lo, b_hi = xc.min(axis=0), xc.max(axis=0)
            b_mean = xc.mean(axis=0, dtype=np.float64)
            b_m2 = ((xc - b_mean) ** 2).sum(axis=0, dtype=np.float64)
            k = len(part)
            if lo is None:
                lo, hi, mean, m2 = b_lo, b_hi, b_mean, b_m2
            else:
                assert hi is not None and mean is not None and m2 is not None
                lo, hi = np.minimum(lo, b_lo), np.maximum(hi, b_hi)
                delta = b_mean - mean
                tot = n + k
                mean = mean + delta * (k / tot)
                m2 = m2 + b_m2 + delta**2 * (n * k / tot)
            n += k
        assert lo is not None and hi is not None and mean is not None and m2 is not None
        return cls(lo=lo, hi=hi, mean=mean, std=np.sqrt(m2 / max(n, 1)), n=n)


def task_of_sample(ctx: AuditContext, data: Dataset, x: np.ndarray, rows: np.ndarray | None) -> Task:
    """``classification`` or ``regression``, as the audit reads the model's outputs on the rows ``rows`` of ``data``
    (``x`` holds them), without a pass over all of them: the outputs' structure comes from the first batch, the
    labels from every row, so each shard of a check reads the outputs the same way."""
    cached = ctx.cache.predictions.get((id(ctx.model), id(data))) if rows is None else None
    if cached is not None:
        return cached.task
    k = max(1, min(len(x), data.batch_size))
    first = data.subset(np.arange(k) if rows is None else np.asarray(rows)[:k])  # with its other inputs
    raw = ctx.model.run(np.asarray(first.x), inputs=first.inputs)
    y = None if data.y is None else (data.y if rows is None else data.y[rows])
    return predictions_of(ctx.model, raw, y=y).task


def targets(ctx: AuditContext, data: Dataset, clean_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray | None,
                                                                                list[str]]:
    """Clean predicted classes (from ``clean_probs``, read by the same :class:`Classifier` that will score the
    perturbed inputs, so that a flip is never a change of reading), true classes (column indices; ``None``
    without labels) and notes."""
    y = None if data.y is None else ctx.labels(data)
    return clean_probs.argmax(axis=1), y, label_notes(y)


def label_notes(y: np.ndarray | None) -> list[str]:
    """What the report says about the true classes ``y`` (column indices, -1 unknown; ``None``: no labels)."""
    if y is None:
        return ["no labels: the model's own predictions are the reference"]
    unknown = int((y < 0).sum())
    return [f"{unknown} labels are not among the model's classes and count as wrong"] if unknown else []


#: A metric's float, ``None`` for NaN or a missing value (the core's verb, under this plugin's older name).
as_float = number_or_none
