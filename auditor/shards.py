"""The sharding contract: how a check splits its rows so that one audit can run across many workers and still give
the same report as on one machine.

A data-parallel check subclasses :class:`ShardedCheck` (instead of :class:`~auditor.checks.Check`) and implements
three methods instead of ``run``:

- :meth:`ShardedCheck.plan` (on the driver, once): which rows of ``ctx.data`` to use (e.g. a seeded sample) and
  whatever every shard must agree on (an inferred value range, per-column statistics). Returns a :class:`Plan`,
  which must be picklable and small (no raw inputs).
- :meth:`ShardedCheck.run_shard` (on any worker, once per shard): ``ctx.data`` holds only the shard's rows and
  ``ctx.rng`` is the shard's own generator; returns a picklable *partial* (counts, sums, per-sample predictions
  or scores: ``n × classes`` at most, never the inputs themselves unless they are the check's result).
- :meth:`ShardedCheck.merge` (on the driver): the partials, in shard order, become the :class:`CheckResult`.

The shards are the rows of the plan in consecutive runs of :attr:`RowShards.rows` (the check's declaration,
``shards = RowShards(rows=512)``, or the spec's ``execution.shard_rows``); they depend on the spec only, never on
how many workers there are. The inherited :meth:`ShardedCheck.run` executes the same shards one after the other,
so a single-machine run and a distributed one compute the same numbers. A plan's rows may also be pairs (an
``(m, 2)`` array: each item two rows of the data, kept together in one shard).

Randomness inside ``run_shard`` should come from :meth:`Shard.random` (one stream per sample, keyed by the spec's
seed, the check's id and the sample's position in the plan: the report then does not depend on the shard size)
or from the plan; never from a worker's state. ``ctx.rng`` in a shard is the shard's own generator (seeded by
the shard's index): a check that draws from it gives the same report on one machine and on a cluster, but a
different one when ``execution.shard_rows`` changes the shards.

A check that does not subclass :class:`ShardedCheck` runs whole, on one worker.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from auditor.checks import Check
from auditor.rowrandom import RowRandom  # re-exported: the streams Shard.random hands out

__all__ = ["Plan", "PredictionShardedCheck", "RowRandom", "RowShards", "Shard", "ShardedCheck", "gather_rows",
           "params_for", "sampled_data", "sampled_rows", "shard_context", "shards_of", "summed"]

if TYPE_CHECKING:
    from auditor.context import AuditContext
    from auditor.data import Dataset
    from auditor.results import CheckResult


@dataclass(frozen=True)
class RowShards:
    """A check's declaration of how it shards: consecutive runs of ``rows`` rows of its plan."""

    rows: int = 512

    def __post_init__(self) -> None:
        if self.rows < 1:
            raise ValueError("RowShards.rows must be at least 1")

    def split(self, rows: np.ndarray) -> list[np.ndarray]:
        """The row indices of each shard, in order, ``rows`` items a shard (an item is a row, or a row of a
        2-D plan); an empty plan still has one empty shard, so that :meth:`ShardedCheck.merge` always receives
        at least one partial."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return [rows]
        return [rows[i:i + self.rows] for i in range(0, len(rows), self.rows)]


@dataclass(frozen=True)
class Plan:
    """What :meth:`ShardedCheck.plan` decides once: the rows of ``ctx.data`` to use (``None``: every row),
    notes for the report, and ``state`` that every shard and the merge receive (picklable, small)."""

    rows: np.ndarray | None = None
    state: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: Work that is not rows of the data: ``items`` work items (synthetic inputs, classes, ...), split by the
    #: check's own declaration (``execution.shard_rows`` does not apply); a shard's ``ctx.data`` is then the
    #: whole data set and its ``rows`` the item indices.
    items: int | None = None
    #: Work items a shard holds (default: the check's declaration), e.g. 1 where an item is a whole batch.
    items_per_shard: int | None = None

    def row_indices(self, n: int) -> np.ndarray:
        """The planned rows as indices into a data set of ``n`` rows (the item indices for a plan of items)."""
        if self.items is not None:
            return np.arange(self.items, dtype=np.int64)
        return np.arange(n, dtype=np.int64) if self.rows is None else np.asarray(self.rows, dtype=np.int64)


@dataclass(frozen=True)
class Shard:
    """One shard of a check: its index among ``count`` shards, its rows (indices into ``ctx.data``; ``(k, 2)``
    for a plan of pairs) and the position of its first item in the plan."""

    index: int
    count: int
    rows: np.ndarray
    start: int = 0
    #: The shard holds work items of the plan, not rows of the data (:attr:`Plan.items`).
    items: bool = False

    def seed(self, seed: int, check_id: str) -> list[int]:
        """The entropy of this shard's generator: the spec's seed, the check's id, the shard's index."""
        return [seed, zlib.crc32(check_id.encode()), 1 + self.index]

    @property
    def positions(self) -> np.ndarray:
        """The positions of this shard's items in the plan."""
        return np.arange(self.start, self.start + len(self.rows), dtype=np.int64)

    def random(self, ctx: AuditContext, *salt: int) -> RowRandom:
        """One random stream per item of this shard, keyed by the spec's seed, the check's id, the item's
        position in the plan (and ``salt``, to tell apart several uses): the same whatever the shard size."""
        return RowRandom.for_positions(ctx.seed, ctx.check_id, self.positions, *salt)


