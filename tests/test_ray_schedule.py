"""The Ray engine's task order (auditor.distributed.schedule, no Ray needed): each check measured once, then
the costliest tasks first, so that a cheap check listed first does not leave a long shard for the end; a task
that died goes first, to another worker. Checked on a simulated clock against the known per-row costs."""

from __future__ import annotations

import heapq

import numpy as np

from auditor.distributed.schedule import Task, TaskQueue
from auditor.shards import Shard


def _tasks(check: int, n_rows: int, per_shard: int) -> list[Task]:
    starts = range(0, n_rows, per_shard)
    return [Task(check, "model", Shard(i, len(starts), np.arange(s, min(s + per_shard, n_rows)), s))
            for i, s in enumerate(starts)]


def _simulate(queue: TaskQueue, per_row: dict[int, float], workers: int) -> tuple[float, list[int]]:
    """Run the queue on ``workers`` simulated workers whose tasks take ``per_row[check] * rows`` seconds;
    the makespan and the order in which checks' tasks were handed out."""
    free = [(0.0, w) for w in range(workers)]
    running: list[tuple[float, int, Task]] = []
    order: list[int] = []
    end = 0.0
    while len(queue) or running:
        while free and len(queue):
            now, w = heapq.heappop(free)
            task = queue.take(w, alone=False, now=now)
            assert task is not None
            order.append(task.check)
            heapq.heappush(running, (now + per_row[task.check] * task.rows, w, task))
        done, w, task = heapq.heappop(running)
        queue.finished(task, per_row[task.check] * task.rows)
        heapq.heappush(free, (done, w))
        end = max(end, done)
    return end, order


class _Fifo(TaskQueue):
    """The order before: first in, first out."""

    def __init__(self, tasks: list[Task]) -> None:
        super().__init__()
        self.fifo = list(tasks)

    def __len__(self) -> int:
        return len(self.fifo)

    def take(self, worker: int, alone: bool, now: float | None = None) -> Task | None:
        return self.fifo.pop(0) if self.fifo else None


def test_a_cheap_check_listed_first_does_not_leave_the_costly_shards_for_the_end() -> None:
    # a noise sweep (0.512 s a shard of 512 rows) listed before an attack (3.072 s a shard), 6 and 5 shards
    per_row = {0: 0.001, 1: 0.006}
    tasks = _tasks(0, 3072, 512) + _tasks(1, 2560, 512)
    queue = TaskQueue()
    for t in tasks:
        queue.add(t)
    makespan, order = _simulate(queue, per_row, workers=2)
    # each check measured once (in the spec's order), then every attack shard before the other noise shards
    assert order == [0, 1] + [1] * 4 + [0] * 5
    # the work splits evenly: 5 * 3.072 + 6 * 0.512 = 18.432 s on two workers, both done at 9.216 s
    assert abs(makespan - 9.216) < 1e-9
    # first in, first out, the noise shards go first and one worker runs the fifth attack shard alone
    fifo_makespan, _ = _simulate(_Fifo(tasks), per_row, workers=2)
    assert abs(fifo_makespan - (3 * 0.512 + 3 * 3.072)) < 1e-9


def test_a_running_first_task_counts_as_at_least_as_costly_as_it_has_run() -> None:
    queue = TaskQueue()
    for t in _tasks(0, 200, 100) + _tasks(1, 200, 100):
        queue.add(t)
    first = queue.take(0, alone=False, now=0.0)
    second = queue.take(1, alone=False, now=0.0)
    assert first is not None and second is not None and (first.check, second.check) == (0, 1)
    queue.finished(second, 1.0)  # check 1: 1 s for 100 rows; check 0's first shard has run 2 s and goes on
    nxt = queue.take(1, alone=False, now=2.0)
    assert nxt is not None and nxt.check == 0 and nxt.shard.index == 1


def test_a_task_that_died_goes_first_to_another_worker_unless_none_is_left() -> None:
    queue = TaskQueue()
    for t in _tasks(0, 300, 100):
        queue.add(t)
    dead = queue.take(0, alone=False, now=0.0)
    assert dead is not None and dead.shard.index == 0
    dead.attempts, dead.avoid = 1, 0
    queue.finished(dead, None)  # a failure is no cost: the check still counts as unmeasured
    queue.retry(dead)
    mine = queue.take(0, alone=False, now=1.0)
    assert mine is not None and mine.shard.index == 1  # worker 0 does not get the shard that died on it
    other = queue.take(1, alone=False, now=1.0)
    assert other is dead
    queue.retry(dead)
    assert queue.take(0, alone=True, now=2.0) is dead  # the only worker left takes it
    last = queue.take(0, alone=True, now=2.0)
    assert last is not None and last.shard.index == 2 and len(queue) == 0
    assert queue.take(0, alone=True, now=2.0) is None


def test_a_whole_check_counts_as_one_task_of_unknown_cost() -> None:
    queue = TaskQueue()
    for t in _tasks(0, 400, 100):
        queue.add(t)
    queue.add(Task(1, "model"))  # does not shard: listed last, measured (run) as soon as a worker is free
    a, b = queue.take(0, alone=False, now=0.0), queue.take(1, alone=False, now=0.0)
    assert a is not None and b is not None and (a.check, b.check) == (0, 1) and b.rows == 1
