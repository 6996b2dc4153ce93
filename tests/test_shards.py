"""The sharding contract (auditor.shards): a third-party check written to it, and built-in checks run in many
small shards giving the numbers one pass gives."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from auditor_performance.metrics import PerformanceMetrics
from auditor_sparsity.activations import Activations
from builders import mlp_numpy

from auditor import AuditContext, CheckResult, Dataset, hookimpl
from auditor.shards import Plan, RowShards, Shard, ShardedCheck, sampled_data, sampled_rows
from auditor.testing import run_audit


class RowStats(ShardedCheck):
    """Counts rows and sums inputs per shard; draws one number per row from the shard's generator."""

    name = "shardtest.rows"
    shards = RowShards(rows=7)

    def plan(self, ctx: AuditContext, params: dict[str, Any]) -> Plan:
        rows, notes = sampled_rows(ctx, 40)
        return Plan(rows=rows, state={"offset": 1.0}, notes=notes)

    def run_shard(self, ctx: AuditContext, params: dict[str, Any], plan: Plan, shard: Shard) -> Any:
        data = ctx.require_data()
        return {"index": shard.index, "count": shard.count, "rows": data.indices.tolist(),
                "sum": float(np.sum(np.asarray(data.x, np.float64))) + plan.state["offset"],
                "draws": ctx.rng.random(data.n).tolist()}

    def merge(self, ctx: AuditContext, params: dict[str, Any], plan: Plan, partials: Sequence[Any]) -> CheckResult:
        return CheckResult(metrics={"parts": list(partials)}, notes=list(plan.notes))


class SmallShardMetrics(PerformanceMetrics):
    """performance.metrics in shards of 13 rows (a prime, so that shards and batches never line up)."""

    name = "shardtest.metrics"
    shards = RowShards(rows=13)


class SmallShardActivations(Activations):
    """sparsity.activations in shards of 11 rows."""

    name = "shardtest.activations"
    shards = RowShards(rows=11)


plugin = ModuleType("shardtest_plugin")


@hookimpl
def _register() -> list[type]:
    return [RowStats, SmallShardMetrics, SmallShardActivations]


plugin.auditor_register_checks = _register  # type: ignore[attr-defined]
sys.modules.setdefault("shardtest_plugin", plugin)


def test_shards_cover_the_plan_in_order_with_generators_seeded_by_shard_index(
        mlp: tuple[Path, Path, dict[str, np.ndarray]], tmp_path: Path) -> None:
    model, data, _ = mlp
    res = run_audit({"seed": 5, "checks": [{"use": "shardtest.rows"}]}, model=model, data=data,
                    plugins=[plugin], workdir=tmp_path)
    res.assert_status("shardtest.rows", "info")
    parts = res.metrics("shardtest.rows")["parts"]
    assert [p["index"] for p in parts] == list(range(6)) and {p["count"] for p in parts} == {6}
    assert [len(p["rows"]) for p in parts] == [7, 7, 7, 7, 7, 5]
    rows = [r for p in parts for r in p["rows"]]
    y = np.load(data)["y"]
    # the plan's rows are the stratified sample AuditContext.sample draws, split in order
    from auditor.data import sample_indices
    from auditor.runner import check_seed

    want = sample_indices(len(y), 40, check_seed(5, "shardtest.rows"), y)
    assert rows == want.tolist()
    x = np.load(data)["x"].astype(np.float64)
    for p in parts:
        assert p["sum"] == pytest.approx(x[p["rows"]].sum() + 1.0)
        import zlib

        g = np.random.default_rng([5, zlib.crc32(b"shardtest.rows"), 1 + p["index"]])
        assert p["draws"] == g.random(len(p["rows"])).tolist()
    assert res.check("shardtest.rows").notes == [f"sampled 40 of {len(y)} rows (stratified by label)"]


