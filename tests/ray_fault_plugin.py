"""A sharded check for the Ray tests that can kill the worker running one of its shards.

``flag`` names a file: while it exists, the worker that runs shard 1 dies (``os._exit``) before computing it;
with ``once: true`` it deletes the file first, so the retry on another worker succeeds. With ``sleep_s`` shard 0
sleeps first (a shard over its time limit). The partial is the
model's predicted class per row and a random draw per row from the shard's generator.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from auditor import AuditContext, CheckResult, Plan, RowShards, Shard, ShardedCheck, hookimpl, param


class FaultyRows(ShardedCheck):
    """Predicted classes and seeded draws per shard; kills its worker on shard 1 while ``flag`` exists."""

    name = "faulty.rows"
    description = "test check: dies on a flag"
    metrics_doc = {"n": "rows", "class_counts": "predicted classes, counted", "draw_sum": "sum of the draws"}

    class Params:
        flag: str = param("", "the kill flag file")
        once: bool = param(True, "delete the flag before dying")
        sleep_s: float = param(0.0, "shard 0 sleeps this long first (a shard over its time limit)", minimum=0)

    shards = RowShards(rows=100)

    def run_shard(self, ctx: AuditContext, params: Params, plan: Plan, shard: Shard) -> Any:
        if shard.index == 0 and params.sleep_s:
            time.sleep(params.sleep_s)
        if shard.index == 1 and params.flag and os.path.exists(params.flag):
            if params.once:
                os.remove(params.flag)
            os._exit(1)
        data = ctx.require_data()
        return {"pred": ctx.model.predict(np.asarray(data.x)).argmax(axis=1), "draws": ctx.rng.random(data.n)}

    def merge(self, ctx: AuditContext, params: Params, plan: Plan, partials: Sequence[Any]) -> CheckResult:
        pred = np.concatenate([p["pred"] for p in partials])
        draws = np.concatenate([p["draws"] for p in partials])
        return CheckResult(metrics={"n": len(pred), "class_counts": np.bincount(pred).tolist(),
                                    "draw_sum": float(draws.sum())})


@hookimpl
def auditor_register_checks() -> list[type]:
    """Register the check."""
    return [FaultyRows]
