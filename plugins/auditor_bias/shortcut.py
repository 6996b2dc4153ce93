"""``bias.shortcut``: does the model lean on a cue it should not? Apply a declared counterfactual cue to every
input and count the predictions that change, where they go, and what happens to accuracy.

Geirhos et al., "Shortcut Learning in Deep Neural Networks" (Nature MI 2020) and Hermann et al., "On the
Foundations of Shortcut Learning" (ICLR 2024) define a shortcut as a feature that predicts the training label
but is not the intended one; intervening on the feature alone and watching the decision is the direct test.
With the cue ``T`` and top-1 predictions ``ŷ``:

- ``flip_rate = mean[ŷ(T(x)) ≠ ŷ(x)]``;
- ``flip_target_class`` = the mode of ``ŷ(T(x))`` over flipped rows, ``flip_target_share`` its share of flips;
- ``accuracy_change = acc(T(x)) − acc(x)``;
- with a bias-aligned / bias-conflicting column (Nam et al., "Learning from Failure", NeurIPS 2020):
  ``aligned_conflicting_gap = acc(aligned) − acc(conflicting)`` on the unchanged data.

Flipping a sensitive feature (``swap_feature``) is the counterfactual fairness test of Kusner et al.,
"Counterfactual Fairness" (NeurIPS 2017): ``flip_rate`` is the share of individuals whose decision depends on
the attribute alone.

Bias transformations as counterfactual views follow the catalogue's "Fighting Fire with Fire". The check shards
by rows: each shard returns its rows' raw outputs, unchanged and with the cue; what a cue
reads from the whole sample (swap_feature's two values, swap_groups' donors) is drawn once in the plan.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from auditor import AuditContext, CheckResult, Dataset, Finding, Need, SkipCheck, Task, param
from auditor.outputs import predictions_of
from auditor.perturb import ValueKind, input_space
from auditor.shards import Plan, RowShards, Shard, ShardedCheck, gather_rows, sampled_data
from auditor_bias._common import class_label, feature_index, find_class, missing_mask
from auditor_bias.transforms import TRANSFORMS, apply, swap_feature, transform_problems


def valid_ids(x: np.ndarray, bounds: tuple[float, float] | None) -> bool:
    """Whether every value of ``x`` is a whole number inside ``bounds`` (the valid ids)."""
    x = np.asarray(x)
    if not np.all(np.isfinite(x)) or not np.all(np.mod(x, 1) == 0):
        return False
    return bounds is None or bool(np.all((x >= bounds[0]) & (x <= bounds[1])))

_ALIGNED = {"aligned", "bias-aligned", "bias_aligned", "true", "yes", "1", "1.0"}
_CONFLICTING = {"conflicting", "bias-conflicting", "bias_conflicting", "false", "no", "0", "0.0"}


def aligned_flags(values: np.ndarray) -> np.ndarray:
    """1 for bias-aligned rows, 0 for bias-conflicting ones, -1 for missing or unreadable values.

    Numbers and booleans: non-zero is aligned. Strings: ``aligned``/``conflicting`` (or true/false, yes/no).
    """
    arr = np.asarray(values)
    out = np.full(len(arr), -1, dtype=np.int64)
    miss = missing_mask(arr)
    if arr.dtype.kind in "iufb":
        out[~miss] = (arr[~miss] != 0).astype(np.int64)
        return out
    text = np.array([str(v).strip().lower() for v in arr], dtype=object)
    out[np.isin(text, list(_ALIGNED)) & ~miss] = 1
    out[np.isin(text, list(_CONFLICTING)) & ~miss] = 0
    return out


def flip_stats(before: np.ndarray, after: np.ndarray, classes: list[int | str]) -> dict[str, Any]:
    """Flip rate and where the flips go (top-1 indices; -1 = no prediction), as the check's metrics."""
    flipped = before != after
    n_flip = int(flipped.sum())
    dest = np.bincount(np.where(after[flipped] < 0, len(classes), after[flipped]), minlength=len(classes) + 1)
    top = int(np.argmax(dest[:len(classes)]))
    return {"flip_rate": float(flipped.mean()) if len(before) else 0.0, "flips": n_flip,
            "flip_counts": {str(c): int(v) for c, v in zip(classes, dest)},
            "flip_target_class": classes[top] if n_flip else None,
            "flip_target_share": float(dest[top] / n_flip) if n_flip else None}