def params_for(cls: type[Check], ctx: AuditContext) -> Any:
    """What a check's ``plan``/``run_shard``/``merge`` receive: its typed ``Params`` instance (rebuilt from the
    validated ``with:`` values, as a worker does)."""
    return cls.build_params(ctx.params)


def shards_of(check: ShardedCheck, ctx: AuditContext, plan: Plan) -> list[Shard]:
    """The shards of ``plan`` for ``check`` on ``ctx.data`` (``ctx.shard_rows``, the spec's
    ``execution.shard_rows``, overrides the check's declared size)."""
    n = ctx.data.n if ctx.data is not None else 0
    how = check.shards if ctx.shard_rows is None or plan.items is not None else RowShards(rows=ctx.shard_rows)
    if plan.items is not None and plan.items_per_shard is not None:
        how = RowShards(rows=plan.items_per_shard)
    parts = how.split(plan.row_indices(n))
    starts = np.cumsum([0, *(len(p) for p in parts)])
    return [Shard(i, len(parts), rows, int(starts[i]), plan.items is not None) for i, rows in enumerate(parts)]


def shard_context(ctx: AuditContext, shard: Shard, data: Any = None) -> AuditContext:
    """``ctx`` narrowed to one shard: its rows as ``data`` (``data`` given: already the shard's rows, e.g.
    sent through an object store), its own generator, and a cache of its own (a shard's data object lives
    only as long as the shard, and the shared cache is keyed by object identity)."""
    from auditor.context import SharedCache

    if shard.items:
        data = ctx.data
    elif data is None:
        full = ctx.require_data()
        data = full.subset(np.asarray(shard.rows).reshape(-1))  # pairs: source, target, source, ...
    parent = ctx.progress

    def progress(done: int, total: int | None, what: str) -> None:
        if parent is not None:  # a check of one shard reports as an unsharded one would
            where = f"shard {shard.index + 1}/{shard.count}"
            parent(done, total, what if shard.count == 1 else f"{where}: {what}" if what else where)

    return dataclasses.replace(
        ctx, data=data, rng=np.random.default_rng(shard.seed(ctx.seed, ctx.check_id)), cache=SharedCache(),
        progress=progress,
    )


class ShardedCheck(Check):
    """A check that splits its rows into shards (see the module docstring for the contract).

    Subclasses implement :meth:`run_shard` and :meth:`merge`, and usually :meth:`plan`; ``run`` is inherited
    and runs every shard in order on this machine.
    """

    #: How the rows are split; the same on one machine and on a cluster.
    shards: ClassVar[RowShards] = RowShards()

    def plan(self, ctx: AuditContext, params: Any) -> Plan:
        """Decide the rows and shared state once (default: every row, no state)."""
        ctx.require_data()
        return Plan()

    def run_shard(self, ctx: AuditContext, params: Any, plan: Plan, shard: Shard) -> Any:
        """Compute this shard's partial result; ``ctx.data`` holds the shard's rows only."""
        raise NotImplementedError

    def merge(self, ctx: AuditContext, params: Any, plan: Plan, partials: Sequence[Any]) -> CheckResult:
        """Combine the partials (in shard order) into the check's result."""
        raise NotImplementedError

    def run(self, ctx: AuditContext, params: Any = None) -> CheckResult:
        """Plan, run every shard here in order, merge: exactly what a cluster does, on one machine."""
        params = params_for(type(self), ctx) if params is None else params
        plan = self.plan(ctx, params)
        partials = []
        for shard in shards_of(self, ctx, plan):
            ctx.check_cancelled()
            partials.append(self.run_shard(shard_context(ctx, shard), params, plan, shard))
        return self.merge(ctx, params, plan, partials)


