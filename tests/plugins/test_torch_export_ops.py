"""Ops and graph shapes that real exports bring to the torch interpreter, each against ONNX Runtime on the same
inputs: DepthToSpace / SpaceToDepth, Shrink, TopK, QuantizeLinear / DequantizeLinear (fake quantization with a
straight-through gradient, against torch's own fake_quantize), If, and a graph whose nodes are out of order."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")

from auditor_torch.interpreter import build_module  # noqa: E402
from test_torch_interpreter import compare, graph  # noqa: E402

from auditor.testing import readable_ir, save_model  # noqa: E402

RNG = np.random.default_rng(3)
F32 = TensorProto.FLOAT


def r(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


CASES: list[tuple[str, Any, np.ndarray]] = [
    ("depth_to_space-dcr", lambda: graph("DepthToSpace", r(2, 8, 3, 4), attrs={"blocksize": 2}), r(2, 8, 3, 4)),
    ("depth_to_space-crd", lambda: graph("DepthToSpace", r(2, 8, 3, 4), attrs={"blocksize": 2, "mode": "CRD"}),
     r(2, 8, 3, 4)),
    ("space_to_depth", lambda: graph("SpaceToDepth", r(2, 3, 4, 6), attrs={"blocksize": 2}), r(2, 3, 4, 6)),
    ("shrink", lambda: graph("Shrink", r(3, 7), attrs={"lambd": 0.4, "bias": 0.1}), r(3, 7)),
    ("topk-largest", lambda: graph("TopK", r(4, 9), [("k", np.array([3], np.int64))], n_out=2), r(4, 9)),
    ("topk-smallest-axis0", lambda: graph("TopK", r(6, 5), [("k", np.array([2], np.int64))],
                                          {"axis": 0, "largest": 0}, n_out=2), r(6, 5)),
    ("topk-ties", lambda: graph("TopK", r(2, 6), [("k", np.array([4], np.int64))], n_out=2),
     np.array([[1, 3, 3, 2, 3, 0], [5, 5, 5, 5, 1, 1]], np.float32)),
    ("quantize-uint8", lambda: graph("QuantizeLinear", r(3, 5), [("s", np.float32(0.02)), ("z", np.uint8(128))],
                                     out_type=TensorProto.UINT8), r(3, 5) * 3),
    ("quantize-int8-axis", lambda: graph("QuantizeLinear", r(2, 3, 4),
                                         [("s", np.array([0.01, 0.05, 0.1], np.float32)),
                                          ("z", np.array([0, -3, 5], np.int8))], {"axis": 1},
                                         out_type=TensorProto.INT8), r(2, 3, 4)),
]


@pytest.mark.parametrize("name,make,x", CASES, ids=[c[0] for c in CASES])
def test_export_op_matches_onnxruntime(name: str, make: Any, x: np.ndarray) -> None:
    model = make()
    if name.startswith("topk"):
        model.graph.output[1].type.tensor_type.elem_type = TensorProto.INT64
    compare(model, x, tol=1e-6)


def _qdq_model(axis_scale: bool) -> onnx.ModelProto:
    """x -> QuantizeLinear -> DequantizeLinear (per tensor, or per channel along axis 1)."""
    s = np.array([0.05, 0.1, 0.2], np.float32) if axis_scale else np.float32(0.05)
    z = np.array([3, 0, -2], np.int8) if axis_scale else np.int8(-4)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=1)]
    g = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", F32, ["N", 3])],
                          [helper.make_tensor_value_info("y", F32, ["N", 3])],
                          initializer=[numpy_helper.from_array(np.asarray(s), "s"),
                                       numpy_helper.from_array(np.asarray(z), "z")])
    return readable_ir(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.parametrize("per_channel", [False, True])
def test_fake_quant_forward_and_straight_through_gradient(per_channel: bool) -> None:
    model = _qdq_model(per_channel)
    x = (RNG.standard_normal((64, 3)) * 8).astype(np.float32)  # some beyond the int8 range
    compare(model, x, tol=1e-7)
    m = build_module(model)
    xt = torch.from_numpy(x).requires_grad_(True)
    y = m(xt)
    y.sum().backward()
    # torch's own fake quantization (its backward is the straight-through estimator with clipping)
    ref = torch.from_numpy(x).requires_grad_(True)
    if per_channel:
        ry = torch.fake_quantize_per_channel_affine(ref, torch.tensor([0.05, 0.1, 0.2]),
                                                    torch.tensor([3, 0, -2], dtype=torch.int32), 1, -128, 127)
    else:
        ry = torch.fake_quantize_per_tensor_affine(ref, 0.05, -4, -128, 127)
    ry.sum().backward()
    np.testing.assert_allclose(y.detach().numpy(), ry.detach().numpy(), atol=1e-7)
    np.testing.assert_array_equal(xt.grad.numpy(), ref.grad.numpy())
    assert 0 < float(xt.grad.sum()) < x.size  # clipped somewhere, passed through elsewhere


def _if_model() -> onnx.ModelProto:
    """y = W·x·2 if sum(x) > 0 else x·x (both branches read the outer x; the then branch an outer weight)."""
    then_g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["t0"]),
                                helper.make_node("Mul", ["t0", "two"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", F32, None)],
                               initializer=[numpy_helper.from_array(np.float32(2.0), "two")])
    else_g = helper.make_graph([helper.make_node("Mul", ["x", "x"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", F32, None)])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Constant", [], ["zero"], value_float=0.0),
             helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)]
    g = helper.make_graph(nodes, "if", [helper.make_tensor_value_info("x", F32, [2, 2])],
                          [helper.make_tensor_value_info("y", F32, [2, 2])],
                          initializer=[numpy_helper.from_array(r(2, 2), "W")])
    return readable_ir(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def test_if_selects_the_branch_and_its_gradient() -> None:
    model = _if_model()
    w = numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)
    for x in (np.abs(r(2, 2)) + 0.1, -np.abs(r(2, 2)) - 0.1):
        compare(model, x, tol=1e-6)
        m = build_module(model)
        xt = torch.from_numpy(x).requires_grad_(True)
        m(xt).sum().backward()
        # closed forms: d/dx sum(2 x W) = 2 · rowsum(W) per row; d/dx sum(x²) = 2x
        expected = np.tile(2 * w.sum(axis=1), (2, 1)) if x.sum() > 0 else 2 * x
        np.testing.assert_allclose(xt.grad.numpy(), expected, rtol=1e-5)


def test_nodes_out_of_topological_order() -> None:
    """Nodes written consumers-first (as keras2onnx does): ONNX Runtime sorts them, so does the interpreter."""
    w1, w2 = r(4, 5), r(5, 3)
    nodes = [helper.make_node("Softmax", ["z"], ["y"], axis=1),
             helper.make_node("MatMul", ["h", "W2"], ["z"]),
             helper.make_node("Relu", ["a"], ["h"]),
             helper.make_node("MatMul", ["x", "W1"], ["a"])]
    g = helper.make_graph(nodes, "unsorted", [helper.make_tensor_value_info("x", F32, ["N", 4])],
                          [helper.make_tensor_value_info("y", F32, ["N", 3])],
                          initializer=[numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")])
    m = readable_ir(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    x = r(6, 4)
    compare(m, x, tol=1e-6)
    z = np.maximum(x.astype(np.float64) @ w1, 0) @ w2
    p = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                               .run(None, {"x": x})[0], p / p.sum(1, keepdims=True), rtol=1e-5)


# ---------------------------------------------------------------------------------------------- torch.parity
def test_parity_tolerance_is_absolute_plus_relative(tmp_path: Any) -> None:
    """Logits in the thousands that differ by 3e-7 relative (1e-3 absolute) agree; the reported figures are
    numpy's on the same outputs. The difference is planted by a replaced Identity (x·(1 + 3e-7))."""
    from auditor_torch import register_op
    from auditor_torch.registry import lookup

    from auditor.testing import run_audit

    w = (r(4, 3) * 2000).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["z"]), helper.make_node("Identity", ["z"], ["y"])],
                          "big", [helper.make_tensor_value_info("x", F32, ["N", 4])],
                          [helper.make_tensor_value_info("y", F32, ["N", 3])],
                          initializer=[numpy_helper.from_array(w, "W")])
    path = save_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "big.onnx")
    x = r(40, 4)
    np.savez(tmp_path / "d.npz", x=x)
    ident = lookup("Identity")
    register_op("Identity", replace=True)(lambda ctx, ins: ins[0] * (1 + 3e-7))
    try:
        res = run_audit({"checks": [{"use": "torch.parity"}]}, model=path, data=tmp_path / "d.npz",
                        workdir=tmp_path)
        strict = run_audit({"checks": [{"use": "torch.parity", "with": {"rtol": 0.0}}]}, model=path,
                           data=tmp_path / "d.npz", workdir=tmp_path)
    finally:
        register_op("Identity", replace=True)(ident)
    o = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0].astype(np.float64)
    t = (torch.from_numpy(x) @ torch.from_numpy(w) * (1 + 3e-7)).numpy().astype(np.float64)
    d = np.abs(t - o)
    m = res.metrics("torch.parity")
    assert d.max() > 1e-4  # an absolute-only bar of 1e-4 would fail this
    assert m["max_abs_diff"] == pytest.approx(d.max(), rel=1e-3) and m["violations"] == 0
    res.assert_status("torch.parity", "info")
    assert strict.metrics("torch.parity")["violations"] == int(np.count_nonzero(d > 1e-4))
    strict.assert_status("torch.parity", "fail")


