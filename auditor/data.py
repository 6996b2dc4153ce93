"""Data sets: .npz, .npy, .csv and .parquet, image folders and manifests (and any source a plugin registers),
limited and stratified, fitted to the model's input.

``Dataset.x`` is batch-first: an ``np.ndarray`` for data that fits in memory, else a lazy
:class:`~auditor.datasets.sources.ArraySource` (an ``.npy`` read by row ranges, parquet row groups, decoded image
files) that checks slice, index or stream with :meth:`Dataset.batches`; nothing here reads it whole.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from auditor.datasets.sources import ArraySource, NpyFile, ParquetRows, column_values, iter_batches, mapped, take_rows
from auditor.errors import DataError, short

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
    #: Manifest column holding image paths (``data.path`` is then a .csv/.parquet manifest of images).
    images: str | None = None
    #: Class names in the model's output order (image folder names or string labels map to their index).
    classes: list[str] | None = None
    #: ``data.preprocess`` as written (a preset and/or explicit steps); resolved against the model input.
    preprocess: dict[str, Any] | None = None
    #: A data source by name (built-in ``images`` or one a plugin registers); default: detected from the path.
    format: str | None = None
    #: Settings for a plugin's data source.
    options: dict[str, Any] = field(default_factory=dict)
    #: Image decoding threads (default: the number of cores, at most 8).
    workers: int | None = None


@dataclass
class Dataset:
    """Inputs, labels, group columns and any other named columns of an audit's data.

    ``x`` is batch-first (a memory map for an unlimited ``.npy``); ``y`` may be ``None``; ``groups`` maps a
    group column to its values (strings or integers; missing values are ``None`` and counted in
    ``missing``); ``columns`` holds further columns a check may ask for by name.
    """

    x: np.ndarray | ArraySource
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
    #: What the source adds to the report's data section (image folders: files, classes, ``skipped_files``,
    #: the preprocessing applied).
    details: dict[str, Any] = field(default_factory=dict)
    #: How model inputs map to un-normalised pixels in [0, 1] (declared image preprocessing), else ``None``.
    pixels: Any = None
    #: Reads a column that is not held in memory (a parquet feature column), by name; ``None`` if absent.
    column_reader: Any = None
    #: The model's other per-sample inputs (model input name -> batch-first array, one row per row of ``x``),
    #: e.g. an ``attention_mask`` beside ``input_ids`` or a recurrent state; ``x`` is the primary input.
    inputs: dict[str, np.ndarray] = field(default_factory=dict)

    def companions(self, rows: np.ndarray | slice | None = None, *, repeat: int = 1) -> dict[str, np.ndarray]:
        """The other model inputs for the rows ``rows`` of this data set (all rows for ``None``), to pass as
        ``ModelHandle.run(x, inputs=...)`` beside inputs derived from ``x[rows]``; ``repeat`` tiles them for a
        batch that stacks ``repeat`` perturbed copies of those rows one block after another."""
        out = {}
        for k, v in self.inputs.items():
            a = np.asarray(v if rows is None else v[rows])
            out[k] = np.concatenate([a] * repeat) if repeat > 1 else a
        return out

    def __len__(self) -> int:
        return len(self.x)

    @property
    def n(self) -> int:
        """Number of samples."""
        return len(self.x)

    def batches(self, batch_size: int | None = None) -> Iterator[tuple[slice, np.ndarray]]:
        """``(slice, x[slice])`` in batches, for checks that stream."""
        yield from iter_batches(self.x, batch_size or self.batch_size)

    def column(self, name: str) -> np.ndarray:
        """A named column (label, group or other); ``DataError`` naming the available ones if absent."""
        if name in self.columns:
            return self.columns[name]
        if name in self.groups:
            return self.groups[name]
        if self.column_reader is not None:
            col = self.column_reader(name)
            if col is not None:
                return np.asarray(col)
        raise DataError(f"{self.source}: no column '{name}' (available: {', '.join(sorted(self.columns)) or 'none'})")

    def subset(self, idx: np.ndarray, note: str | None = None) -> Dataset:
        """A new data set of the rows ``idx`` (in the given order); a large subset of a lazy source stays lazy."""
        idx = np.asarray(idx)
        return Dataset(
            x=take_rows(self.x, idx),
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
            details=dict(self.details),
            pixels=self.pixels,
            column_reader=self.column_reader,
            inputs={k: np.asarray(v[idx]) for k, v in self.inputs.items()},
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
            "inputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in self.inputs.items()},
            "labels": self.y is not None,
            "groups": sorted(self.groups),
            "missing_group_values": dict(self.missing),
            "notes": list(self.notes),
            **self.details,
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


def load_dataset(cfg: DataConfig, rng: np.random.Generator | None = None, *, request: Any = None,
                 sources: dict[str, type[Any]] | None = None, inputs: dict[str, str | list[str]] | None = None,
                 primary: str | None = None) -> Dataset:
    """Load ``cfg.path``; errors name the file and the spec key.

    ``request`` (a :class:`~auditor.datasets.registry.LoadRequest`) tells image sources the model input;
    ``sources`` are the data sources plugins registered (``auditor_register_datasets``). ``inputs`` maps the
    model's other per-sample inputs to their data keys (npz keys, or csv/parquet columns: one or a list); each
    becomes ``Dataset.inputs[name]``. ``primary`` (the primary input's name) is the default ``x`` key when the
    file has no ``x``."""
    from auditor.datasets.registry import BUILTIN_SOURCES, LoadRequest

    path = Path(cfg.path)
    role = cfg.role
    rng = rng or np.random.default_rng(0)
    if request is None:
        request = LoadRequest(rng=rng)
    plugin_sources = dict(sources or {})
    every = {**plugin_sources, **BUILTIN_SOURCES}
    chosen: Any = None
    if cfg.format is not None:
        if cfg.format not in every:
            raise DataError(f"{role}.format: no data source '{cfg.format}' (installed: {', '.join(sorted(every))})")
        chosen = every[cfg.format]()
    elif path.exists():
        # plugins first, so that a plugin can read folders the image source would otherwise claim
        for cls in [*plugin_sources.values(), *BUILTIN_SOURCES.values()]:
            src = cls()
            if src.claims(cfg):
                chosen = src
                break
    if chosen is not None:
        if not path.exists() and chosen.name == "images":
            raise DataError(f"{role}.path: data folder or manifest not found: {path}")
        ds: Dataset = chosen.load(cfg, request)
        if cfg.limit is not None and cfg.limit < ds.n:
            ds = ds.sample(cfg.limit, rng)
        return ds
    if not path.exists():
        raise DataError(f"{role}.path: data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"{role}.path: {path}: unsupported format '{suffix}' (use {', '.join(FORMATS)})")
    lazy_x: ParquetRows | None = None
    try:
        if suffix == ".npz":
            table = _load_npz(path)
        elif suffix == ".npy":
            table = _load_npy(path, cfg)
        elif suffix == ".csv":
            table = _load_csv(path)
        else:
            table, lazy_x = _load_parquet(path, cfg, inputs or {})
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{role}.path: cannot read {path}: {type(exc).__name__}: {exc}") from None
    ds = _assemble(table, cfg, path, tabular=suffix in (".csv", ".parquet"), lazy_x=lazy_x, inputs=inputs or {},
                   primary=primary)
    if cfg.preprocess is not None:
        from auditor.datasets.loader import preprocess_arrays

        ds = preprocess_arrays(ds, cfg, request)
    if lazy_x is not None:
        ds.column_reader = _parquet_column(path)
        ds.notes.append(f"features read lazily, one row group at a time ({lazy_x._file.metadata.num_row_groups} "
                        f"row groups)")
    if cfg.limit is not None and cfg.limit < ds.n:
        ds = ds.sample(cfg.limit, rng)
    return ds


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _load_npy(path: Path, cfg: DataConfig) -> dict[str, Any]:
    table: dict[str, Any] = {"x": NpyFile(path)}
    if cfg.y is not None:
        ypath = Path(cfg.y)
        if not ypath.is_absolute():
            ypath = path.parent / ypath
        if not ypath.exists():
            raise DataError(f"{cfg.role}.y: labels file not found: {ypath} (for .npy data, y names a .npy file)")
        try:
            table["y"] = np.load(ypath, allow_pickle=False)
        except Exception as exc:  # name the labels file, not the data file, when it is the unreadable one
            raise DataError(f"{cfg.role}.y: cannot read the labels file {ypath}: {type(exc).__name__}: "
                            f"{short(str(exc), 200)}") from None
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
    if not rows:
        raise DataError(f"data.path: {path} has a header and no rows")
    bad = [i + 2 for i, r in enumerate(rows) if len(r) != len(header)]
    if bad:
        raise DataError(f"data.path: {path}: line {bad[0]} has a different number of fields than the header")
    cols = list(zip(*rows)) if rows else [() for _ in header]
    return {name.strip(): _to_column(list(c)) for name, c in zip(header, cols)}


#: A parquet file whose feature columns take more than this in memory is read lazily, one row group at a time.
LAZY_PARQUET_BYTES = 64 << 20


def _load_parquet(path: Path, cfg: DataConfig, inputs: dict[str, str | list[str]] | None = None
                  ) -> tuple[dict[str, Any], ParquetRows | None]:
    """The columns held in memory (labels, groups, further columns, the model's other inputs), and (for a large
    file) the feature columns as a lazy row-group source."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"data.path: {path}: reading .parquet needs pyarrow (pip install 'onnx-auditor[parquet]')"
        ) from None
    pf = pq.ParquetFile(path)
    schema = pf.schema_arrow
    names = list(schema.names)
    keep = {k for k in [cfg.y, *cfg.groups, *cfg.columns, *_input_columns(inputs or {})] if k is not None}
    x_cols = ([cfg.x] if isinstance(cfg.x, str) else list(cfg.x)) if cfg.x is not None else \
        [k for k in names if k not in keep]

    def numeric(t: Any) -> bool:
        if pa.types.is_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_large_list(t):
            t = t.value_type
        return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t))

    rows = pf.metadata.num_rows
    lazy_ok = (all(c in names and numeric(schema.field(c).type) for c in x_cols) and x_cols
               and rows * len(x_cols) * 4 > LAZY_PARQUET_BYTES and pf.metadata.num_row_groups > 0)
    if not lazy_ok:
        whole = pq.read_table(path)
        return {name: column_values(whole.column(name)) for name in whole.column_names}, None
    first = pf.read_row_group(0, columns=x_cols)
    widths = [int(np.asarray(column_values(first.column(c))[:1]).reshape(1, -1).shape[1]) for c in x_cols]
    others = [k for k in names if k in keep]
    table = pq.read_table(path, columns=others) if others else None
    in_memory = {k: column_values(table.column(k)) for k in others} if table is not None else {}
    return in_memory, ParquetRows(path, x_cols, widths)


