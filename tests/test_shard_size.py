"""The shard size is the spec's (``execution.shard_rows``) and never changes the report: the randomised checks draw
from one stream per sample (auditor.rowrandom), not one per shard. Checked on whole audits run locally with
several shard sizes, and on the streams themselves against scipy's distributions."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from builders import blobs, mlp_weights, write_mlp
from report_compare import assert_same
from scipy import stats

from auditor.rowrandom import RowRandom
from auditor.testing import run_audit

#: Every randomised sharded check of the built-ins, on settings where the randomness shows in the numbers.
RANDOMISED: list[dict[str, Any]] = [
    {"use": "robustness.noise", "with": {"limit": None, "repeats": 2, "sigma": [0.3, 1.0]}},
    {"use": "robustness.noise", "name": "noise.salt", "with": {"kind": "salt_pepper", "limit": None}},
    {"use": "robustness.square_attack", "with": {"max_queries": 25, "limit": None, "eps": 0.6}},
    {"use": "robustness.square_attack", "name": "square.l2",
     "with": {"norm": "l2", "max_queries": 25, "limit": 250, "eps": 1.5, "restarts": 2}},
    {"use": "robustness.blind_spots", "with": {"pairs": 150, "steps": 6, "refine": 3, "random_directions": 2}},
    {"use": "torch.pgd", "with": {"eps": 0.4, "steps": 3, "restarts": 2, "limit": 300}},
    {"use": "torch.input_gradients", "with": {"limit": 300, "fill": "mean"}},
]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("shardsize")
    w = mlp_weights()
    x, y = blobs(n=300, w=w)
    np.savez(d / "data.npz", x=x, y=y)
    return {"dir": d, "model": write_mlp(d / "model.onnx", w), "data": d / "data.npz"}


def _audit(f: dict[str, Path], checks: list[dict[str, Any]], shard_rows: int | None) -> Any:
    doc: dict[str, Any] = {"model": {"path": str(f["model"])}, "data": {"path": str(f["data"])}, "seed": 3,
                           "checks": checks, "report": {"dir": str(f["dir"] / "reports")}}
    if shard_rows is not None:
        doc["execution"] = {"engine": "local", "shard_rows": shard_rows}
    res = run_audit(doc, workdir=f["dir"])
    assert res.exit_code == 0, res.error
    return res


def test_changing_shard_rows_does_not_change_the_report(files: dict[str, Path]) -> None:
    default = _audit(files, RANDOMISED, None)  # one shard of 300 rows per check
    for rows in (37, 128):  # a prime (shards never line up with anything), and a power of two
        assert_same(default.doc, _audit(files, RANDOMISED, rows).doc)
    # and the randomness is real: the curves move, the attacks find examples
    assert default.metrics("robustness.noise")["curve"][-1]["flip_rate"] > 0.05
    assert 0 < default.metrics("robustness.square_attack")["success_rate"] < 1
    assert default.metrics("square.l2")["n"] == 250
    if importlib.util.find_spec("torch") is not None:  # the torch extra: random starts per sample
        default.assert_status("torch.pgd", "info")
        assert 0 < default.metrics("torch.pgd")["success_rate"] < 1
        grads = default.metrics("torch.input_gradients")
        assert grads["acc_random_removed"][-1] < grads["clean_accuracy"]  # the random order is drawn per sample
    spots = default.metrics("robustness.blind_spots")
    assert spots["n_pairs"] == 150 and 0 < spots["median_alpha"] < 1 and spots["random_median_fraction"] > 0


def test_fooling_gives_the_same_report_whatever_its_work_items(files: dict[str, Path],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """robustness.fooling shards by work item (noise chunks, groups of classes): every noise image and every
    population slot has its own stream, so other chunk and group sizes give the same report."""
    import auditor_robustness.fooling as fooling

    checks = [{"use": "robustness.fooling", "with": {"n_noise": 40, "generations": 6, "population": 5}}]
    default = _audit(files, checks, None)
    monkeypatch.setattr(fooling, "NOISE_CHUNK", 7)
    monkeypatch.setattr(fooling, "CLASS_GROUP", 1)
    assert_same(default.doc, _audit(files, checks, None).doc)
    met = default.metrics("robustness.fooling")
    assert met["n_classes_evolved"] == 4 and met["queries"] == 1 + 2 * 40 + (6 + 1) * 4 * 5
    assert len([c for c in met["per_class"].values() if c["evolved"] is not None]) == 4


@pytest.mark.parametrize(("execution", "path"), [
    ({"shard_rows": 0}, "execution.shard_rows"),
    ({"shard_rows": "many"}, "execution.shard_rows"),
    ({"shard_timeout_s": 0}, "execution.shard_timeout_s"),
    ({"shard_timeout_s": -3}, "execution.shard_timeout_s"),
])
def test_bad_shard_settings_are_spec_errors(files: dict[str, Path], execution: dict[str, Any], path: str) -> None:
    res = run_audit({"model": {"path": str(files["model"])}, "checks": [{"use": "robustness.noise"}],
                     "execution": execution}, workdir=files["dir"])
    assert res.exit_code == 2, res.error
    assert path in (res.error or "")


def test_row_streams_do_not_depend_on_which_rows_are_drawn_together() -> None:
    whole = RowRandom.for_positions(7, "x.check", np.arange(100))
    a = whole.at(3).standard_normal((100, 6), dtype=np.float32)
    part = RowRandom.for_positions(7, "x.check", np.arange(40, 60)).at(3)
    assert np.array_equal(part.standard_normal((20, 6), dtype=np.float32), a[40:60])
    # a subset taken mid-stream continues each row's own stream
    w2 = RowRandom.for_positions(7, "x.check", np.arange(100))
    w2.random(100)
    sub = w2.rows(np.array([5, 90]))
    w3 = RowRandom.for_positions(7, "x.check", np.arange(100))
    w3.random(100)
    assert np.array_equal(sub.integers(0, 9, (2, 4)), w3.integers(0, 9, (100, 4))[[5, 90]])
    # other seeds, checks, streams and calls differ
    base = RowRandom.for_positions(7, "x.check", np.arange(100)).random(100)
    for other in (RowRandom.for_positions(8, "x.check", np.arange(100)),
                  RowRandom.for_positions(7, "y.check", np.arange(100)),
                  RowRandom.for_positions(7, "x.check", np.arange(100)).at(1)):
        assert not np.any(other.random(100) == base)
    with pytest.raises(ValueError, match="rows"):
        whole.random((99,))


def test_row_streams_have_the_distributions_they_claim() -> None:
    r = RowRandom.for_positions(0, "dist", np.arange(2000))
    u = r.random((2000, 25)).ravel()
    assert stats.kstest(u, "uniform").pvalue > 1e-3 and u.min() >= 0 and u.max() < 1
    z = r.standard_normal((2000, 25), dtype=np.float32).ravel()
    assert z.dtype == np.float32 and stats.kstest(z, "norm").pvalue > 1e-3
    k = r.integers(2, 7, (2000, 5)).ravel()
    counts = np.bincount(k, minlength=7)[2:]
    assert k.min() == 2 and k.max() == 6 and stats.chisquare(counts).pvalue > 1e-3
    # rows are independent of each other: neighbouring rows' draws are uncorrelated
    m = r.random((2000, 50))
    assert abs(np.corrcoef(m[:-1].ravel(), m[1:].ravel())[0, 1]) < 0.02
    sig = r.normal(2.0, 3.0, (2000, 10))
    assert np.mean(sig) == pytest.approx(2.0, abs=0.15) and np.std(sig) == pytest.approx(3.0, rel=0.03)


def test_transferability_from_gathered_feature_shards_equals_one_shard(files: dict[str, Path]) -> None:
    """transfer.transferability gathers features and raw outputs shard by shard (n × d, never the inputs): in
    37-row shards every score equals the one-shard scores, which tests/plugins check against independent
    computations."""
    weak = write_mlp(files["dir"] / "weak.onnx", {k: v * 0.5 for k, v in mlp_weights().items()})
    checks = [{"use": "transfer.transferability", "with": {"limit": 300}}]

    def audit(rows: int | None) -> Any:
        doc: dict[str, Any] = {"model": {"path": str(files["model"])}, "data": {"path": str(files["data"])},
                               "reference": {"path": str(weak)}, "checks": checks,
                               "report": {"dir": str(files["dir"] / "reports")}}
        if rows is not None:
            doc["execution"] = {"shard_rows": rows}
        res = run_audit(doc, workdir=files["dir"])
        assert res.exit_code == 0, res.error
        return res

    one = audit(None)
    assert_same(one.doc, audit(37).doc)
    met = one.metrics("transfer.transferability")
    assert met["n"] == 300 and set(met["by_model"]) == {"model", "reference"} and met["leep"] is not None
