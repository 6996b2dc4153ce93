"""Lazy, batch-first array sources: what ``Dataset.x`` holds when the data does not live in memory.

An :class:`ArraySource` has a ``shape`` and a ``dtype``, a length, and ``source[a:b]`` / ``source[idx]``
(``idx`` an integer index array) that read just those rows into a fresh ``np.ndarray``. ``np.asarray(source)``
reads everything (for checks that work on a small sample), :meth:`LazySource.batches` streams it, and
:meth:`LazySource.take` is a lazy row subset (``limit`` samples file lists before a single image is decoded).

Sources here: :class:`NpyFile` (an ``.npy`` read with ``pread``, so reading a 2 GB file batch by batch keeps
only one batch resident, unlike a memory map whose pages all stay in the process's resident set),
:class:`ParquetRows` (feature columns of a parquet file, one row group at a time), :class:`Mapped` (a per-batch
function of another source: a layout transpose, a reshape, the numeric steps of ``data.preprocess``) and
:class:`Rows` (a row subset). Image folders are in :mod:`auditor.datasets.images`.
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

#: A subset at most this large is read into memory at once (a sample of a few thousand rows); larger ones stay
#: lazy so that a check streaming them keeps its memory bounded.
MATERIALISE_BYTES = 64 << 20


@runtime_checkable
class ArraySource(Protocol):
    """What checks may rely on for ``Dataset.x``: numpy's read-only batch-first surface."""

    @property
    def shape(self) -> tuple[int, ...]:
        """``(rows, *per-sample shape)``."""
        ...

    @property
    def dtype(self) -> np.dtype[Any]:
        """Element type of the arrays it returns."""
        ...

    def __len__(self) -> int: ...

    def __getitem__(self, idx: Any) -> np.ndarray: ...


#: What ``Dataset.x`` may be: an in-memory array or a lazy source.
XArray = np.ndarray | ArraySource


class LazySource(ABC):
    """Base of the lazy sources: subclasses implement :meth:`_read` (a contiguous row range) and may override
    :meth:`_gather` (sorted row indices)."""

    def __init__(self, shape: Sequence[int], dtype: np.dtype[Any] | type) -> None:
        self._shape = tuple(int(d) for d in shape)
        self._dtype = np.dtype(dtype)

    # ------------------------------------------------------------------ numpy-like surface
    @property
    def shape(self) -> tuple[int, ...]:
        """``(rows, *per-sample shape)``."""
        return self._shape

    @property
    def dtype(self) -> np.dtype[Any]:
        """Element type."""
        return self._dtype

    @property
    def ndim(self) -> int:
        """Number of dimensions, the batch axis included."""
        return len(self._shape)

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(np.prod(self._shape))

    @property
    def nbytes(self) -> int:
        """Bytes the whole array would take in memory."""
        return self.size * self._dtype.itemsize

    def __len__(self) -> int:
        return self._shape[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self._shape}, dtype={self._dtype})"

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = self[0:len(self)]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, idx: Any) -> np.ndarray:
        n = len(self)
        if isinstance(idx, tuple):  # x[a:b, ...]: rows first, then numpy does the rest
            return self[idx[0]][(slice(None), *idx[1:])]
        if isinstance(idx, slice):
            start, stop, step = idx.indices(n)
            if step != 1:
                return self._gather(np.arange(start, stop, step))
            return self._read(start, max(start, stop))
        if isinstance(idx, (int, np.integer)):
            i = int(idx) + (n if int(idx) < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"row {int(idx)} out of range for {n} rows")
            row: np.ndarray = self._read(i, i + 1)[0]
            return row
        arr = np.asarray(idx)
        if arr.dtype == bool:
            arr = np.flatnonzero(arr)
        arr = arr.astype(np.int64, copy=False).reshape(-1)
        arr = np.where(arr < 0, arr + n, arr)
        if arr.size and (arr.min() < 0 or arr.max() >= n):
            raise IndexError(f"row index out of range for {n} rows")
        if arr.size > 1 and np.any(arr[1:] < arr[:-1]):  # unsorted: read in order, then put back
            order = np.argsort(arr, kind="stable")
            out = self._gather(arr[order])
            res = np.empty_like(out)
            res[order] = out
            return res
        return self._gather(arr)

    # ------------------------------------------------------------------ streaming and subsets
    def batches(self, batch_size: int) -> Iterator[tuple[slice, np.ndarray]]:
        """``(slice, rows)`` in order, ``batch_size`` rows at a time."""
        n = len(self)
        for start in range(0, n, batch_size):
            sl = slice(start, min(start + batch_size, n))
            yield sl, self[sl]

    def take(self, idx: np.ndarray) -> LazySource:
        """A lazy subset of rows ``idx`` (nothing is read now)."""
        return Rows(self, np.asarray(idx, dtype=np.int64))

    # ------------------------------------------------------------------ what subclasses implement
    @abstractmethod
    def _read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (``0 <= start <= stop <= len``) as a new array."""

    def _gather(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (sorted, in range): contiguous runs read with :meth:`_read`."""
        out = np.empty((len(idx), *self._shape[1:]), dtype=self._dtype)
        if not len(idx):
            return out
        breaks = np.flatnonzero(np.diff(idx) != 1) + 1
        starts = np.concatenate([[0], breaks])
        ends = np.concatenate([breaks, [len(idx)]])
        for s, e in zip(starts, ends):
            out[s:e] = self._read(int(idx[s]), int(idx[e - 1]) + 1)
        return out


