"""The ``transfer`` checks through real audits (ONNX Runtime, the spec, the runner), each number compared with
an independent computation on the same samples (numpy forward passes, scipy, scikit-learn)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import auditor_transfer
import numpy as np
import pytest
import yaml
from scipy import stats
from scipy.spatial.distance import pdist
from sklearn.linear_model import RidgeClassifier
from sklearn.metrics import mutual_info_score
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from transfer_helpers import MLP, digits, train_mlp, write_conv_stack, write_linear_image

from auditor import hookimpl
from auditor.testing import run_audit


@dataclass
class World:
    """Three MLPs on digits: two trained normally (different seeds), one on shuffled labels."""

    root: Path
    x: np.ndarray
    y: np.ndarray
    a: MLP
    b: MLP
    s: MLP
    paths: dict[str, Path]
    data: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("transfer")
    xtr, ytr = digits(400)
    a = train_mlp(xtr, ytr, seed=0)
    b = train_mlp(xtr, ytr, seed=1)
    s = train_mlp(xtr, np.random.default_rng(5).permutation(ytr), seed=2)
    xall, yall = digits(700)
    x, y = xall[400:], yall[400:]  # 300 held-out samples
    paths = {k: m.write(root / f"{k}.onnx") for k, m in {"a": a, "b": b, "s": s}.items()}
    np.savez(root / "d.npz", x=x, y=y)
    return World(root, x, y, a, b, s, paths, root / "d.npz")


def audit(world: World, checks: list[dict[str, Any]], refs: dict[str, str], model: str = "a",
          plugins: tuple[object, ...] = (auditor_transfer,), entry_points: bool = False,
          data: Path | None = None) -> Any:
    """A real audit of ``model`` against the named references (only this plugin loaded unless asked)."""
    spec: dict[str, Any] = {"checks": checks, "references": {k: {"path": str(world.paths[v])} for k, v in refs.items()}}
    return run_audit(spec, model=world.paths[model], data=data or world.data, workdir=world.root,
                     plugins=plugins, entry_points=entry_points)


def _cka(x: np.ndarray, y: np.ndarray) -> float:
    """Biased linear CKA written as tr(KHLH)/sqrt(tr(KHKH) tr(LHLH))."""
    n = len(x)
    h = np.eye(n) - 1.0 / n
    k, l = x @ x.T, y @ y.T  # noqa: E741
    return float(np.trace(k @ h @ l @ h) / np.sqrt(np.trace(k @ h @ k @ h) * np.trace(l @ h @ l @ h)))


def test_similarity_numbers_and_trained_beats_shuffled(world: World) -> None:
    res = audit(world, [{"use": "transfer.similarity"}], {"same": "b", "shuffled": "s"})
    res.assert_status("transfer.similarity", "info")
    m = res.metrics("transfer.similarity")
    ha, hb, hs = world.a.hidden(world.x), world.b.hidden(world.x), world.s.hidden(world.x)
    same, shuf = m["by_reference"]["same"], m["by_reference"]["shuffled"]
    assert same["model_layers"] == ["hidden"] and same["reference_layers"] == ["hidden"]
    assert same["cka"] == pytest.approx(_cka(ha, hb), abs=1e-5)
    assert shuf["cka"] == pytest.approx(_cka(ha, hs), abs=1e-5)
    assert m["cka"] == same["cka"] and same["cka_matrix"] == [[same["cka"]]]
    rsa = stats.spearmanr(pdist(ha, "correlation"), pdist(hb, "correlation")).statistic
    assert same["rsa"] == pytest.approx(rsa, abs=1e-4)
    # two models trained on the same task are more alike than one trained on shuffled labels
    assert same["cka"] > shuf["cka"] + 0.2 and same["rsa"] > shuf["rsa"]
    pa, pb = world.a.probs(world.x).argmax(1), world.b.probs(world.x).argmax(1)
    ok_a, ok_b = pa == world.y, pb == world.y
    assert same["agreement"] == pytest.approx(np.mean(pa == pb))
    assert same["model_accuracy"] == pytest.approx(ok_a.mean())
    assert same["model_only_correct"] == pytest.approx(np.mean(ok_a & ~ok_b))
    assert same["reference_only_correct"] == pytest.approx(np.mean(ok_b & ~ok_a))
    assert same["both_wrong"] == pytest.approx(np.mean(~ok_a & ~ok_b))
    assert m["n"] == 300 and m["batches"] == 1 and m["unbiased"] is False


def test_similarity_with_itself_is_one_and_all_layers(world: World) -> None:
    res = audit(world, [{"use": "transfer.similarity", "with": {"layers": "all", "max_layers": 3}}], {"me": "a"})
    m = res.metrics("transfer.similarity")
    assert m["cka"] == pytest.approx(1.0, abs=1e-6) and m["rsa"] == pytest.approx(1.0, abs=1e-6)
    assert m["agreement"] == 1.0 and m["model_only_correct"] == 0.0
    # 4 activation-producing nodes (fc1, relu1, fc2, softmax) subsampled to 3 evenly (indices 0, 2, 3)
    assert m["model_layers"] == ["pre", "logits", "probs"]
    mat = np.array(m["cka_matrix"])
    np.testing.assert_allclose(np.diag(mat), 1.0, atol=1e-6)
    assert mat[0, 2] == pytest.approx(_cka(world.a.pre(world.x), world.a.probs(world.x)), abs=1e-5)


def test_similarity_minibatch_estimator(world: World) -> None:
    res = audit(world, [{"use": "transfer.similarity", "with": {"minibatch": 100, "rsa": False}}], {"r": "b"})
    m = res.metrics("transfer.similarity")
    assert m["batches"] == 3 and m["unbiased"] is True and "rsa" not in m
    ha, hb = world.a.hidden(world.x), world.b.hidden(world.x)

    def song(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
        n = len(k)
        k, l = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))  # noqa: E741
        return float(np.sum(k * l) + k.sum() * l.sum() / ((n - 1) * (n - 2)) - 2 / (n - 2) * k.sum(0) @ l.sum(0))

    parts = np.array_split(np.arange(300), 3)
    g = [(ha[p] @ ha[p].T, hb[p] @ hb[p].T) for p in parts]
    want = sum(song(k, r) for k, r in g) / np.sqrt(sum(song(k, k) for k, _ in g) * sum(song(r, r) for _, r in g))
    assert m["cka"] == pytest.approx(want, abs=1e-5)


def test_transferability_matches_sklearn_and_direct_formulas(world: World) -> None:
    parity = (world.y % 2).astype(np.int64)  # a new target task with other classes than the model's
    np.savez(world.root / "parity.npz", x=world.x, y=parity)
    res = audit(world, [{"use": "transfer.transferability", "with": {"folds": 4}}], {"shuffled": "s"},
                data=world.root / "parity.npz")
    res.assert_status("transfer.transferability", "info")
    m = res.metrics("transfer.transferability")
    f = world.a.hidden(world.x)
    theta = world.a.probs(world.x)
    assert m["layer"] == "hidden" and m["n_classes"] == 2 and m["feature_dim"] == 24
    assert m["label_entropy"] == pytest.approx(stats.entropy(np.bincount(parity)))
    assert m["chance_accuracy"] == pytest.approx(np.bincount(parity).max() / 300)
    # LEEP, Nguyen et al. (2020), from the definition
    joint = np.stack([theta[parity == c].sum(0) for c in (0, 1)]) / 300
    eep = (joint / joint.sum(0))[parity] * theta
    assert m["leep"] == pytest.approx(np.mean(np.log(eep.sum(1))), abs=1e-5)
    # NCE = I(Y; Z) - H(Y)
    z = theta.argmax(1)
    assert m["nce"] == pytest.approx(mutual_info_score(parity, z) - stats.entropy(np.bincount(parity)), abs=1e-6)
    # H-score with covariances and a pseudo-inverse
    cg = np.cov(np.stack([f[parity == c].mean(0) for c in (0, 1)])[parity], rowvar=False, bias=True)
    assert m["hscore"] == pytest.approx(np.trace(np.linalg.pinv(np.cov(f, rowvar=False, bias=True)) @ cg), rel=1e-3)
    assert m["hscore_max"] == 1
    # linear probe: sklearn on the same stratified interleaved folds
    folds = np.empty(300, dtype=int)
    for c in (0, 1):
        idx = np.flatnonzero(parity == c)
        folds[idx] = np.arange(len(idx)) % 4
    cv = [(np.flatnonzero(folds != i), np.flatnonzero(folds == i)) for i in range(4)]
    pred = cross_val_predict(make_pipeline(StandardScaler(), RidgeClassifier()), f, parity, cv=cv)
    assert m["probe_accuracy"] == pytest.approx(np.mean(pred == parity), abs=1 / 300 + 1e-9)
    # LogME: the evidence maximised by a generic optimiser (see test_transfer_stats) on the same features
    from test_transfer_stats import _logme_direct

    assert m["logme"] == pytest.approx(_logme_direct(f, parity), abs=1e-4)
    # the model trained on real labels transfers better than the one trained on shuffled labels
    shuf = m["by_model"]["shuffled"]
    assert m["probe_accuracy"] > shuf["probe_accuracy"] and m["logme"] > shuf["logme"]
    assert m["leep"] > shuf["leep"] and m["nce"] > shuf["nce"]


def _occlusion(mlp_probs: Any, x: np.ndarray, patch: int, shape: tuple[int, ...] | None = None,
               axes: tuple[int, int] | None = None) -> np.ndarray:
    """Occlusion maps written as loops over patches (the independent computation); ``mlp_probs`` gives the
    explained score of every class."""
    p0 = mlp_probs(x)
    t = p0.argmax(1)
    base = p0[np.arange(len(x)), t]
    if shape is None:
        cols = []
        for j in range(0, x.shape[1], patch):
            xo = x.copy()
            xo[:, j:j + patch] = 0
            cols.append(base - mlp_probs(xo)[np.arange(len(x)), t])
        return np.stack(cols, 1)
    assert axes is not None
    h, w = x.shape[axes[0]], x.shape[axes[1]]
    cols = []
    for i in range(0, h, patch):
        for j in range(0, w, patch):
            xo = x.copy()
            sl: list[Any] = [slice(None)] * 4
            sl[axes[0]], sl[axes[1]] = slice(i, i + patch), slice(j, j + patch)
            xo[tuple(sl)] = 0
            cols.append(base - mlp_probs(xo)[np.arange(len(x)), t])
    return np.stack(cols, 1)


def _dist(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    rho = [stats.spearmanr(u, v).statistic for u, v in zip(a, b)]
    return float(np.mean(1 - cos)), float(np.mean(rho))


def test_attribution_distance_occlusion_vector_input(world: World) -> None:
    check = {"use": "transfer.attribution_distance", "with": {"method": "occlusion", "limit": 20, "patch": 2}}
    res = audit(world, [check], {"same": "b", "me": "a"})
    m = res.metrics("transfer.attribution_distance")
    assert m["by_reference"]["me"]["distance"] == pytest.approx(0.0, abs=1e-6)
    assert m["by_reference"]["me"]["rank_correlation"] == pytest.approx(1.0, abs=1e-6)
    # the independent computation on every row (limit 300 = all rows, so the sample is the data)
    def logits(mlp: MLP) -> Any:
        return lambda v: mlp.hidden(v) @ mlp.w2 + mlp.b2

    ma = _occlusion(logits(world.a), world.x.astype(np.float64), 2)
    mb = _occlusion(logits(world.b), world.x.astype(np.float64), 2)
    assert m["map_size"] == 32 and m["method"] == "occlusion"
    res_all = audit(world, [{**check, "with": {**check["with"], "limit": 300}}], {"same": "b"})
    m_all = res_all.metrics("transfer.attribution_distance")
    d, rho = _dist(ma, mb)
    assert m_all["n"] == 300
    assert m_all["distance"] == pytest.approx(d, abs=1e-4)
    assert m_all["rank_correlation"] == pytest.approx(rho, abs=1e-3)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_attribution_distance_occlusion_images(tmp_path: Path, layout: str) -> None:
    rng = np.random.default_rng(0)
    shape = (2, 8, 8) if layout == "NCHW" else (8, 8, 2)
    axes = (2, 3) if layout == "NCHW" else (1, 2)
    x = rng.normal(size=(12, *shape)).astype(np.float32)
    # small weights: probabilities that do not saturate, so that probability maps are not rounding noise
    wa, wb = 0.1 * rng.normal(size=(128, 3)), 0.1 * rng.normal(size=(128, 3))
    wb[:64] = wa[:64]
    write_linear_image(tmp_path / "a.onnx", wa, np.zeros(3), shape)
    write_linear_image(tmp_path / "b.onnx", wb, np.zeros(3), shape)
    np.savez(tmp_path / "d.npz", x=x)

    def probs(w: np.ndarray) -> Any:
        def f(v: np.ndarray) -> np.ndarray:
            z = v.reshape(len(v), -1) @ w
            e = np.exp(z - z.max(1, keepdims=True))
            return e / e.sum(1, keepdims=True)
        return f

    spec = {"checks": [{"use": "transfer.attribution_distance",
                        "with": {"method": "occlusion", "score": "probability"}}],
            "reference": {"path": str(tmp_path / "b.onnx")}}
    res = run_audit(spec, model=tmp_path / "a.onnx", data=tmp_path / "d.npz", workdir=tmp_path,
                    plugins=[auditor_transfer], entry_points=False)
    m = res.metrics("transfer.attribution_distance")
    x64 = x.astype(np.float64)
    d, rho = _dist(_occlusion(probs(wa), x64, 1, shape, axes), _occlusion(probs(wb), x64, 1, shape, axes))
    assert m["map_size"] == 64  # default patch: an eighth of the 8-pixel side
    assert m["distance"] == pytest.approx(d, abs=1e-4)
    assert m["rank_correlation"] == pytest.approx(rho, abs=1e-3)


class _FakeTorchBackend:
    """Implements the agreed torch-backend interface for a linear softmax model (gradients in closed form)."""

    def __init__(self, w: np.ndarray) -> None:
        self.w = w

    def input_gradients(self, x: np.ndarray, targets: np.ndarray, *, of: str = "logit") -> np.ndarray:
        assert of == "logit"
        return self.w[:, targets].T.reshape(x.shape)


def test_attribution_distance_gradient_times_input(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 10)).astype(np.float32)
    wa, wb = rng.normal(size=(10, 3)), rng.normal(size=(10, 3))
    from auditor.hookspecs import GRADIENTS, offers
    from auditor.testing import make_linear_classifier

    pa = make_linear_classifier(tmp_path / "a.onnx", wa, np.zeros(3))
    pb = make_linear_classifier(tmp_path / "b.onnx", wb, np.zeros(3))
    np.savez(tmp_path / "d.npz", x=x)
    weights = {str(pa): wa.astype(np.float32).astype(np.float64), str(pb): wb.astype(np.float32).astype(np.float64)}

    class FakeTorchPlugin:
        @hookimpl
        def auditor_register_backends(self) -> dict[str, Any]:
            # offers the gradients capability, which is what the check asks for (not a plugin's name)
            return {"torch": offers(GRADIENTS)(lambda handle: _FakeTorchBackend(weights[str(handle.path)]))}

    spec = {"checks": [{"use": "transfer.attribution_distance"}], "reference": {"path": str(pb)}}
    res = run_audit(spec, model=pa, data=tmp_path / "d.npz", workdir=tmp_path,
                    plugins=[auditor_transfer, FakeTorchPlugin()], entry_points=False)
    m = res.metrics("transfer.attribution_distance")
    assert m["method"] == "gradient×input"
    ga = x * wa[:, (x @ wa).argmax(1)].T
    gb = x * wb[:, (x @ wb).argmax(1)].T
    d, rho = _dist(ga, gb)
    assert m["distance"] == pytest.approx(d, abs=1e-5) and m["rank_correlation"] == pytest.approx(rho, abs=1e-6)


def test_filter_shift(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    k1 = [rng.normal(0, 1, (32, 2, 3, 3)), rng.normal(0, 1, (64, 32, 3, 3))]
    write_conv_stack(tmp_path / "a.onnx", k1)
    write_conv_stack(tmp_path / "perm.onnx", [k[rng.permutation(len(k))] for k in k1])  # same filters, reordered
    wide = [rng.normal(0, 2, (32, 2, 3, 3)), rng.normal(0, 2, (64, 32, 3, 3))]
    write_conv_stack(tmp_path / "wide.onnx", wide)
    four = [rng.normal(0, 1, (8, 2, 3, 3)), rng.normal(0, 1, (8, 8, 3, 3)), rng.normal(0, 1, (8, 8, 3, 3)),
            rng.normal(0, 1, (8, 8, 3, 3))]
    write_conv_stack(tmp_path / "four.onnx", four)
    spec = {"checks": [{"use": "transfer.filter_shift", "gate": {"mean_js": {"max": 0.05}}}],
            "references": {n: {"path": str(tmp_path / f"{n}.onnx")} for n in ("perm", "wide", "four")}}
    res = run_audit(spec, model=tmp_path / "a.onnx", workdir=tmp_path,  # weights only: no data
                    plugins=[auditor_transfer], entry_points=False)
    m = res.metrics("transfer.filter_shift")
    res.assert_status("transfer.filter_shift", "pass")  # headline: the permuted copy
    perm, wide_m, four_m = (m["by_reference"][k] for k in ("perm", "wide", "four"))
    assert perm["mean_kl"] == pytest.approx(0.0, abs=1e-12) and perm["max_js"] == pytest.approx(0.0, abs=1e-12)
    assert m["mean_js"] == perm["mean_js"]
    # per depth, the independent computation: eigen-filter basis by SVD, histograms, scipy's KL
    for d, (km, kw) in enumerate(zip(k1, wide)):
        fm, fw = km.astype(np.float32).reshape(-1, 9), kw.astype(np.float32).reshape(-1, 9)
        vt = np.linalg.svd(np.concatenate([fm, fw]).astype(np.float64))[2]
        cm, cw = fm @ vt.T, fw @ vt.T
        bins = int(np.clip(np.sqrt(len(fm)), 5, 50))
        kls = []
        for j in range(9):
            edges = np.linspace(min(cm[:, j].min(), cw[:, j].min()), max(cm[:, j].max(), cw[:, j].max()), bins + 1)
            kls.append(stats.entropy(np.histogram(cm[:, j], edges)[0] + 0.5, np.histogram(cw[:, j], edges)[0] + 0.5))
        assert wide_m["per_depth"][d]["kl"] == pytest.approx(np.mean(kls), rel=1e-6)
    # Gaussian filters with twice the spread: KL(N(0,1)||N(0,4)) = ln 2 - 3/8 ≈ 0.318 per coefficient
    assert wide_m["per_depth"][1]["kl"] == pytest.approx(np.log(2) - 0.375, abs=0.06)
    # 2 layers against 4: compared at the same relative depth
    assert four_m["n_depths"] == 2
    assert four_m["per_depth"][0]["reference_layers"] == ["conv0", "conv1"]
    assert four_m["per_depth"][1]["model_layers"] == ["conv1"]
    res_fail = run_audit({**spec, "checks": [{"use": "transfer.filter_shift", "with": {"reference": "wide"},
                                              "gate": {"mean_js": {"max": 0.05}}}]},
                         model=tmp_path / "a.onnx", workdir=tmp_path, plugins=[auditor_transfer], entry_points=False)
    res_fail.assert_status("transfer.filter_shift", "fail")


def _other_plugins() -> list[str]:
    """Installed plugins other than this one: switched off in the end-to-end tests so that the installed
    ``transfer`` entry point is what runs, whatever state the other plugins are in (and no torch backend
    changes what method 'auto' picks)."""
    from importlib.metadata import entry_points

    return sorted(ep.name for ep in entry_points(group="auditor") if ep.name != "transfer")


def test_installed_entry_point(world: World) -> None:
    res = run_audit({"checks": [{"use": "transfer.similarity", "with": {"rsa": False}}],
                     "reference": {"path": str(world.paths["b"])}},
                    model=world.paths["a"], data=world.data, workdir=world.root, entry_points=True,
                    disable=_other_plugins())
    res.assert_status("transfer.similarity", "info")
    assert res.check("transfer.similarity").plugin == "transfer"
    assert res.metrics("transfer.similarity")["cka"] == pytest.approx(
        _cka(world.a.hidden(world.x), world.b.hidden(world.x)), abs=1e-5)


def test_cli_run_with_gates(world: World) -> None:
    spec = {"version": 1, "model": {"path": str(world.paths["a"])}, "data": {"path": str(world.data)},
            "reference": {"path": str(world.paths["b"])},
            "checks": [{"use": "transfer.similarity", "gate": {"cka": {"min": 0.5}, "agreement": {"min": 0.5}}},
                       {"use": "transfer.transferability", "with": {"include_references": False},
                        "gate": {"probe_accuracy": {"min": 0.5}}}],
            "report": {"dir": str(world.root / "reports"), "formats": ["json"]}}
    path = world.root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    off = [a for name in _other_plugins() for a in ("--disable", name)]
    ok = subprocess.run([sys.executable, "-m", "auditor.cli", "run", str(path), "-q", *off], capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    spec["checks"][0]["gate"] = {"cka": {"min": 0.999}}
    path.write_text(yaml.safe_dump(spec))
    bad = subprocess.run([sys.executable, "-m", "auditor.cli", "run", str(path), "-q", *off],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1, bad.stdout + bad.stderr