class Shortcut(ShardedCheck):
    """Flip rate, flip destination and accuracy change under a counterfactual cue; aligned/conflicting gap."""

    name = "bias.shortcut"

    class Params:
        transform: str | None = param(None, "The cue to apply (may be left out when only the aligned/conflicting gap "
                "is wanted).", choices=TRANSFORMS)
        pixels: list[Any] | None = param(None, "set_pixels: [[channel, row, col], ...]",
                schema={"type": ["array", "null"], "items": {"type": "array", "items": {"type": "integer"},
                                                             "minItems": 3, "maxItems": 3}})
        value: float | None = param(None, "set_pixels / set_feature: the value written; paste_patch: a constant patch "
                "value.")
        patch: list[Any] | None = param(None, "paste_patch: the patch, [h, w] or [C, h, w] (channel-first).")
        patch_size: list[int] | None = param(None, "paste_patch: [h, w] of a constant patch.", minimum=1)
        position: list[int] = param([0, 0], "paste_patch: [row, col] of the patch's top-left corner.", minimum=0)
        feature: int | str | None = param(None, "set_feature / swap_feature: input index or tabular column name.")
        values: list[float] | None = param(None, "swap_feature: the two values [a, b] exchanged (default: the "
                "feature's two values).")
        group: str | None = param(None, "swap_groups: the column whose groups are exchanged.")
        features: list[Any] | None = param(None, "swap_groups: input indices or column names that encode the group.")
        aligned: str | None = param(None, "Column marking bias-aligned (1/aligned) and bias-conflicting "
                "(0/conflicting) rows.")
        target_class: str | int | None = param(None, "The class the cue is expected to push towards (reports "
                "follow_rate).")
        max_flip_rate: float = param(0.1, "A warning finding above this flip rate.", minimum=0, maximum=1)
        max_gap: float = param(0.1, "A warning finding above this aligned − conflicting accuracy gap.",
                minimum=0, maximum=1)
        limit: int = param(2000, "At most this many rows (stratified, seeded sample).", minimum=1)

        def validate(self) -> list[str]:
            """A cue, an aligned column or both; each cue's own arguments."""
            if self.transform is None and self.aligned is None:
                return ["transform: declare a `transform`, an `aligned` column, or both"]
            return transform_problems(self)

    needs = frozenset({Need.DATA})
    metrics_doc = {
        "n": "rows used",
        "flip_rate": "share of rows whose top-1 prediction changes under the cue",
        "flips": "number of rows whose prediction changes",
        "flip_target_class": "the class most flips go to",
        "flip_target_share": "share of the flips that go to flip_target_class",
        "flip_counts": "{class: flips into it}",
        "follow_rate": "share of rows not predicted target_class before that are after the cue",
        "target_probability_change": "mean change of target_class probability under the cue",
        "accuracy_before": "accuracy on the unchanged rows (labels needed)",
        "accuracy_after": "accuracy on the changed rows",
        "accuracy_change": "accuracy_after − accuracy_before",
        "accuracy_aligned": "accuracy on bias-aligned rows (unchanged inputs)",
        "accuracy_conflicting": "accuracy on bias-conflicting rows",
        "aligned_conflicting_gap": "accuracy_aligned − accuracy_conflicting",
        "n_aligned": "bias-aligned rows", "n_conflicting": "bias-conflicting rows",
        "inputs_changed": "rows whose input the cue changed",
    }

    #: Rows per shard: each shard returns its rows' raw outputs, unchanged and with the cue (``rows × classes``).
    shards = RowShards(rows=1024)

    def plan(self, ctx: AuditContext, p: Params) -> Plan:
        """The seeded sample; what the cue reads from the whole sample (swap_feature's two values, the donors
        swap_groups draws); the aligned flags."""
        rows, data, notes = sampled_data(ctx, int(p.limit))
        state: dict[str, Any] = {"y": data.y, "n": data.n}
        if p.aligned is not None and data.y is None and p.transform is None:
            raise SkipCheck("the aligned/conflicting gap needs labels (data.y)")
        if p.aligned is not None:
            state["flags"] = aligned_flags(data.column(p.aligned))
        if p.transform in ("swap_feature", "swap_groups") and (p.transform == "swap_groups" or p.values is None):
            x = np.asarray(data.x)
            space = input_space(ctx.model, x, pixels=data.pixels)
            x0 = space.to_space(x) if space.pixels is not None else x
            if p.transform == "swap_feature":  # the feature's two values in the whole sample
                assert p.feature is not None  # transform_problems requires it
                column = np.asarray(x0).reshape(len(x), -1)[:, feature_index(p.feature, data)]
                state["values"] = swap_feature(column.reshape(-1, 1), 0, None)[1]
            else:  # every row's donor of another group, drawn over the whole sample
                swapped, desc = apply(str(p.transform), x0, p, data, ctx.model.layout, ctx.rng)
                state["swap"] = (desc, swapped.reshape(len(x), -1)[:, desc["features"]])
        return Plan(rows=rows, notes=notes, state=state)

    def run_shard(self, ctx: AuditContext, p: Params, plan: Plan, shard: Shard) -> Any:
        """The shard's raw outputs, unchanged and (with a cue) on its counterfactual inputs."""
        data = ctx.require_data()
        out: dict[str, Any] = {"clean": ctx.model.run(data.x, inputs=data.inputs)}
        if p.transform is None:
            return out
        x = np.asarray(data.x)
        space = input_space(ctx.model, x, pixels=data.pixels)
        notes: list[str] = []
        if space.pixels is not None:  # cues drawn on un-normalised pixels, normalised after
            x0_px = space.to_space(x)
            x_px, desc = self._cue(ctx, p, plan, shard, x0_px, data)
            # rows the cue left alone keep their exact inputs (no round trip through pixel space)
            moved = np.any((x_px != x0_px).reshape(len(x), -1), axis=1).reshape((-1,) + (1,) * (x.ndim - 1))
            x_cf = np.where(moved, space.from_space(x_px), x)
            notes.append(space.pixels.describe())
        else:
            x_cf, desc = self._cue(ctx, p, plan, shard, x, data)
        if space.kind is ValueKind.IDS and not valid_ids(x_cf, space.bounds):
            # a cue on token ids must itself be ids (e.g. set_feature to another token), never arithmetic
            space.require_arithmetic(f"transform {p.transform} (it gives values that are not valid ids)")
        if space.pixels is None:
            x_cf = x_cf.astype(x.dtype, copy=False) if space.kind is ValueKind.CONTINUOUS else \
                space.from_space(x_cf)
        changed = np.any((x_cf != x).reshape(len(x), -1), axis=1)
        return {**out, "cf": ctx.model.run(x_cf, inputs=ctx.companions(data=data)), "changed": changed,
                "desc": desc, "notes": notes}

    @staticmethod
    def _cue(ctx: AuditContext, p: Any, plan: Plan, shard: Shard, x: np.ndarray,
             data: Dataset) -> tuple[np.ndarray, dict[str, Any]]:
        """The cue on the shard's rows ``x``; swap_groups takes each row's donor values from the plan."""
        if "swap" in plan.state:
            desc, swapped = plan.state["swap"]
            out = np.array(x, copy=True)
            out.reshape(len(x), -1)[:, desc["features"]] = swapped[shard.start:shard.start + len(x)]
            return out, desc
        if "values" in plan.state:
            p = dataclasses.replace(p, values=plan.state["values"])
        return apply(str(p.transform), x, p, data, ctx.model.layout, ctx.rng)

    def merge(self, ctx: AuditContext, p: Params, plan: Plan, partials: Sequence[Any]) -> CheckResult:
        """Flip and accuracy figures from the gathered predictions."""
        st = plan.state
        got = gather_rows([{k: q[k] for k in ("clean", "cf", "changed") if k in q} for q in partials])
        pred0 = predictions_of(ctx.model, got["clean"], y=st["y"])
        if pred0.task != Task.CLASSIFICATION or pred0.probs is None or pred0.labels is None \
                or pred0.classes is None:
            raise SkipCheck("shortcut reliance needs a classifier")
        classes = [class_label(c) for c in pred0.classes]
        y = ctx.labels_for(st["y"], pred0) if st["y"] is not None else None
        lab0 = pred0.labels
        metrics: dict[str, Any] = {"n": st["n"]}
        notes = list(plan.notes)
        findings: list[Finding] = []
        if y is not None:
            known = y >= 0
            metrics["accuracy_before"] = float(np.mean(lab0[known] == y[known])) if known.any() else None

        if p.transform is not None:
            notes += partials[0]["notes"]
            changed = int(got["changed"].sum())
            notes.append(f"transform {p.transform} {partials[0]['desc']}; changed {changed} of {st['n']} inputs")
            probs1 = ctx.proba_of(got["cf"])  # the model's other inputs unchanged
            lab1 = np.where(np.all(np.isfinite(probs1), axis=1),
                            np.argmax(np.nan_to_num(probs1, nan=-1.0), axis=1), -1)
            fs = flip_stats(lab0, lab1, classes)
            metrics.update(fs, inputs_changed=changed)
            if p.target_class is not None:
                t = find_class(p.target_class, pred0.classes)
                was_not = lab0 != t
                metrics["follow_rate"] = float(np.mean(lab1[was_not] == t)) if was_not.any() else None
                metrics["target_probability_change"] = float(np.nanmean(probs1[:, t] - pred0.probs[:, t]))
            if y is not None and known.any():
                after = float(np.mean(lab1[known] == y[known]))
                metrics["accuracy_after"] = after
                metrics["accuracy_change"] = after - float(metrics["accuracy_before"])
            if fs["flip_rate"] > float(p.max_flip_rate):
                where = f" (mostly to class {metrics['flip_target_class']!r}, " \
                        f"{metrics['flip_target_share']:.0%} of flips)" if fs["flips"] else ""
                findings.append(Finding(
                    message=f"{p.transform} flips {fs['flip_rate']:.1%} of predictions{where}: the model "
                            "relies on this cue", severity="warn",
                    data={"flip_rate": fs["flip_rate"]}))

        if p.aligned is not None and y is None:  # with a cue (the plan skipped the check without one)
            notes.append("no labels (data.y): the aligned/conflicting gap is not computed")
        elif p.aligned is not None and y is not None:
            flags = st["flags"]
            hit = lab0 == y
            al, co = known & (flags == 1), known & (flags == 0)
            acc_al = float(hit[al].mean()) if al.any() else None
            acc_co = float(hit[co].mean()) if co.any() else None
            gap = acc_al - acc_co if acc_al is not None and acc_co is not None else None
            metrics.update(n_aligned=int(al.sum()), n_conflicting=int(co.sum()), accuracy_aligned=acc_al,
                           accuracy_conflicting=acc_co, aligned_conflicting_gap=gap)
            if gap is None:
                notes.append("the aligned column lacks aligned or conflicting rows: no gap")
            elif gap > float(p.max_gap):
                findings.append(Finding(
                    message=f"accuracy {acc_al:.1%} on bias-aligned rows but {acc_co:.1%} on bias-conflicting "
                            "ones: the model follows the bias", severity="warn", data={"gap": gap}))
            unread = int(np.sum(flags < 0))
            if unread:
                notes.append(f"{unread} rows with a missing or unreadable `{p.aligned}` value left out of the gap")
        return CheckResult(metrics=metrics, findings=findings, notes=notes)

