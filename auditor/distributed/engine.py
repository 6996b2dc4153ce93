"""The Ray engine: the spec's checks run on worker actors of a Ray cluster, sharded checks shard by shard, all
checks at once; the driver plans, merges and writes the report a single machine writes.

Scheduling is dynamic (one task in flight per worker, the next one handed to whichever worker finishes first),
so uneven shards (an attack stops early on easy rows) still keep every worker busy. A worker that dies has its
task resubmitted to another worker (up to ``execution.max_retries`` times per task); the dead actor is restarted
by Ray and rejoins. The shards and their seeds do not depend on which worker runs them, so a retried shard gives
the same partial.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as _dt
import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayError, RayTaskError

from auditor.checks import CheckInfo
from auditor.distributed.config import ExecutionConfig
from auditor.distributed.errors import ClusterError, ClusterLost
from auditor.distributed.schedule import Task, TaskQueue
from auditor.distributed.timing import RunClock
from auditor.distributed.worker import AuditWorker, RegistryRecipe, fingerprint
from auditor.errors import SkipCheck
from auditor.results import AuditReport, CheckReport
from auditor.runner import Interrupted, Loaded, Runner, _Outcome
from auditor.shards import Plan, ShardedCheck, params_for, shards_of
from auditor.spec import CheckSpec

#: How long a dead worker may take to come back (Ray restarts it) before it counts as gone for good.
RESTART_WAIT_S = 120.0


@dataclass
class _Pending:
    """What the driver knows about one (check, role) while its shards run."""

    check: ShardedCheck
    ctx: Any
    plan: Plan
    partials: dict[int, Any] = field(default_factory=dict)
    count: int = 0
    outcome: _Outcome | None = None
    t0: float = 0.0


#: Ray's system settings for the local instance an audit starts. Ray runs its workers at niceness 15 by default,
#: so that on a busy machine every other process goes first; an audit's workers are the audit itself, and a
#: single-machine run competes for the cores at the user's own priority, so the workers do too.
LOCAL_SYSTEM_CONFIG: dict[str, Any] = {"worker_niceness": 0}


def start_local(**options: Any) -> None:
    """Start a Ray instance on this machine as an audit does (no dashboard, the workers' output kept out of the
    terminal, workers at the driver's priority); ``options`` go to ``ray.init`` (e.g. ``num_cpus``)."""
    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
             _system_config=LOCAL_SYSTEM_CONFIG, **options)


def connect(ex: ExecutionConfig) -> bool:
    """Join the cluster ``ex.address`` (``auto``: the running one; none: ``RAY_ADDRESS``, else a local instance
    started here). Returns whether this call started Ray (and so must stop it)."""
    if ray.is_initialized():
        return False
    address = ex.address or os.environ.get("RAY_ADDRESS") or None
    try:
        if address is None:
            start_local()
        else:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ClusterError(f"execution.address: cannot join the Ray cluster at {address}: {first}") from None
    return True


