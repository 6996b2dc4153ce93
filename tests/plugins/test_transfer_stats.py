"""Known answers and independent implementations for the numerics of the ``transfer`` plugin."""

from __future__ import annotations

import numpy as np
import pytest
from auditor_transfer import stats as S
from scipy import optimize, stats
from scipy.spatial.distance import pdist
from sklearn.linear_model import RidgeClassifier
from sklearn.metrics import mutual_info_score
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def _hsic_song(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """Unbiased HSIC, Song et al. (2012) eq. 5, written out."""
    n = len(k)
    k = k.copy()
    l = l.copy()  # noqa: E741
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    one = np.ones(n)
    return float((np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
                  - 2 / (n - 2) * one @ k @ l @ one) / (n * (n - 3)))


def _hsic_biased(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    n = len(k)
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(k @ h @ l @ h) / (n - 1) ** 2)


def _cka_direct(x: np.ndarray, y: np.ndarray, hsic) -> float:
    k, l = x @ x.T, y @ y.T  # noqa: E741
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def test_rank_rows_matches_scipy_with_ties() -> None:
    a = np.random.default_rng(0).integers(0, 6, (5, 40)).astype(float)
    np.testing.assert_allclose(S.rank_rows(a), stats.rankdata(a, axis=1))
    np.testing.assert_allclose(S.rank_rows(a[0]), stats.rankdata(a[0]))


@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_known_answers(unbiased: bool) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 12))
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    assert S.linear_cka(x, x, unbiased=unbiased) == pytest.approx(1.0, abs=1e-10)
    assert S.linear_cka(x, x @ q, unbiased=unbiased) == pytest.approx(1.0, abs=1e-10)  # orthogonal transform
    assert S.linear_cka(x, 3.5 * x @ q, unbiased=unbiased) == pytest.approx(1.0, abs=1e-10)  # isotropic scale
    noise = S.linear_cka(rng.normal(size=(1000, 5)), rng.normal(size=(1000, 5)), unbiased=unbiased)
    assert abs(noise) < 0.03


def test_cka_matches_published_formulas() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 7))
    y = x[:, :3] @ rng.normal(size=(3, 9)) + rng.normal(size=(40, 9))
    assert S.linear_cka(x, y) == pytest.approx(_cka_direct(x, y, _hsic_biased), rel=1e-10)
    assert S.linear_cka(x, y, unbiased=True) == pytest.approx(_cka_direct(x, y, _hsic_song), rel=1e-10)


def test_cka_accumulator_matrix_and_minibatches() -> None:
    rng = np.random.default_rng(3)
    xs = [rng.normal(size=(60, 4)), rng.normal(size=(60, 6))]
    ys = [xs[0] @ rng.normal(size=(4, 5)), rng.normal(size=(60, 3)), xs[1][:, :2]]
    acc = S.CKAAccumulator(2, 3, unbiased=False)
    acc.add(xs, ys)
    want = [[_cka_direct(a, b, _hsic_biased) for b in ys] for a in xs]
    np.testing.assert_allclose(acc.result(), want, rtol=1e-10)
    # minibatch estimator (Nguyen et al. 2021): sums of unbiased HSIC over batches
    splits = np.array_split(np.arange(60), 3)
    mb = S.CKAAccumulator(2, 3, unbiased=True)
    for idx in splits:
        mb.add([a[idx] for a in xs], [b[idx] for b in ys])
    for i, a in enumerate(xs):
        for j, b in enumerate(ys):
            kl = sum(_hsic_song(a[s] @ a[s].T, b[s] @ b[s].T) for s in splits)
            kk = sum(_hsic_song(a[s] @ a[s].T, a[s] @ a[s].T) for s in splits)
            ll = sum(_hsic_song(b[s] @ b[s].T, b[s] @ b[s].T) for s in splits)
            assert mb.result()[i, j] == pytest.approx(kl / np.sqrt(kk * ll), rel=1e-9)


def test_rsa_matches_scipy() -> None:
    rng = np.random.default_rng(4)
    a = rng.normal(size=(30, 8))
    b = a @ rng.normal(size=(8, 5)) + 0.5 * rng.normal(size=(30, 5))
    np.testing.assert_allclose(S.rdm_upper(a), pdist(a, "correlation"), atol=1e-12)
    acc = S.RSAAccumulator(1, 2)
    acc.add([a], [b, a])
    want = stats.spearmanr(pdist(a, "correlation"), pdist(b, "correlation")).statistic
    assert acc.result()[0, 0] == pytest.approx(want, rel=1e-10)
    assert acc.result()[0, 1] == pytest.approx(1.0)


def _logme_direct(f: np.ndarray, y: np.ndarray) -> float:
    """The evidence of You et al. (2021) eq. 2 written with matrices, maximised by a generic optimiser."""
    n, d = f.shape
    values = []
    for k in np.unique(y):
        t = (y == k).astype(float)

        def neg(p: np.ndarray, t: np.ndarray = t) -> float:
            a, b = np.exp(p)
            big_a = a * np.eye(d) + b * f.T @ f
            m = b * np.linalg.solve(big_a, f.T @ t)
            ev = (n / 2 * np.log(b) + d / 2 * np.log(a) - n / 2 * np.log(2 * np.pi)
                  - b / 2 * np.sum((f @ m - t) ** 2) - a / 2 * m @ m - np.linalg.slogdet(big_a)[1] / 2)
            return -ev

        r = optimize.minimize(neg, [0.0, 0.0], method="Nelder-Mead",
                              options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 4000})
        values.append(-r.fun / n)
    return float(np.mean(values))


