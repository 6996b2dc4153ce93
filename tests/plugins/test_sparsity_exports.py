"""Weights as real exporters write them: QDQ int8 (onnxruntime's quantizer), float16 / bfloat16, Constant and
ConstantOfShape nodes, constant sub-graphs; and the Lipschitz bound only where the graph is a chain."""

from __future__ import annotations

import logging
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from auditor_sparsity.conditioning import Conditioning
from auditor_sparsity.profile import SparsityProfile
from onnx import TensorProto, helper, numpy_helper
from sparsity_helpers import FLOAT, run_check, save

from auditor import graph as G
from auditor.testing import save_model

RNG = np.random.default_rng(0)
W_CONV = RNG.normal(size=(4, 2, 3, 3)).astype(np.float32)
W_FC = RNG.normal(size=(4 * 4 * 4, 3)).astype(np.float32) * 0.3
B_FC = np.zeros(3, np.float32)


def _cnn(path: Path) -> Path:
    """x (N,2,4,4) -> Conv (pad 1) -> Relu -> Flatten -> Gemm -> y."""
    nodes = [helper.make_node("Conv", ["x", "k"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "w", "b"], ["y"], name="fc")]
    return save(nodes, helper.make_tensor_value_info("x", FLOAT, ["N", 2, 4, 4]),
                helper.make_tensor_value_info("y", FLOAT, ["N", 3]), {"k": W_CONV, "w": W_FC, "b": B_FC}, path)