def test_parity_compares_every_output_and_follows_fixed_batch(tmp_path: Any) -> None:
    """Two outputs (scores and an int64 label); the graph concatenates a [1, 2] constant, so it runs only at
    its export batch of 1 (ONNX Runtime falls back to chunks of 1, so must torch). A wrong ArgMax is caught on
    the second output alone."""
    from auditor_torch import register_op
    from auditor_torch.registry import lookup

    from auditor.testing import run_audit

    w = r(6, 3)
    nodes = [helper.make_node("Concat", ["x", "c"], ["xc"], axis=1),
             helper.make_node("MatMul", ["xc", "W"], ["y"]),
             helper.make_node("ArgMax", ["y"], ["label"], axis=1, keepdims=0)]
    g = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", F32, [1, 4])],
                          [helper.make_tensor_value_info("y", F32, [1, 3]),
                           helper.make_tensor_value_info("label", TensorProto.INT64, [1])],
                          initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(r(1, 2), "c")])
    path = save_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "two.onnx")
    x = r(12, 4)
    np.savez(tmp_path / "d.npz", x=x)
    spec = {"checks": [{"use": "torch.parity"}]}
    res = run_audit(spec, model=path, data=tmp_path / "d.npz", workdir=tmp_path)
    res.assert_status("torch.parity", "info")
    m = res.metrics("torch.parity")
    assert set(m["outputs"]) == {"y", "label"} and m["n"] == 12 and m["violations"] == 0
    assert m["outputs"]["label"]["elements"] == 12 and m["max_abs_diff"] < 1e-5
    assert any("fixed batch size 1" in n for n in res.check("torch.parity").notes)
    argmax = lookup("ArgMax")
    register_op("ArgMax", replace=True)(lambda ctx, ins: torch.argmin(ins[0], dim=1))
    try:
        bad = run_audit(spec, model=path, data=tmp_path / "d.npz", workdir=tmp_path)
    finally:
        register_op("ArgMax", replace=True)(argmax)
    bad.assert_status("torch.parity", "fail")
    bm = bad.metrics("torch.parity")
    o = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ys = np.concatenate([o.run(["y"], {"x": x[i:i + 1]})[0] for i in range(12)])
    assert bm["outputs"]["label"]["violations"] == int(np.sum(ys.argmax(1) != ys.argmin(1)))
    assert bm["outputs"]["y"]["violations"] == 0