@pytest.mark.parametrize("n,d", [(60, 5), (30, 45)])
def test_logme_matches_direct_maximisation(n: int, d: int) -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, n)
    f = rng.normal(size=(n, d))
    f[:, 0] += 2 * y
    assert S.logme(f, y) == pytest.approx(_logme_direct(f, y), abs=1e-5)


def test_leep_matches_formula_written_out() -> None:
    rng = np.random.default_rng(6)
    n, z, k = 25, 4, 3
    theta = rng.dirichlet(np.ones(z), size=n)
    y = rng.integers(0, k, n)
    joint = np.zeros((k, z))
    for i in range(n):
        for j in range(z):
            joint[y[i], j] += theta[i, j] / n
    pz = joint.sum(axis=0)
    want = np.mean([np.log(sum(joint[y[i], j] / pz[j] * theta[i, j] for j in range(z))) for i in range(n)])
    assert S.leep(theta, y) == pytest.approx(want, rel=1e-12)
    # an uninformative source (the same probabilities for every sample) scores -H(Y)
    flat = np.tile(theta[:1], (n, 1))
    assert S.leep(flat, y) == pytest.approx(-S.label_entropy(y), rel=1e-10)
    assert S.label_entropy(y) == pytest.approx(stats.entropy(np.bincount(y)), rel=1e-12)


def test_nce_is_mutual_information_minus_entropy() -> None:
    rng = np.random.default_rng(7)
    y = rng.integers(0, 4, 200)
    z = np.where(rng.random(200) < 0.6, y, rng.integers(0, 5, 200))
    assert S.nce(z, y) == pytest.approx(mutual_info_score(y, z) - stats.entropy(np.bincount(y)), rel=1e-10)
    assert S.nce(y, y) == pytest.approx(0.0, abs=1e-12)  # a source that predicts the label exactly


def test_hscore_matches_pinv_formula_and_bound() -> None:
    rng = np.random.default_rng(8)
    y = rng.integers(0, 3, 50)
    f = rng.normal(size=(50, 6))
    f[:, 1] += y
    cf = np.cov(f, rowvar=False, bias=True)
    g = np.stack([f[y == c].mean(axis=0) for c in range(3)])[y]
    want = np.trace(np.linalg.pinv(cf) @ np.cov(g, rowvar=False, bias=True))
    assert S.hscore(f, y) == pytest.approx(want, rel=1e-9)
    # features that are the one-hot label reach the bound K - 1
    assert S.hscore(np.eye(3)[y], y) == pytest.approx(2.0, rel=1e-9)


def test_interleaved_folds_are_stratified() -> None:
    y = np.random.default_rng(9).integers(0, 3, 101)
    folds = S.interleaved_folds(y, 4)
    for c in range(3):
        counts = np.bincount(folds[y == c], minlength=4)
        assert counts.max() - counts.min() <= 1


@pytest.mark.parametrize("k,d", [(2, 5), (4, 6), (3, 150)])
def test_ridge_probe_matches_sklearn(k: int, d: int) -> None:
    rng = np.random.default_rng(10 + k)
    y = rng.integers(0, k, 90)
    f = rng.normal(size=(90, d))
    f[:, 0] += y
    f[:, 2] = 3.0  # a constant feature (StandardScaler leaves it unscaled)
    folds = S.interleaved_folds(y, 5)
    cv = [(np.flatnonzero(folds != i), np.flatnonzero(folds == i)) for i in range(5)]
    want = cross_val_predict(make_pipeline(StandardScaler(), RidgeClassifier(alpha=2.0)), f, y, cv=cv)
    np.testing.assert_array_equal(S.ridge_probe_predictions(f, y, folds, 2.0), want)


def test_histogram_divergences_match_scipy_and_gaussian_kl() -> None:
    rng = np.random.default_rng(11)
    a = rng.normal(0, 1, (40000, 2))
    b = rng.normal(0, 2, (40000, 2))
    kl, js = S.histogram_divergences(a, b, 40)
    for j in range(2):
        edges = np.linspace(min(a[:, j].min(), b[:, j].min()), max(a[:, j].max(), b[:, j].max()), 41)
        p = np.histogram(a[:, j], edges)[0] + 0.5
        q = np.histogram(b[:, j], edges)[0] + 0.5
        assert kl[j] == pytest.approx(stats.entropy(p, q), rel=1e-10)
        m = (p / p.sum() + q / q.sum()) / 2
        assert js[j] == pytest.approx(0.5 * stats.entropy(p, m) + 0.5 * stats.entropy(q, m), rel=1e-10)
        # KL(N(0,1) || N(0,4)) = ln 2 + 1/8 - 1/2 in closed form
        assert kl[j] == pytest.approx(np.log(2) + 1 / 8 - 1 / 2, abs=0.03)
    same, same_js = S.histogram_divergences(a, a, 40)
    assert np.allclose(same, 0) and np.allclose(same_js, 0)


def test_constant_layers_are_undefined_not_zero() -> None:
    rng = np.random.default_rng(12)
    x = rng.normal(size=(20, 4))
    const = np.tile(rng.normal(size=(1, 3)), (20, 1)) + 1e-9 * rng.normal(size=(20, 3))
    acc = S.CKAAccumulator(1, 2, unbiased=False)
    acc.add([x], [x, const])
    rsa = S.RSAAccumulator(1, 2)
    rsa.add([x], [x, np.tile([[1.0, 0.0, 0.0]], (20, 1))])
    assert acc.result()[0, 0] == pytest.approx(1.0) and np.isnan(acc.result()[0, 1])
    assert rsa.result()[0, 0] == pytest.approx(1.0) and np.isnan(rsa.result()[0, 1])
