"""Runs the selected checks, each isolated in its own thread and ``try``: seeds, timeouts, Ctrl-C, gates."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import platform
import threading
import time
import traceback
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from auditor import cancel, signals
from auditor.checks import CheckInfo, Need
from auditor.context import AuditContext, SharedCache
from auditor.data import Dataset, check_class_labels, fit_to_model, load_dataset
from auditor.datasets.registry import LoadRequest
from auditor.errors import CheckCancelled, DataError, SkipCheck, SpecError
from auditor.metrics import lookup
from auditor.model import ModelHandle
from auditor.outputs import Task
from auditor.plugins import Registry
from auditor.report.base import commit, discard, stage, valid_filename
from auditor.results import (
    OK_STATUSES,
    AuditReport,
    CheckReport,
    CheckResult,
    Finding,
    GateResult,
    MalformedResult,
    Status,
    as_report,
    validate_result,
    worst,
)
from auditor.spec import CheckSpec, GateSpec, Spec


class Events(Protocol):
    """What the runner tells a terminal display (see ``auditor.terminal``)."""

    def message(self, text: str) -> None: ...
    def check_started(self, index: int, total: int, check_id: str) -> None: ...
    def check_progress(self, check_id: str, done: int, total: int | None, what: str) -> None: ...
    def check_finished(self, report: CheckReport) -> None: ...


class NullEvents:
    """Events sink that shows nothing (library use, tests)."""

    def message(self, text: str) -> None:
        """Ignore."""

    def check_started(self, index: int, total: int, check_id: str) -> None:
        """Ignore."""

    def check_progress(self, check_id: str, done: int, total: int | None, what: str) -> None:
        """Ignore."""

    def check_finished(self, report: CheckReport) -> None:
        """Ignore."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM during a check; carries the partial report and ``how`` (``Ctrl-C``/``SIGTERM``)."""

    def __init__(self, report: AuditReport, how: str = "Ctrl-C") -> None:
        super().__init__("interrupted")
        self.report = report
        self.how = how


@dataclass
class Loaded:
    """Models and data of an audit, loaded once."""

    model: ModelHandle
    data: Dataset | None
    baseline: ModelHandle | None = None
    baseline_data: Dataset | None = None
    references: dict[str, ModelHandle] = field(default_factory=dict)
    train_data: Dataset | None = None


def check_seed(seed: int, check_id: str) -> np.random.Generator:
    """A generator that depends only on the spec's seed and the check's id (not on check order)."""
    return np.random.default_rng([seed, zlib.crc32(check_id.encode())])


def load_inputs(spec: Spec, sources: dict[str, type[Any]] | None = None) -> Loaded:
    """Load models and data, and fit the data to the model (errors are one line, exit code 4).

    ``sources`` are the data sources plugins registered (``Registry.datasets``)."""
    bs = spec.data.batch_size if spec.data else 256
    model = ModelHandle(spec.model, batch_size=bs, role="model")
    # A weights-only audit (no data) never opens an ONNX Runtime session: a model of many GiB is then read
    # tensor by tensor from its memory-mapped files instead of being loaded whole.
    runs_model = spec.data is not None or spec.train_data is not None
    if runs_model:
        model.check_loads()
    else:
        model.notes.append("weights-only audit: no ONNX Runtime session was opened")
    rng = np.random.default_rng([spec.seed, 1])
    data = None
    if spec.data is not None:
        data = load_dataset(spec.data, rng, request=_request(model, rng), sources=sources,
                            inputs=model.input_keys, primary=model.input.name)
        data = fit_to_model(data, model.input.shape, model.input.name, str(model.path))
        _check_values(model, data, "data")
    baseline = baseline_data = None
    if spec.baseline is not None:
        baseline = ModelHandle(spec.baseline, batch_size=bs, role="baseline")
        if runs_model:
            baseline.check_loads()
        if data is not None:
            baseline_data = _data_for(data, baseline)
    refs = {}
    for name, cfg in spec.references.items():
        refs[name] = ModelHandle(cfg, batch_size=bs, role=f"references.{name}" if name != "reference" else "reference")
        if runs_model:
            refs[name].check_loads()
    train = None
    if spec.train_data is not None:
        trng = np.random.default_rng([spec.seed, 2])
        train = load_dataset(spec.train_data, trng, request=_request(model, trng), sources=sources,
                             inputs=model.input_keys, primary=model.input.name)
        train = fit_to_model(train, model.input.shape, model.input.name, str(model.path))
        _check_values(model, train, "train_data")
    return Loaded(model, data, baseline, baseline_data, refs, train)


