"""onnx-auditor: audit trained neural networks (exported to ONNX from any framework) before they ship.

The public API for plugin authors: subclass :class:`Check`, declare its ``Params`` (fields made with
:func:`param`) and :class:`Need` s, return a :class:`CheckResult`, and register the class from a function
marked with :data:`hookimpl`::

    from auditor import AuditContext, Check, CheckResult, hookimpl, param

    class MyCheck(Check):
        name = "mine.thing"
        description = "Counts the rows it audits."
        metrics_doc = {"n": "rows audited"}

        class Params:
            limit: int = param(100, "rows to use", minimum=1)

        def run(self, ctx: AuditContext, params: Params) -> CheckResult:
            return CheckResult(metrics={"n": min(ctx.require_data().n, params.limit)})

    @hookimpl
    def auditor_register_checks():
        return [MyCheck]
"""

from __future__ import annotations

from auditor.api import audit
from auditor.checks import Check, CheckInfo, Need, Param
from auditor.context import AuditContext
from auditor.data import Dataset
from auditor.datasets.registry import DataSource, LoadRequest
from auditor.datasets.sources import ArraySource, LazySource
from auditor.errors import AuditorError, DataError, ModelLoadError, PluginLoadError, SkipCheck, SpecError
from auditor.model import ModelHandle
from auditor.outputs import Predictions, Task, predictions_of
from auditor.params import NoParams, param
from auditor.plugins import hookimpl
from auditor.report.base import Reporter
from auditor.results import AuditReport, CheckReport, CheckResult, Finding, GateResult, Severity, Status
from auditor.shards import Plan, PredictionShardedCheck, RowShards, Shard, ShardedCheck

__version__ = "0.1.0"

__all__ = [
    "ArraySource",
    "AuditContext",
    "AuditReport",
    "AuditorError",
    "Check",
    "CheckInfo",
    "CheckReport",
    "CheckResult",
    "DataError",
    "DataSource",
    "Dataset",
    "Finding",
    "GateResult",
    "LazySource",
    "LoadRequest",
    "ModelHandle",
    "ModelLoadError",
    "Need",
    "NoParams",
    "Param",
    "Plan",
    "PluginLoadError",
    "PredictionShardedCheck",
    "Predictions",
    "Reporter",
    "RowShards",
    "Severity",
    "Shard",
    "ShardedCheck",
    "SkipCheck",
    "SpecError",
    "Status",
    "Task",
    "__version__",
    "audit",
    "hookimpl",
    "param",
    "predictions_of",
]