def _dequantized(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """numpy's reading of every DequantizeLinear of an initializer: (q - zero_point) * scale (per axis)."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim >= 2:
            q = inits[n.input[0]].astype(np.float64)
            sc = inits[n.input[1]].astype(np.float64)
            zp = inits[n.input[2]].astype(np.float64) if len(n.input) > 2 else np.zeros_like(sc)
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            if sc.size > 1:
                shape = [1] * q.ndim
                shape[axis] = sc.size
                sc, zp = sc.reshape(shape), zp.reshape(shape)
            out[n.input[0]] = (q - zp) * sc
    return out


@pytest.mark.parametrize("per_channel", [True, False])
def test_qdq_weights_are_dequantized(tmp_path: Path, per_channel: bool) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    src = _cnn(tmp_path / "f32.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"x": RNG.normal(size=(1, 2, 4, 4)).astype(np.float32)} for _ in range(4)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    dst = tmp_path / "qdq.onnx"
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's advice to pre-process
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    weight_type=QuantType.QInt8)
    qm = onnx.load(str(dst))
    expected = _dequantized(qm)
    assert set(expected) == {"k_quantized", "w_quantized"}
    # ONNX Runtime's own DequantizeLinear on the same initializers agrees with numpy's formula
    dq_out = {n.input[0]: n.output[0] for n in qm.graph.node if n.op_type == "DequantizeLinear"}
    pruned = G.prune(qm, [dq_out["k_quantized"]])
    sess = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {})[0], expected["k_quantized"], rtol=1e-6)

    prof = run_check(SparsityProfile, dst)
    cond = run_check(Conditioning, dst)
    for name, w in expected.items():
        e = prof.metrics["weights"][name]
        assert e["quantized"] and e["zeros"] == int(np.sum(w == 0)) == e["quantization_zeros"]
        assert e["max_abs"] == pytest.approx(float(np.abs(w).max()), rel=1e-12)
        mat = w.reshape(w.shape[0], -1) if w.ndim == 4 else w.T
        s = np.linalg.svd(mat, compute_uv=False)
        c = cond.metrics["layers"][name]
        assert c["spectral_norm"] == pytest.approx(s[0], rel=1e-10)
        assert c["sigma_min"] == pytest.approx(s[-1], rel=1e-10)
    assert prof.metrics["quantization_zeros"] == sum(int(np.sum(w == 0)) for w in expected.values())
    assert any("quantized weight" in n for n in prof.notes)
    # activations are quantized too: a step function has no Lipschitz constant
    assert cond.metrics["lipschitz_upper_bound"] is None
    assert any("QuantizeLinear" in n or "DequantizeLinear" in n for n in cond.notes)


def test_dynamic_quantization_finds_the_weight_scale(tmp_path: Path) -> None:
    from onnxruntime.quantization import quantize_dynamic

    src = _cnn(tmp_path / "f32.onnx")
    dst = tmp_path / "dyn.onnx"
    quantize_dynamic(str(src), str(dst))
    qm = onnx.load(str(dst))
    inits = {t.name: numpy_helper.to_array(t) for t in qm.graph.initializer}
    cond = run_check(Conditioning, dst)
    checked = 0
    for n in qm.graph.node:
        if n.op_type in ("ConvInteger", "MatMulInteger"):
            q = inits[n.input[1]].astype(np.float64) - inits[n.input[3]].astype(np.float64)
            w = q * inits[n.input[1].replace("_quantized", "_scale")].astype(np.float64)
            mat = w.reshape(w.shape[0], -1) if w.ndim == 4 else w
            assert cond.metrics["layers"][n.input[1]]["spectral_norm"] == pytest.approx(
                np.linalg.norm(mat, 2), rel=1e-10)
            checked += 1
    assert checked == 2
    # the dequantized spectral norms are those of the float model up to quantization error
    f32 = run_check(Conditioning, src)
    assert cond.metrics["spectral_norm_product"] == pytest.approx(f32.metrics["spectral_norm_product"], rel=0.05)


def _fp16_model(tmp_path: Path, dtype: int) -> Path:
    """The CNN with its weights stored as float16 / bfloat16 (as onnxconverter-common's float16 pass leaves
    them, or behind a Cast to float for bfloat16)."""
    np_dt = np.float16 if dtype == TensorProto.FLOAT16 else ml_dtypes.bfloat16
    to_f = [helper.make_node("Cast", [n + "_lp"], [n], to=TensorProto.FLOAT) for n in ("k", "w")]
    nodes = [*to_f,
             helper.make_node("Conv", ["x", "k"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "w", "b"], ["y"], name="fc")]
    g = helper.make_graph(nodes, "lp", [helper.make_tensor_value_info("x", FLOAT, ["N", 2, 4, 4])],
                          [helper.make_tensor_value_info("y", FLOAT, ["N", 3])],
                          initializer=[numpy_helper.from_array(W_CONV.astype(np_dt), "k_lp"),
                                       numpy_helper.from_array(W_FC.astype(np_dt), "w_lp"),
                                       numpy_helper.from_array(B_FC, "b")])
    return save_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / f"lp{dtype}.onnx")


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT16, TensorProto.BFLOAT16])
def test_low_precision_weights_are_not_singular(tmp_path: Path, dtype: int) -> None:
    path = _fp16_model(tmp_path, dtype)
    cond = run_check(Conditioning, path)
    assert cond.metrics["matrices"] == 2 and cond.metrics["singular_matrices"] == 0
    np_dt = np.float16 if dtype == TensorProto.FLOAT16 else ml_dtypes.bfloat16
    for name, w32 in (("k_lp", W_CONV.reshape(4, -1)), ("w_lp", W_FC)):
        e = cond.metrics["layers"][name]
        s32 = np.linalg.svd(w32.astype(np.float64), compute_uv=False)
        low = w32.astype(np_dt).astype(np.float64)
        # Weyl: every singular value moves by at most the spectral norm of the rounding error
        err = np.linalg.norm(low - w32.astype(np.float64), 2)
        assert abs(e["spectral_norm"] - s32[0]) <= err and abs(e["sigma_min"] - s32[-1]) <= err
        assert e["numerical_rank"] == min(w32.shape) and e["condition_number"] is not None
        assert e["condition_number"] == pytest.approx(s32[0] / s32[-1], abs=4 * err * s32[0] / s32[-1] ** 2)
    prof = run_check(SparsityProfile, path)
    assert prof.metrics["params"] == W_CONV.size + W_FC.size


def test_constant_node_weights_are_folded(tmp_path: Path) -> None:
    """A Constant feeding a Conv directly, a Constant (value_floats) behind a Reshape feeding a MatMul, a
    ConstantOfShape weight of a Gemm, a Constant behind Transpose -> Mul(2) feeding a Gemm."""
    k = RNG.normal(size=(3, 2, 3, 3)).astype(np.float32)
    m = RNG.normal(size=(12, 5)).astype(np.float32)
    t = RNG.normal(size=(4, 5)).astype(np.float32)
    const = helper.make_tensor("kc", TensorProto.FLOAT, k.shape, k.reshape(-1).tolist())
    nodes = [
        helper.make_node("Constant", [], ["k"], value=const),
        helper.make_node("Conv", ["x", "k"], ["c"], name="conv"),  # (N,3,2,2)
        helper.make_node("Flatten", ["c"], ["f"]),                   # (N,12)
        helper.make_node("Constant", [], ["m_flat"], value_floats=m.reshape(-1).tolist()),
        helper.make_node("Constant", [], ["m_shape"], value_ints=[12, 5]),
        helper.make_node("Reshape", ["m_flat", "m_shape"], ["m"]),
        helper.make_node("MatMul", ["f", "m"], ["h"], name="mm"),   # (N,5)
        helper.make_node("Constant", [], ["z_shape"], value_ints=[5, 5]),
        helper.make_node("ConstantOfShape", ["z_shape"], ["z"],
                         value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.5])),
        helper.make_node("Gemm", ["h", "z"], ["h2"], name="gemm_fill"),
        helper.make_node("Constant", [], ["tc"], value=numpy_helper.from_array(t, "tc")),
        helper.make_node("Transpose", ["tc"], ["tt"], perm=[1, 0]),
        helper.make_node("Constant", [], ["two"], value_float=2.0),
        helper.make_node("Mul", ["tt", "two"], ["t2"]),
        helper.make_node("Gemm", ["h2", "t2"], ["y"], name="gemm_folded"),
    ]
    path = save(nodes, helper.make_tensor_value_info("x", FLOAT, ["N", 2, 4, 4]),
                helper.make_tensor_value_info("y", FLOAT, ["N", 4]), {}, tmp_path / "const.onnx")
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # a valid model
    prof = run_check(SparsityProfile, path)
    w = prof.metrics["weights"]
    assert list(w) == ["k", "m", "z", "t2"]
    assert (w["k"]["source"], w["m"]["source"], w["z"]["source"], w["t2"]["source"]) == (
        "Constant", "folded", "ConstantOfShape", "folded")
    expected = {"k": k.reshape(3, -1), "m": m, "z": np.full((5, 5), 0.5), "t2": 2.0 * t.T}
    cond = run_check(Conditioning, path)
    for name, arr in expected.items():
        a = np.asarray(arr, dtype=np.float64)
        assert w[name]["params"] == a.size and w[name]["max_abs"] == pytest.approx(np.abs(a).max(), rel=1e-6)
        assert cond.metrics["layers"][name]["spectral_norm"] == pytest.approx(np.linalg.norm(a, 2), rel=1e-6)
    assert cond.metrics["layers"]["z"]["numerical_rank"] == 1  # a constant matrix has rank one
    assert any("ConstantOfShape" in n for n in prof.notes)


# ---------------------------------------------------------------------------------------------- Lipschitz
def _empirical_lipschitz(path: Path, shape: tuple[int, ...]) -> float:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = RNG.normal(size=(256, *shape)).astype(np.float32)
    d = RNG.normal(size=x.shape).astype(np.float32) * 1e-2
    fx, fy = sess.run(None, {"x": x})[0], sess.run(None, {"x": x + d})[0]
    num = np.linalg.norm((fx - fy).reshape(len(x), -1), axis=1)
    return float(np.max(num / np.linalg.norm(d.reshape(len(x), -1), axis=1)))


def test_lipschitz_bound_of_a_chain(tmp_path: Path) -> None:
    """Conv (3x3) -> BatchNorm -> Relu -> MaxPool 2x2 stride 1 -> Flatten -> Gemm (alpha 0.5) -> Sigmoid:
    the bound is √9·σ(k) · max|γ/√(v+ε)| · √(2·2) · 0.5·σ(W) · 1/4, each factor from numpy."""
    k = RNG.normal(size=(3, 2, 3, 3)).astype(np.float32)
    gamma = np.array([0.5, 2.0, 1.0], np.float32)
    var = np.array([1.0, 0.25, 4.0], np.float32)
    w = RNG.normal(size=(3 * 3 * 3, 2)).astype(np.float32)
    inits = {"k": k, "g": gamma, "beta": np.zeros(3, np.float32), "mu": np.ones(3, np.float32), "var": var,
             "w": w, "b": np.zeros(2, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "k"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "beta", "mu", "var"], ["bn"], epsilon=0.0),
             helper.make_node("Relu", ["bn"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[1, 1]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "w", "b"], ["z"], name="fc", alpha=0.5),
             helper.make_node("Sigmoid", ["z"], ["y"])]
    path = save(nodes, helper.make_tensor_value_info("x", FLOAT, ["N", 2, 4, 4]),
                helper.make_tensor_value_info("y", FLOAT, ["N", 2]), inits, tmp_path / "chain.onnx")
    m = run_check(Conditioning, path).metrics
    bn = float(np.max(np.abs(gamma) / np.sqrt(var)))
    expected = (3.0 * np.linalg.norm(k.reshape(3, -1).astype(np.float64), 2) * bn * 2.0
                * 0.5 * np.linalg.norm(w.astype(np.float64), 2) * 0.25)
    assert m["lipschitz_upper_bound"] == pytest.approx(expected, rel=1e-6)
    assert m["log10_lipschitz_upper_bound"] == pytest.approx(np.log10(expected), rel=1e-6)
    assert _empirical_lipschitz(path, (2, 4, 4)) <= m["lipschitz_upper_bound"]


def test_lipschitz_bound_is_null_for_a_residual_model(tmp_path: Path) -> None:
    w1 = RNG.normal(size=(6, 6)).astype(np.float32)
    w2 = RNG.normal(size=(6, 3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Add", ["x", "r"], ["res"], name="residual"),
             helper.make_node("MatMul", ["res", "w2"], ["y"], name="fc2")]
    path = save(nodes, helper.make_tensor_value_info("x", FLOAT, ["N", 6]),
                helper.make_tensor_value_info("y", FLOAT, ["N", 3]), {"w1": w1, "w2": w2}, tmp_path / "res.onnx")
    r = run_check(Conditioning, path)
    assert r.metrics["lipschitz_upper_bound"] is None and r.metrics["log10_lipschitz_upper_bound"] is None
    assert any("residual" in n and "'residual'" in n for n in r.notes)
    # the per-matrix figures are still there, and right
    assert r.metrics["layers"]["w1"]["spectral_norm"] == pytest.approx(np.linalg.norm(w1.astype(float), 2))


@pytest.mark.parametrize("op", ["Add", "Mul", "Div"])
def test_lipschitz_bound_counts_an_activation_broadcast_by_a_constant(tmp_path: Path, op: str) -> None:
    """Gemm w [3, 1] -> z [N, 1], then z op c with c [1, 10]: every z is repeated 10 times in y, so the node's
    factor is √10 (times max|c| for Mul, 1/min|c| for Div), not 1. For Add the bound is exact: √10·σ(w)."""
    w = RNG.normal(size=(3, 1)).astype(np.float32)
    c = RNG.uniform(0.5, 2.0, size=(1, 10)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w"], ["z"], name="fc"), helper.make_node(op, ["z", "c"], ["y"])]
    path = save(nodes, helper.make_tensor_value_info("x", FLOAT, ["N", 3]),
                helper.make_tensor_value_info("y", FLOAT, ["N", 10]), {"w": w, "c": c}, tmp_path / "bc.onnx")
    m = run_check(Conditioning, path).metrics
    scale = {"Add": 1.0, "Mul": float(np.max(np.abs(c))), "Div": 1.0 / float(np.min(np.abs(c)))}[op]
    expected = np.sqrt(10.0) * np.linalg.norm(w.astype(np.float64), 2) * scale
    assert m["lipschitz_upper_bound"] == pytest.approx(expected, rel=1e-6)
    observed = _empirical_lipschitz(path, (3,))
    assert observed <= m["lipschitz_upper_bound"] * (1 + 1e-6)
    if op == "Add":  # tight: a step along w is repeated in all 10 outputs
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        x = RNG.normal(size=(1, 3)).astype(np.float32)
        step = (w[:, 0] / np.linalg.norm(w)).astype(np.float32)[None, :]
        dy = sess.run(None, {"x": x + step})[0] - sess.run(None, {"x": x})[0]
        assert float(np.linalg.norm(dy)) == pytest.approx(expected, rel=1e-4)


def test_lipschitz_bias_add_that_does_not_broadcast_keeps_factor_one(tmp_path: Path) -> None:
    w = RNG.normal(size=(3, 10)).astype(np.float32)
    b = RNG.normal(size=(10,)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["z"], name="mm"), helper.make_node("Add", ["z", "b"], ["y"])]
    path = save(nodes, helper.make_tensor_value_info("x", FLOAT, ["N", 3]),
                helper.make_tensor_value_info("y", FLOAT, ["N", 10]), {"w": w, "b": b}, tmp_path / "bias.onnx")
    m = run_check(Conditioning, path).metrics
    assert m["lipschitz_upper_bound"] == pytest.approx(np.linalg.norm(w.astype(np.float64), 2), rel=1e-6)