def _check_values(model: ModelHandle, data: Dataset, role: str) -> None:
    """Data values the model cannot take, found before any check runs (exit 4, one line)."""
    want = model.input.dtype
    have = getattr(data.x, "dtype", None)
    if want is not None and want.kind in "OSU" and have is not None and np.dtype(have).kind not in "OSU":
        raise DataError(f"{role}.x: model input '{model.input.name}' of {model.path} takes strings, but the data "
                        f"is {np.dtype(have)}")
    if model.config.task is Task.CLASSIFICATION and data.y is not None:
        check_class_labels(np.asarray(data.y), f"{role}.y")


def _request(model: ModelHandle, rng: np.random.Generator) -> LoadRequest:
    """What a data source may know about the model input it feeds."""
    return LoadRequest(rng=rng, input_shape=tuple(model.input.shape) if model.input.shape else None,
                       input_dtype=model.input.dtype, layout=model.layout)


def _data_for(data: Dataset, other: ModelHandle) -> Dataset:
    """The audit data shaped for another model (a baseline may use the other layout); shared if it fits."""
    return data.fitted_to(other.input.shape, other.input.name, str(other.path))


#: Kept under its old name: gates address metrics with :func:`auditor.metrics.lookup`.
lookup_metric = lookup


def evaluate_gates(gates: list[GateSpec], metrics: dict[str, Any],
                   baseline: dict[str, Any] | None) -> list[GateResult]:
    """Evaluate each bound; a missing or non-numeric metric fails its gate (never passes silently)."""
    out: list[GateResult] = []
    bad = Status.FAIL
    for g in gates:
        sev_status = Status.WARN if g.severity == "warn" else bad
        try:
            raw = lookup_metric(metrics, g.metric)
            value = float(raw)
        except (KeyError, TypeError, ValueError):
            names = ", ".join(sorted(k for k in metrics if not isinstance(metrics[k], (list, dict))))
            for op, thr in g.bounds.items():
                out.append(GateResult(metric=g.metric, op=op, threshold=thr, value=None, baseline=None,
                                      status=sev_status, severity=g.severity,
                                      message=f"{g.metric}: not reported as a number (reported: {names})"))
            continue
        base_val: float | None = None
        if baseline is not None:
            try:
                base_val = float(lookup_metric(baseline, g.metric))
            except (KeyError, TypeError, ValueError):
                base_val = None
        for op, thr in g.bounds.items():
            ok: bool
            if math.isnan(value):
                ok, msg = False, f"{g.metric} is NaN"
            elif op == "min":
                ok, msg = value >= thr, f"{g.metric} = {value:.6g} (min {thr:g})"
            elif op == "max":
                ok, msg = value <= thr, f"{g.metric} = {value:.6g} (max {thr:g})"
            elif base_val is None:
                ok, msg = False, f"{g.metric}: no baseline value to compare against"
            else:
                delta = value - base_val
                ok = (-delta if op == "max_drop" else delta) <= thr + 1e-12
                msg = f"{g.metric} = {value:.6g} vs baseline {base_val:.6g} (change {delta:+.6g}, {op} {thr:g})"
            out.append(GateResult(metric=g.metric, op=op, threshold=thr, value=value, baseline=base_val,
                                  status=Status.PASS if ok else sev_status, severity=g.severity, message=msg))
    return out


@dataclass
class _Outcome:
    result: CheckResult | None = None
    skip: str | None = None
    error: str | None = None
    traceback: str | None = None
    duration: float = 0.0


