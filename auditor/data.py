"""Data sets: .npz, .npy, .csv and .parquet, limited and stratified, fitted to the model's input."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from auditor.errors import DataError

FORMATS = (".npz", ".npy", ".csv", ".parquet")


@dataclass(frozen=True)
class DataConfig:
    """The ``data:`` (or ``train_data:``) section of a spec."""

    path: Path
    x: str | list[str] | None = None
    y: str | None = None
    groups: list[str] = field(default_factory=list)
    limit: int | None = None
    batch_size: int = 256
    columns: list[str] = field(default_factory=list)
    role: str = "data"


@dataclass
class Dataset:
    """Inputs, labels, group columns and any other named columns of an audit's data.

    ``x`` is batch-first (a memory map for an unlimited ``.npy``); ``y`` may be ``None``; ``groups`` maps a
    group column to its values (strings or integers; missing values are ``None`` and counted in
    ``missing``); ``columns`` holds further columns a check may ask for by name.
    """

    x: np.ndarray
    y: np.ndarray | None
    groups: dict[str, np.ndarray]
    columns: dict[str, np.ndarray]
    source: str
    batch_size: int = 256
    notes: list[str] = field(default_factory=list)
    missing: dict[str, int] = field(default_factory=dict)
    total_rows: int = 0
    indices: np.ndarray | None = None
    #: For tabular data (.csv/.parquet): the column behind each feature of ``x``, in order.
    feature_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.x)

    @property
    def n(self) -> int:
        """Number of samples."""
        return len(self.x)

    def batches(self, batch_size: int | None = None) -> Iterator[tuple[slice, np.ndarray]]:
        """``(slice, x[slice])`` in batches, for checks that stream."""
        bs = batch_size or self.batch_size
        for start in range(0, self.n, bs):
            sl = slice(start, min(start + bs, self.n))
            yield sl, np.asarray(self.x[sl])

    def column(self, name: str) -> np.ndarray:
        """A named column (label, group or other); ``DataError`` naming the available ones if absent."""
        if name in self.columns:
            return self.columns[name]
        if name in self.groups:
            return self.groups[name]
        raise DataError(f"{self.source}: no column '{name}' (available: {', '.join(sorted(self.columns)) or 'none'})")

    def subset(self, idx: np.ndarray, note: str | None = None) -> Dataset:
        """A new data set of the rows ``idx`` (in the given order)."""
        idx = np.asarray(idx)
        return Dataset(
            x=np.asarray(self.x[idx]),
            y=None if self.y is None else self.y[idx],
            groups={k: v[idx] for k, v in self.groups.items()},
            columns={k: v[idx] for k, v in self.columns.items()},
            source=self.source,
            batch_size=self.batch_size,
            notes=self.notes + ([note] if note else []),
            missing=dict(self.missing),
            total_rows=self.total_rows,
            indices=idx if self.indices is None else self.indices[idx],
            feature_names=self.feature_names,
        )

    def sample(self, limit: int, rng: np.random.Generator, *, stratify: bool = True) -> Dataset:
        """At most ``limit`` rows, stratified by label when labels exist (proportional allocation)."""
        if limit >= self.n:
            return self
        idx = sample_indices(self.n, limit, rng, self.y if stratify else None)
        how = "stratified by label" if stratify and self.y is not None else "uniform"
        return self.subset(idx, f"sampled {limit} of {self.n} rows ({how})")

    def fitted_to(self, shape: tuple[int | str | None, ...] | None, input_name: str, model_path: str) -> Dataset:
        """This data shaped for another model's input (e.g. a reference model in the other image layout): the
        same object when it already fits, else a fitted copy (see :func:`fit_to_model`)."""
        import copy

        clone = copy.copy(self)
        clone.notes = list(self.notes)
        fitted = fit_to_model(clone, shape, input_name, model_path)
        return self if fitted.x is self.x else fitted

    def info(self) -> dict[str, Any]:
        """What the report says about the data."""
        return {
            "path": self.source,
            "rows": self.n,
            "total_rows": self.total_rows,
            "x_shape": list(self.x.shape),
            "x_dtype": str(self.x.dtype),
            "labels": self.y is not None,
            "groups": sorted(self.groups),
            "missing_group_values": dict(self.missing),
            "notes": list(self.notes),
        }


def sample_indices(n: int, k: int, rng: np.random.Generator, y: np.ndarray | None = None) -> np.ndarray:
    """``k`` of ``n`` row indices, sorted; proportional to each label's share when ``y`` is given."""
    if k >= n:
        return np.arange(n)
    if y is None:
        return np.sort(rng.choice(n, size=k, replace=False))
    keys = np.asarray(y).astype(str) if np.asarray(y).dtype.kind in "OUS" else np.asarray(y)
    classes, inv = np.unique(keys, return_inverse=True)
    counts = np.bincount(inv, minlength=len(classes))
    alloc = np.floor(counts * k / n).astype(int)
    # hand the remaining rows to the classes with the largest fractional share (largest remainder method)
    rem = k - alloc.sum()
    frac = counts * k / n - alloc
    for c in np.argsort(-frac, kind="stable")[:rem]:
        alloc[c] += 1
    order = rng.permutation(n)
    inv_perm = inv[order]
    # rank of each permuted row within its class; keep the first alloc[c] of each class
    rank = np.empty(n, dtype=np.int64)
    sort_idx = np.argsort(inv_perm, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank[sort_idx] = np.arange(n) - np.repeat(starts, counts)
    chosen = order[rank < alloc[inv_perm]]
    return np.sort(chosen)


# ------------------------------------------------------------------------------------------------ loading


def load_dataset(cfg: DataConfig, rng: np.random.Generator | None = None) -> Dataset:
    """Load ``cfg.path``; errors name the file and the spec key."""
    path = Path(cfg.path)
    role = cfg.role
    if not path.exists():
        raise DataError(f"{role}.path: data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"{role}.path: {path}: unsupported format '{suffix}' (use {', '.join(FORMATS)})")
    try:
        if suffix == ".npz":
            table = _load_npz(path)
        elif suffix == ".npy":
            table = _load_npy(path, cfg)
        elif suffix == ".csv":
            table = _load_csv(path)
        else:
            table = _load_parquet(path)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{role}.path: cannot read {path}: {type(exc).__name__}: {exc}") from None
    ds = _assemble(table, cfg, path, tabular=suffix in (".csv", ".parquet"))
    if cfg.limit is not None and cfg.limit < ds.n:
        ds = ds.sample(cfg.limit, rng or np.random.default_rng(0))
    return ds


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _load_npy(path: Path, cfg: DataConfig) -> dict[str, np.ndarray]:
    table = {"x": np.load(path, mmap_mode="r", allow_pickle=False)}
    if cfg.y is not None:
        ypath = Path(cfg.y)
        if not ypath.is_absolute():
            ypath = path.parent / ypath
        if not ypath.exists():
            raise DataError(f"{cfg.role}.y: labels file not found: {ypath} (for .npy data, y names a .npy file)")
        table["y"] = np.load(ypath, allow_pickle=False)
    return table


def _to_column(values: Sequence[str]) -> np.ndarray:
    """Strings from a CSV column -> float array if every non-empty cell is numeric, else object array
    with ``None`` for empty cells."""
    arr = np.asarray(values, dtype=object)
    empty = np.array([v.strip() == "" for v in values], dtype=bool) if len(values) else np.zeros(0, bool)
    try:
        num = np.where(empty, "nan", arr).astype(np.float64)
        if np.all(empty | (np.mod(np.nan_to_num(num), 1) == 0)) and not empty.any():
            return num.astype(np.int64)
        return num
    except ValueError:
        out = arr.copy()
        out[empty] = None
        return out


def _load_csv(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"data.path: {path} is empty") from None
        rows = [r for r in reader if r]
    bad = [i + 2 for i, r in enumerate(rows) if len(r) != len(header)]
    if bad:
        raise DataError(f"data.path: {path}: line {bad[0]} has a different number of fields than the header")
    cols = list(zip(*rows)) if rows else [() for _ in header]
    return {name.strip(): _to_column(list(c)) for name, c in zip(header, cols)}


def _load_parquet(path: Path) -> dict[str, np.ndarray]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"data.path: {path}: reading .parquet needs pyarrow (pip install 'onnx-auditor[parquet]')"
        ) from None
    table = pq.read_table(path)
    out: dict[str, np.ndarray] = {}
    for name in table.column_names:
        col = table.column(name)
        arr = col.to_numpy(zero_copy_only=False)
        if arr.dtype.kind == "O" and col.null_count == 0:
            try:
                arr = np.stack(arr)  # list-typed columns (e.g. a flattened image per row)
            except Exception:
                pass
        out[name] = arr
    return out


def _assemble(table: dict[str, np.ndarray], cfg: DataConfig, path: Path, tabular: bool) -> Dataset:
    role = cfg.role
    keys = list(table)
    notes: list[str] = []

    def need(key: str, what: str) -> np.ndarray:
        if key not in table:
            raise DataError(f"{role}.{what}: '{key}' not in {path} (has: {', '.join(keys)})")
        return table[key]

    y_key = cfg.y if cfg.y is not None and path.suffix.lower() != ".npy" else None
    if cfg.y is None and "y" in table and not tabular:
        y_key = "y"
        notes.append("labels taken from key 'y'")
    y = need(y_key, "y") if y_key else table.get("y") if path.suffix.lower() == ".npy" else None
    group_keys = list(cfg.groups)
    groups = {g: need(g, f"groups[{i}]") for i, g in enumerate(group_keys)}
    extra_cols = {c: need(c, "columns") for c in cfg.columns}

    if tabular:
        if cfg.x is None:
            skip = {y_key, *group_keys, *cfg.columns}
            x_cols = [k for k in keys if k not in skip]
        else:
            x_cols = [cfg.x] if isinstance(cfg.x, str) else list(cfg.x)
        parts = []
        for c in x_cols:
            col = need(c, "x")
            if col.dtype.kind not in "iufb":
                raise DataError(f"{role}.x: column '{c}' of {path} is not numeric")
            parts.append(np.asarray(col, dtype=np.float32).reshape(len(col), -1))
        if not parts:
            raise DataError(f"{role}.x: no feature columns left in {path}")
        x = np.concatenate(parts, axis=1)
        notes.append(f"features: {', '.join(x_cols)}")
        feature_names = x_cols if all(p.shape[1] == 1 for p in parts) else None
        columns = {k: v for k, v in table.items()}
    else:
        x_key = cfg.x if isinstance(cfg.x, str) else "x"
        if isinstance(cfg.x, list):
            raise DataError(f"{role}.x: a list of columns needs a .csv or .parquet file")
        x = need(x_key, "x")
        columns = {k: v for k, v in table.items() if k != x_key}
        feature_names = None

    n = len(x)
    for name, arr in [("y", y), *[(f"groups.{g}", v) for g, v in groups.items()]]:
        if arr is not None and len(arr) != n:
            raise DataError(f"{role}.{name}: {len(arr)} rows but x has {n} in {path}")
    if y is not None and y.dtype.kind == "f" and np.isnan(y).any():
        raise DataError(f"{role}.y: {int(np.isnan(y).sum())} labels are missing (NaN) in {path}")
    missing: dict[str, int] = {}
    for g, v in list(groups.items()):
        if v.dtype.kind == "f":
            bad = ~np.isfinite(v)
            if bad.any():  # NaN marks a missing group value; keep the others as they are
                obj = v.astype(object)
                obj[bad] = None
                groups[g] = obj
            missing[g] = int(bad.sum())
        elif v.dtype.kind == "O":
            missing[g] = int(sum(1 for e in v if e is None))
        else:
            missing[g] = 0
    return Dataset(x=x, y=y, groups=groups, columns={**columns, **extra_cols}, source=str(path),
                   batch_size=cfg.batch_size, notes=notes, missing=missing, total_rows=n,
                   feature_names=feature_names)


def fit_to_model(ds: Dataset, shape: tuple[int | str | None, ...] | None, input_name: str,
                 model_path: str) -> Dataset:
    """Check that the data's per-sample shape fits the model input; fix only unambiguous cases (an NHWC/NCHW
    transpose, or a missing singleton channel), saying so in the data notes; otherwise a one-line error."""
    if shape is None or len(shape) == 0:
        return ds
    want = shape[1:]
    have = ds.x.shape[1:]

    def fits(h: tuple[int, ...]) -> bool:
        return len(h) == len(want) and all(not isinstance(w, int) or w == d for w, d in zip(want, h))

    desc = "[" + ", ".join("N" if i == 0 else ("?" if not isinstance(d, int) else str(d))
                           for i, d in enumerate(shape)) + "]"
    if fits(have):
        return ds
    if len(have) == 3 and len(want) == 3:
        if fits((have[2], have[0], have[1])):
            ds.x = np.ascontiguousarray(np.transpose(ds.x, (0, 3, 1, 2)))
            ds.notes.append("data transposed NHWC -> NCHW to fit the model")
            return ds
        if fits((have[1], have[2], have[0])):
            ds.x = np.ascontiguousarray(np.transpose(ds.x, (0, 2, 3, 1)))
            ds.notes.append("data transposed NCHW -> NHWC to fit the model")
            return ds
    # A missing or extra singleton dimension (e.g. (N, 28, 28) data for a (N, 1, 28, 28) input) is unambiguous.
    if all(isinstance(d, int) for d in want):
        if [d for d in have if d != 1] == [d for d in want if d != 1]:
            new = tuple(int(d) for d in want)  # type: ignore[arg-type]
            ds.x = np.asarray(ds.x).reshape((len(ds.x), *new))
            ds.notes.append(f"data reshaped from {list(have)} to {list(new)} per sample (singleton dims)")
            return ds
    raise DataError(
        f"{ds.source}: x has per-sample shape {list(have)} but model input '{input_name}' of {model_path} "
        f"expects {desc}"
    )

