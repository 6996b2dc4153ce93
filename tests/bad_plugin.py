"""A third-party plugin that misbehaves in every way the runner and the registry must survive (issue 11):
malformed check results, bad severities, and reporters that clash, escape the report folder, or raise."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from auditor import AuditContext, Check, CheckResult, Finding, Reporter, hookimpl, param


class Malformed(Check):
    """Returns a result that is broken in the way ``how`` names."""

    name = "bad.malformed"
    needs = frozenset()
    metrics_doc = {"*": "whatever the broken result holds"}

    class Params:
        how: str = param("dict", "which way to be broken")

    def run(self, ctx: AuditContext, params: Params) -> Any:
        how = params.how
        if how == "dict":
            return {"accuracy": 1.0}
        if how == "none":
            return None
        if how == "metrics_list":
            return CheckResult(metrics=[1, 2, 3])  # type: ignore[arg-type]
        if how == "findings_str":
            return CheckResult(findings=["look at this"])  # type: ignore[list-item]
        if how == "findings_none":
            return CheckResult(findings=None)  # type: ignore[arg-type]
        if how == "notes_none":
            return CheckResult(notes=None)  # type: ignore[arg-type]
        if how == "self_ref":
            m: dict[str, Any] = {"a": 1.0}
            m["me"] = m
            return CheckResult(metrics=m)
        if how == "int_keys":
            return CheckResult(metrics={"per_class": {0: 0.5, 1: 0.7}})
        if how == "object_value":
            return CheckResult(metrics={"accuracy": object()})
        if how == "set_value":
            return CheckResult(metrics={"classes": {1, 2}})
        if how == "deep":
            d: dict[str, Any] = {}
            cur = d
            for _ in range(500):
                cur["x"] = {}
                cur = cur["x"]
            return CheckResult(metrics=d)
        if how == "bad_severity":
            return CheckResult(findings=[Finding(message="very bad", severity="catastrophic")])
        if how == "forged_severity":
            f = Finding(message="forged", severity="info")
            object.__setattr__(f, "severity", "catastrophic")
            return CheckResult(findings=[f])
        if how == "bad_str":
            class Nasty(Exception):
                def __str__(self) -> str:
                    raise RuntimeError("no message for you")
            raise Nasty()
        raise AssertionError(how)


class Slow(Check):
    """Touches ``$BAD_PLUGIN_MARKER.check`` and waits (cooperatively) until cancelled, for signal tests."""

    name = "bad.slow"
    needs = frozenset()

    def run(self, ctx: AuditContext, params: Any) -> CheckResult:
        Path(os.environ["BAD_PLUGIN_MARKER"] + ".check").touch()
        for _ in range(3000):
            ctx.check_cancelled()
            time.sleep(0.01)
        return CheckResult(metrics={"waited": 1.0})


class SlowReporter(Reporter):
    """Touches ``$BAD_PLUGIN_MARKER.report`` and takes its time, the first time only: the window in which a
    signal arrives while reports are written. Its file says what the report said."""

    format = "slow"
    filename = "slow.txt"

    def render(self, report: dict[str, Any], pm: Any = None) -> str:
        """``status=... interrupted=...``."""
        marker = Path(os.environ["BAD_PLUGIN_MARKER"] + ".report")
        if not marker.exists():
            marker.touch()
            for _ in range(1000):
                time.sleep(0.01)
                if Path(os.environ["BAD_PLUGIN_MARKER"] + ".sent").exists():
                    break
        return f"status={report['status']} interrupted={report['interrupted']}\n"


class RaisingReporter(Reporter):
    """Always raises."""

    format = "raising"
    filename = "raising.txt"

    def render(self, report: dict[str, Any], pm: Any = None) -> str:
        """Raise."""
        raise RuntimeError("reporter bug")


class JsonImpostor(Reporter):
    """Claims the built-in ``json`` format."""

    format = "json"
    filename = "impostor.json"

    def render(self, report: dict[str, Any], pm: Any = None) -> str:
        """Never called."""
        return "{}"


class Escaper(Reporter):
    """Writes outside the report folder."""

    format = "escape"
    filename = "../../escaped.json"

    def render(self, report: dict[str, Any], pm: Any = None) -> str:
        """Never called."""
        return "{}"


@hookimpl
def auditor_register_checks() -> list[type[Check]]:
    """The misbehaving checks."""
    return [Malformed, Slow]


@hookimpl
def auditor_register_reporters() -> list[type[Reporter]]:
    """Reporters that misbehave while rendering (registration itself is fine)."""
    return [SlowReporter, RaisingReporter]


class ImpostorPlugin:
    """A plugin object registering a reporter for the built-in ``json`` format."""

    @hookimpl
    def auditor_register_reporters(self) -> list[type[Reporter]]:
        """The impostor."""
        return [JsonImpostor]


class EscapePlugin:
    """A plugin object registering a reporter whose file name leaves the report folder."""

    @hookimpl
    def auditor_register_reporters(self) -> list[type[Reporter]]:
        """The escaper."""
        return [Escaper]
