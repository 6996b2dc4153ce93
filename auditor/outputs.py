"""Turning a model's raw outputs into predictions: logits, probabilities, sigmoid scores, scikit-learn's
label + probabilities (ZipMap already unwrapped by the loader), or regression values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np


class Task(str, Enum):
    """What a model's output is: class scores (``classification``) or values (``regression``); ``auto`` (a
    spec's ``model.task`` only) decides from the output and the labels. A ``str`` enum, so
    ``pred.task == "classification"`` reads as before; anything else raises ``ValueError`` where it is built."""

    AUTO = "auto"
    CLASSIFICATION = "classification"
    REGRESSION = "regression"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def of(cls, value: Task | str, where: str = "task") -> Task:
        """``value`` as a :class:`Task`; ``ValueError`` naming ``where`` and the allowed names otherwise."""
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(t.value for t in cls)
            raise ValueError(f"{where} {value!r} is not one of {allowed}") from None


@dataclass(frozen=True, kw_only=True)
class Predictions:
    """A model's predictions on a data set, interpreted.

    For classification ``probs`` is (N, C) and ``labels`` the predicted column index; ``classes`` holds the
    class label of each column. For regression ``values`` is (N,) or (N, k). ``kind`` says how the raw output
    was read (``probabilities``, ``logits``, ``sigmoid-logit``, ``sigmoid-probability``,
    ``label+probabilities``, ``labels-only``, ``values``); ``nonfinite`` counts samples with NaN/inf output.
    """

    task: Task
    kind: str
    raw: dict[str, np.ndarray]
    probs: np.ndarray | None = None
    labels: np.ndarray | None = None
    classes: tuple[Any, ...] | None = None
    values: np.ndarray | None = None
    nonfinite: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", Task.of(self.task, "Predictions task"))
        if self.task is Task.AUTO:
            raise ValueError("Predictions task must be decided: classification or regression, not auto")

    @property
    def confidence(self) -> np.ndarray:
        """Probability of the predicted class (classification only)."""
        assert self.probs is not None
        return np.asarray(self.probs.max(axis=1))


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax."""
    e = np.array(z, dtype=np.float64)  # one copy, then in place (millions of rows need no temporaries)
    e -= np.max(e, axis=axis, keepdims=True)
    np.exp(e, out=e)
    e /= np.sum(e, axis=axis, keepdims=True)
    return e


def looks_like_probabilities(a: np.ndarray, tol: float = 1e-3) -> bool:
    """Rows are non-negative and sum to one (ignoring non-finite rows).

    Checked in blocks of rows, so that millions of predictions never need a second float64 copy."""
    a = np.asarray(a)
    any_ok = False
    for start in range(0, len(a), _BLOCK):
        b = np.asarray(a[start:start + _BLOCK], dtype=np.float64)
        ok = np.all(np.isfinite(b), axis=1)
        if not ok.any():
            continue
        any_ok = True
        b = b if ok.all() else b[ok]
        if not (np.all(b >= -tol) and np.all(b <= 1 + tol) and np.allclose(b.sum(axis=1), 1.0, atol=tol)):
            return False
    return any_ok


#: Rows per block where a whole-array temporary of millions of predictions would be too large.
_BLOCK = 1 << 18


def _nonfinite_rows(a: np.ndarray) -> int:
    a = np.asarray(a)
    if a.dtype.kind not in "fc":
        return 0
    flat = a.reshape(len(a), -1) if a.ndim > 1 else a.reshape(-1, 1)
    return int((~np.isfinite(flat)).any(axis=1).sum())