def _parquet_column(path: Path) -> Any:
    """A reader of one more column of a parquet file, on demand (``None`` if it has no such column)."""

    def read(name: str) -> np.ndarray | None:
        import pyarrow.parquet as pq

        if name not in pq.ParquetFile(path).schema_arrow.names:
            return None
        return column_values(pq.read_table(path, columns=[name]).column(name))

    return read


def _input_columns(inputs: dict[str, str | list[str]]) -> set[str]:
    """The data keys behind the model's other per-sample inputs."""
    return {k for v in inputs.values() for k in ([v] if isinstance(v, str) else v)}


def _assemble(table: dict[str, Any], cfg: DataConfig, path: Path, tabular: bool,
              lazy_x: ParquetRows | None = None, inputs: dict[str, str | list[str]] | None = None,
              primary: str | None = None) -> Dataset:
    role = cfg.role
    inputs = inputs or {}
    keys = list(table)
    notes: list[str] = []

    def need(key: str, what: str) -> Any:
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

    def model_input(name: str, key: str | list[str]) -> np.ndarray:
        """The data of one of the model's other inputs (a key, or a group of csv/parquet columns)."""
        keys_ = [key] if isinstance(key, str) else list(key)
        absent = [k for k in keys_ if k not in table]
        if absent:
            raise DataError(
                f"{role}.path: model input '{name}' takes per-sample data, but {path} has no "
                f"{'column' if tabular else 'key'} '{absent[0]}' (has: {', '.join(keys)}); map it with "
                f"model.inputs: {{{name}: KEY}}, or give a constant with model.feeds"
            )
        if len(keys_) == 1 and not tabular:
            return np.asarray(table[keys_[0]])
        cols = [np.asarray(table[k]) for k in keys_]
        return np.stack(cols, axis=1) if all(c.ndim == 1 for c in cols) else np.concatenate(
            [c.reshape(len(c), -1) for c in cols], axis=1)

    extra_inputs = {name: model_input(name, key) for name, key in inputs.items()}

    x: np.ndarray | ArraySource
    if lazy_x is not None:
        x_cols = lazy_x.columns
        x = lazy_x
        notes.append(f"features: {', '.join(x_cols)}")
        feature_names = x_cols if all(w == 1 for w in lazy_x.widths) else None
        columns = dict(table)
    elif tabular:
        if cfg.x is None:
            skip = {y_key, *group_keys, *cfg.columns, *_input_columns(inputs)}
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
        if cfg.x is None and "x" not in table and primary is not None and primary in table:
            x_key = primary
            notes.append(f"x taken from key '{primary}' (the model input's name)")
        if isinstance(cfg.x, list):
            raise DataError(f"{role}.x: a list of columns needs a .csv or .parquet file")
        x = need(x_key, "x")
        columns = {k: v for k, v in table.items() if k != x_key}
        feature_names = None

    for name, arr in [("x", x), ("y", y), *[(f"groups.{g}", v) for g, v in groups.items()]]:
        if arr is not None and len(getattr(arr, "shape", ())) == 0:
            raise DataError(f"{role}.{name}: {path} holds a single value (a 0-d array), not one row per sample")
    n = len(x)
    if n == 0:
        raise DataError(f"{role}.path: {path} has no rows")
    for name, arr in [("y", y), *[(f"groups.{g}", v) for g, v in groups.items()],
                      *[(f"inputs.{k}", v) for k, v in extra_inputs.items()]]:
        if arr is not None and len(arr) != n:
            raise DataError(f"{role}.{name}: {len(arr)} rows but x has {n} in {path}")
    if y is not None:
        check_labels_present(np.asarray(y), f"{role}.y", str(path))
        y = _label_vector(y, cfg, path, notes)
    groups, missing = normalise_groups(groups)
    return Dataset(x=x, y=y, groups=groups, columns={**columns, **extra_cols}, source=str(path),
                   batch_size=cfg.batch_size, notes=notes, missing=missing, total_rows=n,
                   feature_names=feature_names, inputs=extra_inputs)


