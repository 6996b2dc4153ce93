"""robustness.noise: known answers (a linear model's flip probability in closed form, scipy's blur), a model
trained with noise augmentation ranked more robust, any image layout, sampling, seeds."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from auditor_robustness.noise import blur, corrupt, curve_area
from robustness_helpers import audit, binary_linear, export_mlp, images, save, tiny_cnn

from auditor.testing import make_linear_classifier, run_audit


def phi(z: np.ndarray) -> np.ndarray:
    """Standard normal CDF."""
    return 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))


def test_gaussian_flip_rate_is_the_closed_form_probability_for_a_linear_model(tmp_path: Path) -> None:
    # z1 − z0 = w·x + b; under x + n, n ~ N(0, σ²I): the margin is N(m, σ²‖w‖²), so
    # P(flip) = Φ(−|m| / (σ‖w‖)); with every clean prediction correct, accuracy = 1 − flip rate.
    r = np.random.default_rng(0)
    w, b = r.normal(size=6), 0.3
    x = r.normal(size=(3000, 6)).astype(np.float32)
    m = x.astype(np.float64) @ w + b
    y = (m > 0).astype(np.int64)
    model = binary_linear(tmp_path, w, b)
    sig = [0.1, 0.3, 1.0]
    res = audit(tmp_path, [{"use": "robustness.noise", "with": {"sigma": sig, "repeats": 4, "limit": None}}],
                model, save(tmp_path, "d.npz", x=x, y=y))
    res.assert_status("robustness.noise", "info")
    met = res.metrics("robustness.noise")
    assert met["clean_accuracy"] == 1.0 and met["n"] == 3000
    for point, s in zip(met["curve"], sig):
        expected = float(np.mean(phi(-np.abs(m) / (s * np.linalg.norm(w)))))
        se = math.sqrt(expected * (1 - expected) / (3000 * 4))
        assert point["sigma"] == s
        assert point["flip_rate"] == pytest.approx(expected, abs=5 * se + 1e-3)
        assert point["accuracy"] == pytest.approx(1 - point["flip_rate"], abs=1e-12)
    assert met["accuracy_drop"] == pytest.approx(1 - met["curve"][-1]["accuracy"])
    assert met["worst_sigma"] == 1.0
    accs = [1.0] + [c["accuracy"] for c in met["curve"]]
    assert met["accuracy_auc"] == pytest.approx(np.trapezoid(accs, [0.0, *sig]) / 1.0)


def test_feature_noise_is_scaled_by_each_columns_std(tmp_path: Path) -> None:
    # the model reads column 2 only, whose std is 50; feature noise of s column-stds on it flips with
    # probability Φ(−|m| / (s · std₂ · |w₂|)), whatever the other columns' scales.
    r = np.random.default_rng(1)
    x = (r.normal(size=(4000, 4)) * np.array([1.0, 1000.0, 50.0, 0.01])).astype(np.float32)
    w = np.array([0.0, 0.0, 0.02, 0.0])
    model = binary_linear(tmp_path, w, 0.1)
    m = x.astype(np.float64) @ w + 0.1
    res = audit(tmp_path, [{"use": "robustness.noise", "with": {"kind": "feature", "sigma": [0.2, 1.0],
                                                                "limit": None, "repeats": 3}}],
                model, save(tmp_path, "d.npz", x=x))
    met = res.metrics("robustness.noise")
    std2 = float(x[:, 2].astype(np.float64).std())
    for point in met["curve"]:
        expected = float(np.mean(phi(-np.abs(m) / (point["sigma"] * std2 * 0.02))))
        assert point["flip_rate"] == pytest.approx(expected, abs=0.01)
    assert met["clean_accuracy"] is None and "accuracy_drop" not in met  # no labels: flip rate only
    assert any("no labels" in n for n in res.check("robustness.noise").notes)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_a_model_trained_with_noise_augmentation_ranks_more_robust(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.3, random_state=0, stratify=d.target)
    r = np.random.default_rng(0)
    xaug = np.clip(np.concatenate([xtr] + [xtr + r.normal(0, 0.3, xtr.shape) for _ in range(4)]), 0, 1)
    yaug = np.tile(ytr, 5)
    plain = MLPClassifier((32,), max_iter=300, random_state=0).fit(xtr, ytr)
    noisy = MLPClassifier((32,), max_iter=300, random_state=0).fit(xaug, yaug)
    data = save(tmp_path, "test.npz", x=xte, y=yte)
    spec = [{"use": "robustness.noise", "with": {"sigma": [0.1, 0.2, 0.3, 0.4], "clip": [0, 1]}}]
    m_plain = audit(tmp_path, spec, export_mlp(plain, tmp_path / "plain.onnx"), data).metrics("robustness.noise")
    m_noisy = audit(tmp_path, spec, export_mlp(noisy, tmp_path / "noisy.onnx"), data).metrics("robustness.noise")
    assert m_noisy["accuracy_drop"] < m_plain["accuracy_drop"] - 0.05
    assert m_noisy["flip_rate_auc"] < m_plain["flip_rate_auc"]
    assert m_noisy["curve"][-1]["accuracy"] > m_plain["curve"][-1]["accuracy"]


@pytest.mark.parametrize("kind", ["gaussian", "uniform", "salt_pepper", "blur", "brightness", "contrast"])
def test_image_corruptions_give_the_same_numbers_in_either_layout(tmp_path: Path, kind: str) -> None:
    x = images(120)
    y = np.argmax(np.random.default_rng(3).random((120, 4)), axis=1)
    nchw = tiny_cnn(tmp_path / "nchw.onnx", "NCHW", gain=6.0)
    nhwc = tiny_cnn(tmp_path / "nhwc.onnx", "NHWC", gain=6.0)
    spec = [{"use": "robustness.noise", "with": {"kind": kind}}]
    a = audit(tmp_path, spec, nchw, save(tmp_path, "a.npz", x=x, y=y)).metrics("robustness.noise")
    b = audit(tmp_path, spec, nhwc, save(tmp_path, "b.npz", x=x.transpose(0, 2, 3, 1), y=y)).metrics("robustness.noise")
    assert a["curve"] == b["curve"]
    assert a["max_flip_rate"] > 0  # the sweep does perturb


def test_image_range_is_inferred_and_corruptions_stay_inside(tmp_path: Path) -> None:
    x = images(50)
    model = tiny_cnn(tmp_path / "m.onnx")
    res = audit(tmp_path, [{"use": "robustness.noise", "with": {"kind": "brightness", "severity": [0.5]}}],
                model, save(tmp_path, "d.npz", x=x))
    assert "inputs clipped to [0, 1] (inferred from the data)" in res.check("robustness.noise").notes


def test_blur_is_scipys_gaussian_filter() -> None:
    from scipy import ndimage

    x = np.random.default_rng(0).random((3, 2, 9, 7)).astype(np.float32)
    for s in (0.5, 1.0, 2.5):  # a radius beyond the image mirrors again, as scipy's "reflect" does
        want = ndimage.gaussian_filter(x.astype(np.float64), sigma=(0, 0, s, s), mode="reflect")
        assert blur(x, s) == pytest.approx(want, abs=1e-6)


def test_corruptions_known_values() -> None:
    r = np.random.default_rng(0)
    x = r.random((400, 2, 6, 6)).astype(np.float32)
    std = np.ones_like(x[0])
    kw = {"value_lo": 0.0, "value_hi": 1.0, "span": 2.0, "column_std": std}
    assert corrupt("brightness", x, 0.1, r, **kw) == pytest.approx(x + 0.2, abs=1e-6)
    flat = corrupt("contrast", x, 1.0, r, **kw)  # all contrast removed: each channel its mean
    assert flat == pytest.approx(np.broadcast_to(x.mean(axis=(2, 3), keepdims=True), x.shape), abs=1e-6)
    sp = corrupt("salt_pepper", x, 0.2, r, **kw)
    changed = np.any(sp != x, axis=1)  # whole pixels (all channels) change together
    assert changed.mean() == pytest.approx(0.2, abs=0.01)
    hit = sp.transpose(0, 2, 3, 1)[changed]  # (pixels, channels): set to the range's ends, all channels alike
    assert set(np.unique(hit)) == {0.0, 1.0} and np.all(hit == hit[:, :1])
    g = corrupt("gaussian", np.zeros((20000, 1, 1, 1), np.float32), 0.5, r, **kw)
    assert float(g.std()) == pytest.approx(0.5, rel=0.03)
    assert curve_area([1.0, 2.0], [0.5, 0.0], 1.0) == pytest.approx((0.75 + 0.25) / 2)


def test_a_large_data_set_is_audited_on_a_stratified_sample_said_in_the_report(tmp_path: Path) -> None:
    r = np.random.default_rng(0)
    x = r.normal(size=(1000, 5)).astype(np.float32)
    y = (r.random(1000) < 0.2).astype(np.int64)
    model = make_linear_classifier(tmp_path / "m.onnx", r.normal(size=(5, 2)), np.zeros(2))
    res = audit(tmp_path, [{"use": "robustness.noise", "with": {"limit": 100}}], model,
                save(tmp_path, "d.npz", x=x, y=y))
    assert res.metrics("robustness.noise")["n"] == 100
    assert "sampled 100 of 1000 rows (stratified by label)" in res.check("robustness.noise").notes


def test_seeds_make_runs_identical(tmp_path: Path) -> None:
    x = images(60)
    model = tiny_cnn(tmp_path / "m.onnx", gain=6.0)
    data = save(tmp_path, "d.npz", x=x, y=np.zeros(60, np.int64))
    spec = [{"use": "robustness.noise", "with": {"kind": "salt_pepper"}}]
    a = audit(tmp_path, spec, model, data, seed=3).metrics("robustness.noise")
    b = audit(tmp_path, spec, model, data, seed=3).metrics("robustness.noise")
    c = audit(tmp_path, spec, model, data, seed=4).metrics("robustness.noise")
    assert a == b
    assert a["curve"] != c["curve"]


def test_misused_parameters_are_errors_with_a_reason(tmp_path: Path) -> None:
    x = images(10)
    model = tiny_cnn(tmp_path / "m.onnx")
    data = save(tmp_path, "d.npz", x=x)
    # a rule spanning two parameters is a spec error (exit 2, YAML path), found before the model is loaded
    res = run_audit({"model": {"path": str(model)}, "data": {"path": str(data)}, "checks": [
        {"use": "robustness.noise", "with": {"kind": "blur", "sigma": [1.0]}}]}, workdir=tmp_path)
    assert res.exit_code == 2 and res.report is None
    assert "checks[0].with.sigma: applies to kind gaussian or feature; use severity for kind blur" in (res.error or "")
    flat = save(tmp_path, "t.npz", x=np.zeros((10, 3), np.float32))
    lin = make_linear_classifier(tmp_path / "l.onnx", np.ones((3, 2)), np.zeros(2))
    audit(tmp_path, [{"use": "robustness.noise", "with": {"kind": "blur"}}], lin, flat) \
        .assert_status("robustness.noise", "skipped")


def test_noise_amplification_of_a_regression_model(tmp_path: Path) -> None:
    # f(x) = 3x (a linear image-to-image operator): ‖f(x+n) − f(x)‖ / ‖n‖ = 3 exactly, whatever the noise
    from onnx import TensorProto, helper, numpy_helper

    from auditor.testing import save_model

    w = numpy_helper.from_array((3 * np.eye(5)).astype(np.float32), "W")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "amp",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], initializer=[w])
    save_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "amp.onnx")
    x = np.random.default_rng(0).normal(size=(200, 5)).astype(np.float32)
    res = audit(tmp_path, [{"use": "robustness.noise", "with": {"sigma": [0.1, 1.0]}}],
                {"path": str(tmp_path / "amp.onnx"), "task": "regression"},
                save(tmp_path, "d.npz", x=x, y=x[:, 0].astype(np.float64) * 3.3))
    met = res.metrics("robustness.noise")
    assert [c["amplification"] for c in met["curve"]] == pytest.approx([3.0, 3.0], rel=1e-5)
    assert met["max_amplification"] == pytest.approx(3.0, rel=1e-5)