def interpret(
    raw: dict[str, np.ndarray],
    *,
    task: Task | str = Task.AUTO,
    y: np.ndarray | None = None,
    zip_classes: dict[str, tuple[Any, ...]] | None = None,
) -> Predictions:
    """Read the audited outputs ``raw`` (name -> array, batch first) as classification or regression.

    ``task`` is ``auto``, ``classification`` or ``regression``. ``y`` (labels, if any) helps ``auto`` decide
    between a binary classifier's single score and a regressor. ``zip_classes`` gives class labels of
    probability outputs that were scikit-learn ZipMaps.
    """
    task = Task.of(task)
    zip_classes = zip_classes or {}
    raw = {k: squeeze_scores(v) for k, v in raw.items()}
    floats = {k: v for k, v in raw.items() if np.asarray(v).dtype.kind == "f"}
    ints = {k: v for k, v in raw.items() if np.asarray(v).dtype.kind in "iuUSO" and np.asarray(v).ndim == 1}
    matrix = {k: v for k, v in floats.items() if v.ndim == 2 and v.shape[1] >= 2}
    nonfinite = max((_nonfinite_rows(v) for v in floats.values()), default=0)
    y_binary = y is not None and np.asarray(y).dtype.kind in "iub" and set(np.unique(y)).issubset({0, 1})
    y_integral = y is not None and _integral(np.asarray(y))

    if task is Task.REGRESSION or (task is Task.AUTO and not matrix and not ints and not y_binary
                                 and (y is None or not y_integral or _many_values(y))):
        name = next(iter(floats or raw))
        v = np.asarray(raw[name], dtype=np.float64)
        if v.ndim == 2 and v.shape[1] == 1:
            v = v[:, 0]
        return Predictions(task=Task.REGRESSION, kind="values", raw=raw, values=v, nonfinite=nonfinite)

    if matrix:
        name = next(iter(matrix))
        scores = np.asarray(matrix[name], dtype=np.float64)
        classes = zip_classes.get(name) or tuple(range(scores.shape[1]))
        if looks_like_probabilities(scores):
            probs, kind = scores, "probabilities"
        else:
            probs, kind = softmax(scores), "logits"
        if ints:
            kind = "label+probabilities" if kind == "probabilities" else kind
    elif floats:
        name = next(iter(floats))
        s = np.asarray(floats[name], dtype=np.float64).reshape(len(floats[name]), -1)[:, 0]
        fin = s[np.isfinite(s)]
        if fin.size and fin.min() >= 0 and fin.max() <= 1:
            p1, kind = s, "sigmoid-probability"
        else:
            p1, kind = 1.0 / (1.0 + np.exp(-np.clip(s, -500, 500))), "sigmoid-logit"
        probs = np.stack([1 - p1, p1], axis=1)
        classes = (0, 1)
    else:
        name = next(iter(ints))
        lab = np.asarray(ints[name])
        classes = tuple(np.unique(lab).tolist())
        if y is not None:
            classes = tuple(sorted(set(classes) | set(np.unique(y).tolist())))
        idx = encode_labels(lab, classes)
        probs = np.eye(len(classes))[idx]
        kind = "labels-only"
    # Rows with a non-finite score get -1; argmax of the other rows needs no NaN-free copy of the matrix.
    labels = np.where(np.all(np.isfinite(probs), axis=1), np.argmax(probs, axis=1), -1)
    return Predictions(task=Task.CLASSIFICATION, kind=kind, raw=raw, probs=probs, labels=labels,
                       classes=tuple(classes), nonfinite=nonfinite)


def squeeze_scores(a: np.ndarray) -> np.ndarray:
    """A score map whose trailing axes are all 1 (a convolutional classifier's ``[N, C, 1, 1]``) read as
    ``[N, C]``; any other array unchanged."""
    a = np.asarray(a)
    if a.ndim > 2 and all(d == 1 for d in a.shape[2:]):
        return a.reshape(a.shape[:2])
    return a


def _integral(y: np.ndarray) -> bool:
    if y.dtype.kind in "iubUSO":
        return True
    if y.dtype.kind == "f":
        f = y[np.isfinite(y)]
        return bool(np.all(np.mod(f, 1) == 0))
    return False


def _many_values(y: np.ndarray) -> bool:
    """More distinct integer targets than a classifier would plausibly have without a matrix output."""
    return len(np.unique(y)) > 2


def encode_labels(y: np.ndarray, classes: tuple[Any, ...]) -> np.ndarray:
    """Map true labels to column indices of ``classes``; -1 for labels the model does not know. Fractional
    labels raise :class:`~auditor.errors.DataError` (never truncated)."""
    from auditor.data import check_class_labels

    y = np.asarray(y)
    check_class_labels(y)
    cls = np.asarray(classes)
    if y.dtype.kind in "iuf" and cls.dtype.kind in "iu" and np.array_equal(cls, np.arange(len(cls))):
        yi = y.astype(np.int64)
        return np.where((yi >= 0) & (yi < len(cls)), yi, -1)
    order = np.argsort(cls.astype(str))
    sorted_cls = cls.astype(str)[order]
    ys = y.astype(str)
    pos = np.searchsorted(sorted_cls, ys)
    pos = np.clip(pos, 0, len(sorted_cls) - 1)
    found = sorted_cls[pos] == ys
    return np.where(found, order[pos], -1)


def predictions_of(model: Any, raw: Mapping[str, np.ndarray], *, task: Task | str | None = None,
                   y: np.ndarray | None = None) -> Predictions:
    """A model's raw outputs read as predictions: the one place outputs become probabilities and labels.

    ``model`` is an :class:`~auditor.model.ModelHandle` (its audited outputs, scikit-learn ZipMap class labels
    and ``model.task`` are used); ``raw`` maps tensor names to batch-first arrays, as ``model.run`` returns
    them (other tensors, e.g. intermediate layers, are ignored). ``task`` overrides ``model.task``; ``y``
    (labels) helps ``auto`` tell a binary score from a regression value.
    """
    zip_classes = {z.output: z.classes for z in model.zipmaps.values()}
    audited = {o: raw[o] for o in model.outputs if o in raw} or dict(raw)
    return interpret(audited, task=task or model.config.task, y=y, zip_classes=zip_classes)
