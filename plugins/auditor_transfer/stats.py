"""The numerical core of the ``transfer`` plugin: pure numpy, no model in sight, so that every formula can be
tested against an independent implementation (scipy, scikit-learn or the published formula written out).

References for each estimator are given in the function docstrings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from auditor.probes import cross_validated_probe

# ------------------------------------------------------------------------------------------------ ranks


def rank_rows(a: np.ndarray) -> np.ndarray:
    """Average ranks (1-based, ties share the mean of their positions) of each row of a 2-D array,
    vectorised over rows (what ``scipy.stats.rankdata(a, axis=1)`` returns)."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        return np.asarray(rank_rows(a[None, :])[0])
    n, p = a.shape
    if p == 0:
        return a.copy()
    order = np.argsort(a, axis=1, kind="mergesort")
    s = np.take_along_axis(a, order, axis=1)
    new = np.ones_like(s, dtype=bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    # Tie groups never span rows because every row starts a new group.
    flat = new.ravel()
    starts = np.flatnonzero(flat)
    gid = np.cumsum(flat) - 1
    counts = np.diff(np.append(starts, flat.size))
    avg = (starts % p) + (counts - 1) / 2.0 + 1.0
    ranks = np.empty_like(s)
    np.put_along_axis(ranks, order, avg[gid].reshape(n, p), axis=1)
    return ranks


def _standardise_rows(a: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to unit norm (zero rows stay zero), so that a row product is a correlation."""
    c = a - a.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(c, axis=1, keepdims=True)
    return np.asarray(np.divide(c, norm, out=np.zeros_like(c), where=norm > 0))


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each row of ``a`` with the same row of ``b`` (NaN for constant rows)."""
    ra = _standardise_rows(rank_rows(a))
    rb = _standardise_rows(rank_rows(b))
    out = np.asarray(np.sum(ra * rb, axis=1))
    const = (np.ptp(np.atleast_2d(a), axis=1) == 0) | (np.ptp(np.atleast_2d(b), axis=1) == 0)
    out[const] = np.nan
    return out


# ------------------------------------------------------------------------------------------------ CKA


def gram(x: np.ndarray) -> np.ndarray:
    """Linear kernel ``X Xᵀ`` of a (n, d) feature matrix, in float64."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    return x @ x.T


def center_gram(k: np.ndarray) -> np.ndarray:
    """``H K H`` with ``H = I − 11ᵀ/n``: the biased HSIC of Gretton et al. (2005) is ``⟨HKH, HLH⟩/(n−1)²``."""
    k = np.asarray(k, dtype=np.float64)
    row = k.mean(axis=1, keepdims=True)
    col = k.mean(axis=0, keepdims=True)
    return np.asarray(k - row - col + k.mean())


def u_center_gram(k: np.ndarray) -> np.ndarray:
    """U-centring (Székely & Rizzo 2014): ``⟨Ũ(K), Ũ(L)⟩/(n(n−3))`` is the unbiased HSIC estimator of Song
    et al. (2012), "Feature Selection via Dependence Maximization" (their eq. 5), which the linear CKA of
    Kornblith et al. (2019) uses as its unbiased variant. Needs n ≥ 4."""
    k = np.array(k, dtype=np.float64)
    n = len(k)
    if n < 4:
        raise ValueError("the unbiased HSIC estimator needs at least 4 samples")
    np.fill_diagonal(k, 0.0)
    r = k.sum(axis=1)
    total = r.sum()
    u = np.asarray(k - r[:, None] / (n - 2) - r[None, :] / (n - 2) + total / ((n - 1) * (n - 2)))
    np.fill_diagonal(u, 0.0)
    return u


class CKAAccumulator:
    """Linear CKA between every layer of one model and every layer of another, accumulated over batches.

    Kornblith et al., "Similarity of Neural Network Representations Revisited" (ICML 2019):
    ``CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))`` with linear kernels ``K = XXᵀ``, ``L = YYᵀ``.
    With one batch holding all samples this is the full estimator (biased or unbiased HSIC); with several
    batches it is the minibatch estimator of Nguyen, Raghu & Kornblith, "Do Wide and Deep Networks Learn the
    Same Things?" (ICLR 2021): ``Σ_b HSIC₁(K_b, L_b) / sqrt(Σ_b HSIC₁(K_b, K_b) · Σ_b HSIC₁(L_b, L_b))``.

    Memory is O(batch²) per layer; all layer pairs of a batch come from one matrix product.
    """

    def __init__(self, n_a: int, n_b: int, *, unbiased: bool) -> None:
        self.unbiased = unbiased
        self.cross = np.zeros((n_a, n_b))
        self.self_a = np.zeros(n_a)
        self.self_b = np.zeros(n_b)
        # ‖K‖² of the uncentred Gram matrices, same normalisation: a self-HSIC that is a rounding error of
        # this (a constant layer, e.g. saturated probabilities) makes CKA undefined rather than a noisy 0
        self.scale_a = np.zeros(n_a)
        self.scale_b = np.zeros(n_b)
        self.batches = 0
        self.samples = 0

    def _prepare(self, feats: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Centred Gram matrices of the layers, flattened, one row per layer, scaled by the estimator's
        normalisation (so that a row product is that batch's HSIC); and the squared norms of the raw Grams."""
        n = len(feats[0])
        rows = []
        scale = []
        for f in feats:
            k = gram(f)
            norm = np.sqrt(n * (n - 3)) if self.unbiased else n - 1
            rows.append((u_center_gram(k) if self.unbiased else center_gram(k)).ravel() / norm)
            scale.append(float(np.sum(k * k)) / norm**2)
        return np.stack(rows), np.asarray(scale)

    def add(self, feats_a: Sequence[np.ndarray], feats_b: Sequence[np.ndarray]) -> None:
        """Add one batch: the features of every layer of model A and of model B on the same samples."""
        a, sa = self._prepare(feats_a)
        b, sb = self._prepare(feats_b)
        self.cross += a @ b.T
        self.self_a += np.einsum("ij,ij->i", a, a)
        self.self_b += np.einsum("ij,ij->i", b, b)
        self.scale_a += sa
        self.scale_b += sb
        self.batches += 1
        self.samples += len(feats_a[0])

    def result(self) -> np.ndarray:
        """The (layers of A × layers of B) CKA matrix; NaN where a layer has no variance to compare (its
        self-HSIC is not positive beyond rounding)."""
        eps = 1e-10
        ok_a = self.self_a > eps * self.scale_a
        ok_b = self.self_b > eps * self.scale_b
        out = np.full_like(self.cross, np.nan)
        ok = np.outer(ok_a, ok_b)
        den = np.sqrt(np.outer(np.where(ok_a, self.self_a, 1.0), np.where(ok_b, self.self_b, 1.0)))
        out[ok] = self.cross[ok] / den[ok]
        return out

    def absorb(self, other: CKAAccumulator) -> None:
        """Add the batches of ``other`` (an accumulator of the same layers; e.g. one per shard, added in batch
        order: the same sums as one accumulator over every batch)."""
        for k in ("cross", "self_a", "self_b", "scale_a", "scale_b", "batches", "samples"):
            setattr(self, k, getattr(self, k) + getattr(other, k))

    def add_sums(self, sums: dict[str, Any]) -> None:
        """Add one batch of the biased estimator from its :func:`feature_sums`, added up over the batch's rows
        (e.g. over shards): ``HSIC(K, L) = ‖XcᵀYc‖²/(n−1)²`` with ``XcᵀYc = XᵀY − sₓs_yᵀ/n`` (the centred Gram
        matrices' inner product ``tr(KHLH)`` read in feature space; ``d × d``, never ``n × n``)."""
        if self.unbiased:
            raise ValueError("feature-space sums give the biased estimator only")
        n = int(sums["n"])
        norm = float(n - 1) ** 2

        def centred(m: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
            return float(np.sum((m - np.outer(a, b) / n) ** 2)) / norm

        sx, sy = sums["sx"], sums["sy"]
        self.cross += np.array([[centred(m, a, b) for m, b in zip(row, sy)] for row, a in zip(sums["xy"], sx)])
        self.self_a += np.array([centred(m, a, a) for m, a in zip(sums["xx"], sx)])
        self.self_b += np.array([centred(m, b, b) for m, b in zip(sums["yy"], sy)])
        self.scale_a += np.array([float(np.sum(m * m)) for m in sums["xx"]]) / norm  # ‖K‖² = ‖XᵀX‖²
        self.scale_b += np.array([float(np.sum(m * m)) for m in sums["yy"]]) / norm
        self.batches += 1
        self.samples += n


def feature_sums(feats_a: Sequence[np.ndarray], feats_b: Sequence[np.ndarray]) -> dict[str, Any]:
    """What :meth:`CKAAccumulator.add_sums` needs from some rows of every layer of model A and of model B: the
    row count, column sums and the products ``XᵀY``, ``XᵀX``, ``YᵀY``; sums over rows, so that the sums of
    several sets of rows (shards) are those of their union."""
    return {"n": len(feats_a[0]), "sx": [f.sum(axis=0) for f in feats_a], "sy": [f.sum(axis=0) for f in feats_b],
            "xx": [f.T @ f for f in feats_a], "yy": [f.T @ f for f in feats_b],
            "xy": [[a.T @ b for b in feats_b] for a in feats_a]}


def linear_cka(x: np.ndarray, y: np.ndarray, *, unbiased: bool = False) -> float:
    """Linear CKA of two representations of the same samples (a one-batch :class:`CKAAccumulator`)."""
    acc = CKAAccumulator(1, 1, unbiased=unbiased)
    acc.add([x], [y])
    return float(acc.result()[0, 0])


# ------------------------------------------------------------------------------------------------ RSA


def rdm_upper(x: np.ndarray) -> np.ndarray:
    """Upper triangle (row-major, without the diagonal) of the representational dissimilarity matrix of
    Kriegeskorte et al. (2008): ``1 − Pearson correlation`` between the representations of two samples
    (``scipy.spatial.distance.pdist(x, "correlation")``). A constant representation correlates 0 with
    everything (distance 1)."""
    z = _standardise_rows(np.asarray(x, dtype=np.float64).reshape(len(x), -1))
    corr = z @ z.T
    iu = np.triu_indices(len(z), k=1)
    return np.asarray(1.0 - corr[iu])


class RSAAccumulator:
    """Representational similarity analysis between layers of two models: Spearman correlation of the
    upper triangles of their RDMs (Kriegeskorte, Mur & Bandettini, "Representational similarity analysis –
    connecting the branches of systems neuroscience", 2008), averaged over batches when there are several."""

    def __init__(self, n_a: int, n_b: int) -> None:
        self.total = np.zeros((n_a, n_b))
        self.count = np.zeros((n_a, n_b))
        self.batches = 0

    @staticmethod
    def _prepare(feats: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Standardised ranks of each layer's RDM, and whether the RDM varies at all (a constant
        representation has a constant RDM, whose rank correlation is undefined)."""
        rdms = np.stack([rdm_upper(f) for f in feats])
        ranks = _standardise_rows(rank_rows(rdms))
        varies = np.ptp(rdms, axis=1) > 1e-9  # correlation distances lie in [0, 2]: an absolute tolerance
        return ranks, varies

    def add(self, feats_a: Sequence[np.ndarray], feats_b: Sequence[np.ndarray]) -> None:
        """Add one batch (at least 3 samples, so that an RDM has more than one entry)."""
        if len(feats_a[0]) < 3:
            return
        a, va = self._prepare(feats_a)
        b, vb = self._prepare(feats_b)
        ok = np.outer(va, vb)
        self.total += np.where(ok, a @ b.T, 0.0)
        self.count += ok
        self.batches += 1

    def absorb(self, other: RSAAccumulator) -> None:
        """Add the batches of ``other`` (see :meth:`CKAAccumulator.absorb`)."""
        self.total, self.count, self.batches = self.total + other.total, self.count + other.count, \
            self.batches + other.batches

    def result(self) -> np.ndarray:
        """The (layers of A × layers of B) RSA matrix (mean over the batches where both RDMs vary; NaN if
        none)."""
        out = np.full_like(self.total, np.nan)
        ok = self.count > 0
        out[ok] = self.total[ok] / self.count[ok]
        return out


# ------------------------------------------------------------------------------------------------ transferability


def encode(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Target labels as codes 0..K-1 and the sorted distinct labels."""
    classes, codes = np.unique(np.asarray(y), return_inverse=True)
    return codes.reshape(-1), classes


def logme(features: np.ndarray, y: np.ndarray, *, max_iter: int = 100, tol: float = 1e-7) -> float:
    """LogME of You, Liu, Wang & Long, "LogME: Practical Assessment of Pre-trained Models for Transfer
    Learning" (ICML 2021).

    For each target class k, with ``t = 1[y = k]`` and features ``F`` (n × D), the Bayesian linear model
    ``t ~ N(Fw, β⁻¹)``, ``w ~ N(0, α⁻¹ I)`` has log evidence
    ``L(α, β) = n/2 log β + D/2 log α − n/2 log 2π − β/2 ‖Fm − t‖² − α/2 ‖m‖² − 1/2 log|A|``
    with ``A = αI + βFᵀF`` and ``m = βA⁻¹Fᵀt``. It is maximised over α, β by MacKay's fixed point
    ``γ = Σᵢ βσᵢ²/(α + βσᵢ²)``, ``α ← γ/‖m‖²``, ``β ← (n − γ)/‖Fm − t‖²`` (σᵢ the singular values of F).
    LogME is the mean over classes of ``max L / n``. One SVD serves every class and every iteration; the
    classes are iterated together as vectors.
    """
    f = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    codes, _ = encode(y)
    n, d = f.shape
    u, s, _vt = np.linalg.svd(f, full_matrices=False)
    sig2 = (s**2)[:, None]  # (r, 1)
    r = len(s)
    t = np.eye(codes.max() + 1)[codes]  # (n, K) one-hot
    z = u.T @ t  # (r, K)
    z2 = z**2
    resid0 = np.clip(np.sum(t * t, axis=0) - z2.sum(axis=0), 0.0, None)  # part of t outside F's span

    def terms(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``A``'s eigenvalues ``α + βσᵢ²``, ``‖m‖²`` and ``‖Fm − t‖²`` for each class."""
        denom = alpha + beta * sig2
        return denom, np.sum(beta**2 * sig2 * z2 / denom**2, axis=0), np.sum(alpha**2 * z2 / denom**2, axis=0) + resid0

    alpha, beta = np.ones(t.shape[1]), np.ones(t.shape[1])
    for _ in range(max_iter):
        denom, mm, res = terms(alpha, beta)
        gamma = np.sum(beta * sig2 / denom, axis=0)
        new_alpha = gamma / np.maximum(mm, 1e-300)
        new_beta = (n - gamma) / np.maximum(res, 1e-300)
        done = np.all(np.abs(np.log(new_alpha / alpha)) < tol) and np.all(np.abs(np.log(new_beta / beta)) < tol)
        alpha, beta = new_alpha, new_beta
        if done:
            break
    denom, mm, res = terms(alpha, beta)
    logdet = np.sum(np.log(denom), axis=0) + (d - r) * np.log(alpha)
    evidence = (n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi)
                - beta / 2 * res - alpha / 2 * mm - logdet / 2)
    return float(np.mean(evidence / n))


def leep(probs: np.ndarray, y: np.ndarray) -> float:
    """LEEP of Nguyen, Hassner, Seeger & Archambeau, "LEEP: A New Measure to Evaluate Transferability of
    Learned Representations" (ICML 2020), from the source model's class probabilities θ(x) (n × Z):
    ``P̂(y, z) = 1/n Σᵢ θ(xᵢ)_z 1[yᵢ = y]``, ``P̂(y | z) = P̂(y, z)/P̂(z)``,
    ``LEEP = 1/n Σᵢ log Σ_z P̂(yᵢ | z) θ(xᵢ)_z``. In (−∞, 0]; −H(Y) for an uninformative source."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 0.0, None)
    p = p / np.maximum(p.sum(axis=1, keepdims=True), 1e-300)
    codes, _ = encode(y)
    n = len(codes)
    onehot = np.eye(codes.max() + 1)[codes]
    joint = onehot.T @ p / n  # (K, Z)
    pz = joint.sum(axis=0)
    cond = np.divide(joint, pz, out=np.zeros_like(joint), where=pz > 0)
    eep = np.sum(cond[codes] * p, axis=1)
    return float(np.mean(np.log(np.maximum(eep, 1e-300))))


def nce(source_labels: np.ndarray, y: np.ndarray) -> float:
    """Negative conditional entropy of Tran, Nguyen & Hassner, "Transferability and Hardness of Supervised
    Classification Tasks" (ICCV 2019): ``NCE = −H(Y | Z) = Σ_{y,z} P̂(y, z) log P̂(y | z)`` with Z the source
    model's predicted class. In [−H(Y), 0] (nats)."""
    codes, _ = encode(y)
    zc, _ = encode(source_labels)
    n = len(codes)
    joint = np.zeros((codes.max() + 1, zc.max() + 1))
    np.add.at(joint, (codes, zc), 1.0 / n)
    pz = joint.sum(axis=0, keepdims=True)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log((joint / np.broadcast_to(pz, joint.shape))[nz])))


