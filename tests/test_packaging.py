"""Packaging: pytest is a `testing` extra (the runtime never imports it, the pytest11 plugin still loads under
pytest), and ONNX Runtime is onnxruntime-gpu where its wheels exist and onnxruntime elsewhere, with the code
working on a CPU-only build."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import tomllib
from builders import blobs, mlp_weights, write_mlp
from packaging.requirements import Requirement

import auditor.testing

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

# What `packaging` reads for a platform (the values CPython reports there: platform.machine() is "AMD64" on
# 64-bit Windows and "arm64" on Apple silicon).
PLATFORMS = {
    "linux x86_64": {"sys_platform": "linux", "platform_machine": "x86_64", "platform_system": "Linux",
                     "os_name": "posix"},
    "windows amd64": {"sys_platform": "win32", "platform_machine": "AMD64", "platform_system": "Windows",
                      "os_name": "nt"},
    "macos arm64": {"sys_platform": "darwin", "platform_machine": "arm64", "platform_system": "Darwin",
                    "os_name": "posix"},
    "macos x86_64": {"sys_platform": "darwin", "platform_machine": "x86_64", "platform_system": "Darwin",
                     "os_name": "posix"},
    "linux aarch64": {"sys_platform": "linux", "platform_machine": "aarch64", "platform_system": "Linux",
                      "os_name": "posix"},
    "windows arm64": {"sys_platform": "win32", "platform_machine": "ARM64", "platform_system": "Windows",
                      "os_name": "nt"},
}
GPU_WHEELS = {"linux x86_64", "windows amd64"}  # where onnxruntime-gpu publishes wheels


def _runtime_requirements() -> list[Requirement]:
    return [Requirement(r) for r in PROJECT["dependencies"]]


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_exactly_one_onnxruntime_per_platform(platform: str) -> None:
    env = PLATFORMS[platform]
    ort = [r for r in _runtime_requirements() if r.name in ("onnxruntime", "onnxruntime-gpu")]
    assert {r.name for r in ort} == {"onnxruntime", "onnxruntime-gpu"} and all(r.marker for r in ort)
    chosen = [r.name for r in ort if r.marker is not None and r.marker.evaluate(env)]
    assert chosen == ["onnxruntime-gpu" if platform in GPU_WHEELS else "onnxruntime"], (platform, chosen)


def test_this_machine_gets_the_onnxruntime_it_has() -> None:
    import importlib.metadata as md

    wanted = [r.name for r in _runtime_requirements()
              if r.name.startswith("onnxruntime") and (r.marker is None or r.marker.evaluate())]
    assert len(wanted) == 1
    installed = {d.metadata["Name"] for d in md.distributions()}
    assert wanted[0] in installed


def test_pytest_is_a_testing_extra_and_dev_pulls_it() -> None:
    assert not [r for r in _runtime_requirements() if r.name == "pytest"]
    extras = PROJECT["optional-dependencies"]
    assert any(Requirement(r).name == "pytest" for r in extras["testing"])
    self_refs = [Requirement(r) for r in extras["dev"] if Requirement(r).name == PROJECT["name"]]
    assert self_refs and "testing" in self_refs[0].extras  # `.ci/run` installs .[dev,torch]
    assert PROJECT["entry-points"]["pytest11"] == {"auditor": "auditor.testing"}


def test_the_pytest11_plugin_registers_under_pytest(request: pytest.FixtureRequest,
                                                    auditor_cli: auditor.testing.CliRunner) -> None:
    """Found through its entry point (there is no conftest or ``pytest_plugins`` naming it): the plugin
    manager holds the module, and its fixtures (``auditor_cli`` here) are available to any test."""
    plugin = request.config.pluginmanager.get_plugin("auditor")
    assert isinstance(plugin, ModuleType) and plugin.__name__ == "auditor.testing"
    assert isinstance(auditor_cli, auditor.testing.CliRunner)
    conftests = [p for d in ("tests", "plugins", "examples") for p in (ROOT / d).rglob("conftest.py")]
    assert conftests and not [p for p in conftests if "pytest_plugins" in p.read_text()]


# Run in a fresh interpreter where pytest cannot be imported: a meta-path finder refuses pytest and _pytest and
# records every attempt (an import caught by an `except ImportError` would otherwise go unseen).
_NO_PYTEST = textwrap.dedent("""
    import importlib, importlib.abc, json, pkgutil, sys
    tried = []

    class NoPytest(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("pytest", "_pytest"):
                tried.append(name)
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
            return None

    sys.meta_path.insert(0, NoPytest())
    out_path, spec_path = sys.argv[1], sys.argv[2]
    import auditor, auditor.cli
    imported = []
    for pkg in ["auditor", *sorted(ep.value for ep in importlib.metadata.entry_points(group="auditor"))]:
        mod = importlib.import_module(pkg)
        for info in pkgutil.walk_packages(getattr(mod, "__path__", []), pkg + "."):
            if info.name != "auditor.testing":  # the pytest plugin: needs pytest by design
                importlib.import_module(info.name)
                imported.append(info.name)
    try:
        auditor.cli.main(["run", spec_path], prog_name="auditor")
    except SystemExit as exc:
        code = exc.code
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("pytest", "_pytest"))
    json.dump({"tried": tried, "loaded": loaded, "imported": imported, "exit": code}, open(out_path, "w"))
