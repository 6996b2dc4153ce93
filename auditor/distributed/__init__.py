"""Scale-out: one audit's checks and shards run on a Ray cluster (``auditor run SPEC --ray``, or the spec's
``execution:`` key) and give the report a single machine gives. See docs/ray.md.

Importing this package does not import Ray; :mod:`auditor.distributed.engine` does, and only the Ray engine
imports that.
"""

from auditor.distributed.config import ExecutionConfig, parse_execution

__all__ = ["ExecutionConfig", "parse_execution"]
