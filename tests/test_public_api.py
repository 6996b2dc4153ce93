"""The built-in plugins use only the public API: the ``auditor`` package's exported names and the documented
public modules (a third-party plugin has nothing more)."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import auditor

REPO = Path(__file__).resolve().parents[1]
#: The modules a plugin may import from, as docs/plugin-authoring.md lists them.
PUBLIC_MODULES = {"auditor", "auditor.graph", "auditor.hookspecs", "auditor.jsonenc", "auditor.outputs",
                  "auditor.perturb", "auditor.probes", "auditor.shards", "auditor.testing", "auditor.report.plots",
                  "auditor.gallery", "auditor.report.gallery"}


def _imports(path: Path) -> list[tuple[str, str, int]]:
    """``(module, name, line)`` for every import of the core in a file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "auditor":
            out += [(node.module, a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names if a.name.split(".")[0] == "auditor"]
    return out


def test_plugins_import_only_public_modules_and_names() -> None:
    files = sorted((REPO / "plugins").rglob("*.py")) + sorted((REPO / "examples").rglob("*.py"))
    assert len(files) > 30
    bad = []
    for f in files:
        for module, name, line in _imports(f):
            where = f"{f.relative_to(REPO)}:{line}"
            full = f"{module}.{name}" if module == "auditor" and name in {"gallery", "graph", "hookspecs",
                                                                           "jsonenc", "outputs", "perturb",
                                                                           "probes", "shards", "testing"} else module
            if full not in PUBLIC_MODULES:
                bad.append(f"{where}: imports {module} (not a public module)")
            elif name.startswith("_"):
                bad.append(f"{where}: imports the private name {module}.{name}")
            elif module == "auditor" and name and full == "auditor" and name not in auditor.__all__:
                bad.append(f"{where}: auditor.{name} is not exported (auditor.__all__)")
    assert bad == []


def test_the_public_modules_are_documented() -> None:
    doc = (REPO / "docs" / "plugin-authoring.md").read_text(encoding="utf-8")
    for module in sorted(PUBLIC_MODULES - {"auditor"}):
        assert f"`{module}`" in doc, module


def _probe(*dirs: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "tests" / "public_api_probe.py"), ",".join(PUBLIC_MODULES),
                           *map(str, dirs)], capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                    reason="imports every plugin module, the torch backend's too: needs the torch extra")
def test_every_plugin_module_imports_with_the_core_private_names_hidden(tmp_path: Path) -> None:
    # A plugin module that reaches into the core is caught: the probe must see it fail.
    leaky = tmp_path / "auditor_leaky"
    leaky.mkdir()
    (leaky / "__init__.py").write_text("from auditor import Check\n")
    (leaky / "deep.py").write_text("from auditor.checks import Check\n")
    (leaky / "named.py").write_text("from auditor import plugins\n")
    (leaky / "under.py").write_text("from auditor.graph import _not_constant\n")
    r = _probe(tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    failed = sorted(line.split(":")[0] for line in r.stdout.splitlines() if line)
    assert failed == ["auditor_leaky.deep", "auditor_leaky.named", "auditor_leaky.under"], r.stdout
    # Every built-in plugin module, and the example plugin's, import with only the public API visible.
    r = _probe(REPO / "plugins", REPO / "examples" / "auditor-example-plugin")
    assert r.returncode == 0, r.stdout + r.stderr
    assert int(r.stderr.split()[0]) >= len(list((REPO / "plugins").rglob("*.py"))), r.stderr