""")


@pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                    reason="imports every plugin module, the torch backend's too: needs the torch extra")
def test_runtime_never_imports_pytest(tmp_path: Path) -> None:
    w = mlp_weights()
    write_mlp(tmp_path / "m.onnx", w)
    x, y = blobs(w=w)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    spec = auditor.testing.write_spec(tmp_path / "spec.yaml", {
        "model": {"path": "m.onnx"}, "data": {"path": "d.npz"},
        "checks": [{"use": "performance.metrics", "gate": {"accuracy": {"min": 0.5}}},
                   {"use": "robustness.noise", "with": {"sigma": [0.1]}}, {"use": "sparsity.profile"}],
        "report": {"dir": "r", "formats": ["json", "markdown", "junit", "html", "sarif"]}})
    proc = subprocess.run([sys.executable, "-c", _NO_PYTEST, str(tmp_path / "out.json"), str(spec)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads((tmp_path / "out.json").read_text())
    assert out["tried"] == [] and out["loaded"] == []
    assert "auditor.cli" in out["imported"] or "auditor.runner" in out["imported"]
    assert {"auditor_performance.metrics", "auditor_torch.checks", "auditor.report.html"} <= set(out["imported"])
    assert out["exit"] == 0, proc.stderr
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert [c["status"] for c in report["checks"]] == ["pass", "info", "info"]
    assert all((tmp_path / "r" / f).exists() for f in ("report.md", "junit.xml", "report.html", "report.sarif"))


def test_cpu_only_onnxruntime_build_runs_on_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plain ``onnxruntime`` wheel (macOS, aarch64) has no CUDA provider and no ``preload_dlls``: device
    ``auto`` runs on the CPU and says why, ``cuda`` is refused in one line, and the numbers are the same."""
    import onnxruntime as ort

    from auditor.device import probe_cuda
    from auditor.errors import ModelLoadError
    from auditor.model import ModelConfig, ModelHandle

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["AzureExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.delattr(ort, "preload_dlls", raising=False)
    monkeypatch.delenv("AUDITOR_DISABLE_CUDA", raising=False)
    probe_cuda.cache_clear()
    try:
        w = mlp_weights()
        path = write_mlp(tmp_path / "m.onnx", w)
        m = ModelHandle(ModelConfig(path=path, device="auto"))
        assert m.provider == "CPUExecutionProvider"
        assert m.device_note == "CPU (auto: this onnxruntime build has no CUDA provider)"
        x, _ = blobs(20, w=w)
        from builders import mlp_numpy

        np.testing.assert_allclose(m.predict(x), mlp_numpy(x, w), rtol=1e-4, atol=1e-6)
        with pytest.raises(ModelLoadError, match=r"^model\.device: device 'cuda' requested but this onnxruntime "
                                                 r"build has no CUDA provider$"):
            ModelHandle(ModelConfig(path=path, device="cuda"))
    finally:
        probe_cuda.cache_clear()