def _label_vector(y: np.ndarray, cfg: DataConfig, path: Path, notes: list[str]) -> np.ndarray:
    """Labels as one value per row: one-hot or probability rows -> their argmax, ``(N, 1)`` -> ``(N,)``, string
    labels -> indices into ``data.classes`` when it is given (else left as strings, matched to the model's own
    class labels)."""
    role = cfg.role
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    elif y.ndim == 2 and y.dtype.kind in "iufb":
        yf = y.astype(np.float64)
        finite = np.isfinite(yf).all(axis=1)
        if not finite.all():
            raise DataError(f"{role}.y: {int((~finite).sum())} label rows of {path} have missing (NaN) values")
        ok = (yf >= 0).all() and np.allclose(yf.sum(axis=1), 1.0, atol=1e-3)
        if not ok:
            raise DataError(f"{role}.y: labels of {path} have shape {list(y.shape)}, but their rows are neither "
                            f"one-hot nor probabilities (non-negative, summing to 1)")
        one_hot = bool(np.isin(yf, (0.0, 1.0)).all())
        notes.append(f"labels given as {'one-hot' if one_hot else 'probability'} rows of {y.shape[1]} classes: "
                     f"read as class indices (argmax{'' if one_hot else ', ties to the first'})")
        y = np.argmax(yf, axis=1)
    elif y.ndim != 1:
        raise DataError(f"{role}.y: labels of {path} have shape {list(y.shape)}; give one label per row "
                        f"(or one-hot rows)")
    if cfg.classes is not None and y.dtype.kind in "OUS":
        names = [str(c) for c in cfg.classes]
        index = {c: i for i, c in enumerate(names)}
        keys = np.array([None if v is None else str(v) for v in y], dtype=object)
        unknown = sorted({str(k) for k in keys if k is not None and k not in index})
        if unknown:
            raise DataError(f"{role}.y: label(s) {', '.join(repr(u) for u in unknown[:5])} of {path} are not in "
                            f"data.classes ({', '.join(names[:10])})")
        missing = np.array([k is None for k in keys])
        if missing.any():
            raise DataError(f"{role}.y: {int(missing.sum())} labels are missing in {path}")
        y = np.array([index[k] for k in keys], dtype=np.int64)
        notes.append(f"string labels mapped to class indices by data.classes ({len(names)} classes)")
    return y


