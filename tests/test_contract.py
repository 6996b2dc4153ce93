"""The typed check contract: parameters declared once as a dataclass, validated at registration and at spec
time, gates checked against declared metrics, registry rules, -k / --disable / -p, timeouts."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fake_plugin
import numpy as np
import pytest
import typed_plugin
import yaml
from click.testing import CliRunner

from auditor import AuditContext, Check, CheckResult, Need, NoParams, Param, cancel, hookimpl, param
from auditor.cli import main
from auditor.context import AuditContext as Ctx
from auditor.errors import PluginLoadError, SpecError
from auditor.plugins import build_registry
from auditor.runner import _execute
from auditor.select import compile_expr
from auditor.spec import parse_spec
from auditor.testing import run_audit


def _spec(tmp_path: Path, checks: list[dict[str, Any]], model: str = "missing.onnx") -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump({"version": 1, "model": {"path": model}, "checks": checks}))
    return p


def _parse(tmp_path: Path, checks: list[dict[str, Any]], **kw: Any) -> Any:
    reg = build_registry(extra_plugins=[typed_plugin, fake_plugin], **kw)
    return parse_spec(_spec(tmp_path, checks), reg.checks, sorted(reg.reporters), disabled=reg.disabled)


def test_the_schema_and_the_listing_come_from_the_dataclass() -> None:
    schema = typed_plugin.Echo.params_schema()["properties"]
    assert schema["kind"] == {"type": "string", "enum": ["gaussian", "salt_pepper"], "description": "the noise kind",
                              "default": "gaussian"}
    assert schema["sigma"]["type"] == ["number", "array", "null"] and schema["sigma"]["minimum"] == 0
    assert schema["sigma"]["items"] == {"type": "number", "minimum": 0}
    assert schema["severity"]["maximum"] == 1 and schema["repeats"]["type"] == "integer"
    assert schema["tags"]["items"] == {"type": "string"}
    code_out = CliRunner().invoke(main, ["checks", "-p", "typed_plugin"])
    assert code_out.exit_code == 0
    assert "repeats (integer, default 2): draws per severity" in code_out.output


def test_run_receives_an_instance_in_the_declared_types(tmp_path: Path, mlp) -> None:  # type: ignore[no-untyped-def]
    model, data, _ = mlp
    r = run_audit({"checks": [{"use": "typed.echo", "with": {"sigma": 1, "tags": ["b", "c"], "repeats": 3}}]},
                  model=model, data=data, plugins=[typed_plugin], workdir=tmp_path)
    m = r.assert_status("typed.echo", "info").metrics("typed.echo")
    assert m["repeats"] == 3 and m["sigma_type"] == "float" and m["tags"] == ["b", "c"]
    assert r.check("typed.echo").params["sigma"] == 1  # the report keeps what the spec said


def test_a_default_that_breaks_its_own_bound_stops_registration_naming_the_plugin() -> None:
    @dataclass(frozen=True)
    class Bad:
        limit: int = param(-5, "rows", minimum=0)

    class BadCheck(Check):
        """Bad default."""

        name = "badplug.check"
        Params = Bad
        metrics_doc = {"n": "rows"}

        def run(self, ctx: AuditContext, params: Bad) -> CheckResult:
            return CheckResult()

    class Plugin:
        __name__ = "badplug"

        @hookimpl
        def auditor_register_checks(self) -> list[type[Check]]:
            return [BadCheck]

    with pytest.raises(PluginLoadError, match=r"plugin 'badplug'.*default of parameter 'limit' \(-5\)"):
        build_registry(extra_plugins=[Plugin()], use_entry_points=False)


@pytest.mark.parametrize(("attrs", "why"), [
    ({"name": "nodot"}, "not of the form 'plugin.check'"),
    ({"__doc__": None}, "no description or docstring"),
    ({"metrics_doc": {}}, "declares no metrics"),
    ({"needs": frozenset({"data"})}, "needs must be Need members"),
    # the parameter list and run(ctx) of checks written before Params are no longer read
    ({"params": [Param(name="limit", type="integer", default=3, description="rows")]},
     r"declares 'params = \[Param\(...\)\]', which is no longer read: declare a 'class Params:'"),
    ({"Params": NoParams, "run": lambda self, ctx: CheckResult()},
     r"run\(\) does not take the parameters \(run\(self, ctx, params\)\)"),
])
def test_a_check_class_is_validated_at_registration(attrs: dict[str, Any], why: str) -> None:
    body = {"name": "ok.check", "__doc__": "doc", "Params": typed_plugin.EchoParams, "needs": frozenset({Need.DATA}),
            "metrics_doc": {"n": "rows"}, "run": typed_plugin.Echo.run, **attrs}
    cls = type("C", (Check,), body)

    class Plugin:
        __name__ = "ok"

        @hookimpl
        def auditor_register_checks(self) -> list[type[Check]]:
            return [cls]

    with pytest.raises(PluginLoadError, match=why):
        build_registry(extra_plugins=[Plugin()], use_entry_points=False)


def test_cross_parameter_rules_are_spec_errors_with_yaml_paths(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as exc:
        _parse(tmp_path, [{"use": "typed.echo"}, {"use": "typed.echo", "name": "b",
                                                   "with": {"kind": "salt_pepper", "sigma": 0.1}}])
    assert exc.value.problems == ["checks[1].with.sigma: applies to kind gaussian only; use severity for kind "
                                  "salt_pepper"]


def test_a_gate_on_a_metric_the_check_never_reports_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as exc:
        _parse(tmp_path, [{"use": "typed.echo", "gate": {"repeat": {"min": 1}, "per_class.3": {"min": 0},
                                                          "sigma_type.x": {"min": 0}, "bogus": {"max": 1}}}])
    problems = sorted(exc.value.problems)
    assert len(problems) == 2 and problems[0].startswith("checks[0].gate.bogus: the check never reports")
    assert problems[1].startswith("checks[0].gate.repeat: the check never reports this metric "
                                  "(did you mean 'repeats'?")
    # a check that declares no metrics (fake.const) is not checked
    _parse(tmp_path, [{"use": "fake.const", "gate": {"anything": {"min": 0}}}])


def test_bad_specs_exit_2_before_the_model_is_loaded(tmp_path: Path) -> None:
    """The model path does not exist: had it been opened, the exit code would be 4."""
    for checks in ([{"use": "typed.echo", "with": {"kind": "salt_pepper", "sigma": 1.0}}],
                   [{"use": "typed.echo", "gate": {"acuracy": {"min": 0.9}}}],
                   [{"use": "performance.metrics", "gate": {"acuracy": {"min": 0.9}}}]):
        r = CliRunner().invoke(main, ["run", str(_spec(tmp_path, checks)), "-p", "typed_plugin"])
        assert r.exit_code == 2, r.output
        assert "Traceback" not in r.output
    assert "did you mean 'accuracy'?" in r.output


def test_disable_of_a_plugin_that_is_not_installed_is_a_usage_error(tmp_path: Path) -> None:
    # A typo must not run the very checks the user meant to switch off.
    with pytest.raises(SpecError, match=r"torhc: no plugin of that name is installed \(did you mean 'torch'\?\)"):
        build_registry(disable=["torhc"])
    with pytest.raises(SpecError, match=r"nosuch: no plugin .*installed: .*performance"):
        build_registry(disable=["nosuch"])
    spec = _spec(tmp_path, [{"use": "performance.metrics"}])
    r = CliRunner().invoke(main, ["run", str(spec), "--disable", "torhc"])
    assert r.exit_code == 2
    assert "--disable: torhc: no plugin of that name is installed" in r.output
    assert build_registry(disable=["torch"]).disabled == frozenset({"torch"})
    assert build_registry(disable=["typed_plugin"], extra_plugins=[typed_plugin]).disabled == {"typed_plugin"}


def test_disable_skips_that_plugins_checks_with_a_reason(tmp_path: Path, mlp) -> None:  # type: ignore[no-untyped-def]
    model, data, _ = mlp
    r = run_audit({"checks": [{"use": "performance.metrics", "gate": {"accuracy": {"min": 0.5}}},
                              {"use": "fake.const"}]},
                  model=model, data=data, plugins=[fake_plugin], disable=["performance"], workdir=tmp_path)
    c = r.assert_status("performance.metrics", "skipped").check("performance.metrics")
    assert c.skip_reason == "plugin 'performance' is disabled (--disable performance)"
    assert [g.status.value for g in c.gates] == ["fail"]  # a gate that was not evaluated never passes
    assert r.exit_code == 1


def test_k_selects_checks_by_id_like_pytest(tmp_path: Path, mlp) -> None:  # type: ignore[no-untyped-def]
    pred = compile_expr("(noise or Square) and not torch")
    assert [pred(s) for s in ("robustness.noise", "robustness.square_attack", "torch.noise", "bias.skew")] == [
        True, True, False, False]
    for bad in ("", "a and", "(a", "a b", "or a"):
        with pytest.raises(SpecError):
            compile_expr(bad)
    model, _, _ = mlp
    spec = _spec(tmp_path, [{"use": "fake.const", "name": "keep.me"}, {"use": "fake.crash"}], model=str(model))
    r = CliRunner().invoke(main, ["run", str(spec), "-p", "fake_plugin", "-k", "keep", "--report-dir",
                                  str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    assert "1 selected, 1 deselected" in r.output


def test_p_on_an_installed_plugin_is_harmless() -> None:
    r = CliRunner().invoke(main, ["checks", "-p", "auditor_performance"])
    assert r.exit_code == 0, r.output
    assert r.output.count("performance.metrics  [") == 1


def test_backend_name_clashes_stop_the_run_naming_both_plugins() -> None:
    def make(plugin_name: str) -> object:
        class Plugin:
            __name__ = plugin_name

            @hookimpl
            def auditor_register_backends(self) -> dict[str, Any]:
                return {"torch": lambda handle: None}

        return Plugin()

    with pytest.raises(PluginLoadError, match="backend 'torch' is registered by both 'one' and 'two'"):
        build_registry(extra_plugins=[make("one"), make("two")], use_entry_points=False)


def test_a_timed_out_check_can_never_publish_a_result_afterwards(mlp) -> None:  # type: ignore[no-untyped-def]
    finished = threading.Event()
    idents: list[int] = []

    class Slow(Check):
        """Ignores cancellation, then returns a result."""

        name = "slow.check"
        metrics_doc = {"late": "set after the timeout"}

        def run(self, ctx: AuditContext, params: Any) -> CheckResult:
            time.sleep(1.5)  # longer than the timeout plus the runner's 1 s grace period
            idents.append(threading.get_ident())
            finished.set()
            return CheckResult(metrics={"late": 1})

    ctx = Ctx(check_id="slow", params={}, model=None, data=None, seed=0,  # type: ignore[arg-type]
              rng=np.random.default_rng(0))
    box = _execute(Slow(), ctx, 0.1, None)
    assert finished.wait(5)
    time.sleep(0.05)
    assert box.result is None and box.error == "timed out after 0.1 s (timeout_s)"
    # ... and its thread leaves no cancel mark behind for a later thread that reuses its ident
    assert idents and idents[0] not in cancel._cancelled