def _execute(check: Any, ctx: AuditContext, timeout_s: float | None, params: Any = None) -> _Outcome:
    """Run ``check.run(ctx, params)`` (``check.run(ctx)`` for a legacy check) in its own thread; a crash is an
    error, a timeout is an error, Ctrl-C is passed on after the thread was told to stop.

    The thread publishes its outcome under a lock, and only while the runner still waits for it: a check that
    finishes after its timeout was declared can never turn the recorded error into a result."""
    box = _Outcome()
    ident: list[int] = []
    lock = threading.Lock()
    closed = [False]

    def publish(**fields: Any) -> None:
        with lock:
            if not closed[0]:
                for k, v in fields.items():
                    setattr(box, k, v)

    def target() -> None:
        ident.append(threading.get_ident())
        if ctx.progress is not None:
            cancel.set_progress_sink(ctx.progress)
        try:
            # Floating-point warnings (NaN outputs, empty groups) are the check's business: it reports NaN
            # metrics, which gates fail; numpy's own lines must not leak onto the console.
            with np.errstate(all="ignore"):
                res = check.run(ctx, params)
            try:
                publish(result=validate_result(res))
            except MalformedResult as exc:  # plugins are untrusted: a malformed result is this check's error
                publish(error=f"malformed result from {type(check).__name__}.run(): {exc}")
        except SkipCheck as exc:
            publish(skip=str(exc) or "skipped")
        except CheckCancelled:
            publish(error=box.error or "cancelled")
        except BaseException as exc:  # the check's own failure: recorded, never fatal to the audit
            try:
                message = f"{type(exc).__name__}: {exc}"
            except BaseException:  # an exception whose __str__ raises is still only this check's error
                message = f"{type(exc).__name__} (its message could not be read)"
            publish(error=message, traceback=traceback.format_exc())
        finally:
            # A thread that outlived its timeout clears its own cancel mark as it ends: thread idents are
            # reused, and a later check's thread must not start out cancelled.
            cancel.forget(threading.get_ident())

    def close(**fields: Any) -> None:
        with lock:
            closed[0] = True
            for k, v in fields.items():
                setattr(box, k, v)

    t0 = time.perf_counter()
    th = threading.Thread(target=target, name=f"check-{ctx.check_id}", daemon=True)
    th.start()
    try:
        while th.is_alive():
            th.join(0.05)
            if timeout_s is not None and time.perf_counter() - t0 > timeout_s and th.is_alive():
                close(result=None, skip=None, traceback=None,
                      error=f"timed out after {timeout_s:g} s (timeout_s)")
                ctx.cancel_event.set()
                cancel.cancel(ident[0] if ident else th.ident)
                th.join(1.0)
                break
    except KeyboardInterrupt:
        close()
        ctx.cancel_event.set()
        cancel.cancel(ident[0] if ident else th.ident)
        th.join(2.0)
        raise
    finally:
        if not th.is_alive():
            cancel.forget(th.ident)
    close()
    box.duration = time.perf_counter() - t0
    return box


def environment(seed: int, registry: Registry) -> dict[str, Any]:
    """Versions and seed, for the report."""
    import importlib.metadata as md

    import onnx
    import onnxruntime

    from auditor import __version__

    def version(dist: str) -> str | None:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    return {
        "seed": seed,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {
            "onnx-auditor": __version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__,
            "pluggy": version("pluggy"),
            "click": version("click"),
        },
        "plugins": {p.name: p.version for p in registry.plugins},
    }


def make_runner(spec: Spec, registry: Registry, events: Events | None = None) -> Runner:
    """The runner for the spec's ``execution:`` engine: this machine, or a Ray cluster (Ray is imported only
    then)."""
    if spec.execution is not None and spec.execution.distributed:
        from auditor.distributed.engine import RayRunner

        return RayRunner(spec, registry, events)
    return Runner(spec, registry, events)


