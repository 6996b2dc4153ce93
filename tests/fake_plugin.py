"""A plugin used by the core's tests: checks that crash, hang, interrupt, or report given numbers."""

from __future__ import annotations

import _thread
import time
from typing import Any

from auditor import AuditContext, Check, CheckResult, Finding, Need, SkipCheck, hookimpl, param


class Crash(Check):
    """Always raises."""

    name = "fake.crash"
    needs = frozenset()

    def run(self, ctx: AuditContext, params: Any) -> CheckResult:
        raise RuntimeError("boom")


class Hang(Check):
    """Runs far longer than its timeout, model calls included (cooperative cancellation)."""

    name = "fake.hang"
    needs = frozenset({Need.DATA})

    def run(self, ctx: AuditContext, params: Any) -> CheckResult:
        for _ in range(100000):
            ctx.model.predict(ctx.require_data().x[:8])
            time.sleep(0.01)
        return CheckResult(metrics={})


class Interrupt(Check):
    """Behaves like a user pressing Ctrl-C while it runs."""

    name = "fake.interrupt"
    needs = frozenset()

    def run(self, ctx: AuditContext, params: Any) -> CheckResult:
        _thread.interrupt_main()
        time.sleep(5)
        return CheckResult(metrics={})


class Const(Check):
    """Reports the metrics it is given (for gate tests), changed on the baseline by ``baseline_offset``."""

    name = "fake.const"
    needs = frozenset()
    metrics_doc = {"*": "the metrics it is given"}

    class Params:
        metrics: dict[str, Any] = param({}, "metrics to report")
        baseline_offset: float = param(0.0, "added on the baseline")
        finding: str | None = param(None, "add a finding of this severity", choices=["info", "warn", "fail"])
        skip: bool = param(False, "skip instead")

    def run(self, ctx: AuditContext, params: Params) -> CheckResult:
        if params.skip:
            raise SkipCheck("asked to skip")
        off = params.baseline_offset if ctx.role == "baseline" else 0.0
        metrics = {k: (v + off if isinstance(v, (int, float)) else v) for k, v in params.metrics.items()}
        sev = params.finding
        return CheckResult(metrics=metrics, findings=[Finding(message="look", severity=sev)] if sev else [])


class Draw(Check):
    """Reports random draws from ctx.rng (for seed tests)."""

    name = "fake.draw"
    needs = frozenset()

    def run(self, ctx: AuditContext, params: Any) -> CheckResult:
        return CheckResult(metrics={"draws": ctx.rng.random(3).tolist()})


@hookimpl
def auditor_register_checks() -> list[type[Check]]:
    """The fake checks."""
    return [Crash, Hang, Interrupt, Const, Draw]
