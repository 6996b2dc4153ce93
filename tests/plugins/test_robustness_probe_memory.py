"""Bounded memory of robustness.blind_spots and robustness.fooling on streamed data (issue #12): the sample is
read batch by batch for its statistics, a blind-spots shard is probed a chunk of pairs at a time and its path
points scored a few model batches at a time, fooling's noise images are made and scored in chunks; the report is
the one of the whole shard (and of the whole sample) at once."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from robustness_helpers import OTHERS, tiny_cnn

from auditor.testing import run_audit

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
ROWS, HW = 1000, 16
CHECKS = [{"use": "robustness.blind_spots",
           "with": {"pairs": 130, "steps": 6, "refine": 2, "random_directions": 1, "limit": None}},
          {"use": "robustness.fooling", "with": {"n_noise": 600, "generations": 2, "population": 3, "limit": None}}]


def _audit(tmp: Path) -> Any:
    spec = {"model": {"path": str(tmp / "m.onnx"), "device": "cpu"}, "seed": 3, "checks": CHECKS,
            "data": {"path": "x.npy", "y": "y.npy", "batch_size": 16,
                     "preprocess": {"scale": 1 / 255, "mean": MEAN, "std": STD}}}
    res = run_audit(spec, workdir=tmp, disable=OTHERS)
    assert res.report is not None and res.exit_code == 0, res.error
    return res


def test_blind_spots_and_fooling_hold_chunks_not_the_sample_with_the_numbers_of_the_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """1,000 stored uint8 images, preprocessed per batch. With chunks of one pair and one model batch (16 rows)
    every number is the one of the default chunks (here whole shards), and the traced peak (numpy buffers)
    stays under one float32 copy of the sample: before, a shard's 128 pairs had all their path points alive
    (about 15 copies of the sample) and fooling held the sample and 500 noise images at once."""
    import auditor_robustness._common as common

    import auditor.datasets.sources as sources

    r = np.random.default_rng(0)
    y = r.integers(0, 3, ROWS)
    base = np.zeros((ROWS, HW, HW, 3))
    base[np.arange(ROWS), :, :, y] = 110
    np.save(tmp_path / "x.npy", np.clip(base + r.normal(0, 60, base.shape), 0, 255).astype(np.uint8))
    np.save(tmp_path / "y.npy", y)
    tiny_cnn(tmp_path / "m.onnx", hw=HW, classes=3, gain=6.0)
    whole = _audit(tmp_path)

    monkeypatch.setattr(common, "CHUNK_BYTES", 1)  # one pair, one model batch of points / noise images
    monkeypatch.setattr(sources, "MATERIALISE_BYTES", 0)  # the sample and the shards stay lazy
    tracemalloc.start()
    try:
        chunked = _audit(tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    for a, b in zip(whole.report.checks, chunked.report.checks):
        assert a.notes == b.notes
        assert {k: v for k, v in a.metrics.items() if k != "duration_s"} == \
            {k: v for k, v in b.metrics.items() if k != "duration_s"}
    spots, fool = whole.metrics("robustness.blind_spots"), whole.metrics("robustness.fooling")
    assert spots["n_pairs"] == 130 and 0 < spots["median_alpha"] < 1  # the paths are scanned, not trivially
    assert fool["queries"] == 1 + 2 * 600 + (2 + 1) * 3 * 3
    sample_bytes = ROWS * 3 * HW * HW * 4
    assert peak < sample_bytes, f"traced peak {peak / 2**20:.2f} MiB for a {sample_bytes / 2**20:.2f} MiB sample"
