"""Reports are written atomically: a failure mid-write leaves the previous file whole and no debris."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from auditor.report.base import write_atomic


def test_failed_write_keeps_the_old_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "report.json"
    write_atomic(target, '{"old": true}')

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, '{"new": true, "partial": ' + "x" * 10000)
    assert target.read_text() == '{"old": true}'
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_write_creates_folders(tmp_path: Path) -> None:
    write_atomic(tmp_path / "a" / "b" / "r.md", "hello")
    assert (tmp_path / "a" / "b" / "r.md").read_text() == "hello"


def test_reports_get_ordinary_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "r.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644
