"""torch.retrain streams its training rows (issue #12): each epoch permutes the row indices with the seeded
generator and reads each mini-batch from the data set when it is trained on, so memory holds a mini-batch,
not the sample, and the numbers are those of the same rows held in memory."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from builders import blobs, mlp_weights, write_mlp

from auditor.testing import run_audit

pytest.importorskip("torch")

N, FEATURES = 1000, 1024  # 4 MB of float32 inputs: the sample held whole would dwarf one mini-batch


def _retrain(tmp: Path, data: dict[str, Any]) -> dict[str, Any]:
    spec = {"seed": 4, "data": data, "train_data": data, "report": {"dir": str(tmp / "reports")},
            "checks": [{"use": "torch.retrain", "with": {"rules": ["backprop", "feedback_alignment"], "epochs": 2,
                                                         "batch_size": 32, "limit": 900,
                                                         "save_dir": str(tmp / "out")}}]}
    res = run_audit(spec, model=tmp / "m.onnx", workdir=tmp)
    res.assert_status("torch.retrain", "info")
    met: dict[str, Any] = res.metrics("torch.retrain")
    for per in met["runs"].values():
        for run in per.values():
            run.pop("model_path")
    return met


def test_retrain_reads_one_mini_batch_at_a_time_with_the_numbers_of_the_rows_in_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same 900-row sample from an ``.npz`` (in memory) and from an ``.npy`` kept lazy (read with
    ``pread`` row range by row range): identical curves, accuracies and features; on the lazy source the traced
    peak (numpy buffers) stays a small fraction of the inputs, where holding the sample took all of them."""
    import auditor.datasets.sources as sources

    w = mlp_weights(n_in=FEATURES, n_hidden=8, n_out=4)
    write_mlp(tmp_path / "m.onnx", w)
    x, y = blobs(n=N, n_in=FEATURES, w=w)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    in_memory = _retrain(tmp_path, {"path": "d.npz", "batch_size": 64})

    monkeypatch.setattr(sources, "MATERIALISE_BYTES", 0)  # the sample stays lazy, as an ImageNet-sized one does
    tracemalloc.start()
    try:
        streamed = _retrain(tmp_path, {"path": "x.npy", "y": "y.npy", "batch_size": 64})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert streamed == in_memory
    assert len(streamed["runs"]["backprop"]["sgd"]["loss"]) == 2
    assert peak < 0.5 * x.nbytes, f"traced peak {peak / 2**20:.2f} MiB for {x.nbytes / 2**20:.2f} MiB of inputs"
