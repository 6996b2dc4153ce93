"""What the terminal shows during and after an audit: one line per check, then a summary table.

On a TTY (and not in CI) a live progress bar per check; in CI (``CI=true``) or when piped, plain lines.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from auditor.report.markdown import fmt_value, scalar_metrics
from auditor.results import CheckReport

STYLE = {"pass": "green", "warn": "yellow", "fail": "red", "error": "bold red", "skipped": "dim"}


def interactive(stream: Any = None) -> bool:
    """Live display only on a real terminal and outside CI."""
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)()) and not os.environ.get("CI")


class TerminalEvents:
    """Runner events rendered for a person (stderr), keeping stdout free for the summary."""

    def __init__(self, quiet: bool = False, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True)
        self.quiet = quiet
        self.live = interactive() and not quiet
        self._last = 0.0
        self._progress: Any = None
        self._task: Any = None

    def message(self, text: str) -> None:
        """A line of information (device, data notes)."""
        if not self.quiet:
            self.console.print(text)

    def check_started(self, index: int, total: int, check_id: str) -> None:
        """Announce a check."""
        if self.quiet:
            return
        if self.live:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn(f"[{index}/{total}] {check_id}"), BarColumn(),
                                      TextColumn("{task.description}"), TimeElapsedColumn(),
                                      console=self.console, transient=True)
            self._progress.start()
            self._task = self._progress.add_task("", total=None)
        else:
            self.console.print(f"[{index}/{total}] {check_id} ...")

    def check_progress(self, check_id: str, done: int, total: int | None, what: str) -> None:
        """Advance the live bar (rate-limited plain lines in CI)."""
        if self.quiet:
            return
        if self._progress is not None:
            self._progress.update(self._task, completed=done, total=total, description=what)
        elif time.monotonic() - self._last > 10:
            self._last = time.monotonic()
            of = f"/{total}" if total else ""
            self.console.print(f"    {check_id}: {what} {done}{of}")

    def check_finished(self, report: CheckReport) -> None:
        """One line with the check's status."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self.quiet:
            return
        st = report.status.value
        extra = ""
        if report.error:
            extra = f": {report.error}"
        elif report.skip_reason:
            extra = f": {report.skip_reason}"
        self.console.print(f"    {report.id}: [{STYLE[st]}]{st}[/] ({report.duration_s:.2f} s){extra}")


def summary_table(report: dict[str, Any]) -> Table:
    """The end-of-run table: check, status, headline metrics, gates."""
    t = Table(title=f"audit of {report['model']['path']}: {report['status'].upper()}", title_justify="left")
    t.add_column("check")
    t.add_column("status")
    t.add_column("metrics", overflow="fold")
    t.add_column("gates", overflow="fold")
    for c in report["checks"]:
        st = c["status"]
        if st == "error":
            metrics = c.get("error", "")
        elif st == "skipped":
            metrics = c.get("skip_reason", "")
        else:
            metrics = ", ".join(f"{k}={fmt_value(v)}" for k, v in scalar_metrics(c["metrics"])[:5])
        gates = "\n".join(f"[{STYLE[g['status']]}]{g['status']}[/] {g['message']}" for g in c["gates"])
        t.add_row(c["id"], f"[{STYLE[st]}]{st}[/]", metrics, gates)
    return t