class Runner:
    """Runs a spec's checks against loaded models and data."""

    def __init__(self, spec: Spec, registry: Registry, events: Events | None = None) -> None:
        self.spec = spec
        self.registry = registry
        self.events: Events = events or NullEvents()
        self.cache = SharedCache()

    def _context(self, cs: CheckSpec, loaded: Loaded, role: str) -> AuditContext:
        model = loaded.model if role == "model" else loaded.baseline
        data = loaded.data if role == "model" else loaded.baseline_data
        assert model is not None

        def progress(done: int, total: int | None, what: str) -> None:
            self.events.check_progress(cs.id, done, total, what)

        return AuditContext(
            check_id=cs.id, params=dict(cs.params), model=model, data=data, seed=self.spec.seed,
            rng=check_seed(self.spec.seed, cs.id), role=role, references=loaded.references,
            train_data=loaded.train_data, spec=self.spec.raw, backends=self.registry.backends,
            progress=progress, cache=self.cache,
            artifact_dir=Path(self.spec.report_dir) / "artifacts" / (cs.id if role == "model" else f"{cs.id}.baseline"),
            shard_rows=self.spec.execution.shard_rows if self.spec.execution is not None else None,
        )

    def skip_reason(self, info: CheckInfo, loaded: Loaded) -> str | None:
        """Why a check cannot run at all here (no gradient backend, no labels), or ``None``."""
        needs = info.cls.needs
        if Need.GRADIENTS in needs and self.registry.gradient_backend() is None:
            return "needs gradients: install a differentiable backend (pip install 'onnx-auditor[torch]')"
        if loaded.data is not None and Need.LABELS in needs and loaded.data.y is None:
            return "needs labels (data.y)"
        return None

    def run_check(self, cs: CheckSpec, loaded: Loaded) -> CheckReport:
        """Run one check (and again on the baseline model), evaluate its gates."""
        if cs.skip_reason is not None:
            return self._report(cs, None, _Outcome(skip=cs.skip_reason), None)
        info: CheckInfo = self.registry.checks[cs.use]
        skip_reason = self.skip_reason(info, loaded)
        if skip_reason is not None:
            return self._report(cs, info, _Outcome(skip=skip_reason), None)
        params = info.cls.build_params(cs.params)
        outcome = _execute(info.cls(), self._context(cs, loaded, "model"), cs.timeout_s, params)
        bo = None
        if loaded.baseline is not None and info.cls.run_on_baseline and outcome.result is not None:
            bo = _execute(info.cls(), self._context(cs, loaded, "baseline"), cs.timeout_s, params)
        return self.finish_check(cs, info, outcome, bo)

    def finish_check(self, cs: CheckSpec, info: CheckInfo, outcome: _Outcome, bo: _Outcome | None) -> CheckReport:
        """The check's report from its outcome on the model and (if it ran) on the baseline."""
        base_metrics = None
        if bo is not None and outcome.result is not None:
            if bo.result is not None:
                base_metrics = bo.result.metrics
            else:
                outcome.result = dataclasses.replace(
                    outcome.result,
                    findings=[*outcome.result.findings, Finding(
                        message=f"could not run on the baseline model: {bo.error or bo.skip}", severity="warn")])
        return self._report(cs, info, outcome, base_metrics)

    def _report(self, cs: CheckSpec, info: CheckInfo | None, o: _Outcome,
                base: dict[str, Any] | None) -> CheckReport:
        plugin = info.plugin if info is not None else cs.use.split(".", 1)[0]
        if o.result is None:
            status = Status.ERROR if o.error else Status.SKIPPED
            gates: list[GateResult] = []
            if status is Status.SKIPPED and cs.gates:
                # A gate that could not be evaluated must not read as passed.
                gates = [GateResult(metric=g.metric, op=op, threshold=t, value=None, baseline=None,
                                    status=Status.WARN if g.severity == "warn" else Status.FAIL,
                                    severity=g.severity, message=f"{g.metric}: not evaluated (check skipped)")
                         for g in cs.gates for op, t in g.bounds.items()]
            return CheckReport(id=cs.id, use=cs.use, plugin=plugin, spec_line=cs.line, status=status,
                               params=cs.params, metrics={}, gates=gates, findings=[], notes=[], duration_s=o.duration,
                               error=o.error, skip_reason=o.skip if status is Status.SKIPPED else None,
                               artifacts={"traceback": o.traceback} if o.traceback else {},
                               traceback=o.traceback if status is Status.ERROR else None)
        r = o.result
        gates = evaluate_gates(cs.gates, r.metrics, base)
        statuses = [g.status for g in gates]
        statuses += [Status.FAIL if f.severity == "fail" else Status.WARN for f in r.findings
                     if f.severity in ("fail", "warn")]
        return CheckReport(id=cs.id, use=cs.use, plugin=plugin, spec_line=cs.line, status=worst(statuses),
                           params=cs.params, metrics=r.metrics, gates=gates, findings=list(r.findings),
                           notes=list(r.notes), duration_s=o.duration, baseline_metrics=base,
                           artifacts=dict(r.artifacts), gallery=r.gallery)

    def assemble(self, reports: list[CheckReport], loaded: Loaded, interrupted: bool, started: str,
                 duration: float, execution: dict[str, Any] | None = None) -> AuditReport:
        """The audit's report from its checks' reports (``execution``: how a distributed run ran)."""
        env = environment(self.spec.seed, self.registry)
        if execution is not None:
            env["execution"] = execution
        return AuditReport(
            status=worst([c.status for c in reports] + [s for c in reports for s in
                                                       (g.status for g in c.gates)]),
            model=loaded.model.info(),
            baseline=loaded.baseline.info() if loaded.baseline else None,
            data=loaded.data.info() if loaded.data else None,
            environment=env,
            checks=reports,
            spec_path=str(self.spec.path),
            interrupted=interrupted,
            started_at=started,
            duration_s=duration,
        )

    def run(self, loaded: Loaded) -> AuditReport:
        """Run every check; on Ctrl-C raise :class:`Interrupted` with the partial report."""
        started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        t0 = time.perf_counter()
        reports: list[CheckReport] = []
        total = len(self.spec.checks)
        interrupted = False
        how = "Ctrl-C"
        for i, cs in enumerate(self.spec.checks):
            self.events.check_started(i + 1, total, cs.id)
            try:
                rep = self.run_check(cs, loaded)
            except KeyboardInterrupt as exc:
                interrupted, how = True, signals.describe(exc)
                info = self.registry.checks.get(cs.use)
                rep = self._report(cs, info, _Outcome(error=f"interrupted ({how})"), None)
                reports.append(rep)
                self.events.check_finished(rep)
                for rest in self.spec.checks[i + 1:]:
                    reports.append(self._report(rest, self.registry.checks.get(rest.use),
                                                _Outcome(skip="not run: interrupted"), None))
                break
            reports.append(rep)
            self.events.check_finished(rep)
        report = self.assemble(reports, loaded, interrupted, started, time.perf_counter() - t0)
        if interrupted:
            raise Interrupted(report, how)
        return report