def gather_rows(partials: Sequence[Any]) -> Any:
    """Per-row partials read as one pass over every row: arrays concatenated along their first axis in shard
    order, mappings gathered key by key (nested; the keys of the first partial), lists and tuples item by item.
    Empty partials (``{}`` or ``None``, e.g. a shard with no rows) are left out; with none left the result is
    ``{}``."""
    parts = [q for q in partials if q is not None and not (isinstance(q, Mapping) and not q)]
    if not parts:
        return {}
    if isinstance(parts[0], Mapping):
        return {k: gather_rows([q[k] for q in parts]) for k in parts[0]}
    if isinstance(parts[0], (list, tuple)):
        return [gather_rows([q[i] for q in parts]) for i in range(len(parts[0]))]
    return np.concatenate([np.asarray(q) for q in parts])


def summed(partials: Sequence[Any]) -> Any:
    """Partials that are sums or counts (numbers, arrays of one shape) added up in shard order: mappings key by
    key, lists and tuples item by item (nested), so a sum over the shards' rows is the sum over all rows."""
    first = partials[0]
    if isinstance(first, Mapping):
        return {k: summed([q[k] for q in partials]) for k in first}
    if isinstance(first, (list, tuple)):
        return [summed([q[i] for q in partials]) for i in range(len(first))]
    total = first
    for q in partials[1:]:
        total = total + q
    return total


def sampled_rows(ctx: AuditContext, limit: int | None) -> tuple[np.ndarray | None, list[str]]:
    """The rows a check audits when it takes at most ``limit`` of them: ``None`` (every row) or a seeded sample
    stratified by label (drawn from ``ctx.rng``, as :meth:`~auditor.context.AuditContext.sample` does), and the
    note that says which."""
    from auditor.data import sample_indices

    data = ctx.require_data()
    if limit is None or limit >= data.n:
        return None, [f"all {data.n} rows"]
    rows = sample_indices(data.n, limit, ctx.rng, data.y)
    how = "stratified by label" if data.y is not None else "uniform"
    return rows, [f"sampled {limit} of {data.n} rows ({how})"]


def sampled_data(ctx: AuditContext, limit: int | None) -> tuple[np.ndarray | None, Dataset, list[str]]:
    """What a plan that reads its sample needs: the rows :func:`sampled_rows` picks (``None``: every row), the
    sample itself (``ctx.data`` when every row is taken; a small sample of a lazy source is read now) and the
    note to report, none when every row is taken."""
    rows, notes = sampled_rows(ctx, limit)
    full = ctx.require_data()
    return (None, full, []) if rows is None else (rows, full.subset(rows), notes)


class PredictionShardedCheck(ShardedCheck):
    """A check whose only per-row work is the model's forward pass over the audit data (``ctx.predictions()``).

    The shards run that pass and return the raw audited outputs (``n × classes``); the merge reads them together
    exactly as one pass would, stores them as the audit's shared predictions, and calls :meth:`summarize`, which
    computes the result from ``ctx.predictions()`` like an unsharded ``run``. Making such a check shard is a change
    of base class and ``run`` renamed to ``summarize``. When an earlier check of the audit already holds the
    predictions, the plan has no rows and nothing runs again.
    """

    shards: ClassVar[RowShards] = RowShards(rows=4096)

    def plan(self, ctx: AuditContext, params: Any) -> Plan:
        """Every row, or none when the audit already holds the predictions."""
        data = ctx.require_data()
        if (id(ctx.model), id(data)) in ctx.cache.predictions:
            return Plan(rows=np.zeros(0, dtype=np.int64), state={"cached": True})
        return Plan()

    def run_shard(self, ctx: AuditContext, params: Any, plan: Plan, shard: Shard) -> Any:
        """The raw audited outputs on the shard's rows."""
        data = ctx.require_data()
        if not data.n:
            return {}
        done = [0]

        def step(k: int) -> None:
            done[0] += k
            ctx.report_progress(done[0], data.n, "inference")

        return ctx.model.run(data.x, inputs=data.inputs, progress=step)

    def merge(self, ctx: AuditContext, params: Any, plan: Plan, partials: Sequence[Any]) -> CheckResult:
        """The gathered outputs become the audit's predictions; then :meth:`summarize`."""
        from auditor.outputs import interpret

        data = ctx.require_data()
        raw = gather_rows(partials)
        if raw:
            model = ctx.model
            pred = interpret(raw, task=model.config.task, y=data.y,
                             zip_classes={z.output: z.classes for z in model.zipmaps.values()})
            with ctx.cache.lock:
                ctx.cache.predictions.setdefault((id(model), id(data)), pred)
        return self.summarize(ctx, params)

    def summarize(self, ctx: AuditContext, params: Any) -> CheckResult:
        """The check's result from ``ctx.predictions()`` (already computed). Override this."""
        raise NotImplementedError