def iter_batches(x: np.ndarray | ArraySource, batch_size: int) -> Iterator[tuple[slice, np.ndarray]]:
    """``(slice, rows as ndarray)`` of any batch-first array or source."""
    n = len(x)
    for start in range(0, n, batch_size):
        sl = slice(start, min(start + batch_size, n))
        yield sl, np.asarray(x[sl])


def take_rows(x: np.ndarray | ArraySource, idx: np.ndarray) -> np.ndarray | ArraySource:
    """Rows ``idx`` of ``x``: read now when small (or ``x`` is in memory), else a lazy subset."""
    idx = np.asarray(idx, dtype=np.int64)
    if isinstance(x, LazySource):
        per_row = int(np.prod(x.shape[1:])) * x.dtype.itemsize
        if len(idx) * per_row > MATERIALISE_BYTES:
            return x.take(idx)
    return np.asarray(x[idx])


class Rows(LazySource):
    """Rows ``idx`` of another source, in the given order."""

    def __init__(self, base: LazySource, idx: np.ndarray) -> None:
        super().__init__((len(idx), *base.shape[1:]), base.dtype)
        self.base = base
        self.idx = idx

    def _read(self, start: int, stop: int) -> np.ndarray:
        return self.base[self.idx[start:stop]]

    def _gather(self, idx: np.ndarray) -> np.ndarray:
        return self.base[self.idx[idx]]

    def take(self, idx: np.ndarray) -> LazySource:
        """Subsets of subsets collapse into one index array."""
        return Rows(self.base, self.idx[np.asarray(idx, dtype=np.int64)])


class Mapped(LazySource):
    """``fn(base[rows])`` per batch: a lazy transpose, reshape or numeric preprocessing step."""

    def __init__(self, base: np.ndarray | ArraySource, fn: Callable[[np.ndarray], np.ndarray],
                 per_sample: Sequence[int], dtype: np.dtype[Any] | type, what: str = "") -> None:
        super().__init__((len(base), *per_sample), dtype)
        self.base = base
        self.fn = fn
        self.what = what

    def _read(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.fn(np.asarray(self.base[start:stop])), dtype=self._dtype)

    def _gather(self, idx: np.ndarray) -> np.ndarray:
        return np.asarray(self.fn(np.asarray(self.base[idx])), dtype=self._dtype)

    def take(self, idx: np.ndarray) -> LazySource:
        """Subset the base, then map: a sample of an image folder decodes only its own files."""
        base = self.base
        sub = base.take(idx) if isinstance(base, LazySource) else np.asarray(base[idx])
        return Mapped(sub, self.fn, self._shape[1:], self._dtype, self.what)


def mapped(x: np.ndarray | ArraySource, fn: Callable[[np.ndarray], np.ndarray], per_sample: Sequence[int],
           dtype: np.dtype[Any] | type, what: str = "") -> np.ndarray | ArraySource:
    """``fn`` applied to every row of ``x``: at once for in-memory arrays, per batch for lazy sources."""
    if isinstance(x, np.ndarray) and not isinstance(x, np.memmap):
        return np.asarray(fn(x), dtype=dtype)
    return Mapped(x, fn, per_sample, dtype, what)


