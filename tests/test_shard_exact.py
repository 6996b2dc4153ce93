"""The checks that ran whole until #14 shard exactly: transfer.attribution_distance, transfer.similarity,
torch.parity, bias.leakage and bias.shortcut give with small shards (``execution.shard_rows``) the report of one
shard holding every row, which is the whole computation (the tests of each check verify its numbers against
independent computations on that path): bit for bit, except linear CKA from feature-space sums, whose sums
over other shards round differently (1e-12 here). A few numbers are checked again on the sharded path, against
plain ONNX Runtime and numpy. tests/test_ray.py runs the same shards on Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from auditor_transfer.stats import CKAAccumulator
from builders import mlp_weights
from report_compare import assert_same
from shard_exact import HAS_TORCH, audit


def test_small_shards_give_the_report_of_the_whole_computation(exact_audit: tuple[Path, dict[str, Any], Any]
                                                                ) -> None:
    d, files, sharded = exact_audit
    whole = audit(d, files, 100_000)  # one shard holding every row: the whole computation
    docs = [r.doc for r in (whole, sharded)]
    sums = [next(c for c in doc["checks"] if c["id"] == "transfer.similarity") for doc in docs]
    for doc, c in zip(docs, sums):
        doc["checks"].remove(c)
    assert_same(*docs)
    assert sums[0]["notes"] == sums[1]["notes"] and sums[0]["metrics"]["n"] == sums[1]["metrics"]["n"] == 300
    assert np.allclose(sums[0]["metrics"]["cka_matrix"], sums[1]["metrics"]["cka_matrix"], rtol=1e-12, atol=0)
    assert sums[0]["metrics"]["agreement"] == sums[1]["metrics"]["agreement"]

    # CKA of the hidden layers against the Gram-matrix formula (Kornblith et al. 2019) on numpy's forward pass
    def hidden(w: dict[str, np.ndarray]) -> np.ndarray:
        return np.maximum(x.astype(np.float64) @ w["W1"] + w["b1"], 0)

    def hsic(k: np.ndarray, m: np.ndarray) -> float:
        h = np.eye(len(k)) - 1.0 / len(k)
        return float(np.trace(k @ h @ m @ h))

    data = np.load(d / "d.npz")
    x, y = data["x"], data["y"]
    k, m = (hidden(w) @ hidden(w).T for w in (mlp_weights(), mlp_weights(seed=5)))
    cka = sums[1]["metrics"]["cka_matrix"][1][1]
    # (ONNX Runtime computes the features in float32, numpy here in float64)
    assert cka == pytest.approx(hsic(k, m) / np.sqrt(hsic(k, k) * hsic(m, m)), rel=1e-6) and 0.05 < cka < 0.95
    assert sums[1]["metrics"]["cka"] == cka  # hr is the penultimate layer

    # numbers of the sharded run against plain ONNX Runtime on the whole data (limit >= rows: every row)
    sess = ort.InferenceSession(files["model"]["path"], providers=["CPUExecutionProvider"])
    before = sess.run(None, {"x": x})[0].argmax(1)
    x_set = x.copy()
    x_set[:, 4] = 2.5
    after = sess.run(None, {"x": x_set})[0].argmax(1)
    m = sharded.metrics("shortcut.set")
    assert m["n"] == 300 and m["flips"] == int(np.sum(before != after)) > 0
    assert m["accuracy_change"] == pytest.approx(np.mean(after == y) - np.mean(before == y), abs=1e-12)
    groups = sharded.metrics("shortcut.groups")
    assert groups["inputs_changed"] > 0 and groups["n"] == 300
    leak = sharded.metrics("leakage.hidden")
    assert leak["feature_dim"] == 16 and leak["n"] == 300 and leak["majority_rate"] == pytest.approx(200 / 300)
    assert sharded.metrics("attribution.mean")["n"] > 0
    assert "rsa" in sharded.metrics("similarity.rsa")
    # the minibatch estimator, one shard per minibatch: the sums of one accumulator over every batch, bit for bit
    def hr(path: str) -> np.ndarray:
        proto = onnx.load(path)
        proto.graph.output.append(onnx.helper.make_tensor_value_info("hr", onnx.TensorProto.FLOAT, None))
        s = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        return np.asarray(s.run(["hr"], {"x": x})[0], dtype=np.float64)

    f_m, f_r = hr(files["model"]["path"]), hr(files["reference"]["path"])
    acc = CKAAccumulator(1, 1, unbiased=True)
    for idx in np.array_split(np.arange(300), 5):
        acc.add([f_m[idx]], [f_r[idx]])
    mb = sharded.metrics("similarity.minibatch")
    assert mb["batches"] == 5 and mb["unbiased"] is True and mb["cka"] == float(acc.result()[0, 0])
    if HAS_TORCH:
        parity = sharded.metrics("torch.parity")
        assert parity["n"] == 290 and parity["violations"] == 0 and parity["argmax_agreement"] == 1.0
        assert 0 < parity["max_abs_diff"] < 1e-5 and parity["outputs"]["probs"]["elements"] == 290 * 4
