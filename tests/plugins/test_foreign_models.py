"""Models the checks were not built around (a scikit-learn tree ensemble exported with skl2onnx): checks that
cannot apply are skipped with a reason, never errors, and checks with a forward-pass route fall back to it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from auditor.testing import run_audit

pytest.importorskip("skl2onnx")
pytest.importorskip("torch")


@pytest.fixture(scope="module")
def forest(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from skl2onnx import to_onnx
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    tmp = tmp_path_factory.mktemp("forest")
    x, y = load_breast_cancer(return_X_y=True)
    x = x.astype(np.float32)
    rf = RandomForestClassifier(10, max_depth=4, random_state=0).fit(x[::2], y[::2])
    lr = LogisticRegression(max_iter=5000).fit(x[::2], y[::2])
    (tmp / "rf.onnx").write_bytes(to_onnx(rf, x[:1], target_opset=17).SerializeToString())
    (tmp / "lr.onnx").write_bytes(to_onnx(lr, x[:1], target_opset=17).SerializeToString())
    np.savez(tmp / "d.npz", x=x[1::2], y=y[1::2])
    return tmp / "rf.onnx", tmp / "lr.onnx", tmp / "d.npz"


def test_tree_ensemble_skips_what_cannot_apply(forest: tuple[Path, Path, Path], tmp_path: Path) -> None:
    rf, lr, data = forest
    r = run_audit({"reference": {"path": str(lr)},
                   "checks": [{"use": "torch.parity"}, {"use": "transfer.similarity"},
                              {"use": "transfer.attribution_distance", "with": {"limit": 20}},
                              {"use": "performance.metrics"}]},
                  model=rf, data=data, workdir=tmp_path)
    r.assert_status("torch.parity", "skipped").assert_status("transfer.similarity", "skipped")
    assert "TreeEnsembleClassifier" in (r.check("torch.parity").skip_reason or "")
    assert "no penultimate features" in (r.check("transfer.similarity").skip_reason or "")
    r.assert_status("transfer.attribution_distance", "info")
    notes = " ".join(r.check("transfer.attribution_distance").notes)
    assert "occlusion used instead" in notes
    assert 0.0 <= r.metrics("transfer.attribution_distance")["distance"] <= 2.0
    r.assert_status("performance.metrics", "info")
    assert r.exit_code == 0
