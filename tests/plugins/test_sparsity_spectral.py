"""The fast singular-value routes (low-rank projection, float64 Gram) against LAPACK's SVD on the same matrices:
every reported value within its stated absolute bound, every value above the numerical-rank tolerance within
its relative bound, and the numerical rank equal to the count of exact values above that tolerance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from auditor_sparsity.conditioning import Conditioning
from auditor_sparsity.spectral import singular_values
from onnx import helper
from sparsity_helpers import FLOAT, run_check, save, with_singular_values

EPS32 = float(np.finfo(np.float32).eps)
R = np.random.default_rng(11)


def _orth(rows: int, cols: int, s: np.ndarray, seed: int) -> np.ndarray:
    return with_singular_values(rows, cols, s, seed=seed).astype(np.float32)


CASES = {
    # (matrix, the route a 120 x 400 block takes with exact_max_dim 40)
    "random": (R.standard_normal((120, 400)).astype(np.float32), "gram"),
    "tall": (R.standard_normal((400, 120)).astype(np.float32), "gram"),
    "constant": (np.full((120, 400), 0.02, np.float32), "lowrank"),
    "rank5": (_orth(120, 400, np.array([5.0, 4.0, 3.0, 2.0, 1.0]), 1), "lowrank"),
    # condition 1e5 in float32: above the tolerance, but past the Gram route's precision at 1e-9 -> SVD
    "ill": (_orth(120, 400, np.geomspace(1.0, 1e-5, 120), 2), "svd"),
    # a spectrum running through the tolerance (σ_max·400·eps32 ≈ 4.8e-5)
    "through_tol": (_orth(120, 400, np.geomspace(1.0, 1e-9, 120), 3), None),
    "fp16": (R.standard_normal((120, 400)).astype(np.float16).astype(np.float32), "gram"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fast_routes_meet_their_stated_bounds(name: str) -> None:
    w, route = CASES[name]
    max_rel = 1e-9 if name == "ill" else 1e-3
    spec = singular_values(w[None], exact_max_dim=40, max_rel_error=max_rel, eps=EPS32)
    exact = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    if route is not None:
        assert spec.method == route
    tol = exact[0] * max(w.shape) * EPS32
    assert spec.tolerance == pytest.approx(tol, rel=1e-9)
    assert np.all(np.abs(spec.values - exact) <= spec.abs_error_bound)
    above = exact > tol
    rel = np.abs(spec.values[above] - exact[above]) / exact[above]
    assert rel.max() <= spec.rel_error_bound <= max(max_rel, 1e-12) or spec.method == "svd"
    assert spec.rank == int(np.count_nonzero(above))
    if name in ("constant", "rank5"):
        assert spec.rank == np.linalg.matrix_rank(w)  # numpy's own float32 tolerance agrees
        assert spec.rank < spec.values.size  # numerically singular: no condition number


def test_block_stack_takes_the_whole_matrix_tolerance() -> None:
    """A grouped layer: one low-rank block and one full-rank one; the tolerance is the whole matrix's."""
    a = np.full((100, 300), 0.02, np.float32)
    b = R.standard_normal((100, 300)).astype(np.float32)
    spec = singular_values(np.stack([a, b]), exact_max_dim=40, eps=EPS32)
    exact = np.sort(np.concatenate([np.linalg.svd(x.astype(np.float64), compute_uv=False) for x in (a, b)]))[::-1]
    assert spec.method == "gram+lowrank"
    assert np.all(np.abs(spec.values - exact) <= spec.abs_error_bound)
    assert spec.tolerance == pytest.approx(exact[0] * 600 * EPS32, rel=1e-9)
    assert spec.rank == int(np.count_nonzero(exact > spec.tolerance)) == 101


