"""``auditor``: run, checks, plugins, schema, init."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from auditor.errors import AuditorError, ExitCode, SpecError, short

F = TypeVar("F", bound=Callable[..., Any])


def _fail(msg: str, code: int) -> None:
    # One line, and bounded: an error quoting a huge value stays readable.
    click.echo(f"error: {short(msg, 2000)}", err=True)
    sys.exit(code)


def _silence_stdout() -> None:
    """The reader of stdout went away (``auditor checks | head``): send what is left to /dev/null, so that
    neither the rest of the output nor Python's flush at exit raises again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is not a real file (CliRunner)
        pass


@contextlib.contextmanager
def _stdout_may_close() -> Iterator[None]:
    """Output whose reader may go away (``auditor run ... | head``) without changing the exit code."""
    try:
        yield
    except BrokenPipeError:
        _silence_stdout()
    except SystemExit:
        # rich's Console answers a broken pipe with SystemExit(1) after silencing stdout itself; nothing else
        # in these blocks exits
        pass


class AuditorGroup(click.Group):
    """Click's group, with usage errors as one line (exit 2)."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        """Run the command line; see :class:`click.Group`."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            _fail(f"{exc.format_message()}{where}", int(ExitCode.USAGE_ERROR))
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except (click.exceptions.Abort, KeyboardInterrupt, EOFError):
            _fail("interrupted", int(ExitCode.INTERRUPTED))
        sys.exit(rv if isinstance(rv, int) else int(ExitCode.OK))


def handle_errors(fn: F) -> F:
    """One clear line and the right exit code for every known error; exit 3 and a traceback only for bugs."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AuditorError as exc:
            _fail(str(exc), int(exc.exit_code))
        except KeyboardInterrupt:
            _fail("interrupted", int(ExitCode.INTERRUPTED))
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except BrokenPipeError:
            # stdout's reader went away (`auditor checks | head`): what it read was all it wanted.
            # (`run` and `diff` guard their own output, so that their exit code still says what happened.)
            _silence_stdout()
            sys.exit(int(ExitCode.OK))
        except Exception as exc:
            traceback.print_exc()
            _fail(f"internal error: {type(exc).__name__}: {exc} (please report this)", int(ExitCode.INTERNAL_ERROR))

    return wrapper  # type: ignore[return-value]


def quiet_numpy_warnings(fn: F) -> F:
    """numpy's RuntimeWarnings ("invalid value encountered", "Mean of empty slice") are about NaN inputs that
    the checks report as NaN metrics; they are not for the console."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"numpy(\.|$)")
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _registry(disable: tuple[str, ...] = (), plugins: tuple[str, ...] = ()) -> Any:
    from auditor.plugins import build_registry

    return build_registry(disable=disable, extra_modules=plugins)


plugin_options = [
    click.option("--disable", "disable", multiple=True, metavar="PLUGIN",
                 help="Do not load this plugin (repeatable); the spec's checks of it are skipped with a reason."),
    click.option("-p", "plugins", multiple=True, metavar="MODULE",
                 help="Load an extra plugin module by import name (repeatable)."),
]


def with_plugin_options(fn: F) -> F:
    """Add --disable and -p."""
    for opt in reversed(plugin_options):
        fn = opt(fn)
    return fn


@click.group(cls=AuditorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="onnx-auditor", prog_name="auditor")
def main() -> None:
    """Audit an ONNX model against a YAML spec and gate its release on the result."""


@main.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(path_type=Path))
@click.option("--report-dir", type=click.Path(path_type=Path), help="Write reports here (overrides report.dir).")
@click.option("--format", "formats", metavar="LIST", help="Comma-separated formats, e.g. json,markdown,junit.")
@click.option("--seed", type=click.IntRange(min=0), help="Override the spec's seed (a non-negative integer).")
@click.option("-q", "--quiet", is_flag=True, help="Only the final status line.")
@click.option("-k", "keyword", metavar="EXPR",
              help="Only run checks whose id matches EXPR: substrings combined with and / or / not and "
                   "parentheses, as pytest's -k (e.g. 'noise or square', 'not torch').")