def test_metrics_in_many_shards_equal_the_numbers_of_one_pass(
        mlp: tuple[Path, Path, dict[str, np.ndarray]], tmp_path: Path) -> None:
    model, data, w = mlp
    # two audits: in one, the second check would reuse the first one's predictions
    res = run_audit({"checks": [{"use": "shardtest.metrics"}]}, model=model, data=data, plugins=[plugin],
                    workdir=tmp_path)
    one = run_audit({"checks": [{"use": "performance.metrics"}]}, model=model, data=data, workdir=tmp_path)
    small, whole = res.metrics("shardtest.metrics"), one.metrics("performance.metrics")
    z = np.load(data)
    probs = mlp_numpy(z["x"], w)
    assert small["accuracy"] == whole["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == z["y"]))
    assert small["confusion_matrix"] == whole["confusion_matrix"]
    for key in ("log_loss", "ece", "balanced_accuracy"):
        assert small[key] == pytest.approx(whole[key], rel=1e-6)


def test_activation_statistics_in_many_shards_equal_those_of_one_shard(
        mlp: tuple[Path, Path, dict[str, np.ndarray]], tmp_path: Path) -> None:
    model, data, w = mlp
    small = run_audit({"checks": [{"use": "shardtest.activations"}]}, model=model, data=data, plugins=[plugin],
                      workdir=tmp_path).metrics("shardtest.activations")
    one = run_audit({"checks": [{"use": "sparsity.activations"}]}, model=model, data=data,
                    workdir=tmp_path).metrics("sparsity.activations")
    x = np.load(data)["x"].astype(np.float64)
    hidden = np.maximum(x @ w["W1"] + w["b1"], 0)  # the MLP's Relu layer, computed independently
    (name, layer), = [(k, v) for k, v in small["layers"].items() if v["units"] == hidden.shape[1]]
    assert layer["dead_units"] == one["layers"][name]["dead_units"] == int((hidden.max(axis=0) <= 0).sum())
    assert layer["zero_fraction"] == pytest.approx(float(np.mean(hidden == 0)))
    assert layer["effective_rank"] == pytest.approx(one["layers"][name]["effective_rank"], rel=1e-6)
    assert small["neural_collapse"]["nc1"] == pytest.approx(one["neural_collapse"]["nc1"], rel=1e-5)


def test_a_check_after_another_reuses_the_audits_predictions(
        mlp: tuple[Path, Path, dict[str, np.ndarray]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from auditor.model import ModelHandle

    rows_run: list[int] = []
    original = ModelHandle.run

    def counting(self: ModelHandle, x: Any, *a: Any, **k: Any) -> Any:
        rows_run.append(len(x))
        return original(self, x, *a, **k)

    monkeypatch.setattr(ModelHandle, "run", counting)
    model, data, _ = mlp
    alone = run_audit({"checks": [{"use": "performance.metrics"}]}, model=model, data=data, workdir=tmp_path)
    n_alone = sum(rows_run)
    rows_run.clear()
    both = run_audit({"checks": [{"use": "performance.metrics"}, {"use": "shardtest.metrics"}]}, model=model,
                     data=data, plugins=[plugin], workdir=tmp_path)
    assert sum(rows_run) == n_alone  # the second check ran no row through the model again
    assert both.metrics("shardtest.metrics") == alone.metrics("performance.metrics")


def test_row_shards_split_and_validate() -> None:
    assert [len(s) for s in RowShards(rows=4).split(np.arange(10))] == [4, 4, 2]
    assert [len(s) for s in RowShards(rows=4).split(np.arange(0))] == [0]
    with pytest.raises(ValueError):
        RowShards(rows=0)


def test_sampled_data_is_the_sampled_rows_with_their_data_and_the_note_only_for_a_sample() -> None:
    ds = Dataset(x=np.arange(20, dtype=np.float32).reshape(10, 2), y=np.repeat([0, 1], 5), groups={}, columns={},
                 source="d.npz")

    def ctx() -> AuditContext:  # the same seed each time: the same draw
        return AuditContext(check_id="c", params={}, model=None, data=ds, seed=0,  # type: ignore[arg-type]
                            rng=np.random.default_rng(0))

    rows, sample, notes = sampled_data(ctx(), 4)
    expected, expected_notes = sampled_rows(ctx(), 4)
    assert rows is not None and expected is not None and rows.tolist() == expected.tolist()
    assert sample.x.tolist() == ds.x[rows].tolist() and sample.y.tolist() == ds.y[rows].tolist()
    assert notes == expected_notes == ["sampled 4 of 10 rows (stratified by label)"]
    rows, sample, notes = sampled_data(ctx(), 10)
    assert rows is None and sample is ds and notes == []
