"""Singular values of weight matrices with a stated error bound: exact, through a float64 Gram matrix, or
through a certified low-rank projection.

Every :class:`Spectrum` says how far each reported value may be from the exact singular value of the stored
weights: ``abs_error_bound`` for every value, ``rel_error_bound`` for every value above the numerical-rank
``tolerance`` ``σ_max · max(M, N) · eps`` (``numpy.linalg.matrix_rank``'s default, ``eps`` that of the
computation the caller names). Values below the tolerance are rounding noise of the stored weights for any
method (that is what the tolerance means); they are only known to ``abs_error_bound``, and a matrix that has
any is numerically singular (no condition number).

Three routes, per ``m x n`` block (``m <= n`` after transposing), the cheapest that meets ``max_rel_error``:

* **svd** (``m <= exact_max_dim``, 256 by default, or when the others cannot meet the precision): LAPACK's SVD,
  values only.
  Its error is ``|σ̂_i - σ_i| <= p(m, n) u σ_max`` (LAPACK Users' Guide §4.9.1), stated with ``p = max(m, n)``.
* **lowrank**: a randomized range finder (Halko, Martinsson & Tropp, SIAM Review 2011, §4.1) with ``ℓ``
  columns, *certified a posteriori*: with ``Q`` an orthonormal basis of ``W^T Ω`` and ``B = W Q``,
  ``W W^T = B B^T + R R^T`` for the residual ``R = W (I - Q Q^T)``, so by Weyl's inequality
  ``σ_i(B) <= σ_i(W) <= sqrt(σ_i(B)^2 + ||R||^2)`` and ``σ_i(W) <= ||R||`` for ``i > ℓ``; ``||R||_F`` is
  computed, not estimated. The route is taken only when every value beyond ``ℓ`` is thereby proven below the
  tolerance and the others meet ``max_rel_error``: a numerically low-rank matrix (e.g. a constant-filled
  4096 x 25088 layer) costs ``O(mnℓ)`` instead of ``O(m^2 n)``. It is attempted only when a few power
  iterations put the stable rank ``||W||_F^2 / σ_max^2`` (a lower bound of the rank) at most ``ℓ``. The
  randomness decides only whether the route is taken, never the values' error bounds.
* **gram**: the squared singular values are the eigenvalues of ``G = W W^T``, accumulated in float64 over
  column blocks (one BLAS ``syrk`` per block) and diagonalised with ``eigvalsh``: ``m^2 n + 4/3 m^3`` flops
  against the SVD's ``2 m^2 n + 8/3 m^3`` with half of those in slow BLAS-2 bidiagonalisation.
  The float64 product has ``|fl(G) - G| <= γ_n |W| |W|^T`` (Higham, *Accuracy and Stability of Numerical
  Algorithms*, §3.5), hence ``||fl(G) - G||_2 <= u n ||W||_F^2``; ``eigvalsh`` is backward stable (a further
  ``c u m ||G||_2``); by Weyl's inequality each eigenvalue moves by at most ``δ = u (n ||W||_F^2 + m
  ||W||_2^2)``, so ``|σ̂_i - σ_i| <= min(√δ, δ / σ_i)``: relative error ``δ / σ_i^2`` above the tolerance.
  Values whose Weyl interval straddles the tolerance, or a relative bound above ``max_rel_error`` (an
  ill-conditioned full-rank block), send the block to the exact SVD.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

_U = float(np.finfo(np.float64).eps) / 2
_GRAM_BLOCK_BYTES = 64 << 20
#: columns of the low-rank sketch (its failure costs about 6·m·n·ℓ flops, ~1 % of the Gram route at m = 4096)
_SKETCH = 24


@dataclass(frozen=True)
class Spectrum:
    """Singular values (descending) of a matrix or of a block-diagonal stack of matrices, with their error."""

    values: np.ndarray
    shape: tuple[int, int]
    blocks: int
    method: str
    rel_error_bound: float
    abs_error_bound: float = 0.0
    tolerance: float = 0.0

    @property
    def rank(self) -> int:
        """Values above the numerical-rank tolerance."""
        return int(np.count_nonzero(self.values > self.tolerance))

    @property
    def nonzero(self) -> np.ndarray:
        """The values above the tolerance (the numerically nonzero spectrum, known to ``rel_error_bound``)."""
        return self.values[self.values > self.tolerance]

    def scaled(self, alpha: float) -> Spectrum:
        """The spectrum of ``alpha · W`` (``alpha >= 0``): every value, bound and the tolerance scale alike."""
        return Spectrum(self.values * alpha, self.shape, self.blocks, self.method, self.rel_error_bound,
                        self.abs_error_bound * alpha, self.tolerance * alpha)


def effective_rank(s: np.ndarray) -> float:
    """Roy & Vetterli, "The effective rank: a measure of effective dimensionality" (EUSIPCO 2007):
    ``exp(H(p))`` with ``p_i = σ_i / Σ_j σ_j`` and ``H`` the Shannon entropy (natural log)."""
    s = np.asarray(s, dtype=np.float64)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))))


def energy_rank(s: np.ndarray, fraction: float) -> int:
    """Smallest ``k`` such that the top ``k`` singular values hold ``fraction`` of ``Σ σ_i^2`` (the rank a
    truncated SVD needs to keep that share of the spectral energy, as in Trained Rank Pruning, Xu et al.
    2019)."""
    e = np.asarray(s, dtype=np.float64) ** 2
    total = e.sum()
    if total <= 0:
        return 0
    cum = np.cumsum(e) / total
    return min(int(np.searchsorted(cum, fraction, side="left")) + 1, len(e))


@dataclass(frozen=True)
class _Block:
    """One block's values and their bounds: ``lo``/``hi`` enclose each exact value."""

    values: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    method: str