def check_labels_present(y: np.ndarray, where: str, source: str) -> None:
    """Every label is there: NaN (numbers) and empty cells / ``None`` (text) are refused the same way in
    every format, naming the first missing row."""
    if y.dtype.kind == "f":
        missing = np.isnan(y) if y.ndim == 1 else np.isnan(y).any(axis=tuple(range(1, y.ndim)))
    elif y.dtype.kind == "O":
        missing = np.fromiter((v is None or (isinstance(v, float) and v != v) for v in y.reshape(len(y), -1)[:, 0]),
                              bool, count=len(y))
    else:
        return
    if missing.any():
        first = int(np.flatnonzero(missing)[0])
        raise DataError(f"{where}: {int(missing.sum())} labels are missing (NaN or empty) in {source}, "
                        f"the first in row {first}")


def check_class_labels(y: np.ndarray, where: str = "data.y") -> None:
    """Labels read as class indices must be whole numbers: 3.5 is an error, never truncated to 3."""
    if y.dtype.kind != "f" or y.ndim != 1:
        return
    finite = np.isfinite(y)
    frac = finite & (np.mod(np.where(finite, y, 0.0), 1) != 0)
    if frac.any():
        i = int(np.flatnonzero(frac)[0])
        raise DataError(f"{where}: labels must be whole class numbers for a classifier, but row {i} is "
                        f"{float(y[i]):g} ({int(frac.sum())} such labels); for a regression model set "
                        "model.task: regression")


