"""The plugin manager: entry points of group ``auditor``, ``--disable NAME`` and ``-p MODULE``."""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata as md
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, cast

import pluggy

from auditor import hookspecs
from auditor.checks import CheckInfo, check_class_problems
from auditor.errors import PluginLoadError, SpecError
from auditor.hookspecs import GRADIENTS, capabilities_of

GROUP = "auditor"
hookimpl = pluggy.HookimplMarker("auditor")


@dataclass(frozen=True)
class PluginInfo:
    """A loaded plugin: its name, module, and the distribution that installed it."""

    name: str
    module: str
    distribution: str | None
    version: str | None
    source: str  # "entry point", "-p", "builtin", "object"


@dataclass
class Registry:
    """Everything the installed plugins registered."""

    pm: pluggy.PluginManager
    plugins: list[PluginInfo] = field(default_factory=list)
    checks: dict[str, CheckInfo] = field(default_factory=dict)
    reporters: dict[str, Any] = field(default_factory=dict)
    backends: dict[str, Callable[..., Any]] = field(default_factory=dict)
    #: Data sources from ``auditor_register_datasets``, by name (the built-in ``images`` source is not here).
    datasets: dict[str, type[Any]] = field(default_factory=dict)
    #: Which plugin registered each backend (clashes name both).
    backend_plugins: dict[str, str] = field(default_factory=dict)
    #: Plugins switched off with ``--disable``: the spec's checks of theirs are skipped with a reason.
    disabled: frozenset[str] = frozenset()

    def gradient_backend(self) -> str | None:
        """The name of a backend offering gradients (``Need.GRADIENTS``), if any plugin registers one."""
        return next((n for n, f in sorted(self.backends.items()) if GRADIENTS in capabilities_of(f)), None)


