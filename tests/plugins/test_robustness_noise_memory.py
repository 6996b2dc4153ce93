"""Bounded memory of perturbation checks on streamed data (issue #12): a noise shard holds its clean inputs
once and perturbs, normalises and scores them chunk by chunk, with the numbers of the whole shard at once."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from robustness_helpers import OTHERS, tiny_cnn

from auditor.testing import run_audit

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _pixels_npy(tmp: Path, n: int, hw: int, seed: int = 0) -> None:
    """``x.npy`` of stored uint8 pixels ``(n, hw, hw, 3)`` (read lazily, preprocessed per batch) and labels."""
    r = np.random.default_rng(seed)
    y = r.integers(0, 3, n)
    base = np.zeros((n, hw, hw, 3))
    base[np.arange(n), :, :, y] = 110
    np.save(tmp / "x.npy", np.clip(base + r.normal(0, 60, base.shape), 0, 255).astype(np.uint8))
    np.save(tmp / "y.npy", y)


def _noise_audit(tmp: Path, model: str, checks: list[dict[str, Any]], pre: dict[str, Any],
                 **model_keys: Any) -> Any:
    spec = {"model": {"path": str(tmp / model), "device": "cpu", **model_keys}, "seed": 5, "checks": checks,
            "data": {"path": "x.npy", "y": "y.npy", "batch_size": 16, "preprocess": pre}}
    res = run_audit(spec, workdir=tmp, disable=OTHERS)
    assert res.report is not None and res.exit_code == 0, res.error
    return res


def test_a_noise_shard_is_perturbed_chunk_by_chunk_with_the_numbers_of_the_whole_shard(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """600 rows: a shard of 512 and one of 88. With chunks of one batch (16 rows) the report is the one of the
    whole shard in one piece, and the traced peak (numpy buffers) stays near one copy of the shard's inputs
    where holding the shard's perturbed, normalised float64 copies took several."""
    import auditor_robustness._common as common

    import auditor.datasets.sources as sources

    hw = 16
    _pixels_npy(tmp_path, 600, hw)
    tiny_cnn(tmp_path / "m.onnx", hw=hw, classes=3, gain=6.0)
    checks = [{"use": "robustness.noise", "name": k, "with": {"kind": k, "limit": None}}
              for k in ("gaussian", "salt_pepper")]
    pre = {"scale": 1 / 255, "mean": MEAN, "std": STD}
    whole = _noise_audit(tmp_path, "m.onnx", checks, pre)  # default chunk: 64 MiB, the whole shard here

    monkeypatch.setattr(common, "CHUNK_BYTES", 1)  # one model batch per chunk
    monkeypatch.setattr(sources, "MATERIALISE_BYTES", 0)  # shards stay lazy, as ImageNet-sized ones do
    tracemalloc.start()
    try:
        chunked = _noise_audit(tmp_path, "m.onnx", checks, pre)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    for a, b in zip(whole.report.checks, chunked.report.checks):
        assert {k: v for k, v in a.metrics.items() if k != "duration_s"} == \
            {k: v for k, v in b.metrics.items() if k != "duration_s"}
    assert whole.metrics("gaussian")["n"] == 600
    assert min(whole.metrics(k)["max_flip_rate"] for k in ("gaussian", "salt_pepper")) > 0.05  # predictions move
    shard_bytes = 512 * 3 * hw * hw * 4  # the shard's clean inputs in float32, held once
    assert peak < 1.6 * shard_bytes, f"traced peak {peak / 2**20:.1f} MiB for a {shard_bytes / 2**20:.1f} MiB shard"


def test_noise_amplification_is_measured_in_pixel_space(tmp_path: Path) -> None:
    """f(x) = x on normalised inputs x = (p − mean) / std with one std for all channels: a pixel perturbation
    n moves the output by n / std, so ‖f(x+n) − f(x)‖ / ‖n‖ = 1 / std exactly (clipping included, since ‖n‖
    is measured on the clipped pixels), whatever the mean."""
    _pixels_npy(tmp_path, 40, 6)
    g = helper.make_graph([helper.make_node("Flatten", ["x"], ["y"], axis=1)], "identity",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 108])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.save(m, str(tmp_path / "id.onnx"))
    np.save(tmp_path / "y.npy", np.linspace(0, 1, 40))  # regression targets (unused by the amplification)
    pre = {"scale": 1 / 255, "mean": [0.3, 0.5, 0.1], "std": [0.25, 0.25, 0.25]}
    res = _noise_audit(tmp_path, "id.onnx", [{"use": "robustness.noise", "with": {"sigma": [0.05, 0.5]}}], pre,
                       task="regression")
    met = res.metrics("robustness.noise")
    assert [c["amplification"] for c in met["curve"]] == pytest.approx([4.0, 4.0], rel=1e-5)
    assert any("un-normalised pixels" in n for n in res.check("robustness.noise").notes)