def normalise_groups(groups: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Group columns with missing values as ``None`` (NaN in numeric columns), and the count per column."""
    groups = dict(groups)
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
    return groups, missing


def _relayout(pixels: Any, layout: str) -> Any:
    """The pixel map of data transposed to ``layout`` (its per-channel constants move with the channel axis)."""
    import dataclasses

    return None if pixels is None else dataclasses.replace(pixels, layout=layout)


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
            ds.x = mapped(ds.x, lambda b: np.ascontiguousarray(np.transpose(b, (0, 3, 1, 2))),
                          (have[2], have[0], have[1]), ds.x.dtype, "NHWC -> NCHW")
            ds.pixels = _relayout(ds.pixels, "NCHW")
            ds.notes.append("data transposed NHWC -> NCHW to fit the model")
            return ds
        if fits((have[1], have[2], have[0])):
            ds.x = mapped(ds.x, lambda b: np.ascontiguousarray(np.transpose(b, (0, 2, 3, 1))),
                          (have[1], have[2], have[0]), ds.x.dtype, "NCHW -> NHWC")
            ds.pixels = _relayout(ds.pixels, "NHWC")
            ds.notes.append("data transposed NCHW -> NHWC to fit the model")
            return ds
    # A missing or extra singleton dimension (e.g. (N, 28, 28) data for a (N, 1, 28, 28) input) is unambiguous.
    if all(isinstance(d, int) for d in want):
        if [d for d in have if d != 1] == [d for d in want if d != 1]:
            new = tuple(int(d) for d in want)  # type: ignore[arg-type]
            ds.x = mapped(ds.x, lambda b: b.reshape((len(b), *new)), new, ds.x.dtype, "reshape")
            ds.notes.append(f"data reshaped from {list(have)} to {list(new)} per sample (singleton dims)")
            return ds
    raise DataError(
        f"{ds.source}: x has per-sample shape {list(have)} but model input '{input_name}' of {model_path} "
        f"expects {desc}"
    )

