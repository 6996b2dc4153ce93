"""What the robustness checks share: the input's geometry (any image layout), its value space and valid range, the
parameters they all declare, and batched black-box access to the model's class probabilities.

Every perturbation is built in one canonical layout, ``(N, C, H, W)`` (a vector input is ``(N, 1, 1, D)``), and
turned into the model's own layout only when it is queried. So an NHWC model and the same model exported NCHW
see the same random draws and give the same numbers, and the attacks need one code path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from auditor import ArraySource, AuditContext, Dataset, ModelHandle, Predictions, SkipCheck, Task, param
from auditor.gallery import MAX_EXAMPLES
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
            c, h, w = shape if model_layout == "NCHW" else (shape[2], shape[0], shape[1])
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


def describe_range(rng: tuple[float, float] | None, given: bool) -> str:
    """A note for the report saying which range was used and why."""
    if rng is None:
        return "no clipping (not an image input; set clip: [lo, hi] to bound the inputs)"
    how = "given" if given else "inferred from the data"
    return f"inputs clipped to [{rng[0]:g}, {rng[1]:g}] ({how})"


@dataclass
class Classifier:
    """Batched black-box access to a classifier: class scores for inputs in canonical layout.

    Reads the outputs as :meth:`auditor.AuditContext.predictions` does, without running the whole data set first;
    when the model ends in a Softmax, the logits entering it (``prefer_logits``): margins stay exact where float32
    probabilities saturate to 0 and 1. Once the first call has shown which output holds the score matrix, later
    calls (attacks make thousands) fetch only that one. ``queries`` counts the inputs sent to the model.

    ``space`` maps the float perturbations back to what the input takes (rounded and clipped for uint8
    images); ``inputs`` holds the model's other per-sample inputs (``Dataset.inputs``): a query of rows ``rows``
    gets theirs, any other query all of them, in order.
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
    def for_data(cls, ctx: AuditContext, data: Dataset, space: InputSpace, geometry: Geometry) -> Classifier:
        """A classifier for inputs derived from the rows of ``data`` (their other inputs) in ``space``."""
        return cls(ctx.model, geometry, space=space, inputs=ctx.companions(data=data))

    def _companions(self, n: int, rows: np.ndarray | None) -> dict[str, np.ndarray]:
        picked = {k: np.asarray(v) if rows is None else np.asarray(v)[rows] for k, v in self.inputs.items()}
        if any(len(v) != n for v in picked.values()):
            raise ValueError(f"{n} queries do not match the rows whose other model inputs are given")
        return picked

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
        s, logits = self.scores(self.geometry.to_model(xc), rows)
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
    """The valid range of a perturbed input: ``clip`` when given; else a quantized input's dtype range (uint8:
    [0, 255]) or pixel space's [0, 1]; else, for images, inferred from the values ``xc`` ([0, 1] or [0, 255] when
    they lie there, else their min and max); ``None`` (no clipping) for other inputs."""
    if clip is not None:
        lo, hi = float(clip[0]), float(clip[1])
        if not lo < hi:
            raise ValueError(f"clip: lo must be below hi (got [{lo:g}, {hi:g}])")
        return lo, hi
    if space.bounds is not None and (space.kind is ValueKind.QUANTIZED or space.pixels is not None):
        return space.bounds
    if not geometry.is_image:
        return None
    lo, hi = float(np.min(xc)), float(np.max(xc))
    if lo >= 0 and hi <= 1:
        return 0.0, 1.0
    if lo >= 0 and hi <= 255:
        return 0.0, 255.0
    return lo, hi