@click.option("--traceback", "show_traceback", is_flag=True,
              help="Print the Python traceback of every check that raised (also kept in report.json).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="Run the checks on a Ray cluster: ADDRESS (host:port, ray://..., auto), else RAY_ADDRESS, "
                   "else a local Ray instance (see docs/ray.md). Put it after SPEC, or write --ray=ADDRESS.")
@with_plugin_options
@handle_errors
@quiet_numpy_warnings
def run(spec_path: Path, report_dir: Path | None, formats: str | None, seed: int | None, quiet: bool,
        keyword: str | None, ray_address: str | None, disable: tuple[str, ...], plugins: tuple[str, ...],
        show_traceback: bool = False) -> None:
    """Run the audit described by SPEC. Exit 0: every gate passed; 1: a gate failed or a check errored;
    2: bad spec or usage; 3: internal error; 4: model, data or plugin could not be loaded; 130: interrupted."""
    from rich.console import Console

    from auditor import signals
    from auditor.distributed.errors import ClusterLost
    from auditor.results import OK_STATUSES
    from auditor.runner import Interrupted, load_inputs, make_runner, write_reports
    from auditor.select import select_checks
    from auditor.spec import parse_spec
    from auditor.terminal import TerminalEvents, print_summary, status_line

    registry = _registry(disable, plugins)
    spec = parse_spec(spec_path, registry.checks, sorted(registry.reporters), disabled=registry.disabled)
    if keyword:
        ids = [c.id for c in spec.checks]
        spec.checks, deselected = select_checks(spec.checks, keyword)
        if ids and not spec.checks:  # like a typo in a gate: a usage error, never an audit that asserts nothing
            raise SpecError("-k", [f"{keyword!r} selects none of the checks of {spec_path} "
                                   f"(their ids: {', '.join(ids)})"])
    if seed is not None:
        spec.seed = seed
    if report_dir is not None:
        from auditor.spec import path_problem

        problem = path_problem(str(report_dir))
        if problem:
            raise SpecError("--report-dir", [problem])
        spec.report_dir = report_dir
    if formats:
        wanted = [f.strip() for f in formats.split(",") if f.strip()]
        unknown = [f for f in wanted if f not in registry.reporters]
        if unknown:
            raise SpecError("--format", [f"unknown format(s) {', '.join(unknown)} "
                                         f"(available: {', '.join(sorted(registry.reporters))})"])
        spec.formats = wanted
    if ray_address is not None:
        import dataclasses

        from auditor.distributed.config import ExecutionConfig

        base = spec.execution or ExecutionConfig()
        spec.execution = dataclasses.replace(base, engine="ray", address=ray_address or base.address)
    events = TerminalEvents(quiet=quiet)
    if keyword:
        events.message(f"-k {keyword}: {len(spec.checks)} selected, {len(deselected)} deselected")
    how = None
    lost: ClusterLost | None = None
    with signals.terminate_like_interrupt():
        try:
            loaded = load_inputs(spec, registry.datasets)
        except KeyboardInterrupt as exc:
            _fail(f"interrupted ({signals.describe(exc)}) while loading the model and data: no report written",
                  int(ExitCode.INTERRUPTED))
        events.message(f"model: {spec.model.path} on {loaded.model.device_note}")
        if loaded.data is not None:
            notes = "; ".join(loaded.data.notes)
            events.message(f"data: {loaded.data.source}, {loaded.data.n} rows" + (f" ({notes})" if notes else ""))
        runner = make_runner(spec, registry, events)
        try:
            report = runner.run(loaded)
        except Interrupted as exc:
            report, how = exc.report, exc.how
        except ClusterLost as exc:  # the partial report is written, then one line and exit 4
            report, lost = exc.report, exc
        written = write_reports(report, spec.report_dir, spec.formats, registry)
    for fmt, why in written.failed.items():
        click.echo(f"error: report format '{fmt}' ({registry.reporters[fmt].__module__}) failed, its file was not "
                   f"written: {short(why, 500)}", err=True)
    report = written.report  # what the files say: marked interrupted if a signal came while they were written
    how = how or written.interrupted
    out = Console(highlight=False, soft_wrap=False)  # the terminal's width (COLUMNS, else 80 when piped)
    with _stdout_may_close():
        if not quiet:
            print_summary(out, report)
            for path in written:
                out.print(f"report: {path}")
        if show_traceback:
            for c in report.checks:
                if c.traceback:
                    click.echo(f"--- traceback of {c.id} ---\n{c.traceback.rstrip()}", err=True)
        click.echo(status_line(report))
    if lost is not None and how is None:
        _fail(f"{lost} (partial report written)", int(lost.exit_code))
    if how is not None:
        click.echo(f"interrupted ({how}): partial report written", err=True)
        sys.exit(int(ExitCode.INTERRUPTED))
    if written.failed:  # a missing report never reads as a pass
        sys.exit(int(ExitCode.GATE_FAILED))
    sys.exit(int(ExitCode.OK) if report.status in OK_STATUSES else int(ExitCode.GATE_FAILED))


@main.command()
@click.argument("names", metavar="[NAME]...", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_plugin_options
@handle_errors
def checks(names: tuple[str, ...], as_json: bool, disable: tuple[str, ...], plugins: tuple[str, ...]) -> None:
    """List every installed check (or only the NAMEs given): plugin, version, parameters, needs, metrics.
    Exit 2: a NAME is not an installed check."""
    import difflib

    registry = _registry(disable, plugins)
    unknown = [n for n in names if n not in registry.checks]
    if unknown:
        problems = []
        for n in unknown:
            close = difflib.get_close_matches(n, list(registry.checks), n=1)
            problems.append(f"no installed check '{n}'" + (f" (did you mean '{close[0]}'?)" if close else
                                                           " (auditor checks lists them)"))
        raise SpecError("auditor checks", problems)
    items = []
    for name in (list(names) if names else sorted(registry.checks)):
        info = registry.checks[name]
        cls = info.cls
        items.append({
            "name": name,
            "plugin": info.plugin,
            "distribution": info.distribution,
            "version": info.version,
            "description": cls.description or ((cls.__doc__ or "").strip().splitlines() or [""])[0],
            "needs": sorted(str(n) for n in cls.needs),
            "params": [{"name": p.name, "type": p.type_label(), "default": p.default, "description": p.description}
                       for p in cls.declared_params()],
            "metrics": dict(cls.metrics_doc),
        })
    if as_json:
        click.echo(json.dumps(items, indent=2, default=str))
        return
    for it in items:
        origin = f"{it['distribution'] or 'local'} {it['version'] or ''}".strip()
        click.echo(f"{it['name']}  [plugin {it['plugin']}, {origin}]")
        if it["description"]:
            click.echo(f"    {it['description']}")
        click.echo(f"    needs: {', '.join(it['needs']) or 'the model only (data optional)'}")
        for p in it["params"]:
            click.echo(f"    {p['name']} ({p['type']}, default {p['default']!r}): {p['description']}")
        if it["metrics"]:
            click.echo(f"    metrics: {', '.join(it['metrics'])}")
        click.echo("")


@main.command()
@with_plugin_options
@handle_errors
def plugins(disable: tuple[str, ...], plugins: tuple[str, ...]) -> None:
    """List loaded plugins, their distributions and versions, and what they register."""
    registry = _registry(disable, plugins)
    by_plugin: dict[str, list[str]] = {}
    for name, info in registry.checks.items():
        by_plugin.setdefault(info.plugin, []).append(name)
    for p in registry.plugins:
        checks_ = ", ".join(sorted(by_plugin.get(p.name, []))) or "no checks"
        click.echo(f"{p.name}  {p.distribution or '-'} {p.version or ''}  ({p.source}: {p.module})  {checks_}")
    click.echo(f"report formats: {', '.join(sorted(registry.reporters))}")
    if registry.backends:
        click.echo(f"backends: {', '.join(sorted(registry.backends))}")


@main.command()
@with_plugin_options
@handle_errors
def schema(disable: tuple[str, ...], plugins: tuple[str, ...]) -> None:
    """Print the JSON Schema of a spec for the installed checks (for editors and CI linting)."""
    from auditor.spec import build_schema

    registry = _registry(disable, plugins)
    click.echo(json.dumps(build_schema(registry.checks, sorted(registry.reporters)), indent=2, default=str))


@main.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path))
@click.option("--data", "data_path", type=click.Path(path_type=Path), help="Data file to put in the spec.")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), default=Path("audit.yaml"),
              show_default=True, help="Where to write the spec.")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@handle_errors