def test_dynamic_quantization_ops_are_exact() -> None:
    """DynamicQuantizeLinear against ONNX Runtime; MatMulInteger / ConvInteger against exact integer arithmetic
    in numpy (ONNX Runtime's u8 x s8 kernels may saturate on some CPUs, so they are not the reference)."""
    x = (r(3, 8) * 4).astype(np.float32)
    m = graph("DynamicQuantizeLinear", x, n_out=3)
    for o, t in zip(m.graph.output, (TensorProto.UINT8, F32, TensorProto.UINT8)):
        o.type.tensor_type.elem_type = t
    compare(m, x, tol=1e-7)
    a = RNG.integers(0, 256, (2, 5, 6)).astype(np.uint8)
    b = RNG.integers(-128, 128, (6, 4)).astype(np.int8)
    mm = graph("MatMulInteger", a, [("b", b), ("az", np.uint8(9)), ("bz", np.array([1, -2, 0, 5], np.int8))],
               out_type=TensorProto.INT32)
    got = build_module(mm)(torch.from_numpy(a)).detach().numpy()
    exact = (a.astype(np.int64) - 9) @ (b.astype(np.int64) - np.array([1, -2, 0, 5]))
    np.testing.assert_array_equal(got, exact)
    xi = RNG.integers(0, 256, (1, 2, 5, 5)).astype(np.uint8)
    wi = RNG.integers(-128, 128, (3, 2, 3, 3)).astype(np.int8)
    cm = graph("ConvInteger", xi, [("w", wi), ("xz", np.uint8(7)), ("wz", np.int8(2))], {"pads": [1, 1, 1, 1]},
               out_type=TensorProto.INT32)
    got = build_module(cm)(torch.from_numpy(xi)).detach().numpy()
    xc = np.pad(xi.astype(np.int64) - 7, ((0, 0), (0, 0), (1, 1), (1, 1)))
    wc = wi.astype(np.int64) - 2
    exact = np.zeros((1, 3, 5, 5), np.int64)
    for i in range(5):
        for j in range(5):
            exact[0, :, i, j] = np.tensordot(wc, xc[0, :, i:i + 3, j:j + 3], axes=([1, 2, 3], [0, 1, 2]))
    np.testing.assert_array_equal(got, exact)
