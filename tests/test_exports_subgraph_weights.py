"""Weights that live only inside subgraphs (#15; silero-vad keeps its convolutions in ``If`` branches): the
weights checks read the branches' initializers and ``Constant`` values, at any depth, name each weight with its
branch path, and compute their numbers as numpy does; the Lipschitz bound stays null (an ``If`` is no chain)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from auditor.testing import readable_ir, run_audit, save_model

FLOAT = TensorProto.FLOAT


def branched(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """``y = If(flag, then: relu(x @ A) @ B, else: If(flag, then: x @ C, else: conv(x) flattened))``: ``A`` a
    Constant node of the then branch, ``B`` an initializer of it, ``C`` a Constant two levels down, ``K`` a conv
    kernel in the innermost else branch. The main graph holds no weight at all."""
    r = np.random.default_rng(0)
    w = {"A": r.normal(size=(4, 6)).astype(np.float32), "B": r.normal(size=(6, 3)).astype(np.float32),
         "C": r.normal(size=(4, 3)).astype(np.float32), "K": r.normal(size=(3, 1, 2)).astype(np.float32)}
    w["A"][0, :2] = 0.0  # a few exact zeros for the profile
    w["B"][:, 1] = 0.0  # a dead output unit
    out = helper.make_tensor_value_info("y", FLOAT, ["N", None])
    then_b = helper.make_graph(
        [helper.make_node("Constant", [], ["A"], value=numpy_helper.from_array(w["A"], "A")),
         helper.make_node("MatMul", ["x", "A"], ["h"], name="then_mm1"),
         helper.make_node("Relu", ["h"], ["hr"]),
         helper.make_node("MatMul", ["hr", "B"], ["y"], name="then_mm2")],
        "then", [], [out], initializer=[numpy_helper.from_array(w["B"], "B")])
    inner_then = helper.make_graph(
        [helper.make_node("Constant", [], ["C"], value=numpy_helper.from_array(w["C"], "C")),
         helper.make_node("MatMul", ["x", "C"], ["y"], name="inner_mm")], "inner_then", [], [out])
    inner_else = helper.make_graph(
        [helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([-1, 1, 4], np.int64))),
         helper.make_node("Reshape", ["x", "shape"], ["x3"]),
         helper.make_node("Constant", [], ["K"], value=numpy_helper.from_array(w["K"], "K")),
         helper.make_node("Conv", ["x3", "K"], ["c"], name="inner_conv"),
         helper.make_node("Constant", [], ["sh2"], value=numpy_helper.from_array(np.array([-1, 9], np.int64))),
         helper.make_node("Reshape", ["c", "sh2"], ["y"])], "inner_else", [], [out])
    else_b = helper.make_graph([helper.make_node("If", ["flag"], ["y"], name="inner_if", then_branch=inner_then,
                                                 else_branch=inner_else)], "else", [], [out])
    g = helper.make_graph([helper.make_node("If", ["flag"], ["y"], name="outer_if", then_branch=then_b,
                                            else_branch=else_b)], "g",
                          [helper.make_tensor_value_info("x", FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", FLOAT, ["N", None])],
                          initializer=[numpy_helper.from_array(np.array(True), "flag")])
    m = readable_ir(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    onnx.checker.check_model(m)
    return save_model(m, tmp_path / "branched.onnx"), w


def test_weights_inside_if_branches_are_audited_with_their_branch_path(tmp_path: Path) -> None:
    model, w = branched(tmp_path)
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    got = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, np.maximum(x @ w["A"], 0) @ w["B"], rtol=1e-5, atol=1e-5)  # a real model

    r = run_audit({"model": {"path": str(model)},
                   "checks": [{"use": "sparsity.profile"}, {"use": "sparsity.conditioning"},
                              {"use": "sparsity.filters"}]}, workdir=tmp_path)
    assert r.exit_code == 0, r.error
    names = {"A": "/outer_if/then_branch/A", "B": "/outer_if/then_branch/B",
             "C": "/outer_if/else_branch/inner_if/then_branch/C",
             "K": "/outer_if/else_branch/inner_if/else_branch/K"}
    prof = r.metrics("sparsity.profile")
    assert set(prof["weights"]) == set(names.values())
    for k, name in names.items():
        entry = prof["weights"][name]
        assert entry["params"] == w[k].size and entry["zeros"] == int(np.sum(w[k] == 0))
        assert entry["max_abs"] == pytest.approx(float(np.abs(w[k]).max()), rel=1e-6)
    assert prof["weights"][names["A"]]["source"] == "Constant"
    assert prof["weights"][names["B"]]["source"] == "initializer"
    assert prof["weights"][names["B"]]["zero_outputs"] == 1  # B's column 1
    assert prof["weights"][names["A"]]["node"] == "/outer_if/then_branch/then_mm1"
    total = sum(v.size for v in w.values())
    assert prof["params"] == total and prof["zeros"] == sum(int(np.sum(v == 0)) for v in w.values())

    cond = r.metrics("sparsity.conditioning")
    for k in ("A", "B", "C"):
        s = np.linalg.svd(w[k].astype(np.float64), compute_uv=False)
        layer = cond["layers"][names[k]]
        assert layer["spectral_norm"] == pytest.approx(float(s[0]), rel=1e-9)
        if layer["condition_number"] is not None:
            assert layer["condition_number"] == pytest.approx(float(s[0] / s[-1]), rel=1e-6)
    # B has a zero column: singular
    assert cond["layers"][names["B"]]["condition_number"] is None
    assert cond["lipschitz_upper_bound"] is None  # an If is not a chain the product bounds
    assert any("If" in n for n in r.check("sparsity.conditioning").notes)
    # the conv kernel in the innermost branch is a filter bank of three 1x2 filters
    assert r.metrics("sparsity.filters")["filters"] == 3