def label_entropy(y: np.ndarray) -> float:
    """H(Y) of the empirical label distribution, in nats."""
    codes, _ = encode(y)
    p = np.bincount(codes) / len(codes)
    p = p[p > 0]
    return float(-np.sum(p * np.log(p)))


def hscore(features: np.ndarray, y: np.ndarray) -> float:
    """H-score of Bao, Li, Huang, Chen, Wang & Zheng, "An Information-theoretic Approach to Transferability in
    Task Transfer Learning" (ICIP 2019): ``H(f) = tr(cov(f)⁺ cov(E[f | Y]))`` (population covariances,
    pseudo-inverse). In [0, min(K − 1, rank)]. See :func:`hscore_and_rank`."""
    return hscore_and_rank(features, y)[0]


def hscore_and_rank(features: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    """The H-score and the rank of the centred features, from one thin SVD ``F − μ = USVᵀ``: with U cut to
    the r non-zero singular values, ``H = Σ_k n_k ‖ū_k‖²`` where ū_k is the mean of the rows of U in class k
    (``cov(f)⁺ = V n S⁻² Vᵀ``), which avoids the D × D inverse."""
    f = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    codes, _ = encode(y)
    fc = f - f.mean(axis=0)
    u, s, _vt = np.linalg.svd(fc, full_matrices=False)
    if not len(s) or s[0] == 0:
        return 0.0, 0
    # numpy.linalg.pinv's cut-off: singular values below max(n, D)·eps·σ_max are treated as zero
    keep = s > max(fc.shape) * np.finfo(np.float64).eps * s[0]
    u = u[:, keep]
    k = codes.max() + 1
    counts = np.bincount(codes, minlength=k).astype(np.float64)
    sums = np.zeros((k, u.shape[1]))
    np.add.at(sums, codes, u)
    means = sums / np.maximum(counts, 1)[:, None]
    return float(np.sum(counts * np.sum(means**2, axis=1))), int(keep.sum())


def interleaved_folds(y: np.ndarray, k: int) -> np.ndarray:
    """Stratified fold of each sample: its rank among the samples of its class, modulo ``k`` (deterministic;
    the samples are already a seeded sample)."""
    codes, _ = encode(y)
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(codes), dtype=np.int64)
    rank[order] = np.arange(len(codes)) - np.repeat(starts, counts)
    return rank % k


