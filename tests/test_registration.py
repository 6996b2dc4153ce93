"""A check class is validated when its plugin registers it: exit 4 naming the plugin, before any spec is read.
(Name form, docstring, metrics and needs: tests/test_contract.py.)"""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import typed_plugin
from click.testing import CliRunner

from auditor import Check, Need, hookimpl
from auditor.cli import main
from auditor.errors import PluginLoadError
from auditor.plugins import build_registry

PLUGIN = '''
from auditor import Check, CheckResult, hookimpl


class Flips(Check):
    """A check of plugin 'mine' named after another plugin."""

    name = "{name}"
    metrics_doc = {{"n": "rows"}}

    class Params:
        pass

    def run(self, ctx, params):
        return CheckResult(metrics={{"n": 0}})


@hookimpl
def auditor_register_checks():
    return [Flips]
'''


def install(site: Path, module: str, check_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``pip install`` of a one-module plugin with entry point ``mine = MODULE``, as a dist-info on the path."""
    (site / f"{module}.py").write_text(PLUGIN.format(name=check_name))
    dist = site / f"{module}-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[auditor]\nmine = {module}\n")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    monkeypatch.delitem(sys.modules, module, raising=False)


def test_an_installed_plugins_checks_carry_its_entry_point_name(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    install(tmp_path, "mine_impostor", "performance.flips", monkeypatch)
    with pytest.raises(PluginLoadError, match=r"^plugin 'mine' registered check 'performance\.flips': the checks of "
                                              r"an installed plugin are named 'mine\.<check>' after its entry point$"):
        build_registry()
    r = CliRunner().invoke(main, ["checks"])
    assert r.exit_code == 4 and r.stderr.count("\n") == 1 and "plugin 'mine'" in r.stderr


def test_an_installed_plugin_named_after_itself_registers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(tmp_path, "mine_honest", "mine.flips", monkeypatch)
    reg = build_registry()
    info = reg.checks["mine.flips"]
    assert (info.plugin, info.distribution, info.version) == ("mine", "mine_honest", "1.0")


def _typed_body(**attrs: Any) -> dict[str, Any]:
    return {"name": "ok.check", "__doc__": "doc", "Params": typed_plugin.EchoParams, "needs": frozenset({Need.DATA}),
            "metrics_doc": {"n": "rows"}, "run": typed_plugin.Echo.run, **attrs}


def _no_params_run(self: Check, ctx: Any) -> Any:
    raise AssertionError("never run")


@pytest.mark.parametrize(("attrs", "why"), [
    ({"Params": "plain class"}, r"ok\.check: Params must be a dataclass"),
    ({"run": _no_params_run}, r"ok\.check: declares Params but run\(\) does not take them"),
    ({"name": "ok."}, r"name 'ok\.' is not of the form 'plugin\.check'"),
    ({"name": "ok check.x"}, r"is not of the form 'plugin\.check'"),
])
def test_more_broken_check_classes_stop_registration(attrs: dict[str, Any], why: str) -> None:
    plain = attrs.pop("Params", None) is not None
    cls = type("C", (Check,), _typed_body(**attrs))
    if plain:  # set after the class exists: a Params in the class body is made a dataclass by Check itself
        cls.Params = type("Plain", (), {"sigma": 1.0})

    class Plugin:
        __name__ = "ok"

        @hookimpl
        def auditor_register_checks(self) -> list[type[Check]]:
            return [cls]

    with pytest.raises(PluginLoadError, match=r"plugin 'ok' registered a broken check: .*" + why):
        build_registry(extra_plugins=[Plugin()], use_entry_points=False)


def test_a_params_field_without_default_stops_registration() -> None:
    src = textwrap.dedent('''
        from dataclasses import dataclass
        @dataclass(frozen=True)
        class P:
            sigma: float
    ''')
    ns: dict[str, Any] = {}
    exec(src, ns)
    cls = type("C", (Check,), _typed_body(Params=ns["P"]))

    class Plugin:
        __name__ = "ok"

        @hookimpl
        def auditor_register_checks(self) -> list[type[Check]]:
            return [cls]

    with pytest.raises(PluginLoadError, match=r"plugin 'ok' registered a broken check: ok\.check"):
        build_registry(extra_plugins=[Plugin()], use_entry_points=False)
