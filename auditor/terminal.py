"""What the terminal shows during and after an audit.

- On a TTY, outside CI: a live display (rich) with a bar for the whole audit (checks done of all) and one for
  the running check (batches done of all, as the check reports them); each finished check leaves one line
  above the bars.
- In CI (``CI`` set to anything but ``""``, ``0``, ``false``, ``no``), when piped, or with ``TERM=dumb``:
  plain lines, no escape codes: one when a check starts, one when it ends, and in between a progress line at
  most every ``interval`` seconds (so that a long check shows it is alive without flooding the log).
- At the end: :func:`summary_table`.

Everything goes to stderr, keeping stdout for the summary and the final status line.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

from auditor.report.markdown import fmt_value, headline
from auditor.results import AuditReport, CheckReport, as_report

STYLE = {"pass": "green", "info": "cyan", "warn": "yellow", "fail": "red", "error": "bold red", "skipped": "dim"}
MARK = {"pass": "✔", "info": "i", "warn": "!", "fail": "✘", "error": "✘", "skipped": "–"}


def gated_text(report: AuditReport) -> str:
    """``2 of 5 checks gated (3 of 4 gates met)``: how much of the audit was asserted."""
    g = as_report(report).gating
    if not g.get("checks_gated"):
        return f"no check of {g.get('checks', 0)} gated: nothing asserted"
    return (f"{g['checks_gated']} of {g['checks']} checks gated ({g['gates_met']} of {g['gates']} gates met)")


def status_line(report: AuditReport) -> str:
    """The final line of ``auditor run``: status, counts per status, how many checks were gated."""
    report = as_report(report)
    counts = ", ".join(f"{v} {k}" for k, v in report.summary.items() if v)
    return f"{report.status.value.upper()}: {counts}; {gated_text(report)}"


def in_ci(env: Mapping[str, str] | None = None) -> bool:
    """``CI`` is set to a true value (GitHub Actions, GitLab CI, most others set ``CI=true``)."""
    value = (os.environ if env is None else env).get("CI", "")
    return value.strip().lower() not in ("", "0", "false", "no")


def interactive(stream: Any = None, env: Mapping[str, str] | None = None) -> bool:
    """Live display only on a real terminal, outside CI, and not on a dumb terminal."""
    stream = stream or sys.stderr
    environ = os.environ if env is None else env
    is_tty = bool(getattr(stream, "isatty", lambda: False)())
    return is_tty and not in_ci(environ) and environ.get("TERM", "") != "dumb"


class TerminalEvents:
    """Runner events (see ``auditor.runner.Events``) rendered for a person.

    ``live`` forces the live display on or off (default: :func:`interactive` for the console's stream; a
    console built with ``force_terminal=True`` counts as a terminal). ``interval`` is the least time between
    two plain progress lines of one check.
    """

    def __init__(self, quiet: bool = False, console: Console | None = None, live: bool | None = None,
                 interval: float = 5.0) -> None:
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True)
        self.quiet = quiet
        if live is None:
            live = (self.console.is_terminal if console is not None else interactive(sys.stderr)) and not in_ci()
            live = live and os.environ.get("TERM", "") != "dumb"
        self.live = bool(live) and not quiet
        self.interval = interval
        self._lock = threading.Lock()
        self._progress: Any = None
        self._overall: Any = None
        self._task: Any = None
        self._index = 0
        self._total = 0
        self._started = 0.0
        self._last_line = 0.0

    # ------------------------------------------------------------------------------------- events
    def message(self, text: str) -> None:
        """A line of information (device, data notes)."""
        if not self.quiet:
            self.console.print(text, markup=False)

    def check_started(self, index: int, total: int, check_id: str) -> None:
        """A check begins: a new bar (live) or a line (plain)."""
        self._index, self._total = index, total
        self._started = self._last_line = time.monotonic()
        if self.quiet:
            return
        if not self.live:
            self.console.print(f"[{index}/{total}] {check_id} ...", markup=False)
            return
        with self._lock:
            if self._progress is None:
                self._start_live(total)
            self._task = self._progress.add_task(f"[{index}/{total}] {check_id}", total=None, what="")
            self._progress.update(self._overall, completed=index - 1)

    def check_progress(self, check_id: str, done: int, total: int | None, what: str) -> None:
        """The running check's progress (batches, steps): the live bar, or a plain line now and then.
        Called from the check's own thread."""
        if self.quiet:
            return
        if self.live:
            with self._lock:
                if self._progress is not None and self._task is not None:
                    self._progress.update(self._task, completed=done, total=total, what=what)
            return
        now = time.monotonic()
        if now - self._last_line < self.interval:
            return
        self._last_line = now
        of = f"/{total}" if total else ""
        pct = f" ({100.0 * done / total:.0f}%)" if total else ""
        self.console.print(f"    {check_id}: {what or 'progress'} {done}{of}{pct}, {now - self._started:.0f} s",
                           markup=False)

    def check_finished(self, report: CheckReport) -> None:
        """One line with the check's status; the live display stops after the last check."""
        if self.quiet:
            return
        st = report.status.value
        extra = ""
        if report.error:
            extra = f": {report.error}"
        elif report.skip_reason:
            extra = f": {report.skip_reason}"
        if self.live:
            line = (f"{MARK[st]} {report.id}: [{STYLE[st]}]{st}[/] ({report.duration_s:.2f} s)"
                    + extra.replace("[", r"\["))
            with self._lock:
                if self._progress is not None:
                    if self._task is not None:
                        self._progress.remove_task(self._task)
                        self._task = None
                    self._progress.update(self._overall, completed=self._index)
                    self._progress.console.print(line)
                else:
                    self.console.print(line)
            # The runner has no "audit finished" event: the last check (or an interrupt) ends the display,
            # so that the summary that follows is printed on a clean terminal.
            if self._index >= self._total or (report.error or "").startswith("interrupted"):
                self.close()
            return
        self.console.print(f"    {report.id}: {st} ({report.duration_s:.2f} s){extra}", markup=False)

    # ------------------------------------------------------------------------------------- live display
    def _start_live(self, total: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[what]}"), TimeElapsedColumn(),
            console=self.console, transient=True, refresh_per_second=8,
        )
        self._overall = self._progress.add_task("audit", total=total, what="checks")
        self._progress.start()
        atexit.register(self.close)

    def close(self) -> None:
        """Stop the live display (idempotent)."""
        with self._lock:
            if self._progress is not None:
                self._progress.stop()
                self._progress = None
                self._task = None