def init(model_path: Path, data_path: Path | None, out: Path, force: bool) -> None:
    """Write a commented starter spec for MODEL, with its inputs and outputs filled in."""
    from auditor.init import starter_spec
    from auditor.report.base import write_atomic

    if out.exists() and not force:
        raise SpecError(str(out), ["already exists (use --force to overwrite)"])
    text = starter_spec(model_path, data_path, out)
    write_atomic(out, text)
    click.echo(f"wrote {out}; edit it, then: auditor run {out}")


@main.command()
@click.argument("old_path", metavar="OLD", type=click.Path(path_type=Path))
@click.argument("new_path", metavar="NEW", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["text", "markdown", "json"]), default="text",
              show_default=True, help="Output format (markdown: for a pull-request comment or $GITHUB_STEP_SUMMARY).")
@click.option("--tolerance", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Numeric changes up to this absolute size count as unchanged.")
@click.option("--max-rows", type=click.IntRange(min=1), default=25, show_default=True,
              help="Changed metrics listed per check (text and markdown; json lists all).")
@handle_errors
def diff(old_path: Path, new_path: Path, fmt: str, tolerance: float, max_rows: int) -> None:
    """What changed between two JSON reports (OLD, NEW): metric by metric, checks added or removed, gates
    that flipped. Exit 0: no gate went from pass to fail; 1: at least one did (or its check now errors);
    2: a report could not be read."""
    from auditor.diff import diff_reports, load_report, render

    old, new = load_report(old_path), load_report(new_path)
    d = diff_reports(old, new, tolerance=tolerance, old_name=str(old_path), new_name=str(new_path))
    with _stdout_may_close():
        click.echo(render(d, fmt, max_rows), nl=False)
    sys.exit(int(ExitCode.GATE_FAILED) if d.regressions else int(ExitCode.OK))


@main.command()
@click.argument("report_path", metavar="REPORT", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", type=click.Path(path_type=Path),
              help="Write the card here (e.g. MODEL_CARD.md); default: print it.")
@handle_errors
def card(report_path: Path, out: Path | None) -> None:
    """Write a Markdown model card from a JSON report (REPORT): model details, evaluation results with the
    gates, bias and limitations from the fairness and robustness checks, and how the numbers were obtained.
    Exit 2: the report could not be read."""
    from auditor.card import render_card
    from auditor.diff import load_report
    from auditor.report.base import write_atomic

    text = render_card(load_report(report_path))
    if out is None:
        click.echo(text, nl=False)
        return
    try:
        write_atomic(out, text)
    except OSError as exc:
        raise SpecError(str(out), [f"cannot write: {exc.strerror or exc}"]) from None
    click.echo(f"wrote {out}")


if __name__ == "__main__":  # pragma: no cover
    main()
