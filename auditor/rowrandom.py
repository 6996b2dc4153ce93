"""Per-sample random streams: every sample (a row of a check's plan) draws from a stream of its own, so that a
check's numbers do not depend on how its rows are grouped into shards, batches or workers.

A :class:`RowRandom` holds one key per row (derived from the spec's seed, the check's id and the row's position
in the check's plan) and a call counter. Each draw gives every row values that depend only on its key, the
counter and the position within the row's draw: splitmix64 (Steele, Lea & Flood, "Fast splittable pseudorandom
number generators", OOPSLA 2014) used as a counter-based generator, vectorised over rows and values in numpy
(no loop over samples). Calls mirror :class:`numpy.random.Generator` where the first axis of ``size`` is the
rows: ``random``, ``uniform``, ``integers``, ``choice``, ``standard_normal``, ``normal``.

Grouping invariance holds when every row sees the same sequence of calls whatever the other rows of its group
do. A loop whose length depends on the group (an attack's active rows, a resampling loop that stops when no row
needs it) must therefore take a fresh stream per iteration with :meth:`RowRandom.at` (``rng.at(step)``), and
draw for a subset of rows through :meth:`RowRandom.rows`.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

_GAMMA = np.uint64(0x9E3779B97F4A7C15)  # the golden-ratio increment of splitmix64
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S32 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(32)
_LOW32 = np.uint64(0xFFFFFFFF)


def mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser over an array of ``uint64`` (wrapping arithmetic), a new array."""
    z = z ^ (z >> _S30)
    z *= _M1
    z ^= z >> _S27
    z *= _M2
    z ^= z >> _S31
    return z


def _key(values: Sequence[int]) -> np.uint64:
    """One 64-bit key from a few integers (through numpy's SeedSequence, which hashes entropy well)."""
    return np.uint64(np.random.SeedSequence([int(v) for v in values]).generate_state(1, np.uint64)[0])


class RowRandom:
    """Independent random streams for ``n`` rows (see the module docstring)."""

    def __init__(self, keys: np.ndarray, counter: int = 0) -> None:
        self.keys = np.asarray(keys, dtype=np.uint64)
        self._counter = counter

    @classmethod
    def for_positions(cls, seed: int, check_id: str, positions: np.ndarray, *salt: int) -> RowRandom:
        """The streams of rows at ``positions`` of check ``check_id``'s plan under the spec's ``seed``."""
        base = _key([seed, zlib.crc32(check_id.encode()), *salt])
        pos = np.asarray(positions, dtype=np.uint64)
        with np.errstate(over="ignore"):
            return cls(mix64(base ^ mix64((pos + np.uint64(1)) * _GAMMA)))

    @classmethod
    def from_generator(cls, rng: np.random.Generator, n: int) -> RowRandom:
        """Streams for ``n`` rows keyed from ``rng`` (one draw): for callers that hold a plain generator."""
        return cls.for_positions(int(rng.integers(0, 2**63)), "", np.arange(n))

    @property
    def n(self) -> int:
        """Rows."""
        return len(self.keys)

    def __len__(self) -> int:
        return self.n

    def rows(self, idx: Any) -> RowRandom:
        """The streams of rows ``idx`` only, at this object's call counter (drawing from either does not move
        the other)."""
        return RowRandom(self.keys[idx], self._counter)

    def at(self, *k: int) -> RowRandom:
        """Fresh streams for the same rows, named by ``k`` (e.g. a step of a loop), counter at zero."""
        salt = _key([0x5EED, *k])
        with np.errstate(over="ignore"):
            return RowRandom(mix64(self.keys ^ salt))

    # ------------------------------------------------------------------------------------------ raw draws
    def bits(self, per_row: int) -> np.ndarray:
        """``(n, per_row)`` random ``uint64``; the next call of the stream."""
        self._counter += 1
        c = np.uint64(self._counter)
        with np.errstate(over="ignore"):
            call = mix64(self.keys ^ (c * _M2))
            j = (np.arange(1, per_row + 1, dtype=np.uint64) * _GAMMA)[None, :]
            return mix64(call[:, None] + j)

    def _shape(self, size: int | Sequence[int] | None) -> tuple[int, ...]:
        shape = (self.n,) if size is None else (size,) if isinstance(size, (int, np.integer)) else tuple(size)
        if not shape or shape[0] != self.n:
            raise ValueError(f"size {shape} must start with the {self.n} rows")
        return tuple(int(s) for s in shape)

    # ------------------------------------------------------------------------------------------ Generator-like
    def random(self, size: int | Sequence[int] | None = None) -> np.ndarray:
        """Uniform floats in [0, 1) of shape ``size`` (first axis: the rows), float64 with 53 random bits."""
        shape = self._shape(size)
        per = int(np.prod(shape[1:], dtype=np.int64))
        u = (self.bits(per) >> np.uint64(11)).astype(np.float64) * 2.0**-53
        return u.reshape(shape)

    def uniform(self, low: Any = 0.0, high: Any = 1.0, size: int | Sequence[int] | None = None) -> np.ndarray:
        """Uniform floats in [low, high)."""
        return np.asarray(np.asarray(low, np.float64) + (np.asarray(high, np.float64) - low) * self.random(size))

    def integers(self, low: int, high: int | None = None, size: int | Sequence[int] | None = None) -> np.ndarray:
        """Integers in [low, high) (``high`` None: [0, low)), int64."""
        if high is None:
            low, high = 0, low
        if high <= low:
            raise ValueError("high must be above low")
        out = np.floor(self.random(size) * (high - low)).astype(np.int64) + low
        return np.asarray(np.minimum(out, high - 1))

    def choice(self, a: Any, size: int | Sequence[int] | None = None) -> np.ndarray:
        """Values of ``a`` (an array; an int ``k``: ``range(k)``) drawn with replacement."""
        vals = np.arange(a) if isinstance(a, (int, np.integer)) else np.asarray(a)
        return np.asarray(vals[self.integers(0, len(vals), size)])

    def standard_normal(self, size: int | Sequence[int] | None = None, dtype: Any = np.float64) -> np.ndarray:
        """Standard normal values (Box–Muller: one 64-bit draw gives two values from two 32-bit uniforms)."""
        shape = self._shape(size)
        per = int(np.prod(shape[1:], dtype=np.int64))
        b = self.bits((per + 1) // 2)
        ft: np.dtype[Any] = np.dtype(np.float32 if np.dtype(dtype) == np.float32 else np.float64)
        u1: np.ndarray = ((b >> _S32).astype(ft) + 0.5) * 2.0**-32  # in (0, 1): the log is finite
        u2: np.ndarray = (b & _LOW32).astype(ft) * (2.0**-32 * 2 * np.pi)
        u1, u2 = u1.astype(ft, copy=False), u2.astype(ft, copy=False)
        r = np.sqrt(-2.0 * np.log(u1))
        z = np.concatenate([r * np.cos(u2), r * np.sin(u2)], axis=1)[:, :per]
        return z.astype(dtype, copy=False).reshape(shape)

    def normal(self, loc: Any = 0.0, scale: Any = 1.0, size: int | Sequence[int] | None = None) -> np.ndarray:
        """Normal values with mean ``loc`` and standard deviation ``scale``."""
        return np.asarray(np.asarray(loc, np.float64) + np.asarray(scale, np.float64) * self.standard_normal(size))