def summary_table(report: AuditReport) -> Table:
    """The end-of-run table: check, status, time, headline metrics (the gated ones first), and gates (those
    not met spelled out)."""
    report = as_report(report)
    status = report.status.value
    t = Table(title=f"audit of {report.model.get('path')}: [{STYLE.get(status, '')}]{status.upper()}[/]",
              title_justify="left", show_footer=True)
    counts = ", ".join(f"{v} {k}" for k, v in report.summary.items() if v)
    t.add_column("check", footer=gated_text(report))
    t.add_column("status", footer=counts)
    t.add_column("time", justify="right")
    t.add_column("metrics", overflow="fold")
    t.add_column("gates, findings", overflow="fold")
    for c in report.checks:
        st = c.status.value
        if st == "error":
            metrics = c.error or ""
        elif st == "skipped":
            metrics = c.skip_reason or ""
        else:
            metrics = ", ".join(f"{k}={fmt_value(v)}" for k, v in headline(c, 5))
        met = sum(g.status.value == "pass" for g in c.gates)
        lines = [f"{met}/{len(c.gates)} met"] if c.gates else []
        lines += [f"[{STYLE[g.status.value]}]{g.status.value}[/] " + g.message.replace("[", r"\[")
                  for g in c.gates if g.status.value != "pass"]
        # the reason for every warning: a check turned warn (or fail) by a finding says which
        lines += [f"[{STYLE[f.severity]}]{f.severity}[/] " + f.message.replace("[", r"\[")
                  for f in c.findings if f.severity in ("warn", "fail")]
        t.add_row(c.id, f"[{STYLE[st]}]{st}[/]", f"{c.duration_s:.2f} s", metrics.replace("[", r"\["),
                  "\n".join(lines))
    return t