def margins(log_probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Margin loss of Carlini & Wagner / Square Attack: ``log p_y - max_{k != y} log p_k`` per row.

    Equal to the logit margin ``z_y - max_{k != y} z_k`` for a softmax output; negative exactly when the
    predicted class is not ``y``.
    """
    rows = np.arange(len(y))
    true = log_probs[rows, y].copy()
    other = log_probs.copy()
    other[rows, y] = -np.inf
    return np.asarray(true - other.max(axis=1))


@dataclass(frozen=True)
class ValueStats:
    """Per-value statistics of canonical inputs over many rows, gathered batch by batch (a plan never holds
    the whole sample): each value's min, max, mean and standard deviation, and the overall extremes, mean and
    standard deviation."""

    lo: np.ndarray
    hi: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    @property
    def extremes(self) -> np.ndarray:
        """The smallest and the largest value of any row (float64)."""
        return np.array([self.lo.min(), self.hi.max()], dtype=np.float64)

    def overall(self) -> tuple[float, float]:
        """Mean and standard deviation of every value of every row together (from the per-value ones: the
        within-value and between-value parts of the variance)."""
        mu = float(self.mean.mean())
        return mu, float(np.sqrt(np.mean(self.std**2) + np.mean((self.mean - mu) ** 2)))

    @classmethod
    def of(cls, x: Any, rows: np.ndarray | None, geometry: Geometry, batch: int, dtype: Any,
           space: InputSpace) -> ValueStats:
        """Statistics of rows ``rows`` (``None``: all) of batch-first ``x`` in canonical layout, in ``dtype``, in
        ``space``'s perturbation space (the values a perturbation sees); the standard deviation combines
        per-batch means and squared deviations (Chan et al.), in float64."""
        lo: Any = np.inf
        hi: Any = -np.inf
        mean: Any = 0.0
        m2: Any = 0.0
        n, idx = 0, np.arange(len(x)) if rows is None else np.asarray(rows)
        for part in (idx[sl] for sl in chunk_slices(len(idx), batch)):
            xc: np.ndarray = geometry.canonical(space.to_space(np.asarray(x[part]))).astype(dtype)
            lo, hi = np.minimum(lo, xc.min(axis=0)), np.maximum(hi, xc.max(axis=0))
            b_mean = xc.mean(axis=0, dtype=np.float64)
            delta, k = b_mean - mean, len(part)
            mean = mean + delta * (k / (n + k))
            m2 = m2 + ((xc - b_mean) ** 2).sum(axis=0, dtype=np.float64) + delta**2 * (n * k / (n + k))
            n += k
        return cls(lo=lo, hi=hi, mean=mean, std=np.sqrt(m2 / max(n, 1)))


def head_predictions(ctx: AuditContext, data: Dataset, rows: np.ndarray | None = None) -> Predictions:
    """The outputs of the first batch of rows ``rows`` (``None``: all) of ``data``, read with all their labels: the
    task and classes a pass over every row gives (they follow from the outputs' structure and the labels), for one
    batch, the same in every shard."""
    idx = np.arange(data.n) if rows is None else np.asarray(rows)
    first = data.subset(idx[:max(1, data.batch_size)])  # with its other inputs
    y = None if data.y is None else data.y[idx]
    return predictions_of(ctx.model, ctx.model.run(np.asarray(first.x), inputs=first.inputs), y=y)


def targets(ctx: AuditContext, data: Dataset, clean_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Clean predicted classes (from ``clean_probs``, read by the same :class:`Classifier` that will score the
    perturbed inputs, so that a flip is never a change of reading) and true classes (column indices; ``None``
    without labels)."""
    y = None if data.y is None else ctx.labels_for(data.y, head_predictions(ctx, data))
    return clean_probs.argmax(axis=1), y


def label_notes(y: np.ndarray | None) -> list[str]:
    """What the report says about the true classes ``y`` (column indices, -1 unknown; ``None``: no labels)."""
    if y is None:
        return ["no labels: the model's own predictions are the reference"]
    unknown = int((y < 0).sum())
    return [f"{unknown} labels are not among the model's classes and count as wrong"] if unknown else []


def space_of(ctx: AuditContext, x: Any = None) -> tuple[InputSpace, Geometry]:
    """The primary input's value space and geometry, from batch ``x`` (default: the data's primary input)."""
    x = ctx.require_data().x if x is None else x
    space = input_space(ctx.model, x, pixels=None if ctx.data is None else ctx.data.pixels)
    return space, Geometry.of(x, ctx.model.layout)


def space_note(space: InputSpace, how: str) -> list[str]:
    """The report's note on the space perturbations are built in: declared pixels, or a quantized input worked on
    in float (``how``)."""
    if space.pixels is not None:
        return [space.pixels.describe()]
    return [f"{space.describe()}: {how}"] if space.kind is ValueKind.QUANTIZED else []
