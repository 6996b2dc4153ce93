"""The example plugin, tested through the real auditor with `auditor.testing`."""

from __future__ import annotations

from pathlib import Path

import auditor_example
import numpy as np
import pytest

from auditor.testing import make_linear_classifier, run_audit


def test_margin_matches_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 4))
    b = rng.normal(size=4)
    model = make_linear_classifier(tmp_path / "m.onnx", w, b)
    x = rng.normal(size=(500, 6)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=rng.integers(0, 4, 500))
    result = run_audit({"checks": [{"use": "example.margin", "with": {"threshold": 0.2}}]}, model=model,
                       data=tmp_path / "d.npz", plugins=[auditor_example], workdir=tmp_path, entry_points=False)
    z = x.astype(np.float64) @ w + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    s = np.sort(p, axis=1)
    margin = s[:, -1] - s[:, -2]
    m = result.metrics("example.margin")
    assert m["mean_margin"] == pytest.approx(margin.mean(), abs=1e-5)
    assert m["low_margin_rate"] == pytest.approx(np.mean(margin < 0.2), abs=1e-9)
    # more than a quarter of low-margin predictions is flagged
    result.assert_status("example.margin", "warn" if np.mean(margin < 0.2) > 0.25 else "pass")


def test_gate_on_the_example_metric_fails(tmp_path: Path) -> None:
    model = make_linear_classifier(tmp_path / "m.onnx", np.zeros((3, 3)), np.zeros(3))  # uniform: margin 0
    np.savez(tmp_path / "d.npz", x=np.ones((10, 3), np.float32), y=np.zeros(10, np.int64))
    result = run_audit({"checks": [{"use": "example.margin", "gate": {"low_margin_rate": {"max": 0.5}}}]},
                       model=model, data=tmp_path / "d.npz", plugins=[auditor_example], workdir=tmp_path,
                       entry_points=False)
    result.assert_status("example.margin", "fail")
    assert result.exit_code == 1