def test_large_constant_layer_is_audited_without_the_svd(tmp_path: Path) -> None:
    """The onnx-caffe2 ``light_*`` layers (every weight 0.02): an 800 x 300 Gemm weight takes the low-rank
    route; its numbers against the closed form and numpy."""
    w = np.full((800, 300), 0.02, np.float32)  # Gemm B (K, N)
    nodes = [helper.make_node("Gemm", ["x", "w"], ["y"], name="fc")]
    path = save(nodes, helper.make_tensor_value_info("x", FLOAT, ["N", 800]),
                helper.make_tensor_value_info("y", FLOAT, ["N", 300]), {"w": w}, tmp_path / "const.onnx")
    r = run_check(Conditioning, path, exact_max_dim=100)
    e = r.metrics["layers"]["w"]
    assert e["method"] == "lowrank"
    assert e["spectral_norm"] == pytest.approx(float(np.float32(0.02)) * np.sqrt(300 * 800), rel=1e-12)
    assert e["numerical_rank"] == 1 == np.linalg.matrix_rank(w)
    assert e["condition_number"] is None and r.metrics["singular_matrices"] == 1
    assert e["effective_rank"] == pytest.approx(1.0) and e["rank_90"] == e["rank_99"] == 1
    assert 0 <= e["sigma_min"] <= e["abs_error_bound"] < 1e-6 * e["spectral_norm"]
    # the Lipschitz bound of this one-layer chain is σ_max rounded up by its error: >= the exact norm
    exact = float(np.linalg.norm(w.astype(np.float64), 2))
    assert exact <= r.metrics["lipschitz_upper_bound"] <= exact * (1 + 1e-9)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_lipschitz_bound_is_of_the_probabilities_not_the_label(tmp_path: Path) -> None:
    """A scikit-learn MLP (skl2onnx: label first, ZipMap'd probabilities second): the bound is of the
    probabilities, ``||W1|| · ||W2||`` (Relu, Softmax and float Casts 1), from sklearn's own coefficients."""
    import onnx
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    x = x[:300].astype(np.float32)
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=30, random_state=0).fit(x, y[:300])
    m = to_onnx(clf, x[:1], target_opset=17)
    m.ir_version = 9
    path = tmp_path / "mlp.onnx"
    onnx.save(m, str(path))
    r = run_check(Conditioning, path)
    expected = np.prod([np.linalg.norm(np.asarray(c, np.float32).astype(np.float64), 2) for c in clf.coefs_])
    assert r.metrics["lipschitz_upper_bound"] == pytest.approx(expected, rel=1e-9)
    assert expected <= r.metrics["lipschitz_upper_bound"]


def test_cast_to_integer_breaks_the_chain(tmp_path: Path) -> None:
    """Rounding to int32 on the way is a step function: no bound, and the note names the Cast."""
    from onnx import TensorProto

    w = _orth(4, 6, np.array([2.0, 1.0, 1.0, 0.5]), 4)
    nodes = [helper.make_node("Cast", ["x"], ["xi"], to=TensorProto.INT32, name="to_int"),
             helper.make_node("Cast", ["xi"], ["xf"], to=TensorProto.FLOAT, name="back"),
             helper.make_node("MatMul", ["xf", "w"], ["y"], name="mm")]
    path = save(nodes, helper.make_tensor_value_info("x", FLOAT, ["N", 4]),
                helper.make_tensor_value_info("y", FLOAT, ["N", 6]), {"w": w}, tmp_path / "cast.onnx")
    r = run_check(Conditioning, path)
    assert r.metrics["lipschitz_upper_bound"] is None
    assert any("Cast to int32" in n and "to_int" in n for n in r.notes)


def test_main_graph_weights_captured_by_if_branches(tmp_path: Path) -> None:
    """silero_vad_op18_ifless's layout: every weight a main-graph initializer, every layer inside an If branch
    that captures it by name. Each weight is found once (one used by both branches too) with numpy's norms."""
    import onnx
    from onnx import TensorProto, numpy_helper

    a = _orth(4, 6, np.array([3.0, 2.0, 1.0, 0.5]), 5)
    b = _orth(4, 6, np.array([1.5, 1.0, 0.7, 0.1]), 6)
    shared = _orth(6, 6, np.array([2.5, 2.0, 1.0, 1.0, 0.5, 0.2]), 7)

    def branch(name: str, w: str) -> onnx.GraphProto:
        nodes = [helper.make_node("MatMul", ["x", w], [f"{name}_h"], name=f"{name}_mm"),
                 helper.make_node("MatMul", [f"{name}_h", "s"], [f"{name}_y"], name=f"{name}_mm2")]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_y", FLOAT, ["N", 6])])

    node = helper.make_node("If", ["cond"], ["y"], name="pick", then_branch=branch("t", "a"),
                            else_branch=branch("e", "b"))
    g = helper.make_graph([node], "captured", [helper.make_tensor_value_info("x", FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", FLOAT, ["N", 6])],
                          initializer=[numpy_helper.from_array(a, "a"), numpy_helper.from_array(b, "b"),
                                       numpy_helper.from_array(shared, "s"),
                                       numpy_helper.from_array(np.array(True), "cond")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    assert TensorProto.BOOL == g.initializer[3].data_type
    path = tmp_path / "captured.onnx"
    onnx.save(m, str(path))
    r = run_check(Conditioning, path)
    layers = r.metrics["layers"]
    assert r.metrics["matrices"] == 3
    for name, w in (("a", a), ("b", b), ("s", shared)):
        key = next(k for k in layers if k.endswith(f"/{name}"))
        assert layers[key]["spectral_norm"] == pytest.approx(np.linalg.norm(w.astype(np.float64), 2), rel=1e-9)
    assert r.metrics["lipschitz_upper_bound"] is None  # control flow is not a chain
