"""A plugin with typed parameters, used by the core's tests of the check contract."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from auditor import AuditContext, Check, CheckResult, hookimpl, param


@dataclass(frozen=True)
class EchoParams:
    """Parameters of ``typed.echo``."""

    kind: Literal["gaussian", "salt_pepper"] = param("gaussian", "the noise kind")
    sigma: float | list[float] | None = param(None, "noise std (gaussian only)", minimum=0)
    severity: float = param(0.5, "share of pixels (salt_pepper)", minimum=0, maximum=1)
    repeats: int = param(2, "draws per severity", minimum=1)
    tags: tuple[str, ...] = param(("a",), "labels")

    def validate(self) -> list[str]:
        """``sigma`` belongs to the gaussian kind only."""
        if self.sigma is not None and self.kind != "gaussian":
            return [f"sigma: applies to kind gaussian only; use severity for kind {self.kind}"]
        return []


class Echo(Check):
    """Reports its own typed parameters as metrics."""

    name = "typed.echo"
    Params = EchoParams
    needs = frozenset()
    metrics_doc = {"repeats": "the repeats parameter", "sigma_type": "the Python type of sigma",
                   "per_class.*": "one entry per class"}

    def run(self, ctx: AuditContext, params: EchoParams) -> CheckResult:
        """Echo."""
        return CheckResult(metrics={"repeats": params.repeats, "sigma_type": type(params.sigma).__name__,
                                    "tags": list(params.tags), "per_class": {"0": 1.0}})


@hookimpl
def auditor_register_checks() -> list[type[Check]]:
    """The typed checks."""
    return [Echo]
