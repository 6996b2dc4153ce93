"""Example onnx-auditor plugin: the margin between the top two class probabilities.

A small margin means the model barely prefers its answer; the share of such predictions is a cheap signal of
decision-boundary crowding (cf. the margin view of adversarial vulnerability in "A Boundary Tilting
Perspective on the Phenomenon of Adversarial Examples").
"""

from __future__ import annotations

import numpy as np

from auditor import AuditContext, Check, CheckResult, Finding, Need, SkipCheck, hookimpl, param

__version__ = "0.1.0"


def top2_margin(probs: np.ndarray) -> np.ndarray:
    """p(top-1) − p(top-2) per sample."""
    part = np.partition(probs, -2, axis=1)
    return part[:, -1] - part[:, -2]


class Margin(Check):
    """Distribution of top-1 minus top-2 probability over the audit data."""

    name = "example.margin"
    description = "Margin between the top two class probabilities; share of predictions below a threshold."

    class Params:
        threshold: float = param(0.1, "A margin below this counts as a low-margin prediction.", minimum=0, maximum=1)
        limit: int | None = param(None, "Audit at most this many samples (stratified sample).", minimum=1)

    needs = frozenset({Need.DATA})
    metrics_doc = {
        "mean_margin": "mean of p(top-1) − p(top-2)",
        "median_margin": "median of the margin",
        "low_margin_rate": "share of samples whose margin is below `threshold`",
        "n": "samples evaluated",
    }

    def run(self, ctx: AuditContext, params: Params) -> CheckResult:
        """One batched forward pass, then numpy."""
        data = ctx.sample(params.limit)
        pred = ctx.predictions(data)
        if pred.probs is None or pred.probs.shape[1] < 2:
            raise SkipCheck("needs a classifier with at least two classes")
        m = top2_margin(pred.probs)
        rate = float(np.mean(m < params.threshold))
        findings = []
        if rate > 0.25:
            findings.append(Finding(message=f"{rate:.0%} of predictions have a margin below "
                                            f"{params.threshold}", severity="warn"))
        return CheckResult(
            metrics={"mean_margin": float(m.mean()), "median_margin": float(np.median(m)), "low_margin_rate": rate,
                     "n": len(m)},
            findings=findings,
        )


@hookimpl
def auditor_register_checks() -> list[type[Check]]:
    """The example plugin's checks."""
    return [Margin]
