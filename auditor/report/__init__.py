"""Report formats. JSON is the source of truth; the others are renderings of the same dict."""

from auditor.report.base import Reporter, write_atomic

__all__ = ["Reporter", "write_atomic"]
