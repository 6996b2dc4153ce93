"""One streaming pass over a layer weight: zero counts, norms and per-filter / per-channel reductions.

Everything is accumulated chunk by chunk (see :func:`auditor_sparsity.weights.iter_chunks`), so the working
set is bounded by the chunk size whatever the size of the tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from auditor import ModelHandle
from auditor_sparsity.weights import LayerWeight, iter_chunks


def pq_index(l1: float, l2sq: float, d: int) -> float | None:
    """PQ index with p = 1, q = 2 (Diao et al., "Pruning Deep Neural Networks from a Sparsity Perspective",
    ICLR 2023): ``PQ(w) = 1 - d^(1/q - 1/p) * ||w||_p / ||w||_q = 1 - ||w||_1 / (sqrt(d) * ||w||_2)``.

    0 for a vector whose entries all have the same magnitude, ``1 - 1/sqrt(d)`` for a single non-zero entry;
    larger means sparser. ``None`` for an all-zero vector (undefined).
    """
    if d <= 0 or l2sq <= 0:
        return None
    return float(1.0 - l1 / (np.sqrt(d) * np.sqrt(l2sq)))


class _Acc:
    """A reduction over the axes not in ``keep``, combined across chunks of the stored first axis."""

    def __init__(self, shape: tuple[int, ...], keep: tuple[int, ...], fill: float | bool,
                 reduce: Callable[..., np.ndarray], combine: Callable[..., np.ndarray], dtype: type) -> None:
        self.keep = keep
        self.reduce = reduce
        self.combine = combine
        self.arr: np.ndarray = np.full(tuple(shape[a] for a in keep), fill, dtype=dtype)

    def add(self, rows: slice, x: np.ndarray) -> None:
        red = tuple(a for a in range(x.ndim) if a not in self.keep)
        part = self.reduce(x, axis=red) if red else x
        if self.keep and self.keep[0] == 0:
            # the chunk covers its own rows of the kept first axis: nothing to combine
            self.arr[rows] = part
        else:
            self.combine(self.arr, part, out=self.arr)


@dataclass
class WeightStats:
    """What one pass over a layer weight gives.

    ``nonzero_out`` / ``nonzero_in`` are ``any(w != 0)`` per stored output / input index. A grouped conv
    (where an input channel index is local to its group) keeps instead ``nonzero_out_in``, the reduction over
    the kernel axes with the (output, input) axes kept as stored (small: out x in/groups).
    ``out_max_abs`` / ``out_min`` / ``out_max`` are reductions per stored output index.
    """

    lw: LayerWeight
    size: int
    zeros: int
    near_zero: int
    nonfinite: int
    l1: float
    l2sq: float
    max_abs: float
    nonzero_out: np.ndarray | None = None
    nonzero_in: np.ndarray | None = None
    nonzero_out_in: np.ndarray | None = None
    out_max_abs: np.ndarray | None = None
    out_min: np.ndarray | None = None
    out_max: np.ndarray | None = None

    @property
    def sparsity(self) -> float:
        """Fraction of exact zeros."""
        return self.zeros / self.size if self.size else 0.0

    def zero_outputs(self) -> np.ndarray:
        """Indices of outputs (conv output filters, matrix output units) whose weights are all zero."""
        nz, lw = self.nonzero_out_in, self.lw
        if nz is None:
            assert self.nonzero_out is not None
            return np.flatnonzero(~self.nonzero_out)
        if lw.kind == "conv_transpose":
            mg, c = nz.shape
            per = nz.reshape(mg, lw.groups, c // lw.groups).any(axis=2)  # (out within group, group)
            return np.flatnonzero(~per.T.reshape(-1))
        return np.flatnonzero(~nz.any(axis=1))

    def zero_inputs(self) -> np.ndarray:
        """Indices of inputs (conv input channels, matrix input units) that no weight reads."""
        nz, lw = self.nonzero_out_in, self.lw
        if nz is None:
            assert self.nonzero_in is not None
            return np.flatnonzero(~self.nonzero_in)
        if lw.kind == "conv":
            m, cg = nz.shape
            per = nz.reshape(lw.groups, m // lw.groups, cg).any(axis=1)  # (group, channel within group)
            return np.flatnonzero(~per.reshape(-1))
        return np.flatnonzero(~nz.any(axis=0))

    @property
    def n_outputs(self) -> int:
        """Number of output units / filters of the layer."""
        groups = self.lw.groups if self.lw.kind == "conv_transpose" else 1
        return self.lw.shape[self.lw.out_axis] * groups

    @property
    def n_inputs(self) -> int:
        """Number of input units / channels of the layer."""
        groups = self.lw.groups if self.lw.kind == "conv" else 1
        return self.lw.shape[self.lw.in_axis] * groups


def weight_stats(model: ModelHandle, lw: LayerWeight, *, near_zero: float = 0.0, per_output: bool = False,
                 check: Callable[[], None] | None = None,
                 on_chunk: Callable[[slice, np.ndarray], None] | None = None) -> WeightStats:
    """Stream ``lw`` once and accumulate its :class:`WeightStats`.

    ``near_zero`` is the absolute threshold of the near-zero count (``|w| <= near_zero``); ``per_output``
    adds per-filter max |w|, min and max (for the degenerate-filter check); ``on_chunk(rows, values)`` sees
    every decoded chunk (for further statistics in the same pass).
    """
    shape = lw.shape
    grouped = lw.kind != "matrix" and lw.groups > 1
    keeps = [tuple(sorted((lw.out_axis, lw.in_axis)))] if grouped else [(lw.out_axis,), (lw.in_axis,)]
    nz_accs = [_Acc(shape, keep, False, np.any, np.logical_or, bool) for keep in keeps]
    outs = (lw.out_axis,)
    accs = {"out_max_abs": _Acc(shape, outs, 0.0, np.max, np.maximum, np.float64),
            "out_min": _Acc(shape, outs, np.inf, np.min, np.minimum, np.float64),
            "out_max": _Acc(shape, outs, -np.inf, np.max, np.maximum, np.float64)} if per_output else {}
    zeros = near = nonfinite = 0
    l1 = l2sq = max_abs = 0.0
    # Temporaries are allocated once per tensor and reused for every chunk: fresh allocations of this size
    # are page-faulted in by the kernel each time, which used to cost more than the arithmetic.
    bufs: dict[tuple[str, int], np.ndarray] = {}

    def buf(kind: str, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape))
        key = (kind, dtype.num)
        if key not in bufs or bufs[key].size < n:
            bufs[key] = np.empty(n, dtype=dtype)
        return bufs[key][:n].reshape(shape)

    for rows, v in iter_chunks(model, lw):
        if check is not None:
            check()
        a = np.abs(v, out=buf("abs", v.dtype, v.shape))
        nonzero = np.not_equal(v, 0, out=buf("nz", np.dtype(bool), v.shape))
        zeros += int(nonzero.size - np.count_nonzero(nonzero))
        near += int(np.count_nonzero(np.less_equal(a, near_zero, out=buf("near", np.dtype(bool), v.shape))))
        nonfinite += int(a.size - np.count_nonzero(np.isfinite(a, out=buf("near", np.dtype(bool), v.shape))))
        flat = buf("f64", np.dtype(np.float64), (a.size,))
        np.copyto(flat, a.reshape(-1))
        l1 += float(flat.sum())
        l2sq += float(np.dot(flat, flat))
        if a.size:
            max_abs = max(max_abs, float(a.max()))
        for nz_acc in nz_accs:
            nz_acc.add(rows, nonzero)
        for key, acc in accs.items():
            acc.add(rows, a if key == "out_max_abs" else v)
        if on_chunk is not None:
            on_chunk(rows, v)
    # drop the last chunk's view of the memory map now, so that its pages can go before the next tensor
    del v, a
    st = WeightStats(lw=lw, size=lw.size, zeros=zeros, near_zero=near, nonfinite=nonfinite, l1=l1, l2sq=l2sq,
                     max_abs=max_abs,
                     **{key: acc.arr for key, acc in accs.items()})
    if grouped:
        nz = nz_accs[0].arr
        st.nonzero_out_in = np.ascontiguousarray(nz.T if lw.out_axis > lw.in_axis else nz)
    else:
        st.nonzero_out, st.nonzero_in = nz_accs[0].arr, nz_accs[1].arr
    return st
