"""The reporter contract and atomic file writing."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from auditor.results import AuditReport


def stage(path: Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path`` (fsynced, ordinary permissions) and return it;
    :func:`commit` moves it into place. On failure nothing is left behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp creates 0600 files; a report is an ordinary file, readable as the umask allows
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Path(tmp)


def commit(tmp: Path, path: Path) -> None:
    """Move a file made by :func:`stage` to ``path`` in one step (readers see the old file or the new one)."""
    try:
        os.replace(tmp, path)
    except BaseException:
        discard(tmp)
        raise


def discard(tmp: Path) -> None:
    """Remove a staged file that will not be committed."""
    with contextlib.suppress(OSError):
        os.unlink(tmp)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one, never half of it
    (temporary file in the same folder, fsync, rename)."""
    commit(stage(path, text), Path(path))


def valid_filename(name: object) -> bool:
    """Whether a reporter's ``filename`` is a plain file name: it may not leave the report folder."""
    return (isinstance(name, str) and 0 < len(name) <= 255 and name not in (".", "..")
            and not name.startswith(".") and not any(c in name for c in "/\\\0:")
            and name == name.strip())


class Reporter:
    """A report format. ``format`` is its name in ``report.formats``; ``filename`` where it is written in the
    report folder. ``render`` gets the typed report (:class:`~auditor.results.AuditReport`; ``to_dict()`` is the
    JSON report, the source of truth) and returns the file's text; ``pm`` is the plugin manager, for formats
    that let plugins render their own checks. (A reporter written for the dict of earlier versions keeps
    working: ``report["checks"]`` and ``report.get(...)`` read the JSON form.)"""

    format: ClassVar[str] = ""
    filename: ClassVar[str] = ""

    def render(self, report: AuditReport, pm: Any = None) -> str:
        """The file's text."""
        raise NotImplementedError
