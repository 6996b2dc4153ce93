"""bias.shortcut: a model trained with a planted cue is flagged (flip rate, flip target, aligned/conflicting
gap) and the same architecture trained without it is not; every number against a numpy forward pass."""

from __future__ import annotations

from pathlib import Path

import auditor_bias
import numpy as np
import pytest
from auditor_bias import transforms
from bias_helpers import make_softmax_model, train_softmax

from auditor.testing import run_audit

CUE_VALUE = 3.0  # a bright marker pixel at the top-left corner (always 0 in the digits data)


def _forward(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    z = x.reshape(len(x), -1).astype(np.float64) @ w + b
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def digits_models() -> dict[str, object]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).reshape(-1, 1, 8, 8)
    y = d.target
    idx = np.random.default_rng(0).permutation(len(x))
    tr, te = idx[:1200], idx[1200:]
    planted = x[tr].copy()
    planted[y[tr] == 0, 0, 0, 0] = CUE_VALUE  # in training the cue marks class 0 perfectly
    return {"shortcut": train_softmax(planted, y[tr], 10, epochs=300),
            "clean": train_softmax(x[tr], y[tr], 10, epochs=300),
            "x": x[te].astype(np.float32), "y": y[te]}


def _shortcut_data(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each test image twice: bias-aligned (cue iff class 0) and bias-conflicting (cue iff not class 0)."""
    al, co = x.copy(), x.copy()
    al[y == 0, 0, 0, 0] = CUE_VALUE
    co[y != 0, 0, 0, 0] = CUE_VALUE
    flag = np.r_[np.ones(len(x), int), np.zeros(len(x), int)]
    return np.concatenate([al, co]), np.r_[y, y], flag


@pytest.mark.parametrize("which", ["shortcut", "clean"])
def test_planted_shortcut_is_flagged_and_clean_model_is_not(tmp_path: Path, digits_models: dict, which: str) -> None:
    w, b = digits_models[which]
    model = make_softmax_model(tmp_path / "m.onnx", w, b, (1, 8, 8))
    x, y, flag = _shortcut_data(digits_models["x"], digits_models["y"])
    np.savez(tmp_path / "d.npz", x=x, y=y, aligned=flag)
    spec = {"model": {"path": str(model)}, "data": {"path": str(tmp_path / "d.npz")},
            "checks": [{"use": "bias.shortcut",
                        "with": {"transform": "set_pixels", "pixels": [[0, 0, 0]], "value": CUE_VALUE,
                                 "aligned": "aligned", "target_class": 0}}]}
    res = run_audit(spec, workdir=tmp_path, plugins=[auditor_bias], entry_points=False)
    m = res.metrics("bias.shortcut")

    # independent reference: numpy forward passes on the same inputs, cue applied by hand
    p0 = _forward(x, w, b)
    cued = x.copy()
    cued[:, 0, 0, 0] = CUE_VALUE
    p1 = _forward(cued, w, b)
    l0, l1 = p0.argmax(1), p1.argmax(1)
    flipped = l0 != l1
    tol = 2 / len(x)  # float32 (ONNX Runtime) vs float64 (here) may differ on a near-tie
    assert m["n"] == len(x)
    assert m["flip_rate"] == pytest.approx(flipped.mean(), abs=tol)
    assert m["accuracy_before"] == pytest.approx(np.mean(l0 == y), abs=tol)
    assert m["accuracy_after"] == pytest.approx(np.mean(l1 == y), abs=tol)
    assert m["accuracy_change"] == pytest.approx(np.mean(l1 == y) - np.mean(l0 == y), abs=2 * tol)
    hit = l0 == y
    assert (m["n_aligned"], m["n_conflicting"]) == (int((flag == 1).sum()), int((flag == 0).sum()))
    assert m["flips"] == pytest.approx(flipped.sum(), abs=2)
    assert m["accuracy_aligned"] == pytest.approx(hit[flag == 1].mean(), abs=2 * tol)
    assert m["accuracy_conflicting"] == pytest.approx(hit[flag == 0].mean(), abs=2 * tol)
    assert m["aligned_conflicting_gap"] == pytest.approx(hit[flag == 1].mean() - hit[flag == 0].mean(), abs=4 * tol)
    assert m["target_probability_change"] == pytest.approx(np.mean(p1[:, 0] - p0[:, 0]), abs=1e-4)
    assert m["follow_rate"] == pytest.approx(np.mean(l1[l0 != 0] == 0), abs=2 * tol)

    if which == "shortcut":
        res.assert_status("bias.shortcut", "warn")
        assert m["flip_rate"] > 0.3
        dest = np.bincount(l1[flipped], minlength=10)
        assert m["flip_target_class"] == int(dest.argmax()) == 0
        assert m["flip_target_share"] == pytest.approx(dest.max() / flipped.sum(), abs=0.01)
        assert m["flip_target_share"] > 0.9
        assert m["aligned_conflicting_gap"] > 0.3
        assert len(res.check("bias.shortcut").findings) == 2
    else:
        # the cue pixel never varied in training, so its weights stay exactly 0: nothing changes
        res.assert_status("bias.shortcut", "info")
        assert m["flip_rate"] == 0.0 and m["flips"] == 0 and m["flip_target_class"] is None
        assert m["aligned_conflicting_gap"] == 0.0
        assert m["accuracy_change"] == 0.0


def _tabular(tmp_path: Path, rng: np.random.Generator, n: int = 300) -> tuple[Path, np.ndarray]:
    income = rng.normal(0, 1, n).round(3)
    score = rng.normal(0, 1, n).round(3)
    sex = rng.integers(0, 2, n)
    y = (income + score > 0).astype(int)
    rows = ["income,sex,score,y"] + [f"{a},{s},{c},{t}" for a, s, c, t in zip(income, sex, score, y)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "d.csv", np.stack([income, sex, score], axis=1).astype(np.float32)


def test_counterfactual_sensitive_feature_swap_and_set(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    path, x = _tabular(tmp_path, rng)
    # logit of class 1: income + score + 1.5 * (sex - 0.5): the decision depends on the sensitive column
    w = np.array([[0, 1.0], [0, 1.5], [0, 1.0]])
    b = np.array([0, -0.75])
    model = make_softmax_model(tmp_path / "m.onnx", w, b, (3,))
    y = (x[:, 0] + x[:, 2] > 0).astype(int)
    p0 = _forward(x, w, b)
    for params, x1 in [
        ({"transform": "swap_feature", "feature": "sex"}, np.c_[x[:, 0], 1 - x[:, 1], x[:, 2]]),
        ({"transform": "set_feature", "feature": 1, "value": 1.0}, np.c_[x[:, 0], np.ones(len(x)), x[:, 2]]),
    ]:
        spec = {"model": {"path": str(model)}, "data": {"path": str(path), "y": "y"},
                "checks": [{"use": "bias.shortcut", "with": {**params, "target_class": 1}}]}
        m = run_audit(spec, workdir=tmp_path, plugins=[auditor_bias], entry_points=False).metrics("bias.shortcut")
        p1 = _forward(x1, w, b)
        l0, l1 = p0.argmax(1), p1.argmax(1)
        assert m["flip_rate"] == pytest.approx(np.mean(l0 != l1), abs=1 / len(x))
        assert m["flip_rate"] > 0.05
        assert m["accuracy_change"] == pytest.approx(np.mean(l1 == y) - np.mean(l0 == y), abs=2 / len(x))
        assert m["follow_rate"] == pytest.approx(np.mean(l1[l0 == 0] == 1), abs=2 / len(x))
        assert m["target_probability_change"] == pytest.approx(np.mean(p1[:, 1] - p0[:, 1]), abs=1e-5)
        assert m["inputs_changed"] == int(np.sum(np.any(x1 != x, axis=1)))
    # setting every row's sex to 1 only ever moves decisions towards class 1
    assert m["flip_target_class"] == 1 and m["flip_target_share"] == 1.0


def test_swap_groups_one_hot(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    n = 200
    grp = rng.choice(np.array(["a", "b"]), n)
    onehot = np.stack([grp == "a", grp == "b"], axis=1).astype(float)
    f = rng.normal(0, 1, n).round(3)
    y = (f > 0).astype(int)
    rows = ["f,is_a,is_b,grp,y"] + [f"{v},{int(a)},{int(c)},{g},{t}" for v, (a, c), g, t in zip(f, onehot, grp, y)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    w = np.array([[0, 2.0], [0, 1.0], [0, -1.0]])
    model = make_softmax_model(tmp_path / "m.onnx", w, np.zeros(2), (3,))
    spec = {"model": {"path": str(model)},
            "data": {"path": str(tmp_path / "d.csv"), "y": "y", "groups": ["grp"]},
            "checks": [{"use": "bias.shortcut",
                        "with": {"transform": "swap_groups", "group": "grp", "features": ["is_a", "is_b"]}}]}
    m = run_audit(spec, workdir=tmp_path, plugins=[auditor_bias], entry_points=False).metrics("bias.shortcut")
    x = np.c_[f, onehot]
    x1 = np.c_[f, onehot[:, ::-1]]  # with two groups, a donor from the other group has the flipped one-hot
    l0, l1 = _forward(x, w, np.zeros(2)).argmax(1), _forward(x1, w, np.zeros(2)).argmax(1)
    assert m["inputs_changed"] == n
    assert m["flip_rate"] == pytest.approx(np.mean(l0 != l1), abs=1 / n)
    assert m["flip_rate"] > 0.1


def test_swap_groups_takes_features_from_another_group() -> None:
    from auditor import Dataset

    rng = np.random.default_rng(3)
    n = 90
    g = np.repeat(np.array([0, 1, 2]), 30)
    x = np.c_[np.eye(3)[g], rng.normal(size=(n, 2))].astype(np.float32)
    ds = Dataset(x=x, y=None, groups={"g": g}, columns={}, source="mem")
    out = transforms.swap_groups(x, ds, "g", [0, 1, 2], rng)
    new_group = out[:, :3].argmax(1)
    assert np.all(out[:, :3].sum(1) == 1)  # a whole one-hot row was copied
    assert np.all(new_group != g)  # from another group
    assert np.array_equal(out[:, 3:], x[:, 3:])  # other features untouched
    assert len(np.unique(new_group[g == 0])) == 2  # donors drawn from every other group


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_paste_patch_and_set_pixels_layouts(layout: str) -> None:
    x = np.zeros((4, 3, 5, 6), np.float32) if layout == "NCHW" else np.zeros((4, 5, 6, 3), np.float32)
    patch = np.arange(3 * 2 * 2, dtype=float).reshape(3, 2, 2)
    out = transforms.paste_patch(x, patch.tolist(), None, None, [1, 3], layout)
    chw = out if layout == "NCHW" else np.moveaxis(out, -1, 1)
    assert np.array_equal(chw[:, :, 1:3, 3:5], np.broadcast_to(patch, (4, 3, 2, 2)))
    assert chw.sum() == 4 * patch.sum()
    const = transforms.paste_patch(x, None, 7.0, [2, 3], [0, 0], layout)
    chw = const if layout == "NCHW" else np.moveaxis(const, -1, 1)
    assert np.all(chw[:, :, :2, :3] == 7.0) and chw.sum() == 4 * 3 * 6 * 7.0
    px = transforms.set_pixels(x, [[2, 4, 5], [0, 0, 1]], 9.0, layout)
    chw = px if layout == "NCHW" else np.moveaxis(px, -1, 1)
    assert np.all(chw[:, 2, 4, 5] == 9.0) and np.all(chw[:, 0, 0, 1] == 9.0) and chw.sum() == 4 * 2 * 9.0
    with pytest.raises(ValueError, match="does not fit"):
        transforms.paste_patch(x, None, 1.0, [3, 3], [4, 4], layout)
    with pytest.raises(ValueError, match="outside"):
        transforms.set_pixels(x, [[3, 0, 0]], 1.0, layout)


def test_paste_patch_through_the_tool_nhwc(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    x = rng.random((120, 6, 6, 1)).astype(np.float32)  # NHWC, detected from the input shape
    w = rng.normal(0, 1, (36, 3))
    b = np.zeros(3)
    model = make_softmax_model(tmp_path / "m.onnx", w, b, (6, 6, 1))
    np.savez(tmp_path / "d.npz", x=x)
    patch = [[2.0, 0.0], [0.0, 2.0]]
    spec = {"model": {"path": str(model)}, "data": {"path": str(tmp_path / "d.npz")},
            "checks": [{"use": "bias.shortcut",
                        "with": {"transform": "paste_patch", "patch": patch, "position": [4, 1]}}]}
    res = run_audit(spec, workdir=tmp_path, plugins=[auditor_bias], entry_points=False)
    m = res.metrics("bias.shortcut")
    x1 = x.copy()
    x1[:, 4:6, 1:3, 0] = patch
    l0, l1 = _forward(x, w, b).argmax(1), _forward(x1, w, b).argmax(1)
    assert m["flip_rate"] == pytest.approx(np.mean(l0 != l1), abs=1 / len(x))
    assert "accuracy_before" not in m  # no labels: no accuracy
    dest = np.bincount(l1[l0 != l1], minlength=3)
    assert m["flip_counts"] == {str(k): int(v) for k, v in enumerate(dest)}


def test_misconfigured_shortcut_is_an_error(tmp_path: Path) -> None:
    model = make_softmax_model(tmp_path / "m.onnx", np.eye(2), np.zeros(2), (2,))
    np.savez(tmp_path / "d.npz", x=np.zeros((10, 2), np.float32), y=np.zeros(10, int))
    def spec(params: dict[str, object]) -> dict[str, object]:
        return {"model": {"path": str(model)}, "data": {"path": str(tmp_path / "d.npz")},
                "checks": [{"use": "bias.shortcut", "with": params}]}

    # what the parameters alone say is wrong is a spec error with its YAML path (exit 2, before loading)
    for params, why in [({}, "transform: declare a `transform`, an `aligned` column, or both"),
                        ({"transform": "set_pixels", "value": 1.0}, "pixels: set_pixels needs"),
                        ({"transform": "set_feature", "feature": 1}, "value: set_feature needs `value`"),
                        ({"transform": "swap_groups", "group": "g"}, "group: swap_groups needs")]:
        r = run_audit(spec(params), workdir=tmp_path, plugins=[auditor_bias], entry_points=False)
        assert r.exit_code == 2 and f"checks[0].with.{why}" in (r.error or ""), r.error
    # what depends on the data (pixels on tabular rows, a feature index out of range) errors at run time
    for params in [{"transform": "set_pixels", "pixels": [[0, 0, 0]], "value": 1.0},
                   {"transform": "set_feature", "feature": 5, "value": 1.0}]:
        run_audit(spec(params), workdir=tmp_path, plugins=[auditor_bias], entry_points=False).assert_status(
            "bias.shortcut", "error")


def test_aligned_without_labels_reports_flips_and_says_why_no_gap(tmp_path: Path) -> None:
    model = make_softmax_model(tmp_path / "m.onnx", np.eye(2), np.zeros(2), (2,))
    x = np.tile(np.array([[1.0, 0.0]], np.float32), (10, 1))
    np.savez(tmp_path / "d.npz", x=x, aligned=np.r_[np.ones(5, int), np.zeros(5, int)])
    spec = {"model": {"path": str(model)}, "data": {"path": str(tmp_path / "d.npz")},
            "checks": [{"use": "bias.shortcut",
                        "with": {"transform": "set_feature", "feature": 1, "value": 2.0, "aligned": "aligned"}}]}
    res = run_audit(spec, workdir=tmp_path, plugins=[auditor_bias], entry_points=False)
    m = res.metrics("bias.shortcut")
    assert m["flip_rate"] == 1.0 and m["flip_target_class"] == 1  # logits [1, 2]: every row flips to 1
    assert "aligned_conflicting_gap" not in m
    assert any("no labels" in n for n in res.check("bias.shortcut").notes)
