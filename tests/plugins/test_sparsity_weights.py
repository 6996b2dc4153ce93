"""``sparsity.profile`` and ``sparsity.filters`` on models with planted sparsity and degenerate filters."""

from __future__ import annotations

from pathlib import Path

import auditor_sparsity.weights as weights_mod
import numpy as np
import pytest
import scipy.stats
from auditor_sparsity.filters import DegenerateFilters
from auditor_sparsity.profile import SparsityProfile
from onnx import TensorProto, helper
from sparsity_helpers import FLOAT, OTHER_PLUGINS, prune_to, run_check, save

from auditor.testing import run_audit


def pq_numpy(w: np.ndarray) -> float:
    """PQ index (p=1, q=2) straight from its definition with numpy's norms."""
    v = w.reshape(-1).astype(np.float64)
    return float(1 - len(v) ** (0.5 - 1) * np.linalg.norm(v, 1) / np.linalg.norm(v, 2))


def pruned_cnn(tmp_path: Path, *, external: bool = False) -> tuple[Path, dict[str, np.ndarray]]:
    """Conv (8,3,3,3) -> Relu -> depthwise Conv (8,1,3,3) -> Relu -> GAP -> Flatten -> Gemm(transB) ->
    Relu -> MatMul -> Add -> Softmax, each weight pruned to a known sparsity with planted structure."""
    r = np.random.default_rng(0)
    c1 = r.normal(size=(8, 3, 3, 3)).astype(np.float32)
    c1[[2, 5]] = 0  # zero output filters
    c1[:, 1] = 0  # an input channel nobody reads
    c1 = prune_to(c1, 150, r)  # 150 of 216 zeros
    dw = r.normal(size=(8, 1, 3, 3)).astype(np.float32)
    dw[4] = 0  # depthwise: filter 4 is also input channel 4
    dw = prune_to(dw, 36, r)
    # fc1: Gemm with transB, stored (out=16, in=8); nonzeros all of magnitude 0.5 -> PQ = 1 - sqrt(k/d)
    fc1 = np.where(r.random((16, 8)) < 0.5, 0.5, -0.5).astype(np.float32)
    fc1[3] = 0  # output unit 3
    fc1[:, 6] = 0  # input unit 6
    fc1 = prune_to(fc1, 64, r)
    fc2 = r.normal(size=(16, 4)).astype(np.float32)  # MatMul (in=16, out=4)
    fc2[5] = 1e-4  # near-zero but not zero
    fc2[:, 2] = 0  # output 2
    fc2 = prune_to(fc2, 20, r)
    w = {"c1": c1, "dw": dw, "fc1": fc1, "fc1_b": np.zeros(16, np.float32), "fc2": fc2,
         "fc2_b": np.zeros(4, np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "c1"], ["a1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "dw"], ["a2"], name="dwconv", pads=[1, 1, 1, 1], group=8),
        helper.make_node("Relu", ["a2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fc1", "fc1_b"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["hr"], name="relu3"),
        helper.make_node("MatMul", ["hr", "fc2"], ["z0"], name="fc2"),
        helper.make_node("Add", ["z0", "fc2_b"], ["z"], name="fc2_bias"),
        helper.make_node("Softmax", ["z"], ["probs"], name="softmax", axis=1),
    ]
    path = save(nodes, helper.make_tensor_value_info("x", FLOAT, ["N", 3, 8, 8]),
                helper.make_tensor_value_info("probs", FLOAT, ["N", 4]), w, tmp_path / "cnn.onnx", external=external)
    return path, w


def check_profile(m: dict, w: dict[str, np.ndarray]) -> None:
    """Every number of the profile against the planted arrays."""
    layer = {"c1": w["c1"], "dw": w["dw"], "fc1": w["fc1"], "fc2": w["fc2"]}
    assert set(m["weights"]) == set(layer)
    planted_zeros = {"c1": 150, "dw": 36, "fc1": 64, "fc2": 20}
    for name, arr in layer.items():
        e = m["weights"][name]
        assert e["zeros"] == planted_zeros[name] == int(np.sum(arr == 0))
        assert e["sparsity"] == planted_zeros[name] / arr.size
        assert e["params"] == arr.size
        assert e["near_zero_fraction"] == pytest.approx(np.mean(np.abs(arr) <= 1e-3))
        assert e["pq_index"] == pytest.approx(pq_numpy(arr), rel=1e-9)
        assert e["max_abs"] == pytest.approx(float(np.abs(arr).max()))
    # structured zeros: planted ones are found, and the lists equal numpy's on the same arrays
    c1 = m["weights"]["c1"]
    assert {2, 5} <= set(c1["zero_output_indices"]) and 1 in c1["zero_input_indices"]
    assert c1["zero_output_indices"] == np.flatnonzero(~w["c1"].any(axis=(1, 2, 3))).tolist()
    assert c1["zero_input_indices"] == np.flatnonzero(~w["c1"].any(axis=(0, 2, 3))).tolist()
    dw = m["weights"]["dw"]  # depthwise: input channel c is read by filter c only
    planted_dw = np.flatnonzero(~w["dw"].any(axis=(1, 2, 3))).tolist()
    assert dw["zero_output_indices"] == dw["zero_input_indices"] == planted_dw
    assert 4 in dw["zero_output_indices"] and dw["n_inputs"] == 8 and dw["n_outputs"] == 8
    fc1 = m["weights"]["fc1"]  # Gemm transB: stored (out, in)
    assert fc1["zero_output_indices"] == np.flatnonzero(~w["fc1"].any(axis=1)).tolist()
    assert fc1["zero_input_indices"] == np.flatnonzero(~w["fc1"].any(axis=0)).tolist()
    assert 3 in fc1["zero_output_indices"] and 6 in fc1["zero_input_indices"]
    # all nonzeros have magnitude 0.5: PQ = 1 - sqrt(k / d) in closed form
    k = 128 - 64
    assert fc1["pq_index"] == pytest.approx(1 - np.sqrt(k / 128), rel=1e-12)
    fc2 = m["weights"]["fc2"]  # MatMul: stored (in, out)
    assert fc2["zero_output_indices"] == np.flatnonzero(~w["fc2"].any(axis=0)).tolist()
    assert 2 in fc2["zero_output_indices"] and fc2["n_outputs"] == 4 and fc2["n_inputs"] == 16
    assert (fc2["node"], fc2["op_type"]) == ("fc2", "MatMul")
    # per op type and overall: parameter-weighted
    conv = m["by_op_type"]["Conv"]
    assert conv["params"] == 216 + 72 and conv["zeros"] == 150 + 36
    assert conv["sparsity"] == pytest.approx(186 / 288)
    assert conv["pq_index"] == pytest.approx(pq_numpy(np.concatenate([w["c1"].ravel(), w["dw"].ravel()])))
    total = sum(a.size for a in layer.values())
    assert m["params"] == total and m["zeros"] == 270
    assert m["sparsity"] == pytest.approx(270 / total)
    assert m["pq_index"] == pytest.approx(pq_numpy(np.concatenate([a.ravel() for a in layer.values()])))
    assert m["max_layer_sparsity"] == pytest.approx(max(planted_zeros[n] / a.size for n, a in layer.items()))


def test_profile_planted_pruning(tmp_path: Path) -> None:
    path, w = pruned_cnn(tmp_path)
    r = run_check(SparsityProfile, path)
    check_profile(r.metrics, w)
    assert not any(e["external"] for e in r.metrics["weights"].values())


def test_profile_streams_external_data_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, w = pruned_cnn(tmp_path, external=True)
    assert (tmp_path / "cnn.onnx.data").exists()
    monkeypatch.setattr(weights_mod, "CHUNK_BYTES", 80)  # one or two rows per chunk
    r = run_check(SparsityProfile, path)
    check_profile(r.metrics, w)
    assert all(e["external"] for e in r.metrics["weights"].values())
    assert "memory-mapped" in r.notes[0]


def test_quantized_and_transposed_weights(tmp_path: Path) -> None:
    """DequantizeLinear with per-column zero points (zero where q == zp) and a Transpose before MatMul."""
    r = np.random.default_rng(3)
    zp = np.array([0, 5, -3, 10, 2], np.int8)
    scale = np.array([0.1, 0.2, 0.05, 0.5, 1.0], np.float32)
    q = r.integers(-100, 100, size=(6, 5)).astype(np.int8)
    q[q == zp] = 50  # no accidental zeros...
    zero_mask = np.zeros((6, 5), bool)
    zero_mask[[0, 0, 2, 4, 5], [1, 3, 3, 0, 2]] = True
    zero_mask[:, 4] = True  # ...then output 4 entirely zero, and 5 more planted
    q = np.where(zero_mask, zp[None, :], q).astype(np.int8)
    w2s = r.normal(size=(4, 5)).astype(np.float32)  # stored (out=4, in=5), transposed before MatMul
    w2s[1] = 0
    w2s[:, 3] = 0
    nodes = [
        helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["w1"], name="dq", axis=1),
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Relu", ["h"], ["hr"], name="relu"),
        helper.make_node("Transpose", ["w2s"], ["w2"], name="tr", perm=[1, 0]),
        helper.make_node("MatMul", ["hr", "w2"], ["y"], name="mm2"),
    ]
    path = save(nodes, helper.make_tensor_value_info("x", FLOAT, ["N", 6]),
                helper.make_tensor_value_info("y", FLOAT, ["N", 4]),
                {"q": q, "scale": scale, "zp": zp, "w2s": w2s}, tmp_path / "q.onnx")
    m = run_check(SparsityProfile, path).metrics
    assert set(m["weights"]) == {"q", "w2s"}
    e = m["weights"]["q"]
    assert e["via"] == ["DequantizeLinear"] and e["node"] == "mm1"
    assert e["zeros"] == int(zero_mask.sum()) == 6 + 5
    assert e["zero_output_indices"] == [4] and e["zero_input_indices"] == []
    deq = (q.astype(np.float64) - zp) * scale
    assert e["pq_index"] == pytest.approx(pq_numpy(deq), rel=1e-9)
    assert e["max_abs"] == pytest.approx(np.abs(deq).max())
    t = m["weights"]["w2s"]
    assert t["via"] == ["Transpose"]
    assert t["zero_output_indices"] == [1] and t["zero_input_indices"] == [3]
    assert t["zeros"] == int(np.sum(w2s == 0))


def test_profile_skips_without_layer_weights(tmp_path: Path) -> None:
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
    path = save(nodes, helper.make_tensor_value_info("x", FLOAT, ["N", 3]),
                helper.make_tensor_value_info("y", FLOAT, ["N", 3]), {}, tmp_path / "relu.onnx")
    res = run_audit({"checks": [{"use": "sparsity.profile"}]}, model=path, workdir=tmp_path, disable=OTHER_PLUGINS)
    res.assert_status("sparsity.profile", "skipped")


# --------------------------------------------------------------------------------------------- filters


def degenerate_cnn(tmp_path: Path, *, tf_layout: bool = False) -> tuple[Path, np.ndarray, np.ndarray]:
    """conv1 (8,3,3,3) with planted zero / near-zero / constant filters; conv2 (16,8,3,3) whose 3×3 slices are
    ±2·e1 and ±1·e2 in equal numbers (variance ratios 0.8 / 0.2 in closed form)."""
    r = np.random.default_rng(1)
    k1 = r.normal(size=(8, 3, 3, 3)).astype(np.float32)
    k1[0, 0, 0, 0] = 3.0  # the layer's max |w|
    k1[[1, 4]] = 0.0  # zero
    k1[2] = 0.5  # constant
    k1[5] = r.uniform(-1, 1, size=(3, 3, 3)) * 3e-3 / 1.0  # max |w| < 1 % of 3.0 -> near-zero
    k1[6] = 0.01  # constant but also near-zero: counted as near-zero
    slices = np.zeros((128, 9), np.float32)
    pattern = np.arange(128) % 4
    slices[pattern == 0, 0], slices[pattern == 1, 0] = 2.0, -2.0
    slices[pattern == 2, 1], slices[pattern == 3, 1] = 1.0, -1.0
    k2 = slices.reshape(16, 8, 3, 3)
    w = {"k1": k1, "k2": k2}
    nodes = []
    if tf_layout:  # stored HWIO, transposed to OIHW in the graph (as TensorFlow exports do)
        w = {"k1": np.ascontiguousarray(k1.transpose(2, 3, 1, 0)), "k2": np.ascontiguousarray(k2.transpose(2, 3, 1, 0))}
        nodes += [helper.make_node("Transpose", ["k1"], ["k1t"], perm=[3, 2, 0, 1]),
                  helper.make_node("Transpose", ["k2"], ["k2t"], perm=[3, 2, 0, 1])]
    n1, n2 = ("k1t", "k2t") if tf_layout else ("k1", "k2")
    nodes += [
        helper.make_node("Conv", ["x", n1], ["a1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", n2], ["a2"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    path = save(nodes, helper.make_tensor_value_info("x", FLOAT, ["N", 3, 6, 6]),
                helper.make_tensor_value_info("a2", FLOAT, ["N", 16, 6, 6]), w, tmp_path / "deg.onnx")
    return path, k1, k2


@pytest.mark.parametrize("tf_layout", [False, True])
def test_filters_planted(tmp_path: Path, tf_layout: bool) -> None:
    path, k1, _ = degenerate_cnn(tmp_path, tf_layout=tf_layout)
    m = run_check(DegenerateFilters, path).metrics
    c1 = m["layers"]["k1"]
    assert c1["filters"] == 8 and c1["kernel"] == [3, 3]
    assert c1["zero_filter_indices"] == [1, 4] and c1["zero_filters"] == 2
    assert c1["near_zero_filter_indices"] == [5, 6] and c1["near_zero_filters"] == 2
    assert c1["constant_filter_indices"] == [2] and c1["constant_filters"] == 1
    assert c1["degenerate_filters"] == 5 and c1["degenerate_fraction"] == 5 / 8
    c2 = m["layers"]["k2"]
    assert c2["degenerate_filters"] == 0
    # closed form: PCA of the slices has variance ratios 4/5 and 1/5
    assert c2["variance_ratios"][:2] == pytest.approx([0.8, 0.2], abs=1e-12)
    expected = -(0.8 * np.log(0.8) + 0.2 * np.log(0.2)) / np.log(9)
    assert c2["variance_entropy"] == pytest.approx(expected, rel=1e-9)
    # conv1's entropy against scipy on numpy's SVD of the same (centred) slices
    x = k1.reshape(-1, 9).astype(np.float64)
    s = np.linalg.svd(x - x.mean(axis=0), compute_uv=False)
    assert c1["variance_entropy"] == pytest.approx(scipy.stats.entropy(s**2) / np.log(9), rel=1e-7)
    assert m["degenerate_filters"] == 5 and m["filters"] == 24
    assert m["degenerate_fraction"] == pytest.approx(5 / 24)
    assert m["max_degenerate_fraction"] == 5 / 8
    assert m["min_variance_entropy"] == pytest.approx(min(c1["variance_entropy"], expected))


def test_filters_gate_through_the_tool(tmp_path: Path) -> None:
    path, _, _ = degenerate_cnn(tmp_path)
    spec = {"checks": [{"use": "sparsity.filters", "gate": {"degenerate_fraction": {"max": 0.1}}},
                       {"use": "sparsity.profile"}]}
    res = run_audit(spec, model=path, workdir=tmp_path, disable=OTHER_PLUGINS)
    res.assert_status("sparsity.filters", "fail")
    assert res.metrics("sparsity.filters")["degenerate_fraction"] == pytest.approx(5 / 24)
    assert res.exit_code != 0
    res.assert_status("sparsity.profile", "info")


def test_filters_skip_without_convs(tmp_path: Path) -> None:
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    path = save(nodes, helper.make_tensor_value_info("x", FLOAT, ["N", 3]),
                helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2]),
                {"w": np.ones((3, 2), np.float32)}, tmp_path / "mm.onnx")
    res = run_audit({"checks": [{"use": "sparsity.filters"}]}, model=path, workdir=tmp_path, disable=OTHER_PLUGINS)
    res.assert_status("sparsity.filters", "skipped")


def test_grouped_conv_transpose_structured_zeros(tmp_path: Path) -> None:
    """ConvTranspose weight (C_in, C_out/group, k, k): output j of group g is W[g·C/g:(g+1)·C/g, j]."""
    r = np.random.default_rng(5)
    w = r.normal(size=(4, 3, 2, 2)).astype(np.float32)  # 4 inputs, 2 groups of 3 outputs
    w[0:2, 1] = 0  # group 0's output 1 (global output 1)
    w[3] = 0  # input channel 3
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up", group=2)]
    path = save(nodes, helper.make_tensor_value_info("x", FLOAT, ["N", 4, 3, 3]),
                helper.make_tensor_value_info("y", FLOAT, ["N", 6, 4, 4]), {"w": w}, tmp_path / "ct.onnx")
    e = run_check(SparsityProfile, path).metrics["weights"]["w"]
    per_group = [w[g * 2:(g + 1) * 2].any(axis=(0, 2, 3)) for g in range(2)]
    expected_out = np.flatnonzero(~np.concatenate(per_group)).tolist()
    assert e["zero_output_indices"] == expected_out == [1]
    assert e["zero_input_indices"] == np.flatnonzero(~w.any(axis=(1, 2, 3))).tolist() == [3]
    assert (e["n_outputs"], e["n_inputs"]) == (6, 4)