def _first_line(exc: BaseException) -> str:
    """The most telling line of a Ray error (the cause's last line, not Ray's banner)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    causes = [ln for ln in lines if "Error:" in ln and not ln.startswith(("ray::", "File "))]
    return (causes[-1] if causes else lines[0] if lines else type(exc).__name__)[:300]


class RayRunner(Runner):
    """Runs a spec's checks on a Ray cluster; same report as :class:`~auditor.runner.Runner` apart from
    timings and ``environment.execution``."""

    def run(self, loaded: Loaded) -> AuditReport:
        """Run every check on the cluster; :class:`Interrupted` on Ctrl-C, :class:`ClusterLost` when the cluster
        goes away (both with the partial report)."""
        ex = self.spec.execution or ExecutionConfig(engine="ray")
        started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        t0 = time.perf_counter()
        own = connect(ex)
        try:
            return self._run(loaded, ex, started, t0)
        finally:
            if own:
                ray.shutdown()

    # ------------------------------------------------------------------------------------------ workers
    def _launch_workers(self, loaded: Loaded, ex: ExecutionConfig) -> tuple[list[Any], dict[Any, int]]:
        """Ask the cluster for the workers and return at once: the actors, and each one's first answer (its
        :meth:`AuditWorker.info`, once its models and data are loaded) to wait for. The driver plans the checks
        meanwhile, and each worker takes tasks as soon as it has answered (a slow node holds up no one)."""
        res = ray.cluster_resources()
        n = ex.workers or max(1, int(res.get("CPU", 1) // ex.cpus_per_worker))
        if ex.gpus_per_worker and not ex.workers:
            n = min(n, max(1, int(res.get("GPU", 0) // ex.gpus_per_worker)))
        # The driver's data through the object store: put once, read zero-copy by every worker of a node; the
        # references stay held for the whole run (a restarted worker reads them again).
        self._refs = [ray.put(loaded.data), ray.put(loaded.train_data)] if ex.data == "driver" else []
        remote: Any = ray.remote(AuditWorker)  # Ray's stubs do not type actor classes
        actor_cls = remote.options(
            num_cpus=ex.cpus_per_worker, num_gpus=ex.gpus_per_worker,
            max_restarts=max(ex.max_retries, 1), max_task_retries=0)
        recipe = RegistryRecipe.of(self.registry)
        # one ONNX Runtime thread per reserved core: more would oversubscribe the cores next to other workers
        threads = max(1, int(ex.cpus_per_worker))
        actors: list[Any] = [actor_cls.remote(self.spec, recipe, list(sys.path), threads, bool(self._refs), *self._refs)
                  for _ in range(n)]
        self.clock.launch(n)
        return actors, {a.info.remote(): wi for wi, a in enumerate(actors)}

    def _joined(self, ref: Any, wi: int, actors: list[Any], want: Any, infos: dict[int, dict[str, Any]]) -> None:
        """Worker ``wi``'s first answer: it is ready, or it could not start, or it reads other data than the
        driver (both end the run, one line)."""
        try:
            info = ray.get(ref)
        except RayError as exc:
            for a in actors:
                ray.kill(a)
            raise ClusterError(f"ray: a worker could not start: {_first_line(exc)}") from None
        if info["data"] != want:
            for a in actors:
                ray.kill(a)
            raise ClusterError(
                f"data.path: worker {wi} on {info['host']} reads different data than the driver "
                f"(rows/checksum {info['data']} vs {want}); put the data on storage every node sees at the "
                f"same path, or set execution.data: driver")
        infos[wi] = info
        self.clock.joined(wi, info["host"])

    # ------------------------------------------------------------------------------------------ the run
    def _run(self, loaded: Loaded, ex: ExecutionConfig, started: str, t0: float) -> AuditReport:
        self.clock = RunClock()  # from the workers' launch: joining the cluster (ray.init) is not theirs
        # The workers start first (on a small cluster their start-up is most of a short audit's overhead); the
        # driver prepares and plans while they load.
        actors, joining = self._launch_workers(loaded, ex)
        try:
            return self._drive(loaded, ex, started, t0, actors, joining)
        finally:
            for a in actors:
                try:
                    ray.kill(a)
                except Exception:  # the cluster may be gone already
                    pass

    def _drive(self, loaded: Loaded, ex: ExecutionConfig, started: str, t0: float, actors: list[Any],
               joining: dict[Any, int]) -> AuditReport:
        """Plan every check, hand the tasks to the workers as they come up and free up, merge, report."""
        infos: dict[int, dict[str, Any]] = {}
        execution: dict[str, Any] = {
            "engine": "ray", "ray": ray.__version__, "address": ex.address or os.environ.get("RAY_ADDRESS")
            or "local", "workers": len(actors), "nodes": 0, "hosts": [], "providers": [],
            "cpus_per_worker": ex.cpus_per_worker, "gpus_per_worker": ex.gpus_per_worker, "data": ex.data,
            "retries": [],
        }

        def describe() -> None:  # what the workers that have answered said of themselves
            execution.update(nodes=len({i["node"] for i in infos.values()}),
                             hosts=sorted({i["host"] for i in infos.values()}),
                             providers=sorted({i["provider"] for i in infos.values()}),
                             timing=self.clock.summary())

        want = fingerprint(loaded.data)
        # The driver fixes its models' batching on the first rows, as a local run's first forward pass does, so
        # that the report's model section reads the same.
        if loaded.data is not None:
            k = min(loaded.data.n, 8)
            # with the rows' other inputs (several-input models); an output without batch axis has been found
            # by then, and the checks that need it skip on their own
            with contextlib.suppress(SkipCheck):
                loaded.model.run(loaded.data.x[:k], inputs=loaded.data.companions(slice(0, k)))
            if loaded.baseline is not None and loaded.baseline_data is not None:
                with contextlib.suppress(SkipCheck):
                    loaded.baseline.run(loaded.baseline_data.x[:k],
                                        inputs=loaded.baseline_data.companions(slice(0, k)))
        checks = self.spec.checks
        done: dict[int, CheckReport] = {}
        retry_notes: dict[int, list[str]] = collections.defaultdict(list)
        pending: dict[tuple[int, str], _Pending] = {}
        queue = TaskQueue()
        for ci, cs in enumerate(checks):
            if cs.skip_reason is not None:  # its plugin is disabled
                done[ci] = self._report(cs, None, _Outcome(skip=cs.skip_reason), None)
                continue
            info = self.registry.checks[cs.use]
            reason = self.skip_reason(info, loaded)
            if reason is not None:
                done[ci] = self._report(cs, info, _Outcome(skip=reason), None)
                continue
            if not issubclass(info.cls, ShardedCheck):
                queue.add(Task(ci, "model"))
                continue
            roles = ["model"] + (["baseline"] if loaded.baseline is not None and info.cls.run_on_baseline else [])
            for role in roles:
                for task in self._plan(ci, cs, info, role, loaded, pending):
                    queue.add(task)
        inflight: dict[Any, tuple[Task, int]] = {}
        pings: dict[Any, tuple[int, float]] = {}  # a dead worker's readiness probe: (worker, since)
        lost: set[int] = set()
        busy: set[int] = set(joining.values())  # a worker takes tasks once it has answered
        total_tasks = len(queue)
        finished_tasks = 0
        emitted = 0
        if checks:
            self.events.check_started(1, len(checks), checks[0].id)

        def emit() -> None:
            nonlocal emitted
            while emitted < len(checks) and emitted in done:
                self.events.check_finished(done[emitted])
                emitted += 1
                if emitted < len(checks):
                    self.events.check_started(emitted + 1, len(checks), checks[emitted].id)

        try:
            for ci in range(len(checks)):
                self._maybe_finish(ci, loaded, pending, done, retry_notes)
            emit()
            while queue or inflight:
                self._fill(queue, inflight, busy, actors, lost)
                if queue and not inflight and not pings and not joining:
                    msg = f"ray: every worker is gone ({len(lost)} of {len(actors)} died for good)"
                    execution["error"] = msg
                    describe()
                    raise ClusterLost(msg, self._partial(loaded, done, started, t0, execution, reason=msg))
                ready, _ = ray.wait([*inflight, *pings, *joining], num_returns=1, timeout=0.25)
                for ref in ready:
                    if ref in joining:  # a worker is up: models and data loaded
                        wi = joining.pop(ref)
                        self._joined(ref, wi, actors, want, infos)
                        busy.discard(wi)
                        if not joining:
                            describe()
                            self.events.message(
                                f"ray: {len(actors)} workers on {execution['nodes']} node(s) "
                                f"({', '.join(execution['hosts'])}), data: {ex.data}, up in "
                                f"{execution['timing']['startup_s']:.1f} s")
                        continue
                    if ref in pings:  # a worker that died: back (restarted by Ray), still restarting, or gone
                        wi, since = pings.pop(ref)
                        try:
                            ray.get(ref)
                            busy.discard(wi)
                        except ActorUnavailableError:
                            if time.perf_counter() - since < RESTART_WAIT_S:
                                time.sleep(0.2)
                                pings[actors[wi].info.remote()] = (wi, since)
                            else:
                                lost.add(wi)
                        except RayActorError:
                            lost.add(wi)  # stays busy: never handed another task
                        continue
                    task, wi = inflight.pop(ref)
                    try:
                        value = ray.get(ref)
                    except RayActorError as exc:
                        # the worker is not handed another task until it answers again (Ray restarts it):
                        # tasks sent to a restarting actor would fail too and count as retries
                        pings[actors[wi].info.remote()] = (wi, time.perf_counter())
                        task.attempts += 1
                        what = (f"shard {task.shard.index + 1}/{task.shard.count}" if task.shard is not None
                                else "the whole check")
                        note = (f"ray: {what} of {checks[task.check].id} ({task.role}) ran again on another "
                                f"worker after worker {wi} died ({type(exc).__name__})")
                        if task.attempts > ex.max_retries:
                            msg = (f"ray: workers keep dying ({task.attempts} attempts at {what} of "
                                   f"{checks[task.check].id}): {_first_line(exc)}")
                            execution["error"] = msg
                            describe()
                            raise ClusterLost(msg, self._partial(loaded, done, started, t0, execution,
                                                                 reason=msg)) from None
                        retry_notes[task.check].append(note)
                        execution["retries"].append(note)
                        self.events.message(note)
                        task.avoid = wi
                        queue.finished(task, None)
                        queue.retry(task)
                        continue
                    except RayTaskError as exc:  # the worker's own code failed outside the check's try
                        value = {"error": f"ray: {_first_line(exc)}", "traceback": str(exc)}
                    busy.discard(wi)
                    queue.finished(task, value.get("duration"))
                    finished_tasks += 1
                    self.clock.task(wi, checks[task.check].id + ("" if task.role == "model" else f".{task.role}"),
                                    float(value.get("duration", 0.0)), float(value.get("cpu", 0.0)))
                    self._absorb(task, value, pending, done)
                    self._maybe_finish(task.check, loaded, pending, done, retry_notes)
                emit()
                if emitted < len(checks):
                    self.events.check_progress(checks[emitted].id, finished_tasks, total_tasks,
                                               f"tasks of the audit on {len(actors)} workers")
        except KeyboardInterrupt:
            for ref in inflight:
                ray.cancel(ref, force=True)
            describe()
            report = self._partial(loaded, done, started, t0, execution, reason="interrupted (Ctrl-C)")
            raise Interrupted(report) from None
        except ClusterLost:
            raise
        except (RayError, ConnectionError) as exc:
            msg = f"ray: the cluster went away: {_first_line(exc)}"
            execution["error"] = msg
            describe()
            raise ClusterLost(msg, self._partial(loaded, done, started, t0, execution, reason=msg)) from None
        if joining:  # the audit ended before every worker was up
            self.events.message(f"ray: the audit ended with {len(infos)} of {len(actors)} workers up")
        describe()
        reports = [done[i] for i in range(len(checks))]
        return self.assemble(reports, loaded, False, started, time.perf_counter() - t0, execution)

    def _partial(self, loaded: Loaded, done: dict[int, CheckReport], started: str, t0: float,
                 execution: dict[str, Any], reason: str | None = None) -> AuditReport:
        """The report of the checks that finished; every other one is an error saying why it did not run."""
        reports = []
        for i, cs in enumerate(self.spec.checks):
            if i in done:
                reports.append(done[i])
            else:
                why = reason or execution.get("error") or "the Ray cluster went away"
                reports.append(self._report(cs, self.registry.checks.get(cs.use), _Outcome(error=f"not run: {why}"),
                                            None))
        execution.setdefault("error", reason)
        return self.assemble(reports, loaded, True, started, time.perf_counter() - t0, execution)

    def _plan(self, ci: int, cs: CheckSpec, info: CheckInfo, role: str, loaded: Loaded,
              pending: dict[tuple[int, str], _Pending]) -> list[Task]:
        """Plan a sharded check on the driver; its shards as tasks (none when the plan skipped or failed)."""
        from auditor.errors import SkipCheck

        check = info.cls()
        assert isinstance(check, ShardedCheck)
        ctx = self._context(cs, loaded, role)
        p = _Pending(check, ctx, Plan(), t0=time.perf_counter())
        pending[(ci, role)] = p
        try:
            p.plan = check.plan(ctx, params_for(info.cls, ctx))
            shards = shards_of(check, ctx, p.plan)
        except SkipCheck as exc:
            p.outcome = _Outcome(skip=str(exc) or "skipped")
            return []
        except Exception as exc:
            p.outcome = _Outcome(error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
            return []
        p.count = len(shards)
        return [Task(ci, role, shard, p.plan) for shard in shards]

    def _fill(self, queue: TaskQueue, inflight: dict[Any, tuple[Task, int]], busy: set[int], actors: list[Any],
              lost: set[int]) -> None:
        """Hand queued tasks to idle workers, costliest first (:mod:`auditor.distributed.schedule`; a retried
        task to another worker than the one it died on, unless no other worker is left)."""
        alone = len(actors) - len(lost) <= 1
        for wi, actor in enumerate(actors):
            if wi in busy or not queue:
                continue
            pick = queue.take(wi, alone)
            if pick is None:
                continue
            if pick.shard is None:
                ref = actor.run_check.remote(pick.check)
            else:
                ref = actor.run_shard.remote(pick.check, pick.role, pick.plan, pick.shard)
            inflight[ref] = (pick, wi)
            busy.add(wi)

    def _absorb(self, task: Task, value: Any, pending: dict[tuple[int, str], _Pending],
                done: dict[int, CheckReport]) -> None:
        """Record a finished task: a whole check's report, or a shard's partial (the first skip or error of a
        shard decides the check's outcome)."""
        if task.shard is None:
            if isinstance(value.get("report"), CheckReport):
                done[task.check] = value["report"]
            else:
                cs = self.spec.checks[task.check]
                done[task.check] = self._report(cs, self.registry.checks[cs.use],
                                                _Outcome(error=value["error"], traceback=value.get("traceback")),
                                                None)
            return
        p = pending[(task.check, task.role)]
        if p.outcome is not None:
            return
        if "partial" in value:
            p.partials[task.shard.index] = value["partial"]
        elif "skip" in value:
            p.outcome = _Outcome(skip=value["skip"])
        else:
            p.outcome = _Outcome(error=value["error"], traceback=value.get("traceback"))

    def _maybe_finish(self, ci: int, loaded: Loaded, pending: dict[tuple[int, str], _Pending],
                      done: dict[int, CheckReport], retry_notes: dict[int, list[str]]) -> None:
        """Merge a sharded check once all shards of every role are in, and write its report."""
        if ci in done or (ci, "model") not in pending:
            return
        roles = [r for r in ("model", "baseline") if (ci, r) in pending]
        outcomes: dict[str, _Outcome] = {}
        for role in roles:
            p = pending[(ci, role)]
            if p.outcome is None and len(p.partials) == p.count:
                p.outcome = self._merge(p)
            if p.outcome is None:
                return
            outcomes[role] = p.outcome
        cs = self.spec.checks[ci]
        info = self.registry.checks[cs.use]
        model_outcome = outcomes["model"]
        base = outcomes.get("baseline") if model_outcome.result is not None else None
        report = self.finish_check(cs, info, model_outcome, base)
        if retry_notes.get(ci):
            report = dataclasses.replace(report, notes=[*report.notes, *retry_notes[ci]])
        done[ci] = report

    @staticmethod
    def _merge(p: _Pending) -> _Outcome:
        from auditor.errors import SkipCheck
        from auditor.results import MalformedResult, validate_result

        try:
            result = p.check.merge(p.ctx, params_for(type(p.check), p.ctx), p.plan,
                                   [p.partials[i] for i in range(p.count)])
            # plugins are untrusted on a cluster too: the merged result is checked like a local one
            return _Outcome(result=validate_result(result), duration=time.perf_counter() - p.t0)
        except MalformedResult as exc:
            return _Outcome(error=f"malformed result from {type(p.check).__name__}.merge(): {exc}")
        except SkipCheck as exc:
            return _Outcome(skip=str(exc) or "skipped")
        except Exception as exc:
            return _Outcome(error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
