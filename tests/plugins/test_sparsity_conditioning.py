"""``sparsity.conditioning`` on matrices and kernels with planted singular values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from auditor_sparsity.conditioning import Conditioning
from auditor_sparsity.spectral import singular_values
from onnx import helper
from sparsity_helpers import FLOAT, run_check, save, with_singular_values

S_FC = np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.25])  # energy: 0.636, 0.865, 0.967, 0.992, 0.998, 1
S_G1, S_G2 = np.array([3.0, 1.0]), np.array([2.0, 0.5])  # the two groups of a grouped conv
S_HEAD = np.array([4.0, 2.0, 1.0])


def erank(s: np.ndarray) -> float:
    """Roy & Vetterli's effective rank via scipy's entropy."""
    return float(np.exp(scipy.stats.entropy(s / s.sum())))


def planted_model(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """x (N,2,5,5) -> Conv k (6,2,3,3) [σ = S_CONV] -> Relu -> grouped Conv g (4,3,3,3), group 2 [σ = S_G1 ∪ S_G2]
    -> GAP -> Flatten -> Gemm fc (alpha 2, B (4, 6)) -> Relu -> Gemm head (transB, 3 classes with row norms
    4, 2, 1) -> Softmax."""
    s_conv = np.array([4.0, 2.0, 1.0, 1.0, 0.5, 0.1])
    k = with_singular_values(6, 18, s_conv, seed=1).reshape(6, 2, 3, 3).astype(np.float32)
    g = np.concatenate([with_singular_values(2, 9, S_G1, seed=2).reshape(2, 1, 3, 3),
                        with_singular_values(2, 9, S_G2, seed=3).reshape(2, 1, 3, 3)]).astype(np.float32)
    # grouped conv: 4 outputs from 2 inputs in 2 groups -> weight (4, 1, 3, 3); a 1x1 conv p (its own planted
    # singular values) maps the 6 channels of k down to those 2
    p = with_singular_values(2, 6, np.array([1.5, 0.75]), seed=4).reshape(2, 6, 1, 1).astype(np.float32)
    fc = with_singular_values(4, 6, S_FC[:4], seed=5).astype(np.float32)  # B (K=4, N=6)
    r = np.random.default_rng(6)
    head = r.normal(size=(3, 6))
    head = (head / np.linalg.norm(head, axis=1, keepdims=True) * S_HEAD[:, None]).astype(np.float32)
    w = {"k": k, "p": p, "g": g, "fc": fc, "fc_b": np.zeros(6, np.float32), "head": head,
         "head_b": np.zeros(3, np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "k"], ["a1"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("Conv", ["r1", "p"], ["a2"], name="pointwise"),
        helper.make_node("Conv", ["a2", "g"], ["a3"], name="grouped", group=2, pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["a3"], ["gp"]),
        helper.make_node("Flatten", ["gp"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fc_b"], ["h"], name="fc", alpha=2.0),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "head", "head_b"], ["z"], name="head", transB=1),
        helper.make_node("Softmax", ["z"], ["probs"], axis=1),
    ]
    path = save(nodes, helper.make_tensor_value_info("x", FLOAT, ["N", 2, 5, 5]),
                helper.make_tensor_value_info("probs", FLOAT, ["N", 3]), w, tmp_path / "cond.onnx")
    return path, {"k": s_conv, "p": np.array([1.5, 0.75]), "g": np.concatenate([S_G1, S_G2]),
                  "fc": 2.0 * S_FC[:4]}


@pytest.mark.parametrize("exact_max_dim", [512, 1])
def test_planted_singular_values(tmp_path: Path, exact_max_dim: int) -> None:
    path, planted = planted_model(tmp_path)
    r = run_check(Conditioning, path, exact_max_dim=exact_max_dim)
    m = r.metrics
    assert list(m["layers"]) == ["k", "p", "g", "fc", "head"]
    for name, s in planted.items():
        e = m["layers"][name]
        s = np.sort(s)[::-1]
        assert e["spectral_norm"] == pytest.approx(s[0], rel=1e-5)
        assert e["sigma_min"] == pytest.approx(s[-1], rel=1e-5)
        assert e["condition_number"] == pytest.approx(s[0] / s[-1], rel=1e-5)
        assert e["effective_rank"] == pytest.approx(erank(s), rel=1e-5)
        cum = np.cumsum(s**2) / np.sum(s**2)
        assert e["rank_90"] == int(np.argmax(cum >= 0.9) + 1)
        assert e["rank_99"] == int(np.argmax(cum >= 0.99) + 1)
        assert e["numerical_rank"] == len(s)
        if exact_max_dim == 1 and min(e["matrix"]) // e["blocks"] > 1:
            assert e["method"] == "gram" and 0 < e["rel_error_bound"] <= 1e-3
        elif exact_max_dim == 512:
            assert e["method"] == "svd"
    assert m["layers"]["g"]["blocks"] == 2 and m["layers"]["g"]["matrix"] == [4, 18]
    assert m["layers"]["k"]["matrix"] == [6, 18]
    # closed forms for the fc layer: alpha = 2 doubles every singular value
    fc = m["layers"]["fc"]
    assert (fc["rank_90"], fc["rank_99"]) == (3, 4)
    # product of spectral norms, and the conv-corrected Lipschitz bound (√9 per 3×3 conv, 1 for 1×1)
    norms = {n: float(np.max(s)) for n, s in planted.items()}
    head_norm = float(np.linalg.norm(_head(path), 2))
    prod = norms["k"] * norms["p"] * norms["g"] * norms["fc"] * head_norm
    assert m["spectral_norm_product"] == pytest.approx(prod, rel=1e-5)
    assert m["log10_spectral_norm_product"] == pytest.approx(np.log10(prod), rel=1e-5)
    assert m["lipschitz_upper_bound"] == pytest.approx(prod * 3 * 3, rel=1e-5)
    assert m["max_spectral_norm"] == pytest.approx(max([*norms.values(), head_norm]), rel=1e-5)
    # class norms of the head: planted 4, 2, 1
    assert m["head"] == "head"
    assert m["class_norms"] == pytest.approx(S_HEAD, rel=1e-6)
    assert m["class_norm_ratio"] == pytest.approx(4.0, rel=1e-6)
    assert m["class_norm_cv"] == pytest.approx(np.std(S_HEAD) / np.mean(S_HEAD), rel=1e-6)


def _head(path: Path) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    return next(numpy_helper.to_array(t) for t in m.graph.initializer if t.name == "head").astype(np.float64)


def test_singular_and_ill_conditioned(tmp_path: Path) -> None:
    """A rank-deficient matrix has no condition number; on the Gram route an ill-conditioned one falls
    back to the exact SVD (its a-priori bound would exceed max_rel_error)."""
    sing = with_singular_values(8, 8, np.array([2.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0]), seed=7)
    ill = with_singular_values(8, 8, np.geomspace(1.0, 1e-5, 8), seed=8)
    nodes = [helper.make_node("MatMul", ["x", "a"], ["h"], name="mm1"),
             helper.make_node("MatMul", ["h", "b"], ["y"], name="mm2")]
    a32, b32 = sing.astype(np.float32), ill.astype(np.float32)
    path = save(nodes, helper.make_tensor_value_info("x", FLOAT, ["N", 8]),
                helper.make_tensor_value_info("y", FLOAT, ["N", 8]), {"a": a32, "b": b32}, tmp_path / "s.onnx")
    r = run_check(Conditioning, path, exact_max_dim=2, max_rel_error=1e-6, max_condition=1e4)
    m = r.metrics
    a = m["layers"]["a"]
    assert a["numerical_rank"] == 3 == np.linalg.matrix_rank(a32)
    assert a["rank_99"] == 3
    assert m["singular_matrices"] == 1 and m["max_condition_number"] is None
    assert any("singular" in f.message for f in r.findings)
    b = m["layers"]["b"]
    assert b["method"] == "svd"
    exact = np.linalg.svd(b32.astype(np.float64), compute_uv=False)
    assert b["sigma_min"] == pytest.approx(exact[-1], rel=1e-9)
    assert b["condition_number"] == pytest.approx(exact[0] / exact[-1], rel=1e-9)
    assert any("ill-conditioned" in f.message for f in r.findings)  # 1e5 > max_condition


def test_gram_route_precision_bound_holds() -> None:
    """On a random 64 x 300 matrix the Gram route's values agree with LAPACK within its stated bound."""
    r = np.random.default_rng(9)
    w = r.normal(size=(2, 64, 300)).astype(np.float32)
    spec = singular_values(w, exact_max_dim=8, max_rel_error=1e-4)
    assert spec.method == "gram"
    exact = np.sort(np.linalg.svd(w.astype(np.float64), compute_uv=False).ravel())[::-1]
    rel = np.abs(spec.values - exact) / exact
    assert rel.max() <= spec.rel_error_bound
    # the spec's precision claim is against max_rel_error too
    assert spec.rel_error_bound <= 1e-4
