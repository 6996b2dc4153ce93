"""Exceptions that the CLI turns into one-line messages and exit codes (pytest's habit, see DESIGN.md)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes of ``auditor``."""

    OK = 0
    GATE_FAILED = 1
    USAGE_ERROR = 2
    INTERNAL_ERROR = 3
    LOAD_ERROR = 4
    INTERRUPTED = 130
    """Ctrl-C or SIGTERM (the shells' 128 + SIGINT); a partial report marked ``interrupted`` is written."""


def short(text: str, limit: int = 80) -> str:
    """``text`` on one line, cut to about ``limit`` characters (an error about a huge value stays readable)."""
    one = " ".join(str(text).split())
    return one if len(one) <= limit else one[:limit] + f"… ({len(one) - limit} more characters)"


class AuditorError(Exception):
    """Base of every error the auditor reports to a user as one line, without a traceback."""

    exit_code: ExitCode = ExitCode.INTERNAL_ERROR


class SpecError(AuditorError):
    """The spec (or the command line) is wrong. Holds every problem found, each with its YAML path."""

    exit_code = ExitCode.USAGE_ERROR

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = list(problems)
        head = f"{source}: " if source else ""
        if len(self.problems) == 1:
            msg = head + self.problems[0]
        else:
            msg = head + f"{len(self.problems)} problems: " + "; ".join(self.problems)
        super().__init__(msg)


class ModelLoadError(AuditorError):
    """The model file is missing, unreadable, or cannot run in ONNX Runtime."""

    exit_code = ExitCode.LOAD_ERROR


class DataError(AuditorError):
    """The data file is missing, unreadable, or does not fit the model."""

    exit_code = ExitCode.LOAD_ERROR


class PluginLoadError(AuditorError):
    """A plugin could not be imported or registered; the run must stop (a missing check never passes)."""

    exit_code = ExitCode.LOAD_ERROR


class SkipCheck(Exception):
    """Raised by a check's ``run`` to be reported as ``skipped`` with the given reason."""


class CheckCancelled(Exception):
    """Raised inside a check when the runner cancelled it (timeout or Ctrl-C)."""