def _svd(w: np.ndarray) -> _Block:
    s = np.linalg.svd(np.asarray(w, dtype=np.float64), compute_uv=False)
    err = max(w.shape) * _U * (float(s[0]) if s.size else 0.0)
    return _Block(s, np.maximum(s - err, 0.0), s + err, "svd")


def _column_blocks(w: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
    """``w``'s columns as fresh float64 blocks of at most 64 MiB, one at a time (bounded memory for a
    4096 x 25088 layer)."""
    m, n = w.shape
    step = max(1, _GRAM_BLOCK_BYTES // (8 * max(m, 1)))
    for j in range(0, n, step):
        yield slice(j, j + step), np.array(w[:, j:j + step], dtype=np.float64, order="C")


def _gram(w: np.ndarray) -> _Block:
    """Singular values of ``w`` (m <= n) from its float64 Gram matrix, with the Weyl interval of each."""
    m, n = w.shape
    g = np.zeros((m, m), dtype=np.float64)
    fro2 = 0.0
    for _cols, blk in _column_blocks(w):
        g += blk @ blk.T  # numpy hands A @ A.T to BLAS syrk
        fro2 += float(np.einsum("ij,ij->", blk, blk))
    lam = np.linalg.eigvalsh(g)[::-1]
    del g
    lam_max = max(float(lam[0]), 0.0) if lam.size else 0.0
    delta = _U * (n * fro2 + m * lam_max)
    lam = np.clip(lam, 0.0, None)
    return _Block(np.sqrt(lam), np.sqrt(np.clip(lam - delta, 0.0, None)), np.sqrt(lam + delta), "gram")


def _lowrank(w: np.ndarray, rng: np.random.Generator, ell: int) -> _Block:
    """Sketch of rank ``ell`` with its a-posteriori residual: ``lo`` / ``hi`` from the interlacing in the module
    docstring, widened by the rounding of the float64 products (``η``, a generous ``8 u n ℓ ||W||_F``). Two
    passes over ``w`` in column blocks: ``Y = W^T Ω``, then ``B = W Q`` and ``||W - B Q^T||_F``."""
    m, n = w.shape
    omega = rng.standard_normal((m, ell))
    y = np.empty((n, ell))
    fro2 = 0.0
    for cols, blk in _column_blocks(w):
        y[cols] = blk.T @ omega
        fro2 += float(np.einsum("ij,ij->", blk, blk))
    q, _ = np.linalg.qr(y)
    del y
    b = np.zeros((m, ell))
    for cols, blk in _column_blocks(w):
        b += blk @ q[cols]
    rho2 = 0.0
    for cols, blk in _column_blocks(w):
        blk -= b @ q[cols].T
        rho2 += float(np.einsum("ij,ij->", blk, blk))
    rho = float(np.sqrt(rho2))
    eta = 8 * _U * n * ell * float(np.sqrt(fro2))
    s_b = np.linalg.svd(b, compute_uv=False)
    vals = np.concatenate([s_b, np.zeros(m - s_b.size)])
    lo = np.maximum(vals - eta, 0.0)
    hi = np.concatenate([np.sqrt(s_b**2 + rho**2), np.full(m - s_b.size, rho)]) + eta
    return _Block(vals, lo, hi, "lowrank")


def _stable_rank_at_most(w: np.ndarray, ell: int, rng: np.random.Generator, steps: int = 4) -> bool:
    """Whether ``||W||_F^2 / σ̂^2 <= ell`` with ``σ̂ <= σ_max`` from a few power iterations: a cheap test
    (``~4·steps·m·n`` flops, in the storage's precision, no copy of ``w``) that skips the low-rank attempt on
    a matrix whose stable rank, a lower bound of its rank, is already too large for a sketch of ``ell``
    columns. It only decides which route is tried, so its own rounding does not matter."""
    wf = w if w.dtype in (np.float32, np.float64) else w.astype(np.float32)
    v = np.asarray(rng.standard_normal(wf.shape[1]), dtype=wf.dtype)
    sigma2 = 0.0
    for _ in range(steps):
        v /= np.linalg.norm(v) or 1.0
        v = wf.T @ (wf @ v)
        sigma2 = float(np.linalg.norm(v))  # ||W^T W v|| <= σ_max^2 for a unit v
    step = max(1, _GRAM_BLOCK_BYTES // (8 * max(wf.shape[0], 1)))
    fro2 = sum(float(np.einsum("ij,ij->", wf[:, j:j + step], wf[:, j:j + step]))
               for j in range(0, wf.shape[1], step))
    return sigma2 > 0 and fro2 / sigma2 <= ell


def _accepts(blk: _Block, tol: float, max_rel_error: float) -> bool:
    """Whether every value's interval lies on one side of the tolerance and those above meet the precision."""
    above = blk.lo > tol
    below = blk.hi <= tol
    if not np.all(above | below):
        return False
    return not above.any() or _rel(blk, tol) <= max_rel_error


def _rel(blk: _Block, tol: float) -> float:
    above = blk.lo > tol
    if not above.any():
        return 0.0
    v, lo, hi = blk.values[above], blk.lo[above], blk.hi[above]
    return float(np.max(np.maximum(hi - v, v - lo) / lo))


def singular_values(stack: np.ndarray, *, exact_max_dim: int = 256, max_rel_error: float = 1e-3,
                    eps: float = float(np.finfo(np.float64).eps), seed: int = 0) -> Spectrum:
    """Singular values of a ``(blocks, m, n)`` stack seen as one block-diagonal matrix (a grouped conv, a
    batched MatMul weight), with the numerical-rank tolerance of ``eps`` (the computation's machine epsilon:
    float32's for float32 and narrower storage), exact for small blocks and through the cheapest certified
    route for large ones (module docstring)."""
    b, m, n = stack.shape
    k = min(m, n)
    size = max(m, n) * b

    if k <= exact_max_dim:
        s = np.linalg.svd(np.asarray(stack, dtype=np.float64), compute_uv=False)
        vals = np.sort(s.reshape(-1))[::-1]
        smax = float(vals[0]) if vals.size else 0.0
        tol = smax * size * eps
        err = max(m, n) * _U * smax
        above = vals[vals > tol]
        rel = err / float(above[-1]) if above.size else 0.0
        return Spectrum(vals, (m, n), b, "svd", rel, err, tol)

    rng = np.random.default_rng(seed)
    mats = [stack[i] if m <= n else stack[i].T for i in range(b)]
    # the tolerance needs the whole matrix's σ_max; bounding it from above by the Frobenius norm would make
    # it depend on the rest of the spectrum, so a first pass finds each block's candidate (cheap if low-rank)
    blocks: list[_Block] = []
    for w in mats:
        blk = _lowrank(w, rng, _SKETCH) if k > 4 * _SKETCH and _stable_rank_at_most(w, _SKETCH, rng) else None
        if blk is None or not np.all(blk.hi[min(_SKETCH, k):] <= blk.lo[0] * size * eps):
            blk = _gram(w)
        blocks.append(blk)
    smax = max(float(bl.values[0]) for bl in blocks)
    tol = smax * size * eps
    final: list[_Block] = []
    for w, blk in zip(mats, blocks, strict=True):
        if not _accepts(blk, tol, max_rel_error) and blk.method == "lowrank":
            blk = _gram(w)
        if not _accepts(blk, tol, max_rel_error):
            blk = _svd(w)  # too ill-conditioned (or straddling the tolerance) for the fast routes
        final.append(blk)
    vals = np.concatenate([bl.values for bl in final])
    order = np.argsort(vals)[::-1]
    lo = np.concatenate([bl.lo for bl in final])[order]
    hi = np.concatenate([bl.hi for bl in final])[order]
    vals = vals[order]
    methods = sorted({bl.method for bl in final})
    whole = _Block(vals, lo, hi, "+".join(methods))
    abs_err = float(np.max(np.maximum(hi - vals, vals - lo))) if vals.size else 0.0
    return Spectrum(vals, (m, n), b, whole.method, _rel(whole, tol), abs_err, tol)
