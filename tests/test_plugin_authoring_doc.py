"""docs/plugin-authoring.md runs as written: its snippets (each after a ``<!-- file: PATH -->`` line) are copied
into a fresh folder as the plugin package, its pyproject.toml and its tests; the plugin is installed the way pip
would make it visible (a dist-info with the entry points the TOML declares, on the path), and the documented
tests are run (the in-process one and the one driving the real ``auditor`` command through the entry point)."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
from pathlib import Path

import pytest
import tomllib

from auditor.testing import CliRunner

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugin-authoring.md"
_SNIPPET = re.compile(r"^<!-- file: (?P<path>\S+) -->\n```(?P<lang>\w+)\n(?P<code>.*?)^```$", re.M | re.S)


def snippets() -> dict[str, str]:
    """``{file path: code}`` of the doc's marked snippets."""
    text = DOC.read_text()
    found = {m["path"]: m["code"] for m in _SNIPPET.finditer(text)}
    # every python / toml block is marked, so none can go stale untested
    assert len(found) == len(re.findall(r"^```(?:python|toml)$", text, re.M)), "a code block lacks <!-- file: -->"
    return found


def install(files: dict[str, str], root: Path) -> tuple[Path, Path]:
    """Write the plugin into ``root/src`` (the package) and ``root`` (tests, pyproject), and a dist-info with the
    pyproject's entry points into ``root/site``, as ``pip install`` would; returns (site, tests folder)."""
    site = root / "site"
    for rel, code in files.items():
        dest = (site if not rel.startswith("tests/") and rel.endswith(".py") else root) / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(code)
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    dist = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    groups = project["entry-points"]
    (dist / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n" for group, eps in groups.items()))
    return site, root / "tests"


def test_the_plugin_authoring_snippets_run_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = snippets()
    assert {"my_auditor_plugin/__init__.py", "tests/test_flips.py", "pyproject.toml"} <= set(files)
    site, tests = install(files, tmp_path / "plugin")
    monkeypatch.syspath_prepend(str(site))  # also on the PYTHONPATH of the auditor commands CliRunner starts
    importlib.invalidate_caches()
    for name in ("my_auditor_plugin", "doc_test_flips"):
        monkeypatch.delitem(sys.modules, name, raising=False)

    from auditor.plugins import build_registry

    reg = build_registry()
    assert reg.checks["mine.flips"].plugin == "mine"  # registered through the entry point the TOML declares

    spec = importlib.util.spec_from_file_location("doc_test_flips", tests / "test_flips.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "doc_test_flips", module)
    spec.loader.exec_module(module)
    ran = []
    for name, fn in inspect.getmembers(module, inspect.isfunction):
        if not name.startswith("test_") or fn.__module__ != module.__name__:
            continue
        folder = tmp_path / name
        folder.mkdir()
        fixtures = {"tmp_path": folder, "auditor_cli": CliRunner(folder)}
        fn(**{p: fixtures[p] for p in inspect.signature(fn).parameters})
        ran.append(name)
    assert ran == ["test_flips", "test_flips_through_the_cli"]
    sys.modules.pop("my_auditor_plugin", None)  # its folder leaves sys.path with the test
