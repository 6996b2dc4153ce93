"""torch.parity, torch.pgd, torch.blind_spots and torch.input_gradients through real audits, each number
checked against a closed form (linear softmax models) or an independent numpy computation; the plugin
without torch; one CLI run."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")

import auditor_torch  # noqa: E402
from auditor_torch import register_op  # noqa: E402
from auditor_torch.registry import lookup  # noqa: E402

from auditor.rowrandom import RowRandom  # noqa: E402
from auditor.testing import make_linear_classifier, run_audit, save_model  # noqa: E402

RNG = np.random.default_rng(3)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def binary_problem(tmp_path: Path, eps_l1: float, n: int = 200, d: int = 6) -> tuple[Any, ...]:
    """A 2-class linear softmax model and data whose margins stay ≥10 % away from the attack threshold
    ``eps_l1 · ‖Δw‖`` (so the closed-form outcome is unambiguous)."""
    w = RNG.standard_normal((d, 2)).astype(np.float32)
    b = RNG.standard_normal(2).astype(np.float32)
    x = RNG.standard_normal((4 * n, d)).astype(np.float32)
    z = x.astype(np.float64) @ w + b
    pred = z.argmax(1)
    y = pred.copy()
    y[:n // 10] = 1 - y[:n // 10]  # some samples are misclassified to begin with
    model = make_linear_classifier(tmp_path / "bin.onnx", w, b)
    return model, w.astype(np.float64), b.astype(np.float64), x, y, z


def margins(w: np.ndarray, z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dw = np.where(y[:, None] == 0, (w[:, 0] - w[:, 1])[None], (w[:, 1] - w[:, 0])[None])
    m = z[np.arange(len(y)), y] - z[np.arange(len(y)), 1 - y]
    return m, dw


@pytest.mark.parametrize("norm,attack", [("linf", "pgd"), ("linf", "fgsm"), ("l2", "pgd")])
def test_pgd_matches_closed_form_on_linear_model(tmp_path: Path, norm: str, attack: str) -> None:
    """For a linear binary classifier the optimal perturbation in the ε-ball flips a correctly classified
    sample iff its margin m < ε‖Δw‖₁ (L∞) or ε‖Δw‖₂ (L2), Δw = w_y − w_other; PGD/FGSM reach it."""
    eps = 0.3
    model, w, _, x, y, z = binary_problem(tmp_path, eps)
    m, dw = margins(w, z, y)
    dual = np.abs(dw).sum(1) if norm == "linf" else np.linalg.norm(dw, axis=1)
    keep = np.abs(m - eps * dual) > 0.1 * eps * dual
    x, y, m, dual = x[keep][:200], y[keep][:200], m[keep][:200], dual[keep][:200]
    np.savez(tmp_path / "d.npz", x=x, y=y)
    params = {"eps": eps, "norm": norm, "attack": attack, "steps": 20 if norm == "l2" else 10, "restarts": 2,
              "limit": 1000}
    res = run_audit({"checks": [{"use": "torch.pgd", "with": params}]}, model=model, data=tmp_path / "d.npz",
                    workdir=tmp_path)
    res.assert_status("torch.pgd", "info")
    met = res.metrics("torch.pgd")
    clean = m > 0
    flip = clean & (m < eps * dual)
    assert met["n"] == len(y)
    assert met["clean_accuracy"] == pytest.approx(clean.mean())
    assert met["success_rate"] == pytest.approx(flip.sum() / clean.sum())
    assert met["robust_accuracy"] == pytest.approx((clean & ~flip).mean())
    assert met["torch_ort_disagreement"] == 0.0
    assert 0 < met["success_rate"] < 1
    if norm == "linf":  # the optimum is the corner x − ε·sign(Δw): every successful perturbation has L∞ = ε
        assert met["median_linf"] == pytest.approx(eps, rel=1e-5)
    else:
        assert met["median_l2"] <= eps * (1 + 1e-5)


def test_blind_spots_closed_form_on_linear_model(tmp_path: Path) -> None:
    """Binary linear softmax: the level set of p_c is the hyperplane Δw·x = Δw·x_s, so traversal ends at
    the target's projection onto it: ‖x_T − x_t‖ = |Δw·(x_s − x_t)| / ‖Δw‖, with confidence unchanged
    along the whole (in-plane) straight path."""
    model, w, _b, x, _, z = binary_problem(tmp_path, 0.1, n=100)
    x = x[:120]
    np.savez(tmp_path / "d.npz", x=x)
    res = run_audit({"checks": [{"use": "torch.blind_spots", "with": {"limit": 24, "steps": 300, "close": 0.6}}]},
                    model=model, data=tmp_path / "d.npz", workdir=tmp_path)
    res.assert_status("torch.blind_spots", "info")
    met = res.metrics("torch.blind_spots")
    art = res.check("torch.blind_spots").artifacts
    s, t = np.array(art["source_index"]), np.array(art["target_index"])
    pred = z[:120].argmax(1)
    assert np.all(pred[s] != pred[t])
    dw = w[:, 1] - w[:, 0]
    xs, xt = x[s].astype(np.float64), x[t].astype(np.float64)
    rel = np.abs((xs - xt) @ dw) / np.linalg.norm(dw) / np.linalg.norm(xs - xt, axis=1)
    np.testing.assert_allclose(art["relative_distance"], rel, atol=1e-4)
    assert met["n_pairs"] == 24
    assert met["mean_relative_distance"] == pytest.approx(rel.mean(), abs=1e-4)
    assert met["median_relative_distance"] == pytest.approx(np.median(rel), abs=1e-4)
    assert met["kept_prediction_rate"] == 1.0
    assert met["mean_confidence_drop"] == pytest.approx(0.0, abs=1e-4)
    p_src = softmax(z[:120])[s, pred[s]]
    assert met["path_min_confidence"] == pytest.approx(p_src.mean(), abs=1e-4)
    assert met["blind_spot_rate"] == pytest.approx(np.mean(rel <= 0.6))


def test_input_gradients_removal_matches_numpy(tmp_path: Path) -> None:
    """Attribution |∂ logit_y/∂x| = |W[:, y]| for a linear model; masked accuracies recomputed in numpy."""
    d, c, n = 20, 4, 150
    w = RNG.standard_normal((d, c)).astype(np.float32)
    b = RNG.standard_normal(c).astype(np.float32)
    x = RNG.standard_normal((n, d)).astype(np.float32)
    y = (x.astype(np.float64) @ w + b + RNG.normal(0, 1.0, (n, c))).argmax(1)
    model = make_linear_classifier(tmp_path / "m.onnx", w, b)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    fr = [0.1, 0.25, 0.5]
    res = run_audit({"seed": 7, "checks": [{"use": "torch.input_gradients", "with": {"fractions": fr}}]},
                    model=model, data=tmp_path / "d.npz", workdir=tmp_path)
    res.assert_status("torch.input_gradients", "info")
    met = res.metrics("torch.input_gradients")
    a = np.abs(w.T[y])
    order = np.argsort(-a, axis=1, kind="stable")
    # the random order: one stream per sample (auditor.shards.Shard.random: seed, check id, position)
    rand = np.argsort(RowRandom.for_positions(7, "torch.input_gradients", np.arange(n)).random((n, d)), axis=1)
    mean = x.mean(0)

    def acc(idx: np.ndarray) -> float:
        xm = x.astype(np.float64).copy()
        rows = np.arange(n)[:, None]
        xm[rows, idx] = mean[idx]
        return float(np.mean((xm @ w + b).argmax(1) == y))

    top = [acc(order[:, :round(f * d)]) for f in fr]
    bottom = [acc(order[:, d - round(f * d):]) for f in fr]
    rnd = [acc(rand[:, :round(f * d)]) for f in fr]
    assert met["acc_top_removed"] == pytest.approx(top)
    assert met["acc_bottom_removed"] == pytest.approx(bottom)
    assert met["acc_random_removed"] == pytest.approx(rnd)
    assert met["diff_roar"] == pytest.approx([bb - t for bb, t in zip(bottom, top)])
    assert met["diff_roar_mean"] == pytest.approx(np.mean([bb - t for bb, t in zip(bottom, top)]))
    assert met["clean_accuracy"] == pytest.approx(np.mean((x @ w + b).argmax(1) == y))
    assert met["diff_roar_mean"] > 0  # a linear model's gradient is its (discriminative) weight


def relu_model(tmp_path: Path, w: np.ndarray, b: np.ndarray) -> Path:
    nodes = [helper.make_node("Gemm", ["x", "W", "B"], ["z"]), helper.make_node("Relu", ["z"], ["y"])]
    g = helper.make_graph(nodes, "relu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                          initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    return save_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "relu.onnx")


def test_parity_passes_and_detects_a_wrong_op(tmp_path: Path) -> None:
    """Parity of a Gemm+Relu graph is exact; with Relu deliberately replaced by the identity the reported
    difference is max(relu(z) − z) = max(−min z, 0), computed in numpy."""
    w = RNG.standard_normal((5, 3)).astype(np.float32)
    b = RNG.standard_normal(3).astype(np.float32)
    x = RNG.standard_normal((64, 5)).astype(np.float32)
    model = relu_model(tmp_path, w, b)
    np.savez(tmp_path / "d.npz", x=x)
    spec = {"checks": [{"use": "torch.parity"}]}
    res = run_audit(spec, model=model, data=tmp_path / "d.npz", workdir=tmp_path)
    res.assert_status("torch.parity", "info")
    met = res.metrics("torch.parity")
    assert met["max_abs_diff"] <= 1e-6 and met["n"] == 64 and met["ops"] == 2 and met["nonfinite_mismatch"] == 0
    z = x.astype(np.float64) @ w + b
    relu = lookup("Relu")
    assert relu is not None
    register_op("Relu", replace=True)(lambda ctx, ins: ins[0])
    try:
        res = run_audit(spec, model=model, data=tmp_path / "d.npz", workdir=tmp_path)
    finally:
        register_op("Relu", replace=True)(relu)
    res.assert_status("torch.parity", "fail")
    met = res.metrics("torch.parity")
    expected = np.maximum(-z, 0)
    assert met["max_abs_diff"] == pytest.approx(expected.max(), rel=1e-5)
    assert met["mean_abs_diff"] == pytest.approx(expected.mean(), rel=1e-4)
    assert met["max_rel_diff"] == pytest.approx(expected.max() / np.maximum(z, 0).max(), rel=1e-5)
    assert met["argmax_agreement"] == pytest.approx(np.mean(z.argmax(1) == np.maximum(z, 0).argmax(1)))


def test_cli_run(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from auditor.cli import main

    w = RNG.standard_normal((4, 3)).astype(np.float32)
    make_linear_classifier(tmp_path / "m.onnx", w, np.zeros(3, np.float32))
    np.savez(tmp_path / "d.npz", x=RNG.standard_normal((40, 4)).astype(np.float32), y=RNG.integers(0, 3, 40))
    spec = {"version": 1, "model": {"path": "m.onnx"}, "data": {"path": "d.npz"},
            "checks": [{"use": "torch.parity", "gate": {"max_abs_diff": {"max": 1e-4}}}],
            "report": {"dir": "reports", "formats": ["json"]}}
    (tmp_path / "audit.yaml").write_text(yaml.safe_dump(spec))
    out = CliRunner().invoke(main, ["run", str(tmp_path / "audit.yaml"), "-q"])
    assert out.exit_code == 0, out.output
    import json

    doc = json.loads(next((tmp_path / "reports").glob("*.json")).read_text())
    check = next(c for c in doc["checks"] if c["id"] == "torch.parity")
    assert check["status"] == "pass" and check["metrics"]["max_abs_diff"] < 1e-6


def test_without_torch_checks_are_skipped_not_broken(tmp_path: Path) -> None:
    """With torch unimportable the plugin loads, offers no backend, and its checks are skipped with a
    reason; the rest of the audit still runs."""
    w = RNG.standard_normal((4, 3)).astype(np.float32)
    make_linear_classifier(tmp_path / "m.onnx", w, np.zeros(3, np.float32))
    np.savez(tmp_path / "d.npz", x=RNG.standard_normal((40, 4)).astype(np.float32), y=RNG.integers(0, 3, 40))
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now fails
        from auditor.testing import run_audit
        spec = {{"train_data": {{"path": "d.npz"}}, "checks": [{{"use": "torch.parity"}}, {{"use": "torch.pgd"}},
                 {{"use": "torch.retrain"}}, {{"use": "performance.metrics"}}]}}
        res = run_audit(spec, model="m.onnx", data="d.npz", workdir=__import__("pathlib").Path({str(tmp_path)!r}))
        assert res.error is None, res.error
        for c in res.report.checks:
            print(c.id, c.status.value, c.skip_reason)
        assert "torch" not in sys.modules or sys.modules["torch"] is None
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = dict((ln.split(" ", 1)[0], ln.split(" ", 1)[1]) for ln in out.stdout.strip().splitlines())
    for cid in ("torch.parity", "torch.pgd", "torch.retrain"):
        assert lines[cid].startswith("skipped"), lines
    assert "backend" in lines["torch.parity"] and "gradients" in lines["torch.pgd"]
    assert lines["performance.metrics"].startswith("info")
    assert auditor_torch.torch_available()




def sklearn_logreg(tmp_path: Path, coef: np.ndarray, intercept: np.ndarray) -> Path:
    """The graph skl2onnx writes for a multinomial LogisticRegression: LinearClassifier (label, scores) ->
    Normalizer -> ZipMap (a list of dicts), plus the label output."""
    c, d = coef.shape
    nodes = [
        helper.make_node("LinearClassifier", ["x"], ["label", "scores"], domain="ai.onnx.ml",
                         coefficients=coef.reshape(-1).tolist(), intercepts=intercept.tolist(),
                         classlabels_ints=list(range(c)), post_transform="SOFTMAX", multi_class=1),
        helper.make_node("Normalizer", ["scores"], ["probability_tensor"], domain="ai.onnx.ml", norm="L1"),
        helper.make_node("ZipMap", ["probability_tensor"], ["probabilities"], domain="ai.onnx.ml",
                         classlabels_int64s=list(range(c))),
    ]
    zip_type = helper.make_sequence_type_proto(helper.make_map_type_proto(
        TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])))
    g = helper.make_graph(nodes, "skl", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, d])],
                          [helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
                           helper.make_value_info("probabilities", zip_type)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)])
    return save_model(m, tmp_path / "logreg.onnx")


def test_sklearn_graph_parity_and_gradients(tmp_path: Path) -> None:
    """The backend differentiates the probability matrix behind the ZipMap: parity with ONNX Runtime, and
    the gradient of the true class's probability equals p_y (W_y − Σ_j p_j W_j)."""
    from auditor_torch.backend import get_backend

    from auditor.model import ModelConfig, ModelHandle

    coef = RNG.standard_normal((3, 5)).astype(np.float32)
    icpt = RNG.standard_normal(3).astype(np.float32)
    path = sklearn_logreg(tmp_path, coef, icpt)
    x = RNG.standard_normal((50, 5)).astype(np.float32)
    y = RNG.integers(0, 3, 50)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    res = run_audit({"checks": [{"use": "torch.parity"}, {"use": "torch.pgd", "with": {"eps": 0.2}}]},
                    model=path, data=tmp_path / "d.npz", workdir=tmp_path)
    res.assert_status("torch.parity", "info")
    assert res.metrics("torch.parity")["max_abs_diff"] < 1e-6
    assert res.metrics("torch.pgd")["torch_ort_disagreement"] == 0.0
    be = get_backend(ModelHandle(ModelConfig(path=path)))
    assert be.output_name == "probability_tensor"
    p = softmax(x.astype(np.float64) @ coef.T + icpt)
    want = p[np.arange(50), y][:, None] * (coef[y] - p @ coef)
    np.testing.assert_allclose(be.input_gradients(x, y, of="prob"), want, atol=1e-5)
