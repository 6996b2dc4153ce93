"""Where a Ray run's time went: each worker's start-up, busy time and task count, and each check's summed worker
time per shard, as the report's ``environment.execution.timing`` (importable without Ray).

Busy time is measured inside the worker (the wall time of each task's own work), so it leaves out Ray's
scheduling, the transfer of partials and the driver's merges. ``cpu_s`` is the worker process's CPU time during
its tasks: well below ``busy_s``, the worker waited for a core (a loaded machine). ``efficiency`` is the share of
the workers' time since they were launched that went into tasks, ``sum(busy) / (workers * wall_s)``:
start-up counts against it, as does a worker left idle while another finishes the last shard.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class WorkerClock:
    """One worker as the driver saw it."""

    launched: float
    ready: float | None = None
    busy_s: float = 0.0
    cpu_s: float = 0.0
    tasks: int = 0
    host: str | None = None

    def record(self, duration: float, cpu: float) -> None:
        """A task of ``duration`` seconds (``cpu`` seconds of the worker's CPU time) finished."""
        self.busy_s += duration
        self.cpu_s += cpu
        self.tasks += 1


@dataclass
class RunClock:
    """The timing of one Ray run: the workers' clocks and each check's worker time."""

    t0: float = field(default_factory=time.perf_counter)
    workers: list[WorkerClock] = field(default_factory=list)
    checks: dict[str, list[float]] = field(default_factory=dict)  # id (``id.baseline``) -> shard durations

    def launch(self, n: int) -> None:
        """``n`` workers were just asked to start."""
        now = time.perf_counter()
        self.workers = [WorkerClock(launched=now) for _ in range(n)]

    def joined(self, worker: int, host: str) -> float:
        """Worker ``worker`` answered (its models and data loaded); returns its start-up time."""
        w = self.workers[worker]
        w.ready, w.host = time.perf_counter(), host
        return w.ready - w.launched

    def task(self, worker: int, check: str, duration: float, cpu: float) -> None:
        """A task of ``check`` that ran ``duration`` seconds (``cpu`` of CPU time) on ``worker`` finished."""
        self.workers[worker].record(duration, cpu)
        self.checks.setdefault(check, []).append(duration)

    def summary(self) -> dict[str, Any]:
        """The ``timing`` section: per worker (start-up, tasks, busy), per check (tasks, worker time, the mean
        per task) and the run's efficiency."""
        wall = time.perf_counter() - self.t0
        busy = sum(w.busy_s for w in self.workers)
        ups = [w.ready - w.launched for w in self.workers if w.ready is not None]
        return {
            "wall_s": round(wall, 3),
            "startup_s": round(max(ups), 3) if ups else None,
            "busy_s": round(busy, 3),
            "efficiency": round(busy / (len(self.workers) * wall), 3) if self.workers and wall > 0 else None,
            "workers": [{"worker": i, "host": w.host,
                         "startup_s": None if w.ready is None else round(w.ready - w.launched, 3),
                         "tasks": w.tasks, "busy_s": round(w.busy_s, 3), "cpu_s": round(w.cpu_s, 3),
                         "busy_share": round(w.busy_s / wall, 3) if wall > 0 else None}
                        for i, w in enumerate(self.workers)],
            "checks": {k: {"tasks": len(v), "worker_s": round(sum(v), 3), "per_task_s": round(sum(v) / len(v), 3)}
                       for k, v in self.checks.items()},
        }
