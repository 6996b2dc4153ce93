"""Imports modules with only the core's public API visible; run by tests/test_public_api.py in a fresh
interpreter: ``python public_api_probe.py PUBLIC_MODULES DIR...``.

The core is loaded normally first; then every ``auditor`` module leaves ``sys.modules`` and only views of the
public modules come back (the ``auditor`` package shows ``auditor.__all__`` and its public submodules, every
other public module its names without a leading underscore). Importing any other core module raises. Then every
module of each plugin package found under the DIRs (``auditor_*`` packages) is imported; the failures are
printed, one a line, and the exit status is 1 when there are any.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Sequence
from pathlib import Path


class _HidePrivate(importlib.abc.MetaPathFinder):
    """Refuses every core module that is not one of the public views."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname == "auditor" or fullname.startswith("auditor."):
            raise ImportError(f"{fullname} is not a public module of the core")
        return None


def hide_private(public: set[str]) -> None:
    """Leave only views of the ``public`` core modules importable."""
    import auditor

    for name in sorted(public):
        importlib.import_module(name)
    real = {n: m for n, m in sys.modules.items() if n == "auditor" or n.startswith("auditor.")}
    for n in real:
        del sys.modules[n]
    sys.meta_path.insert(0, _HidePrivate())
    packages = {n.rpartition(".")[0] for n in public if "." in n} - {"auditor"}
    views: dict[str, types.ModuleType] = {}
    for name in sorted(public | packages):
        mod = real[name]
        view = types.ModuleType(name, mod.__doc__)
        names = auditor.__all__ if name == "auditor" else [k for k in vars(mod) if not k.startswith("_")]
        for k in names:
            value = getattr(mod, k)
            if not (isinstance(value, types.ModuleType) and value.__name__.startswith("auditor.")):
                setattr(view, k, value)  # core submodules only as views (below), never the real ones
        if hasattr(mod, "__path__"):
            view.__path__ = []
        views[name] = sys.modules[name] = view
    for name, view in views.items():
        parent, _, child = name.rpartition(".")
        if parent in views:
            setattr(views[parent], child, view)


def plugin_modules(base: Path) -> list[str]:
    """Dotted names of every module of the ``auditor_*`` packages directly under ``base``."""
    out = []
    for pkg in sorted(base.glob("auditor_*/__init__.py")):
        for f in sorted(pkg.parent.rglob("*.py")):
            parts = f.relative_to(base).with_suffix("").parts
            out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def main(argv: list[str]) -> int:
    public = set(argv[0].split(","))
    bases = [Path(a).resolve() for a in argv[1:]]
    sys.path[:0] = [str(b) for b in bases]
    hide_private(public)
    mods = [m for b in bases for m in plugin_modules(b)]
    failed = []
    for m in mods:
        try:
            importlib.import_module(m)
        except Exception as exc:
            failed.append(f"{m}: {type(exc).__name__}: {exc}")
    print(f"{len(mods)} modules imported", file=sys.stderr)
    print("\n".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
