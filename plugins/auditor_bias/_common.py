"""Helpers shared by the bias checks: group columns (with missing values and intersections), feature names of
tabular inputs and class labels."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from auditor import Dataset


@dataclass(frozen=True)
class Groups:
    """Rows of a data set assigned to groups (one column, or the intersection of several).

    ``codes`` holds the group index of each row (-1 where any of the columns is missing); ``keys`` the
    printable name of each group; ``values`` the tuple of column values behind each key.
    """

    columns: tuple[str, ...]
    codes: np.ndarray
    keys: tuple[str, ...]
    values: tuple[tuple[Any, ...], ...]

    @property
    def n_groups(self) -> int:
        """Number of groups observed (only combinations that occur, as Fairlearn's ``MetricFrame``)."""
        return len(self.keys)

    @property
    def missing(self) -> int:
        """Rows without a value in at least one group column."""
        return int(np.sum(self.codes < 0))


def _plain(v: Any) -> Any:
    """A group value as a plain Python scalar: integral floats become ints (CSV and parquet give floats
    for integer columns with gaps), numpy scalars become Python ones."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        return int(v)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v


def missing_mask(values: np.ndarray) -> np.ndarray:
    """True where a group value is missing: ``None`` or NaN (object columns), NaN (float columns), or an
    empty string."""
    arr = np.asarray(values)
    if arr.dtype.kind == "f":
        return np.asarray(~np.isfinite(arr))
    if arr.dtype.kind in "iub":
        return np.zeros(len(arr), dtype=bool)
    if arr.dtype.kind in "US":
        return np.asarray(arr == arr.dtype.type(""))
    # object column: a per-element test is unavoidable (mixed Python objects), once per check
    return np.fromiter(
        (v is None or (isinstance(v, float) and not math.isfinite(v)) or (isinstance(v, str) and v == "")
         for v in arr), dtype=bool, count=len(arr))


def _encode_column(values: np.ndarray) -> tuple[np.ndarray, list[Any]]:
    """Codes (-1 for missing) and the sorted distinct values of one column."""
    arr = np.asarray(values)
    miss = missing_mask(arr)
    codes = np.full(len(arr), -1, dtype=np.int64)
    present = arr[~miss]
    if present.dtype.kind == "O":
        plain = np.array([_plain(v) for v in present], dtype=object)
        # sort numbers numerically and strings lexically; mixed columns are sorted by their text
        present = plain.astype(np.float64 if {type(v) for v in plain} <= {int, float, bool} else str)
    uniq, inv = np.unique(present, return_inverse=True)
    codes[~miss] = inv
    return codes, [_plain(u) for u in uniq]


def group_rows(data: Dataset, columns: Sequence[str]) -> Groups:
    """Assign each row of ``data`` to a group: the values of ``columns`` (several give intersections; only
    observed combinations become groups). Rows missing any column get code -1."""
    cols = tuple(columns)
    if not cols:
        raise ValueError("no group column given")
    per = [_encode_column(data.column(c)) for c in cols]
    stacked = np.stack([c for c, _ in per], axis=1)
    ok = np.all(stacked >= 0, axis=1)
    codes = np.full(data.n, -1, dtype=np.int64)
    combos, inv = np.unique(stacked[ok], axis=0, return_inverse=True)  # no row: no combination
    codes[ok] = np.asarray(inv).reshape(-1)
    values = tuple(tuple(per[j][1][int(combo[j])] for j in range(len(cols))) for combo in combos)
    if len(cols) == 1:
        keys = tuple(str(v[0]) for v in values)
    else:
        keys = tuple(", ".join(f"{c}={v}" for c, v in zip(cols, vals)) for vals in values)
    return Groups(columns=cols, codes=codes, keys=keys, values=values)


def group_columns(param: str | list[str] | None, data: Dataset) -> list[str]:
    """The group column(s) a check was given, or every ``data.groups`` column (their intersection)."""
    if param is None:
        cols = list(data.groups)
        if not cols:
            raise ValueError("no group column: set the check's `group` or the spec's data.groups")
        return cols
    return [param] if isinstance(param, str) else list(param)


def feature_index(feature: int | str, data: Dataset) -> int:
    """Index into the flattened per-sample input of a feature given by position or by column name."""
    width = int(np.prod(data.x.shape[1:]))
    if isinstance(feature, bool):
        raise ValueError(f"feature {feature!r}: give an index or a column name")
    if isinstance(feature, int):
        if not -width <= feature < width:
            raise ValueError(f"feature {feature}: the input has {width} features")
        return feature % width
    # the core names the columns of .csv/.parquet data whose feature columns are scalar, in input order
    names = data.feature_names if data.feature_names is not None and len(data.feature_names) == width else None
    if names is not None and feature in names:
        return names.index(feature)
    if names is None and feature in data.columns:
        # no recorded order: find the single input column equal to the named column
        col = np.asarray(data.columns[feature])
        if col.dtype.kind in "iufb" and col.shape == (data.n,):
            flat = np.asarray(data.x).reshape(data.n, -1)
            same = np.flatnonzero(np.all(flat == col.astype(flat.dtype)[:, None], axis=0))
            if len(same) == 1:
                return int(same[0])
    raise ValueError(f"feature {feature!r} is not an input column (known: {', '.join(names or []) or 'none'})")


def class_label(c: Any) -> int | str:
    """A class label as a JSON key-friendly value."""
    c = _plain(c)
    return c if isinstance(c, (int, str)) else str(c)


def find_class(value: Any, classes: Sequence[Any]) -> int:
    """Column index of the class ``value`` (matched as given, then by its text)."""
    for i, c in enumerate(classes):
        if _plain(c) == _plain(value):
            return i
    for i, c in enumerate(classes):
        if str(_plain(c)) == str(_plain(value)):
            return i
    raise ValueError(f"class {value!r} is not one of the model's classes {[class_label(c) for c in classes]}")
