"""What the terminal shows during and after an audit.

- On a TTY, outside CI: a live display (rich) with a bar for the whole audit (checks done of all) and one for
  the running check (batches done of all, as the check reports them); each finished check leaves one line
  above the bars.
- In CI (``CI`` set to anything but ``""``, ``0``, ``false``, ``no``), when piped, or with ``TERM=dumb``:
  plain lines, no escape codes: one when a check starts, one when it ends, and in between a progress line at
  most every ``interval`` seconds (so that a long check shows it is alive without flooding the log).
- At the end: :func:`summary` (a table, or one block per check on a narrow terminal; lines break between
  words, never inside a number or a name).

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


def _rows(report: AuditReport) -> list[tuple[CheckReport, list[str], list[tuple[str, str]]]]:
    """Per check: its metric tokens (``name=value``; or its skip/error reason, word by word) and its detail
    lines as ``(style key, text)``: gates met, every gate not met, every warning or failing finding."""
    out = []
    for c in report.checks:
        st = c.status.value
        if st == "error":
            metrics = [f"error: {c.error or ''}"]
        elif st == "skipped":
            metrics = [f"skipped: {c.skip_reason or ''}"]
        else:
            metrics = [f"{k}={fmt_value(v)}" for k, v in headline(c, 5)]
        details: list[tuple[str, str]] = []
        if c.gates:
            details.append(("", f"{sum(g.status.value == 'pass' for g in c.gates)}/{len(c.gates)} met"))
        details += [(g.status.value, g.message) for g in c.gates if g.status.value != "pass"]
        # the reason for every warning: a check turned warn (or fail) by a finding says which
        details += [(str(f.severity), f.message) for f in c.findings if f.severity in ("warn", "fail")]
        out.append((c, metrics, details))
    return out


def _longest_word(texts: list[str]) -> int:
    return max((len(w) for t in texts for w in t.split()), default=0)


#: Columns' borders and padding of the summary table (5 columns: 3 characters each, one more at the edge).
_TABLE_CHROME = 16
#: Width of the status column (the longest status, ``skipped``).
_STATUS_W = 7


def summary(report: AuditReport, width: int) -> Any:
    """The end-of-run summary for a terminal ``width`` characters wide: :func:`summary_table` when every column
    can be at least as wide as its longest word, else one block per check (:func:`summary_blocks`). Either way
    lines break between words, never inside a name, a number or a path (a word longer than the whole line
    gets a line of its own)."""
    report = as_report(report)
    rows = _rows(report)
    ids = max((len(c.id) for c, _, _ in rows), default=5)
    times = max((len(f"{c.duration_s:.2f} s") for c, _, _ in rows), default=6)
    metric_w = max(_longest_word([", ".join(ms) for _, ms, _ in rows]), 10)  # the comma stays with its word
    detail_w = max(_longest_word([f"{sev} {d}" for _, _, ds in rows for sev, d in ds]), 12)
    need = ids + _STATUS_W + times + metric_w + detail_w + _TABLE_CHROME
    return summary_table(report, (ids, metric_w, detail_w)) if need <= width else summary_blocks(report, width)


def summary_blocks(report: AuditReport, width: int) -> Any:
    """The summary for a narrow terminal: per check a line with its mark, id, status and time, then its
    metrics (or its skip/error reason) and its gates and findings, wrapped at word boundaries."""
    import textwrap

    from rich.console import Group
    from rich.text import Text

    report = as_report(report)
    status = report.status.value
    lines: list[Text] = []

    def wrapped(text: str, indent: str, style: str = "") -> None:
        for ln in textwrap.wrap(text, width=max(width, 20), initial_indent=indent, subsequent_indent=indent + "  ",
                                break_long_words=False, break_on_hyphens=False):
            lines.append(Text(ln, style=style, no_wrap=True, overflow="ignore"))

    wrapped(f"audit of {report.model.get('path')}: {status.upper()}", "", f"bold {STYLE.get(status, '')}")

    for c, metrics, details in _rows(report):
        st = c.status.value
        head = Text(no_wrap=True, overflow="ignore")
        head.append(f"{MARK[st]} ")
        head.append(c.id, style="bold")
        head.append(" ")
        head.append(st, style=STYLE[st])
        head.append(f" {c.duration_s:.2f} s")
        lines.append(head)
        if metrics:
            wrapped(", ".join(metrics), "    ", STYLE[st] if st in ("error", "skipped") else "")
        for sev, text in details:
            wrapped(f"{sev} {text}" if sev else text, "    ", STYLE.get(sev, ""))
    counts = ", ".join(f"{v} {k}" for k, v in report.summary.items() if v)
    wrapped(f"{counts}; {gated_text(report)}", "")
    return Group(*lines)


def print_summary(console: Console, report: AuditReport) -> None:
    """Print :func:`summary` for ``console``'s width. Lines are not cropped: a word longer than the terminal
    (a path) is left whole for the terminal to fold, never cut."""
    console.print(summary(report, console.width), crop=False)


def _markup_safe(text: str) -> str:
    return text.replace("[", r"\[")


def summary_table(report: AuditReport, min_widths: tuple[int, int, int] = (0, 0, 0)) -> Table:
    """The end-of-run table: check, status, time, headline metrics (the gated ones first), and gates (those
    not met spelled out) and the finding behind every warning. ``min_widths`` keeps the check, metrics and
    gates columns at least that wide (:func:`summary` passes their longest words, so that rich wraps cells
    between words)."""
    report = as_report(report)
    status = report.status.value
    counts = ", ".join(f"{v} {k}" for k, v in report.summary.items() if v)
    t = Table(title=f"audit of {_markup_safe(str(report.model.get('path')))}: "
                    f"[{STYLE.get(status, '')}]{status.upper()}[/]", title_justify="left",
              caption=f"{counts}; {gated_text(report)}", caption_justify="left")
    t.add_column("check", min_width=min_widths[0] or None)
    t.add_column("status")
    t.add_column("time", justify="right", no_wrap=True)
    t.add_column("metrics", overflow="fold", min_width=min_widths[1] or None)
    t.add_column("gates, findings", overflow="fold", min_width=min_widths[2] or None)
    for c, metrics, details in _rows(report):
        st = c.status.value
        lines = [(f"[{STYLE[sev]}]{sev}[/] " if sev else "") + _markup_safe(text) for sev, text in details]
        t.add_row(_markup_safe(c.id), f"[{STYLE[st]}]{st}[/]", f"{c.duration_s:.2f} s",
                  _markup_safe(", ".join(metrics)), "\n".join(lines))
    return t