def _dist_of(ep: md.EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version


def _refuse_unknown_disabled(disabled: set[str], extra_modules: Iterable[str], extra_plugins: Iterable[object]) -> None:
    """A ``--disable`` name that names no plugin is a usage error: a typo (``--disable torhc``) would otherwise run
    the very checks the user meant to switch off, and the report would not say so."""
    if not disabled:
        return  # nothing to check: no need to read every installed distribution's metadata
    known = {ep.name for ep in md.entry_points(group=GROUP)}
    for mod in extra_modules:
        known.update({mod, mod.rsplit(".", 1)[-1]})
    for obj in extra_plugins:
        known.add(getattr(obj, "__name__", None) or type(obj).__name__)
    for name in sorted(disabled - known):
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (installed: {', '.join(sorted(known))})"
        raise SpecError("--disable", [f"{name}: no plugin of that name is installed{hint}"])


def build_registry(
    disable: Iterable[str] = (),
    extra_modules: Iterable[str] = (),
    extra_plugins: Iterable[object] = (),
    use_entry_points: bool = True,
    entry_points: Iterable[PluginInfo] | None = None,
) -> Registry:
    """Build the plugin manager and collect checks, reporters and backends.

    ``entry_points``: the entry-point plugins to load, as another process's registry found them (a Ray worker
    gets the driver's :attr:`Registry.plugins`), instead of reading every installed distribution's metadata to
    find them (a quarter of a second of a worker's start-up here).

    A plugin that cannot be imported, or that registers something broken, raises
    :class:`~auditor.errors.PluginLoadError` naming the plugin and its distribution: a missing check must
    never read as a pass.
    """
    disabled = set(disable)
    # Walked twice: once to register, once to check the --disable names.
    extra_modules, extra_plugins = list(extra_modules), list(extra_plugins)
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    reg = Registry(pm, disabled=frozenset(disabled))

    from auditor.report import builtin as report_builtin

    pm.register(report_builtin, name="auditor.report")
    infos: dict[str, PluginInfo] = {}

    given = {p.name: p for p in entry_points} if entry_points is not None else None
    found = ([md.EntryPoint(p.name, p.module, GROUP) for p in given.values()] if given is not None
             else list(md.entry_points(group=GROUP)) if use_entry_points else [])
    for ep in sorted(found, key=lambda e: e.name):
        if ep.name in disabled or pm.has_plugin(ep.name):
            continue
        dist, version = (given[ep.name].distribution, given[ep.name].version) if given is not None else _dist_of(ep)
        try:
            obj = ep.load()
        except Exception as exc:
            raise PluginLoadError(
                f"plugin '{ep.name}' (distribution {dist or '?'} {version or ''}) failed to load: "
                f"{type(exc).__name__}: {exc}".replace("  ", " ")
            ) from None
        pm.register(obj, name=ep.name)
        infos[ep.name] = PluginInfo(ep.name, ep.value, dist, version, "entry point")
    for mod in extra_modules:
        try:
            obj = importlib.import_module(mod)
        except Exception as exc:
            raise PluginLoadError(f"plugin module '{mod}' (-p) failed to import: {type(exc).__name__}: {exc}") from None
        name = getattr(obj, "__name__", mod)
        # -p on a plugin that is already installed (registered through its entry point) is harmless.
        if name in disabled or pm.has_plugin(name) or pm.is_registered(obj):
            continue
        pm.register(obj, name=name)
        infos[name] = PluginInfo(name, mod, None, getattr(obj, "__version__", None), "-p")
    for obj in extra_plugins:
        name = getattr(obj, "__name__", None) or type(obj).__name__
        if name in disabled or pm.has_plugin(name) or pm.is_registered(obj):
            continue
        pm.register(obj, name=name)
        mod = obj.__name__ if isinstance(obj, ModuleType) else type(obj).__module__
        infos[name] = PluginInfo(name, mod, None, getattr(obj, "__version__", None), "object")
    _refuse_unknown_disabled(disabled, extra_modules, extra_plugins)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginLoadError(f"plugin '{exc.plugin}' implements a hook the auditor does not know: {exc}") from None
    reg.plugins = sorted(infos.values(), key=lambda p: p.name)

    for impl in pm.hook.auditor_register_checks.get_hookimpls():
        pname = impl.plugin_name
        info = infos.get(pname)
        try:
            classes = cast("list[Any]", impl.function() or [])
        except Exception as exc:
            raise PluginLoadError(
                f"plugin '{pname}' failed to register its checks: {type(exc).__name__}: {exc}"
            ) from None
        for cls in classes:
            bad = check_class_problems(cls)
            if bad:
                raise PluginLoadError(f"plugin '{pname}' registered a broken check: {'; '.join(bad)}")
            prefix = cls.name.split(".", 1)[0]
            if info is not None and info.source == "entry point" and prefix != pname:
                # `--disable NAME` and `use: NAME.*` rely on it; and no plugin can fill another's namespace
                raise PluginLoadError(f"plugin '{pname}' registered check '{cls.name}': the checks of an installed "
                                      f"plugin are named '{pname}.<check>' after its entry point")
            if cls.name in reg.checks:
                other = reg.checks[cls.name].plugin
                raise PluginLoadError(f"check '{cls.name}' is registered by both '{other}' and '{pname}'")
            reg.checks[cls.name] = CheckInfo(
                cls, pname, info.distribution if info else None, info.version if info else None
            )
    _register_reporters(pm, reg)
    for impl in pm.hook.auditor_register_backends.get_hookimpls():
        try:
            backends = cast("dict[str, Callable[..., Any]]", impl.function() or {})
        except Exception as exc:
            raise PluginLoadError(f"plugin '{impl.plugin_name}' failed to register backends: {exc}") from None
        for bname, factory in backends.items():
            if bname in reg.backends:
                raise PluginLoadError(f"backend '{bname}' is registered by both '{reg.backend_plugins[bname]}' "
                                      f"and '{impl.plugin_name}'")
            reg.backends[bname] = factory
            reg.backend_plugins[bname] = impl.plugin_name
    _collect_datasets(pm, reg)
    return reg


def _collect_datasets(pm: pluggy.PluginManager, reg: Registry) -> None:
    """Data sources from every plugin; a name used twice (or the built-in ``images``) stops the run."""
    from auditor.datasets.registry import BUILTIN_SOURCES, DataSource

    owner: dict[str, str] = {n: "auditor (built-in)" for n in BUILTIN_SOURCES}
    for impl in pm.hook.auditor_register_datasets.get_hookimpls():
        pname = impl.plugin_name
        try:
            classes = cast("list[Any]", impl.function() or [])
        except Exception as exc:
            raise PluginLoadError(
                f"plugin '{pname}' failed to register its data sources: {type(exc).__name__}: {exc}"
            ) from None
        for cls in classes:
            if not (isinstance(cls, type) and issubclass(cls, DataSource)) or not cls.name:
                raise PluginLoadError(
                    f"plugin '{pname}' registered {cls!r}, which is not a named DataSource subclass")
            if cls.name in owner:
                raise PluginLoadError(
                    f"data source '{cls.name}' is registered by both '{owner[cls.name]}' and '{pname}'")
            owner[cls.name] = pname
            reg.datasets[cls.name] = cls


def _register_reporters(pm: pluggy.PluginManager, reg: Registry) -> None:
    """Collect report formats. A format or file name registered twice stops the run naming both plugins (a
    plugin must not silently replace a built-in format), and a file name must be a plain name in the report
    folder (no separators, no ``..``)."""
    from auditor.report.base import Reporter, valid_filename

    owner: dict[str, str] = {}
    files: dict[str, tuple[str, str]] = {}
    # get_hookimpls() lists in registration order, the core's own formats first: a clash names the built-in
    # as the first owner.
    for impl in pm.hook.auditor_register_reporters.get_hookimpls():
        pname = impl.plugin_name
        try:
            reporters = list(cast("list[Any]", impl.function() or []))
        except Exception as exc:
            raise PluginLoadError(
                f"plugin '{pname}' failed to register reporters: {type(exc).__name__}: {exc}") from None
        for rcls in reporters:
            if not (isinstance(rcls, type) and issubclass(rcls, Reporter)):
                raise PluginLoadError(f"plugin '{pname}' registered {rcls!r} as a reporter, not a Reporter subclass")
            fmt, filename = getattr(rcls, "format", ""), getattr(rcls, "filename", "")
            if not isinstance(fmt, str) or not fmt.replace("_", "").replace("-", "").isalnum():
                raise PluginLoadError(f"plugin '{pname}': reporter {rcls.__name__} has no valid format name "
                                      f"({fmt!r}: letters, digits, '-' and '_')")
            if not valid_filename(filename):
                raise PluginLoadError(f"plugin '{pname}': reporter '{fmt}' writes to {filename!r}, which is not a "
                                      "plain file name in the report folder")
            if fmt in owner:
                raise PluginLoadError(f"report format '{fmt}' is registered by both '{owner[fmt]}' and '{pname}'")
            if filename in files:
                other_fmt, other = files[filename]
                raise PluginLoadError(f"report file '{filename}' is written by format '{other_fmt}' of "
                                      f"'{other}' and by format '{fmt}' of '{pname}'")
            owner[fmt] = pname
            files[filename] = (fmt, pname)
            reg.reporters[fmt] = rcls
