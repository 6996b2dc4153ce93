"""The core's own report formats, registered through the same hook a plugin would use."""

from __future__ import annotations

import pluggy

from auditor.report.base import Reporter
from auditor.report.html import HtmlReporter
from auditor.report.json_report import JsonReporter
from auditor.report.junit import JUnitReporter
from auditor.report.markdown import MarkdownReporter
from auditor.report.sarif import SarifReporter

hookimpl = pluggy.HookimplMarker("auditor")


@hookimpl
def auditor_register_reporters() -> list[type[Reporter]]:
    """JSON, Markdown, JUnit XML, HTML (plots need the ``html`` extra, matplotlib) and SARIF 2.1.0."""
    return [JsonReporter, MarkdownReporter, JUnitReporter, HtmlReporter, SarifReporter]