def ridge_probe_predictions(features: np.ndarray, y: np.ndarray, folds: np.ndarray,
                            alpha: float = 1.0) -> np.ndarray:
    """Held-out predictions (label codes) of the core's standardised ridge probe
    (:mod:`auditor.probes`, scikit-learn's ``RidgeClassifier`` after a ``StandardScaler``)."""
    f = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    codes, _ = encode(y)
    return cross_validated_probe(f, codes, folds, alpha)


# ------------------------------------------------------------------------------------------------ filters


def histogram_divergences(a: np.ndarray, b: np.ndarray, bins: int,
                          pseudo_count: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """KL(a‖b) and Jensen–Shannon divergence (nats) between the distributions of each column of ``a`` and of
    ``b``, estimated by histograms on shared equal-width bins spanning both samples, with ``pseudo_count``
    added to every bin (so that an empty bin does not make KL infinite)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    kl = np.zeros(a.shape[1])
    js = np.zeros(a.shape[1])
    for j in range(a.shape[1]):  # a handful of columns (9 filter coefficients), not samples
        lo = min(a[:, j].min(), b[:, j].min())
        hi = max(a[:, j].max(), b[:, j].max())
        if hi <= lo:
            continue
        edges = np.linspace(lo, hi, bins + 1)
        p = np.histogram(a[:, j], edges)[0] + pseudo_count
        q = np.histogram(b[:, j], edges)[0] + pseudo_count
        p = p / p.sum()
        q = q / q.sum()
        m = (p + q) / 2
        kl[j] = np.sum(p * np.log(p / q))
        js[j] = 0.5 * np.sum(p * np.log(p / m)) + 0.5 * np.sum(q * np.log(q / m))
    return kl, js


def filter_basis(filters: np.ndarray) -> np.ndarray:
    """Orthonormal basis (rows) of the 3×3 filter space from the SVD of the pooled, flattened filters: the
    "eigen-filters" in which Gavrikov & Keuper (CNN Filter DB, CVPR 2022) compare filter distributions."""
    _u, _s, vt = np.linalg.svd(np.asarray(filters, dtype=np.float64), full_matrices=True)
    return vt
