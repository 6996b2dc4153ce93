"""Which queued task a free Ray worker takes next (importable without Ray).

The driver does not know beforehand what a shard costs: an attack's shard can take a hundred times a noise
shard's. So it learns as it goes. Each check (and role) first gets one task run (in the spec's order) to
measure it; after that, a free worker takes a task of the check whose tasks cost most, by the time per row
measured so far (or, while a check's first task still runs, the time it has run so far: a lower bound). Long
tasks go first and the short ones fill the end, so that the workers finish close together whatever order the
spec lists its checks in (the longest-processing-time-first rule). A task that failed on a dead worker goes
before everything else, to another worker when there is one. The order never changes a report: partials are
merged in shard order.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from auditor.shards import Plan


@dataclass
class Task:
    """One unit of work for a worker: a shard of a check on one role, or a whole check."""

    check: int
    role: str
    shard: Any = None  # Shard for sharded checks, None for a whole check
    plan: Plan | None = None
    attempts: int = 0
    avoid: int | None = None  # the worker it last failed on

    @property
    def key(self) -> tuple[int, str]:
        """The tasks that cost alike: one check on one role."""
        return self.check, self.role

    @property
    def rows(self) -> int:
        """The task's size: the shard's rows (or work items, or pairs' rows); a whole check counts as one."""
        return 1 if self.shard is None else max(1, int(np.asarray(self.shard.rows).size))


@dataclass
class _Cost:
    """What one check's tasks cost so far: finished tasks' seconds and rows, and the running tasks' starts."""

    seconds: float = 0.0
    rows: int = 0
    running: dict[int, tuple[float, int]] = field(default_factory=dict)  # id(task) -> (started, rows)

    def per_row(self, now: float) -> float | None:
        """Seconds per row: measured, else a lower bound from the running tasks, else unknown."""
        if self.rows:
            return self.seconds / self.rows
        if self.running:
            return max((now - t0) / rows for t0, rows in self.running.values())
        return None

    def rank(self, rows: int, now: float) -> tuple[float, bool]:
        """How costly a task of ``rows`` rows looks: its estimated seconds, and on a tie a check known only
        by a lower bound first (its first task is still running: it costs at least that)."""
        return (self.per_row(now) or 0.0) * rows, not self.rows


class TaskQueue:
    """The tasks not yet handed out, grouped by check, and what each check's tasks have cost."""

    def __init__(self) -> None:
        self._retry: collections.deque[Task] = collections.deque()
        self._waiting: dict[tuple[int, str], collections.deque[Task]] = {}  # in the spec's order
        self._costs: dict[tuple[int, str], _Cost] = collections.defaultdict(_Cost)

    def __len__(self) -> int:
        return len(self._retry) + sum(len(q) for q in self._waiting.values())

    def add(self, task: Task) -> None:
        """Queue a new task (a check's tasks in shard order)."""
        self._waiting.setdefault(task.key, collections.deque()).append(task)

    def retry(self, task: Task) -> None:
        """Queue a task again after its worker died: it goes first."""
        self._retry.append(task)

    def take(self, worker: int, alone: bool, now: float | None = None) -> Task | None:
        """The task worker ``worker`` should run next (``alone``: it is the only worker left, so it may take
        a task that died on it), marked as running; ``None`` when there is none for it."""
        now = time.perf_counter() if now is None else now
        task = next((t for t in self._retry if t.avoid != worker or alone), None)
        if task is not None:
            self._retry.remove(task)
        else:
            keys = [k for k, q in self._waiting.items() if q]
            if not keys:
                return None
            unknown = [k for k in keys if self._costs[k].per_row(now) is None]
            if unknown:  # measure every check once, in the spec's order
                key = unknown[0]
            else:  # then the costliest tasks first (the first of equals in the spec's order)
                key = max(keys, key=lambda k: self._costs[k].rank(self._waiting[k][0].rows, now))
            task = self._waiting[key].popleft()
        self._costs[task.key].running[id(task)] = (now, task.rows)
        return task

    def finished(self, task: Task, seconds: float | None) -> None:
        """``task`` came back: after ``seconds`` of work (its cost), or failed (``None``: not a cost)."""
        cost = self._costs[task.key]
        cost.running.pop(id(task), None)
        if seconds is not None:
            cost.seconds += seconds
            cost.rows += task.rows