class WrittenReports(list[Path]):
    """The report files written, in order; ``failed`` maps each format whose reporter raised to the reason
    (its file is not written, the others are); ``interrupted`` names the signal (``Ctrl-C``/``SIGTERM``) that
    arrived while they were written, if one did; ``report`` is the report the files say (marked interrupted
    when the signal came before they were committed)."""

    def __init__(self, paths: list[Path], failed: dict[str, str], interrupted: str | None,
                 report: AuditReport) -> None:
        super().__init__(paths)
        self.failed = failed
        self.interrupted = interrupted
        self.report = report


def mark_interrupted(report: AuditReport) -> AuditReport:
    """The report of a run interrupted while its reports were written: ``interrupted``, and never ``pass``,
    ``info`` or ``warn`` (a run that was stopped did not pass)."""
    status = Status.ERROR if report.status in OK_STATUSES else report.status
    return dataclasses.replace(report, interrupted=True, status=status)


def write_reports(report: AuditReport | dict[str, Any], directory: Path, formats: list[str], registry: Registry,
                  on_written: Callable[[Path], None] | None = None) -> WrittenReports:
    """Render every format, stage each file beside its target, then commit them all; JSON first.

    A reporter that raises loses only its own file (``failed``). SIGINT/SIGTERM while this runs are deferred
    (:func:`auditor.signals.deferred`): if one arrives before the files are committed, every format is
    rendered again from the report marked interrupted, so no file says ``pass`` for a stopped run and none is
    missing. A file name that would leave ``directory`` is refused (the registry already checks it)."""
    report = as_report(report)
    order = sorted(formats, key=lambda f: (f != "json", formats.index(f)))
    directory = Path(directory)
    staged: list[tuple[Path, Path]] = []
    failed: dict[str, str] = {}

    def render_and_stage(doc: AuditReport) -> None:
        for fmt in order:
            cls = registry.reporters[fmt]
            name = getattr(cls, "filename", "")
            if not valid_filename(name):
                failed[fmt] = f"file name {name!r} is not a plain name in the report folder"
                continue
            try:
                text = cls().render(doc, registry.pm)
                if not isinstance(text, str):
                    raise TypeError(f"render() returned {type(text).__name__}, not str")
            except Exception as exc:  # a reporter is plugin code: it loses its own file, nothing more
                failed[fmt] = f"{type(exc).__name__}: {exc}"
                continue
            path = directory / name
            try:
                staged.append((stage(path, text), path))
            except OSError as exc:
                raise SpecError("report.dir", [f"cannot write {path}: {exc.strerror or exc}"]) from None

    def drop_staged() -> None:
        for tmp, _ in staged:
            discard(tmp)
        staged.clear()

    written: list[Path] = []
    with signals.deferred() as sig:
        try:
            render_and_stage(report)
            if sig.caught and not report.interrupted:
                drop_staged()
                failed.clear()
                report = mark_interrupted(report)
                render_and_stage(report)
            for tmp, path in staged:
                commit(tmp, path)
                written.append(path)
            staged.clear()
        except BaseException:
            drop_staged()
            raise
    if on_written:
        for path in written:
            on_written(path)
    return WrittenReports(written, failed, sig.first or None, report)