class NpyFile(LazySource):
    """An ``.npy`` file read row range by row range with ``os.pread``.

    A memory map would do the same reads, but every page it touches stays in the process's resident set until
    the kernel needs it back: auditing a 2 GB file "batch by batch" through ``np.load(mmap_mode='r')`` peaks at
    the file's size. ``pread`` into a fresh buffer keeps one batch resident. Fortran-ordered files (rare) fall
    back to a memory map, read per batch.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            self.offset = f.tell()
        if dtype.hasobject:
            raise ValueError("the array holds Python objects (pickles are never loaded)")
        if len(shape) == 0:
            raise ValueError("the array is 0-dimensional; data needs one row per sample")
        super().__init__(shape, dtype)
        self._row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        self._mmap: np.ndarray | None = None
        if fortran and len(shape) > 1:
            self._mmap = np.load(self.path, mmap_mode="r", allow_pickle=False)
        self._fd: int | None = None
        self._lock = threading.Lock()
        expected = self.offset + self._row_bytes * self._shape[0]
        if os.path.getsize(self.path) < expected:
            raise ValueError(f"the file is truncated ({os.path.getsize(self.path)} bytes, header says {expected})")

    def _file(self) -> int:
        with self._lock:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY)
            return self._fd

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            try:
                os.close(self._fd)  # type: ignore[arg-type]
            except OSError:
                pass

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fd"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _read(self, start: int, stop: int) -> np.ndarray:
        if self._mmap is not None:
            return np.array(self._mmap[start:stop])
        out = np.empty((stop - start, *self._shape[1:]), dtype=self._dtype)
        view = memoryview(out.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
        pos, want, fd = self.offset + start * self._row_bytes, len(view), self._file()
        got = 0
        while got < want:  # pread may return less than asked for large reads
            k = os.preadv(fd, [view[got:]], pos + got)
            if k <= 0:
                raise OSError(f"{self.path}: unexpected end of file")
            got += k
        return out


class ParquetRows(LazySource):
    """Numeric feature columns of a parquet file as a ``(rows, features)`` float32 array, read one row group
    at a time (the last group read is kept, so consecutive batches inside one group cost one read)."""

    def __init__(self, path: Path, columns: Sequence[str], widths: Sequence[int]) -> None:
        import pyarrow.parquet as pq

        self.path = Path(path)
        self.columns = list(columns)
        self.widths = list(widths)
        self._file = pq.ParquetFile(self.path)
        meta = self._file.metadata
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        super().__init__((int(self._starts[-1]), int(sum(widths))), np.float32)
        self._lock = threading.Lock()
        self._cached: tuple[int, np.ndarray] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_file=None, _lock=None, _cached=None)  # reopened where it is unpickled (a Ray worker)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        import pyarrow.parquet as pq

        self.__dict__.update(state)
        self._file = pq.ParquetFile(self.path)
        self._lock = threading.Lock()

    def _group(self, g: int) -> np.ndarray:
        with self._lock:
            if self._cached is not None and self._cached[0] == g:
                return self._cached[1]
            table = self._file.read_row_group(g, columns=self.columns)
            arr = features_of({c: column_values(table.column(c)) for c in self.columns}, self.columns)
            self._cached = (g, arr)
            return arr

    def _read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, self._shape[1]), dtype=np.float32)
        g = int(np.searchsorted(self._starts, start, side="right")) - 1
        pos = start
        while pos < stop:
            lo = int(self._starts[g])
            block = self._group(g)
            a, b = pos - lo, min(stop, int(self._starts[g + 1])) - lo
            out[pos - start:pos - start + (b - a)] = block[a:b]
            pos += b - a
            g += 1
        return out


def column_values(col: Any) -> np.ndarray:
    """A pyarrow column as numpy (list-typed columns, e.g. a flattened image per row, stacked)."""
    arr = col.to_numpy(zero_copy_only=False)
    if arr.dtype.kind == "O" and col.null_count == 0:
        try:
            arr = np.stack(arr)
        except Exception:
            pass
    return np.asarray(arr)


def features_of(table: dict[str, np.ndarray], columns: Sequence[str]) -> np.ndarray:
    """Columns side by side as float32 ``(rows, features)`` (multi-valued columns flattened)."""
    parts = [np.asarray(table[c], dtype=np.float32).reshape(len(table[c]), -1) for c in columns]
    return np.concatenate(parts, axis=1)
