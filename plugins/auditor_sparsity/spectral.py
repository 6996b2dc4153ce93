"""Singular values of weight matrices, exact or through a float64 Gram matrix with an error bound.

Small matrices (``min(m, n) <= exact_max_dim``) use LAPACK's SVD (``numpy.linalg.svd``, values only). For a
large ``m x n`` matrix ``W`` (``m <= n`` after transposing) the squared singular values are the eigenvalues of
the ``m x m`` Gram matrix ``G = W W^T``, accumulated in float64 over column blocks and diagonalised with
``eigvalsh``: ``O(m^2 n)`` flops for the product (one BLAS call per block) and ``O(m^3)`` for the
eigenvalues, several times faster than the SVD's bidiagonalisation. Its precision is bounded a priori:

* the float64 product has ``|fl(G) - G| <= γ_n |W| |W|^T`` elementwise (Higham, *Accuracy and Stability of
  Numerical Algorithms*, §3.5), hence ``||fl(G) - G||_2 <= u n ||W||_F^2`` to first order;
* ``eigvalsh`` is backward stable: a further ``c u m ||G||_2``;
* by Weyl's inequality each eigenvalue moves by at most ``δ = u (n ||W||_F^2 + m ||W||_2^2)`` (``u`` the
  float64 unit roundoff), so ``|σ̂_i - σ_i| = |σ̂_i^2 - σ_i^2| / (σ̂_i + σ_i) <= δ / σ_i`` and the relative
  error of ``σ_i`` is at most ``δ / σ_i^2``.

The bound for the smallest singular value (the worst one) is reported per matrix; when it exceeds
``max_rel_error`` the matrix is recomputed with the exact SVD, so every reported value meets that precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_U = float(np.finfo(np.float64).eps) / 2
_GRAM_BLOCK_BYTES = 64 << 20


@dataclass(frozen=True)
class Spectrum:
    """Singular values (descending) of a matrix or of a block-diagonal stack of matrices."""

    values: np.ndarray
    shape: tuple[int, int]
    blocks: int
    method: str
    rel_error_bound: float


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


def _gram_eigs(w: np.ndarray) -> tuple[np.ndarray, float]:
    """Squared singular values of ``w`` (m <= n) from its float64 Gram matrix, and the Weyl bound ``δ``."""
    m, n = w.shape
    g = np.zeros((m, m), dtype=np.float64)
    fro2 = 0.0
    step = max(1, _GRAM_BLOCK_BYTES // (8 * max(m, 1)))
    for j in range(0, n, step):
        blk = np.asarray(w[:, j:j + step], dtype=np.float64)
        g += blk @ blk.T
        fro2 += float(np.einsum("ij,ij->", blk, blk))
    lam = np.linalg.eigvalsh(g)[::-1]
    lam_max = max(float(lam[0]), 0.0) if lam.size else 0.0
    delta = _U * (n * fro2 + m * lam_max)
    return np.clip(lam, 0.0, None), delta


def singular_values(stack: np.ndarray, *, exact_max_dim: int = 512, max_rel_error: float = 1e-3) -> Spectrum:
    """Singular values of a ``(blocks, m, n)`` stack seen as one block-diagonal matrix (a grouped conv, a
    batched MatMul weight), exact for small blocks and through the Gram matrix for large ones."""
    b, m, n = stack.shape
    k = min(m, n)
    if k <= exact_max_dim:
        s = np.linalg.svd(np.asarray(stack, dtype=np.float64), compute_uv=False)
        vals = np.sort(s.reshape(-1))[::-1]
        return Spectrum(vals, (m, n), b, "svd", 0.0)
    parts: list[np.ndarray] = []
    bounds: list[float] = []
    methods: set[str] = set()
    for i in range(b):
        w = stack[i] if m <= n else stack[i].T
        lam, delta = _gram_eigs(w)
        smin2 = float(lam[-1])
        bound = delta / smin2 if smin2 > 0 else float("inf")
        if bound > max_rel_error:
            # too ill-conditioned for the Gram route at the asked precision: exact SVD for this block
            parts.append(np.linalg.svd(np.asarray(w, dtype=np.float64), compute_uv=False))
            methods.add("svd")
            bounds.append(0.0)
        else:
            parts.append(np.sqrt(lam))
            methods.add("gram")
            bounds.append(bound)
    vals = np.sort(np.concatenate(parts))[::-1]
    method = "gram" if methods == {"gram"} else ("svd" if methods == {"svd"} else "gram+svd")
    return Spectrum(vals, (m, n), b, method, max(bounds))
