"""The checks that ran whole until #14 shard exactly: transfer.attribution_distance, torch.parity, bias.leakage
and bias.shortcut give with small shards
(``execution.shard_rows``) the report of one shard holding every row, which is the whole computation (the tests
of each check verify its numbers against independent computations on that path); a few numbers are checked
here again on the sharded path, against plain ONNX Runtime. tests/test_ray.py runs the same shards on Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from report_compare import assert_same
from shard_exact import HAS_TORCH, audit


def test_small_shards_give_the_report_of_the_whole_computation(exact_audit: tuple[Path, dict[str, Any], Any]
                                                                ) -> None:
    d, files, sharded = exact_audit
    whole = audit(d, files, 100_000)  # one shard holding every row: the whole computation
    assert_same(whole.doc, sharded.doc)

    # numbers of the sharded run against plain ONNX Runtime on the whole data (limit >= rows: every row)
    data = np.load(d / "d.npz")
    x, y = data["x"], data["y"]
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
    if HAS_TORCH:
        parity = sharded.metrics("torch.parity")
        assert parity["n"] == 290 and parity["violations"] == 0 and parity["argmax_agreement"] == 1.0
        assert 0 < parity["max_abs_diff"] < 1e-5 and parity["outputs"]["probs"]["elements"] == 290 * 4
