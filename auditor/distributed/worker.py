"""A Ray worker: an actor that loads the spec's models (one ONNX Runtime session each, CUDA when the actor has a
GPU and the provider loads) and its data once, then runs shards of checks, or whole checks, on request."""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import threading
import time
import traceback
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from auditor.data import Dataset
from auditor.plugins import PluginInfo, Registry, build_registry
from auditor.shards import Plan, Shard, ShardedCheck, params_for, shard_context
from auditor.spec import Spec


@dataclass(frozen=True)
class RegistryRecipe:
    """How to build, on a worker, the plugin registry the driver built: the entry-point plugins the driver
    loaded (by name, ``module:object``, distribution and version: the worker imports them without reading
    every installed distribution's metadata, and skips those the driver disabled) and plugin modules by import
    name."""

    entry_points: tuple[PluginInfo, ...]
    modules: tuple[str, ...]

    @classmethod
    def of(cls, registry: Registry) -> RegistryRecipe:
        """The recipe of ``registry``."""
        return cls(
            entry_points=tuple(p for p in registry.plugins if p.source == "entry point"),
            modules=tuple(p.module for p in registry.plugins if p.source in ("-p", "object")),
        )

    def build(self) -> Registry:
        """Build the registry (plugin modules are imported by name: they must be installed on the worker)."""
        return build_registry(extra_modules=self.modules, entry_points=self.entry_points)


def fingerprint(data: Dataset | None) -> tuple[Any, ...] | None:
    """A cheap identity of a data set (rows, shape, a checksum of its first and last rows and of its row
    indices), to tell whether a worker reads the same data as the driver."""
    if data is None:
        return None
    edge = np.ascontiguousarray(np.asarray(data.x[:2])).tobytes() + np.ascontiguousarray(
        np.asarray(data.x[-2:])).tobytes()
    idx = b"" if data.indices is None else np.ascontiguousarray(data.indices).tobytes()
    return (data.n, tuple(data.x.shape), str(data.x.dtype), zlib.crc32(edge), zlib.crc32(idx))


class AuditWorker:
    """The actor behind each Ray worker (wrapped with ``ray.remote`` by the engine).

    With ``from_driver`` false the worker reads ``data.path`` itself (shared storage); else ``data`` and
    ``train_data`` are the driver's data sets (Ray passes them through its object store).
    """

    def __init__(self, spec: Spec, recipe: RegistryRecipe, sys_path: list[str], threads: int, from_driver: bool,
                 data: Dataset | None = None, train_data: Dataset | None = None) -> None:
        # The driver's import path, so that plugin modules found there (-p, a project folder) import here too;
        # on a cluster they must exist at the same paths (shared storage) or be installed.
        for p in reversed(sys_path):
            if p not in sys.path and os.path.isdir(p):
                sys.path.insert(0, p)
        os.environ["AUDITOR_ORT_THREADS"] = str(max(1, threads))
        from auditor.runner import Runner, load_inputs

        self.spec = spec
        registry = recipe.build()
        self.runner = Runner(spec, registry)
        if not from_driver:
            self.loaded = load_inputs(spec, registry.datasets)
        else:
            self.loaded = load_inputs(dataclasses.replace(spec, data=None, train_data=None), registry.datasets)
            self.loaded.data = data
            self.loaded.train_data = train_data
            if self.loaded.data is not None and self.loaded.baseline is not None:
                self.loaded.baseline_data = self.loaded.data.fitted_to(
                    self.loaded.baseline.input.shape, self.loaded.baseline.input.name, str(self.loaded.baseline.path))

    def info(self) -> dict[str, Any]:
        """Where this worker runs and what it loaded."""
        import ray

        ctx = ray.get_runtime_context()
        return {"pid": os.getpid(), "host": socket.gethostname(), "node": ctx.get_node_id(),
                "provider": self.loaded.model.provider, "reconstructed": ctx.was_current_actor_reconstructed,
                "data": fingerprint(self.loaded.data)}

    def run_shard(self, check_index: int, role: str, plan: Plan, shard: Shard) -> dict[str, Any]:
        """One shard of a sharded check: ``{"partial": ...}``, ``{"skip": reason}`` or ``{"error": ...,
        "traceback": ...}``, with ``duration`` (wall), ``cpu`` (this process's CPU time meanwhile) and
        ``pid``."""
        from auditor.errors import CheckCancelled, SkipCheck

        cs = self.spec.checks[check_index]
        check = self.runner.registry.checks[cs.use].cls()
        assert isinstance(check, ShardedCheck)
        ctx = shard_context(self.runner._context(cs, self.loaded, role), shard)
        out: dict[str, Any] = {}
        t0, c0 = time.perf_counter(), time.process_time()

        def target() -> None:
            try:
                out["partial"] = check.run_shard(ctx, params_for(type(check), ctx), plan, shard)
            except SkipCheck as exc:
                out["skip"] = str(exc) or "skipped"
            except CheckCancelled:
                out["error"] = "cancelled"
            except BaseException as exc:  # the check's own failure, reported for the whole check
                out["error"] = f"{type(exc).__name__}: {exc}"
                out["traceback"] = traceback.format_exc()

        th = threading.Thread(target=target, name=f"shard-{cs.id}-{shard.index}", daemon=True)
        th.start()
        ex = self.spec.execution
        limit, what = (ex.shard_timeout_s, "execution.shard_timeout_s") \
            if ex is not None and ex.shard_timeout_s is not None else (cs.timeout_s, "timeout_s, one shard")
        th.join(limit)
        if th.is_alive():
            from auditor import cancel

            ctx.cancel_event.set()
            cancel.cancel(th.ident)
            th.join(1.0)
            out = {"error": f"shard {shard.index + 1}/{shard.count} timed out after {limit:g} s ({what})"}
        out["duration"] = time.perf_counter() - t0
        out["cpu"] = time.process_time() - c0  # this process's CPU meanwhile: below duration, it waited for a core
        out["pid"] = os.getpid()
        return out

    def run_check(self, check_index: int) -> dict[str, Any]:
        """A check that does not shard, whole (and on the baseline), as the local runner runs it:
        ``{"report": CheckReport, "duration": ..., "pid": ...}``."""
        cs = self.spec.checks[check_index]
        t0, c0 = time.perf_counter(), time.process_time()
        report = self.runner.run_check(cs, self.loaded)
        return {"report": report, "duration": time.perf_counter() - t0, "cpu": time.process_time() - c0,
                "pid": os.getpid()}
