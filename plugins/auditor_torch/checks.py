"""The checks of the ``torch`` plugin. This module does not import torch: each check reaches the backend
through ``ctx.backend("torch")`` (skipped with a reason when torch is absent) and imports the torch code
inside ``run``."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from auditor import AuditContext, Check, CheckResult, Dataset, Finding, ModelHandle, Need, SkipCheck, Task, param
from auditor.gallery import MAX_EXAMPLES, adversarial_gallery, class_names
from auditor.outputs import predictions_of
from auditor.shards import Plan, RowShards, Shard, ShardedCheck, gather_rows, sampled_rows, summed


def _limit() -> Any:
    """The ``limit`` field of the checks here (``limit: int = _limit()``)."""
    return param(500, "At most this many audit rows (a seeded sample, stratified by label).", minimum=1)


def _clip(v: Any, pixels: Any = None) -> tuple[float, float] | None:
    """A check's ``clip``: as declared, else [0, 1] where it works on un-normalised ``pixels`` (``data.pixels``),
    else none."""
    if v is None:
        return None if pixels is None else (0.0, 1.0)
    lo, hi = v
    return float(lo), float(hi)


def _space_note(pixels: Any, clip: list[float] | None, what: str) -> str:
    """The report's line saying which space ``what`` (budgets, distances) are in: with declared preprocessing
    (``data.pixels``) un-normalised pixels, normalised differentiably after, else the model's inputs."""
    if pixels is None:
        return f"{what} in units of the model's input values (no data.preprocess declared)"
    lo, hi = _clip(clip) or (0.0, 1.0)
    return (f"{what} in units of the un-normalised pixel range [0, 1] (data.preprocess), as in the papers: the "
            f"gradient is taken through the normalisation, pixels clipped to [{lo:g}, {hi:g}]")


class _TorchCheck(ShardedCheck):
    """A check of this plugin sharded by rows: its plan skips (with the reason) when the backend cannot be built
    or, for a gradient method, when no gradient reaches the model's input, and takes a seeded sample of
    ``params.limit`` rows stratified by label; the shards build the backend (cached per loaded model)."""

    shards = RowShards(rows=512)
    #: Whether the check differentiates its primary input (the model's other per-sample inputs pass unchanged).
    gradients = True

    def plan(self, ctx: AuditContext, params: Any) -> Plan:
        """The sample's rows, once the check can run."""
        self.ready(ctx)
        return Plan(rows=sampled_rows(ctx, int(params.limit))[0])

    def ready(self, ctx: AuditContext) -> None:
        """Skip, with the reason, where the check cannot run."""
        dt = ctx.model.input.dtype
        if self.gradients and dt is not None and dt.kind in "iub":  # token ids, uint8 pixels
            raise SkipCheck(f"model input '{ctx.model.input.name}' is {dt}: {self.name} needs a real-valued input "
                            f"that gradients reach (integer ids or pixels have none)")
        if "torch" not in ctx.backends:
            ctx.backend("torch")  # skips with the reason


# ============================================================================================== parity
class Parity(_TorchCheck):
    """Largest difference of the torch interpreter from ONNX Runtime on every output; fails beyond the tolerance.

    Batched the way ONNX Runtime runs the model; numpy's ``allclose`` rule (float32 logits in the thousands
    differ by more than 1e-4 while agreeing to float32 precision); integer outputs (labels) must be equal.
    Every gradient-based number of this plugin is only as good as this agreement.
    """

    name = "torch.parity"
    gradients = False

    class Params:
        limit: int = _limit()
        tol: float = param(1e-4, "Absolute tolerance atol of |torch − ort| <= atol + rtol·|ort|.", minimum=0)
        rtol: float = param(1e-5, "Relative tolerance rtol of |torch − ort| <= atol + rtol·|ort|.", minimum=0)

    needs = frozenset({Need.DATA})
    metrics_doc = {
        "max_abs_diff": "largest |torch − onnxruntime| over all elements of all compared outputs",
        "max_rel_diff": "max_abs_diff divided by the largest |onnxruntime output| (per output, the worst)",
        "mean_abs_diff": "mean |torch − onnxruntime| (audited output)",
        "violations": "elements with |torch − ort| > tol + rtol·|ort| (or unequal integers), all outputs",
        "outputs": "per compared output: max_abs_diff, max_rel_diff, violations, elements",
        "argmax_agreement": "share of samples with the same top class (audited output with ≥2 columns)",
        "nonfinite_mismatch": "elements finite in one runtime and not in the other",
        "n": "samples compared",
        "ops": "number of distinct op types interpreted",
    }

    def run_shard(self, ctx: AuditContext, params: Params, plan: Plan, shard: Shard) -> Any:
        """Run the shard's rows through both runtimes; every output's figures (and, for a quantized graph,
        the same against ONNX Runtime with its optimizations off)."""
        backend = ctx.backend("torch")
        data = ctx.require_data()
        atol, rtol = float(params.tol), _rtol(ctx.model, float(params.rtol))[0]
        h = ctx.model
        alias = {z.output: z.tensor for z in h.zipmaps.values()}
        names = list(dict.fromkeys([backend.output_name, *(alias.get(o, o) for o in h.outputs)]))
        others = ctx.companions(data=data)
        ort_out = h.run(data.x, names, inputs=others)
        numeric = [n for n in names if np.asarray(ort_out[n]).dtype.kind in "fiub"]
        notes = [f"torch backend on {backend.device}, tolerance |torch − ort| <= {atol:g} + {params.rtol:g}·|ort|",
                 *backend.notes]
        skipped = [n for n in names if n not in numeric]
        try:
            got = backend.forward_outputs(data.x, numeric, inputs=others)
        except Exception as exc:  # an output the interpreter cannot produce: compare the audited one alone
            got = backend.forward_outputs(data.x, [backend.output_name], inputs=others)
            skipped += [n for n in numeric if n != backend.output_name]
            notes.append(f"only '{backend.output_name}' compared: {type(exc).__name__}: {str(exc)[:200]}")
            numeric = [backend.output_name]
        if skipped:
            notes.append(f"not compared (not numeric, or not interpretable): {', '.join(skipped)}")
        mode, fixed = h.batching(data.x, others)
        if mode == "fixed":
            notes.append(f"fixed batch size {fixed}: both runtimes evaluated in chunks of {fixed}")
        ops = len({s.ctx.node.op_type for s in backend.module.steps})
        out: dict[str, Any] = {"n": data.n, "notes": notes, "ops": ops,
                               "outputs": _differences(ort_out, got, numeric, atol, rtol, backend.output_name)}
        if {n.op_type for n in h.proto.graph.node} & _QUANT_OPS:  # for the merge, if torch and ORT differ
            ref = _unoptimized(h, backend, data.x, numeric, others)
            out["reference"] = None if ref is None else _differences(ref, got, numeric, atol, rtol, "")
        o = np.asarray(ort_out[backend.output_name])
        if o.ndim == 2 and o.shape[1] >= 2:
            out["argmax_agree"] = o.argmax(1) == np.asarray(got[backend.output_name]).reshape(o.shape).argmax(1)
        return out

    def merge(self, ctx: AuditContext, params: Params, plan: Plan, partials: Sequence[Any]) -> CheckResult:
        """Every shard's figures combined (maxima, counts; the mean over the gathered differences)."""
        atol, (rtol_eff, rtol_note) = float(params.tol), _rtol(ctx.model, float(params.rtol))
        h = ctx.model
        notes = list(dict.fromkeys(n for q in partials for n in q["notes"])) + rtol_note
        compared = [n for n in partials[0]["outputs"] if all(n in q["outputs"] for q in partials)]
        per, max_abs, max_rel, violations, mismatch, mean_abs = _combine(
            [{k: q["outputs"][k] for k in compared} for q in partials])
        metrics: dict[str, Any] = {
            "max_abs_diff": max_abs,
            "max_rel_diff": max_rel,
            "mean_abs_diff": mean_abs,
            "violations": violations,
            "nonfinite_mismatch": mismatch,
            "n": sum(q["n"] for q in partials),
            "ops": partials[0]["ops"],
            "outputs": per,
        }
        quant_ops = sorted({n.op_type for n in h.proto.graph.node} & _QUANT_OPS)
        if violations and quant_ops and all(q.get("reference") is not None for q in partials):
            _, r_abs, _, r_viol, _, _ = _combine([{k: q["reference"][k] for k in compared} for q in partials])
            metrics["reference_max_abs_diff"], metrics["reference_violations"] = r_abs, r_viol
            head = (f"quantized graph ({', '.join(quant_ops)}): against ONNX Runtime with graph optimizations "
                    f"off, torch differs by at most {r_abs:.3g} ({r_viol} violations)")
            if r_viol == 0:
                notes.append(f"{head}: torch computes the graph as written; the {violations} violations are "
                             f"ONNX Runtime's fused integer kernels, which round differently")
            else:
                notes.append(f"{head}: ONNX Runtime's integer kernels differ from the exact integer arithmetic "
                             f"of the specification even unfused (its u8 x s8 products saturate on some CPUs); "
                             f"torch computes the exact values")
        if "argmax_agree" in partials[0]:
            metrics["argmax_agreement"] = float(np.mean(gather_rows([q["argmax_agree"] for q in partials])))
        findings = []
        if violations:
            worst = max(per, key=lambda k: per[k]["violations"])
            findings.append(Finding(message=f"torch and onnxruntime differ beyond {atol:g} + {rtol_eff:g}·|ort| on "
                                            f"{violations} element(s) (worst output '{worst}', max |diff| "
                                            f"{max_abs:.3g})", severity="fail",
                                    data={"max_abs_diff": max_abs, "violations": violations}))
        return CheckResult(metrics=metrics, findings=findings, notes=notes)


def _rtol(model: ModelHandle, rtol: float) -> tuple[float, list[str]]:
    """The relative tolerance used: ``rtol``, raised to the unit roundoff of the narrowest float type the graph
    computes in (float16 / bfloat16), with the note that says so."""
    from onnx import TensorProto

    g = model.proto.graph
    types = {t.name: t.data_type for t in g.initializer}
    kinds: set[int] = set()
    for n in g.node:
        if n.op_type == "Cast":
            kinds.update(int(a.i) for a in n.attribute if a.name == "to")
        else:  # a low-precision weight read by a compute op (not merely cast up to float first)
            kinds.update(types[i] for i in n.input if i in types)
    eps, low = next(((e, t) for k, e, t in ((TensorProto.BFLOAT16, 2.0 ** -8, "bfloat16"),
                                            (TensorProto.FLOAT16, 2.0 ** -11, "float16")) if k in kinds), (0.0, ""))
    if eps <= rtol:
        return rtol, []
    return eps, [f"the graph computes in {low}: rtol raised to its unit roundoff {eps:.3g} "
                 f"(two correct {low} evaluations differ by about one rounding)"]


_QUANT_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger",
                        "MatMulInteger", "QLinearConv", "QLinearMatMul"})


def _unoptimized(h: ModelHandle, backend: Any, x: Any, names: list[str],
                 others: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray] | None:
    """The outputs of an ONNX Runtime session with graph optimizations off (no fused integer kernels), batched
    like the backend; ``None`` when the names are not outputs of the model file."""
    import onnxruntime as ort

    if not set(names) <= {o.name for o in h.proto.graph.output}:
        return None
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(h.path), so, providers=["CPUExecutionProvider"])
        parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
        for xb, ob, n in backend.chunks_with(x, others):
            outs = sess.run(names, {**h.sample_feed(h.prepare(xb), ob), **h.feeds})
            for name, o in zip(names, outs):
                parts[name].append(h.batch_first(name, np.asarray(o))[:n])
    except Exception:
        return None
    return {k: np.concatenate(v) for k, v in parts.items()}


def _differences(ort_out: dict[str, Any], got: dict[str, np.ndarray], names: list[str], atol: float, rtol: float,
                 main: str) -> dict[str, dict[str, Any]]:
    """Per output, the figures of ``|t − o| <= atol + rtol·|o|`` (integers: equality) on some rows, as
    :func:`_combine` merges them: maxima and counts, and the audited output's differences row by row."""
    per: dict[str, dict[str, Any]] = {}
    for name in names:
        o = np.asarray(ort_out[name])
        t = np.asarray(got[name]).reshape(o.shape)
        if o.dtype.kind in "iub":
            per[name] = {"max_abs_diff": float(np.abs(o.astype(np.float64) - t.astype(np.float64)).max(initial=0.0)),
                         "violations": int(np.count_nonzero(o != t.astype(o.dtype))), "elements": int(o.size)}
            continue
        o64, t64 = o.astype(np.float64), t.astype(np.float64)
        fin_o, fin_t = np.isfinite(o64), np.isfinite(t64)
        mm = int((fin_o != fin_t).sum())
        both = fin_o & fin_t
        d = np.abs(t64 - o64)[both]
        bad = int(np.count_nonzero(d > atol + rtol * np.abs(o64[both]))) + mm
        bad += int(np.count_nonzero(~fin_o & ~fin_t & ~((o64 == t64) | (np.isnan(o64) & np.isnan(t64)))))
        per[name] = {"max_abs_diff": float(d.max()) if d.size else 0.0, "violations": bad, "elements": int(o.size),
                     "scale": float(np.abs(o64[both]).max()) if both.any() else 0.0, "mismatch": mm,
                     "diffs": d if name == main else None}
    return per


def _combine(parts: Sequence[dict[str, dict[str, Any]]]) -> tuple[dict[str, Any], float, float, int, int, float]:
    """Per-output and overall figures from the :func:`_differences` of consecutive runs of rows: what one
    comparison of all the rows gives (maxima and counts combine exactly; the mean is over the gathered
    differences, in row order)."""
    per: dict[str, Any] = {}
    max_abs = max_rel = 0.0
    violations = mismatch = 0
    mean_abs = 0.0
    for name in parts[0]:
        qs = [q[name] for q in parts]
        d_max = max(q["max_abs_diff"] for q in qs)
        bad, size = sum(q["violations"] for q in qs), sum(q["elements"] for q in qs)
        if "scale" not in qs[0]:  # integers
            per[name] = {"max_abs_diff": d_max, "max_rel_diff": None, "violations": bad, "elements": size}
            violations, max_abs = violations + bad, max(max_abs, d_max)
            continue
        mm, scale = sum(q["mismatch"] for q in qs), max(q["scale"] for q in qs)
        d_max = float("inf") if mm else d_max
        rel = d_max / scale if scale > 0 else (0.0 if d_max == 0 else float("inf"))
        per[name] = {"max_abs_diff": d_max, "max_rel_diff": rel, "violations": bad, "elements": size}
        violations, mismatch = violations + bad, mismatch + mm
        max_abs, max_rel = max(max_abs, d_max), max(max_rel, rel)
        if qs[0]["diffs"] is not None:
            d = gather_rows([q["diffs"] for q in qs])
            mean_abs = float(d.mean()) if len(d) else 0.0
    return per, max_abs, max_rel, violations, mismatch, mean_abs


# ============================================================================================== PGD
class Pgd(_TorchCheck):
    """White-box PGD/FGSM (L∞ or L2) at eps: success rate and robust accuracy, verified with ONNX Runtime.

    PGD after Madry et al. (2018), :func:`auditor_torch.attacks.pgd`; FGSM (Goodfellow et al. 2015) is one step
    of size ε. Cf. "A Boundary Tilting Perspective on the Phenomenon of Adversarial Examples".
    """

    name = "torch.pgd"

    class Params:
        eps: float = param(0.03, "Perturbation budget ε: in units of the pixel range [0, 1] when the data declares "
                "data.preprocess (8/255 is eight grey levels, as in the papers), else of the model's input.", minimum=0)
        norm: str = param("linf", "Threat model.", choices=["linf", "l2"])
        attack: str = param("pgd", "PGD, or FGSM (one step of size eps, no random start).", choices=["pgd", "fgsm"])
        steps: int = param(10, "PGD iterations.", minimum=1)
        step_size: float | None = param(None, "Step α (default 2.5·eps/steps).", minimum=0)
        restarts: int = param(1, "Random restarts.", minimum=1)
        random_start: bool = param(True, "Start at a random point of the ball.")
        clip: list[float] | None = param(None, "[low, high] valid input range (e.g. [0, 1] for images); none: "
                "unclipped, or [0, 1] in pixel units when the data declares data.preprocess.")
        limit: int = _limit()
        examples: int = param(4, "Adversarial examples shown in the HTML report's gallery (the first successes in "
                "sample order, stored small in report.json; 0: none).", minimum=0, maximum=MAX_EXAMPLES)

        def validate(self) -> list[str]:
            """A positive budget, a step no larger than the ball, a clip range that is a range."""
            out = [] if self.eps > 0 else ["eps: must be positive"]
            if self.step_size is not None and self.eps > 0 and self.step_size > 2 * self.eps:
                out.append(f"step_size: {self.step_size:g} is more than twice eps ({self.eps:g}) for norm "
                           f"{self.norm}: every step leaves the ball")
            if self.clip is not None and (len(self.clip) != 2 or not self.clip[0] < self.clip[1]):
                out.append(f"clip: must be [low, high] with low < high, got {self.clip}")
            return out

    needs = frozenset({Need.DATA, Need.LABELS, Need.GRADIENTS})
    metrics_doc = {
        "success_rate": "share of correctly classified samples whose adversarial example is misclassified (ORT)",
        "robust_accuracy": "share of samples correctly classified under attack (ORT)",
        "clean_accuracy": "accuracy without attack (ORT)",
        "n": "samples attacked (labels known)",
        "torch_ort_disagreement": "share of adversarial examples where torch and ORT disagree on correctness",
        "median_linf": "median L∞ norm of the successful perturbations (pixel units with data.preprocess)",
        "median_l2": "median L2 norm of the successful perturbations (pixel units with data.preprocess)",
    }

    def run_shard(self, ctx: AuditContext, params: Params, plan: Plan, shard: Shard) -> Any:
        """Attack the shard's labelled rows (random starts from each sample's own stream), then re-run the
        adversarial inputs through ONNX Runtime."""
        p = params
        backend = ctx.backend("torch")  # skips with a reason when torch is absent or cannot run the graph
        from auditor_torch.attacks import pgd, pixel_normaliser

        data = ctx.require_data()
        if data.n == 0:
            return {}
        y = ctx.labels(data)
        keep = y >= 0
        x, y = np.asarray(data.x)[keep], y[keep]
        if not len(y):
            return {}
        pixels = data.pixels
        others = ctx.companions(data=data, rows=keep)  # the other inputs pass through unchanged
        x_att = x if pixels is None else pixels.to_pixels(x)  # the attack's space: model inputs or pixels
        adv_att = pgd(backend, x_att, y, _attack_config(p, pixels), shard.random(ctx).rows(keep),
                      ctx.check_cancelled, inputs=others, to_model=pixel_normaliser(pixels, backend))
        adv = adv_att if pixels is None else pixels.from_pixels(adv_att)  # what ONNX Runtime is fed
        clean_p = ctx.predict_proba(x, data=data, rows=keep)
        adv_p = ctx.predict_proba(adv, data=data, rows=keep)
        clean_ok = clean_p.argmax(1) == y
        adv_ok = adv_p.argmax(1) == y
        torch_ok = _torch_probs(backend, adv, others).argmax(1) == y
        flat = (adv_att.astype(np.float64) - x_att.astype(np.float64)).reshape(len(x), -1)
        success = clean_ok & ~adv_ok
        every_row = (data.indices if data.indices is not None else shard.rows)[keep]
        show = np.flatnonzero(success)[:p.examples]  # the shard's first successes: the merge keeps the first k
        return {"clean_ok": clean_ok, "adv_ok": adv_ok, "torch_ok": torch_ok,
                "linf": np.abs(flat[success]).max(1) if success.any() else np.zeros(0),
                "l2": np.linalg.norm(flat[success], axis=1), "adv": adv[success], "rows": every_row[success],
                "show": {"x": x_att[show], "adv": adv_att[show], "y": y[show], "pred": clean_p[show].argmax(1),
                         "conf": clean_p[show].max(1), "pred_adv": adv_p[show].argmax(1),
                         "conf_adv": adv_p[show].max(1)}}

    def merge(self, ctx: AuditContext, params: Params, plan: Plan, partials: Sequence[Any]) -> CheckResult:
        """Success rate, robust accuracy and perturbation norms over every shard's samples."""
        got = gather_rows(partials)
        if not got:
            raise SkipCheck("no sample has a label the model knows")
        clean_ok, adv_ok, torch_ok, linf, l2 = (got[k] for k in ("clean_ok", "adv_ok", "torch_ok", "linf", "l2"))
        success = clean_ok & ~adv_ok
        metrics: dict[str, Any] = {
            "success_rate": float(success.sum() / clean_ok.sum()) if clean_ok.any() else 0.0,
            "robust_accuracy": float(np.mean(clean_ok & adv_ok)),
            "clean_accuracy": float(np.mean(clean_ok)),
            "n": len(clean_ok),
            "torch_ort_disagreement": float(np.mean(torch_ok != adv_ok)),
            "median_linf": float(np.median(linf)) if len(linf) else None,
            "median_l2": float(np.median(l2)) if len(l2) else None,
        }
        data = ctx.require_data()
        cfg = _attack_config(params, data.pixels)
        notes = [f"{params.attack} {params.norm} eps={cfg.eps:g}, steps={cfg.steps}, restarts={cfg.restarts}; "
                 f"every adversarial example re-evaluated with ONNX Runtime",
                 _space_note(data.pixels, params.clip, "eps, step_size, median_linf and median_l2")]
        findings = []
        if metrics["torch_ort_disagreement"] > 0:
            findings.append(Finding(message=f"torch and ONNX Runtime disagree on "
                                    f"{metrics['torch_ort_disagreement']:.1%} of adversarial examples "
                                    f"(counted as ONNX Runtime says)", severity="info"))
        k = params.examples
        show = {key: v[:k] for key, v in got["show"].items()}
        gallery = adversarial_gallery(
            show["x"], show["adv"], layout=ctx.model.layout, labels=show["y"], predicted=show["pred"],
            confidence=show["conf"], predicted_adv=show["pred_adv"], confidence_adv=show["conf_adv"],
            rows=got["rows"][:k], value_range=cfg.clip, classes=class_names(ctx.model, data),
            total=int(success.sum()), k=k, norms={params.norm: (linf if params.norm == "linf" else l2)[:k]},
            title=f"{params.attack.upper()} ({params.norm}, eps {cfg.eps:.4g}): adversarial examples (ONNX Runtime's "
                  f"predictions)", space="model input values" if data.pixels is None else "un-normalised pixels",
            channels=None if data.pixels is None else data.pixels.channels) \
            if len(show["x"]) else None
        artifacts = {"adversarial_examples": got["adv"], "rows": got["rows"]}
        return CheckResult(metrics=metrics, findings=findings, notes=notes, gallery=gallery, artifacts=artifacts)


def _attack_config(p: Any, pixels: Any) -> Any:
    """The PGD / FGSM settings of ``torch.pgd``'s parameters (FGSM: one step of size eps, no random start) in the
    attack's space (``pixels``: un-normalised pixels, clipped to [0, 1] by default)."""
    from auditor_torch.attacks import AttackConfig

    eps = float(p.eps)
    fgsm = p.attack == "fgsm"
    return AttackConfig(eps=eps, norm=p.norm, steps=1 if fgsm else int(p.steps),
                        step_size=eps if fgsm else p.step_size, restarts=1 if fgsm else int(p.restarts),
                        random_start=False if fgsm else bool(p.random_start), clip=_clip(p.clip, pixels))


def _torch_probs(backend: Any, x: np.ndarray, others: dict[str, np.ndarray] | None = None) -> np.ndarray:
    import torch

    parts = []
    with torch.no_grad():
        for xb, ob, n in backend.chunks_with(x, others):
            o, lg = backend.outputs(backend.tensor(xb), inputs=backend.companion_tensors(xb, ob))
            parts.append(backend.log_probs(o, lg).exp().cpu().numpy()[:n])
    return np.concatenate(parts)


# ============================================================================================== blind spots
class BlindSpots(_TorchCheck):
    """How close an input gets to an image of another class at constant confidence (blind spots).

    Level Set Traversal (Bansal et al., "Exploring Geometry of Blind Spots in Vision Models", NeurIPS 2023;
    :func:`auditor_torch.attacks.level_set_traversal`); the final points and the straight paths from the sources
    to them are re-evaluated with ONNX Runtime (the paper's star-like, linearly connected level sets).
    """

    name = "torch.blind_spots"

    class Params:
        limit: int = param(32, "Source/target pairs (sampled).", minimum=1)
        steps: int = param(200, "Traversal iterations.", minimum=1)
        step_size: float = param(0.05, "η: fraction of the orthogonal component of (target − x) taken per step.",
                minimum=0, maximum=1)
        tolerance: float = param(0.05, "Allowed drop of the source-class confidence.", minimum=0, maximum=1)
        close: float = param(0.2, "A pair is a blind spot when its relative distance is at most this.", minimum=0)
        path_points: int = param(8, "Points checked on the straight path from source to the final point.", minimum=2)
        clip: list[float] | None = param(None, "[low, high] valid input range (none: unclipped, or [0, 1] in pixel "
                "units when the data declares data.preprocess).")

    needs = frozenset({Need.DATA, Need.GRADIENTS})
    metrics_doc = {
        "mean_relative_distance": "mean ‖x_final − x_target‖ / ‖x_source − x_target‖",
        "median_relative_distance": "median of the same",
        "kept_prediction_rate": "share of final points ORT still assigns to the source's class",
        "mean_confidence_drop": "mean source-class confidence at the source minus at the final point (ORT)",
        "path_min_confidence": "mean over pairs of the lowest source-class confidence on the straight path (ORT)",
        "blind_spot_rate": "share of pairs ending within `close` relative distance with prediction kept and "
                           "confidence within tolerance",
        "n_pairs": "pairs traversed",
    }

    #: Pairs per shard (a plan of pairs: each item is a source row and a target row).
    shards = RowShards(rows=256)

    def plan(self, ctx: AuditContext, params: Params) -> Plan:
        """Pair sources with targets of another predicted class (the data's predictions, on the driver)."""
        p = params
        self.ready(ctx)
        data = ctx.require_data()
        probs = ctx.predictions(data).probs  # streamed batch by batch (and shared): the shards read their pairs
        if probs is None:
            raise SkipCheck("the model is not a classifier")
        pred = probs.argmax(1)
        if len(np.unique(pred)) < 2:
            raise SkipCheck("the model predicts a single class on the data: no target of another class")
        k = min(int(p.limit), data.n)
        src_idx = ctx.rng.choice(data.n, size=k, replace=False)
        tgt_idx = np.empty(k, dtype=np.int64)
        for i, s in enumerate(src_idx):  # picking indices only; the model runs batched in the shards
            others = np.flatnonzero(pred != pred[s])
            tgt_idx[i] = others[ctx.rng.integers(len(others))]
        cls = pred[src_idx]
        return Plan(rows=np.stack([src_idx, tgt_idx], axis=1), state={"cls": cls, "p_src": probs[src_idx, cls]})

    def run_shard(self, ctx: AuditContext, params: Params, plan: Plan, shard: Shard) -> Any:
        """Traverse the shard's pairs (its data holds source, target, source, ... rows), batched, and read the
        final points and the straight paths through ONNX Runtime."""
        p = params
        backend = ctx.backend("torch")
        from auditor_torch.attacks import level_set_traversal, pixel_normaliser

        data = ctx.require_data()
        x = np.asarray(data.x)
        xs, xt = x[0::2], x[1::2]
        src_rows = np.arange(0, data.n, 2)  # the sources' rows of the shard's data: their other inputs
        k = len(xs)
        if not k:
            return {}
        cls, p_src = plan.state["cls"][shard.positions], plan.state["p_src"][shard.positions]
        # a traversal keeps the source's other inputs (its mask, its state) all the way
        held = ctx.companions(data=data, rows=src_rows)
        pixels = data.pixels
        if pixels is not None:  # traverse un-normalised pixels: distances and clipping in pixel units
            xs, xt = pixels.to_pixels(xs), pixels.to_pixels(xt)
        xf = level_set_traversal(backend, xs, xt, cls, steps=int(p.steps), step_size=float(p.step_size),
                                 tolerance=float(p.tolerance), clip=_clip(p.clip, pixels), check=ctx.check_cancelled,
                                 inputs=held, to_model=pixel_normaliser(pixels, backend))
        model_in = np.asarray if pixels is None else pixels.from_pixels  # ONNX Runtime's inputs
        d0 = np.linalg.norm((xs - xt).reshape(k, -1).astype(np.float64), axis=1)
        d1 = np.linalg.norm((xf - xt).reshape(k, -1).astype(np.float64), axis=1)
        pf = ctx.predict_proba(model_in(xf), data=data, rows=src_rows)
        ts = np.linspace(0.0, 1.0, int(p.path_points))
        path = np.concatenate([xs + t * (xf - xs) for t in ts]).astype(xs.dtype)
        pp = ctx.predict_proba(model_in(path), data=data, rows=src_rows, repeat=len(ts))[:, :].reshape(
            len(ts), k, -1)[:, np.arange(k), cls]
        return {"rel": d1 / np.maximum(d0, 1e-12), "kept": pf.argmax(1) == cls,
                "drop": p_src - pf[np.arange(k), cls], "path_min": pp.min(axis=0)}

    def merge(self, ctx: AuditContext, params: Params, plan: Plan, partials: Sequence[Any]) -> CheckResult:
        """Distances, kept predictions and confidence drops over every shard's pairs."""
        p = params
        got = gather_rows(partials)
        rel, kept, drop, path_min = (got[key] for key in ("rel", "kept", "drop", "path_min"))
        k = len(rel)
        tol = float(p.tolerance)
        blind = (rel <= float(p.close)) & kept & (drop <= tol + 1e-6)
        metrics = {
            "mean_relative_distance": float(rel.mean()),
            "median_relative_distance": float(np.median(rel)),
            "kept_prediction_rate": float(kept.mean()),
            "mean_confidence_drop": float(drop.mean()),
            "path_min_confidence": float(path_min.mean()),
            "blind_spot_rate": float(blind.mean()),
            "n_pairs": int(k),
        }
        findings = []
        if blind.any():
            findings.append(Finding(message=f"{int(blind.sum())} of {k} inputs moved within {p.close:g} of "
                                    f"an image of another class keeping prediction and confidence",
                                    severity="info"))
        pairs = np.asarray(plan.rows)
        artifacts = {"source_index": pairs[:, 0].tolist(), "target_index": pairs[:, 1].tolist(),
                     "relative_distance": rel.tolist()}
        return CheckResult(metrics=metrics, findings=findings, artifacts=artifacts,
                           notes=[f"{p.steps} steps of size {p.step_size:g}; confidence of the source's "
                                  f"predicted class", _space_note(ctx.require_data().pixels, p.clip, "distances")])


# ============================================================================================== gradients
class InputGradients(_TorchCheck):
    """Removal test (DiffROAR-style): does removing the top input-gradient features hurt more than the bottom ones?

    After Shah, Jain & Netrapalli, "Do Input Gradients Highlight Discriminative Features?" (NeurIPS 2021): the
    top-, bottom- and random-k coordinates by ``|∂ score_y / ∂x|`` take ``fill`` (the sample's per-coordinate mean,
    or zero) and ONNX Runtime re-measures the accuracy; no retraining, unlike ROAR: this audits the shipped model.
    ``diff_roar > 0`` when the gradient ranks discriminative coordinates first (the paper's assumption (A)).
    """

    name = "torch.input_gradients"

    class Params:
        fractions: list[float] = param([0.1, 0.25, 0.5], "Fractions of input coordinates removed.",
                minimum=0, maximum=1)
        fill: str = param("mean", "Value a removed coordinate takes.", choices=["mean", "zero"])
        of: str = param("logit", "Score whose gradient is the attribution.", choices=["logit", "prob", "loss"])
        limit: int = _limit()

    needs = frozenset({Need.DATA, Need.LABELS, Need.GRADIENTS})
    metrics_doc = {
        "clean_accuracy": "accuracy on the sample (ORT)",
        "acc_top_removed": "accuracy with the top-k attributed coordinates removed, per fraction",
        "acc_bottom_removed": "accuracy with the bottom-k coordinates removed, per fraction",
        "acc_random_removed": "accuracy with k random coordinates removed, per fraction",
        "diff_roar": "acc_bottom_removed − acc_top_removed per fraction",
        "diff_roar_mean": "mean of diff_roar over the fractions",
        "fractions": "the fractions, in order",
    }

    def plan(self, ctx: AuditContext, params: Params) -> Plan:
        """The seeded sample's rows with a label the model knows (their class columns) and the fill value (the
        mean over those rows, gathered batch by batch, for ``fill: mean``)."""
        rows = super().plan(ctx, params).rows
        full = ctx.require_data()
        sample = full if rows is None else full.subset(rows)
        y = ctx.labels(sample)
        keep = np.flatnonzero(y >= 0)
        if not len(keep):
            raise SkipCheck("no sample has a label the model knows")
        as_rows = np.arange(full.n) if rows is None else np.asarray(rows)
        fill = None
        if params.fill == "mean":
            total = np.zeros(int(np.prod(full.x.shape[1:])), np.float64)
            for i in range(0, len(keep), full.batch_size):
                part = np.asarray(full.x[as_rows[keep[i:i + full.batch_size]]])
                total += part.reshape(len(part), -1).astype(np.float64).sum(axis=0)
            fill = total / len(keep)
        return Plan(rows=as_rows[keep], state={"y": y[keep], "fill": fill})

    def run_shard(self, ctx: AuditContext, params: Params, plan: Plan, shard: Shard) -> Any:
        """Attributions in one batched backward pass per batch; the random order from each sample's own
        stream; correct predictions of every masked set (ONNX Runtime) counted."""
        p = params
        backend = ctx.backend("torch")
        data = ctx.require_data()
        x, y = np.asarray(data.x), plan.state["y"][shard.positions]
        n = len(y)
        flat = x.reshape(n, -1)
        d = flat.shape[1]
        others = ctx.companions(data=data)  # the other inputs pass through unchanged
        a = np.abs(backend.input_gradients(x, y, of=p.of, inputs=others).reshape(n, -1))
        order = np.argsort(-a, axis=1, kind="stable")  # most attributed first
        rand_order = np.argsort(shard.random(ctx).random((n, d)), axis=1)
        fill = plan.state["fill"]
        fill_row = np.zeros(d, dtype=flat.dtype) if fill is None else fill.astype(flat.dtype)
        fill_full = np.broadcast_to(fill_row, flat.shape)
        rows = np.arange(n)[:, None]

        def correct_without(idx: np.ndarray) -> int:
            xm = flat.copy()
            xm[rows, idx] = fill_full[rows, idx]
            return int(np.sum(ctx.predict_proba(xm.reshape(x.shape), data=data).argmax(1) == y))

        top, bottom, rnd = [], [], []
        for f in p.fractions:
            ctx.check_cancelled()
            k = round(float(f) * d)
            top.append(correct_without(order[:, :k]))
            bottom.append(correct_without(order[:, d - k:] if k else order[:, :0]))
            rnd.append(correct_without(rand_order[:, :k]))
        return {"n": n, "clean": int(np.sum(ctx.predict_proba(x, data=data).argmax(1) == y)), "top": top,
                "bottom": bottom,
                "random": rnd}

    def merge(self, ctx: AuditContext, params: Params, plan: Plan, partials: Sequence[Any]) -> CheckResult:
        """Accuracies without the most-, least- and randomly-attributed inputs over every shard's rows."""
        p = params
        total = summed(partials)
        n = total["n"]
        top, bottom, rnd = ([float(c / n) for c in total[key]] for key in ("top", "bottom", "random"))
        diff = [b - t for b, t in zip(bottom, top)]
        fr = [float(f) for f in p.fractions]
        metrics = {
            "clean_accuracy": float(total["clean"] / n),
            "acc_top_removed": top, "acc_bottom_removed": bottom, "acc_random_removed": rnd,
            "diff_roar": diff, "diff_roar_mean": float(np.mean(diff)) if diff else 0.0, "fractions": fr,
        }
        findings = []
        if diff and np.mean(diff) <= 0:
            findings.append(Finding(message="removing the most-attributed inputs hurts no more than removing the "
                                    "least-attributed: input gradients do not highlight discriminative features",
                                    severity="warn"))
        return CheckResult(metrics=metrics, findings=findings,
                           notes=[f"attribution |d {p.of} / dx| of the true class; fill={p.fill}"])


# ============================================================================================== retrain
class Retrain(Check):
    """Retrain under backprop / feedback alignment / DFA / DTP with SGD / Adam / SAM; accuracy gap to backprop.

    The rules, optimizers and their sources are in :mod:`auditor_torch.training`; each retrained model is written
    back into a copy of the ONNX graph and evaluated with ONNX Runtime on ``data:``, ``gap_to_backprop`` against
    backprop with the same optimizer, feature rank and dead units of the penultimate features.
    """

    name = "torch.retrain"

    class Params:
        rules: list[str] = param(["backprop", "feedback_alignment"], "Training rules.",
                schema={"type": "array", "items": {"enum": ["backprop", "feedback_alignment",
                                                          "direct_feedback_alignment",
                                                          "difference_target_propagation"]},
                      "default": ["backprop", "feedback_alignment"], "description": "Training rules."})
        optimizers: list[str] = param(["sgd"], "Optimizers (each rule is trained with each).",
                schema={"type": "array", "items": {"enum": ["sgd", "adam", "sam"]}, "default": ["sgd"],
                      "description": "Optimizers (each rule is trained with each)."})
        reinit: bool = param(False, "Train from re-initialised weights (true) or fine-tune the shipped ones (false).")
        epochs: int = param(5, "Training epochs.", minimum=1)
        batch_size: int = param(64, "Mini-batch size.", minimum=1)
        lr: float | None = param(None, "Learning rate (default: 0.05 for SGD and SAM, 0.001 for Adam).", minimum=0)
        momentum: float = param(0.9, "SGD/SAM momentum.", minimum=0, maximum=1)
        rho: float = param(0.05, "SAM neighbourhood radius ρ.", minimum=0)
        limit: int = param(5000, "At most this many training rows (and audit rows for evaluation), sampled.", minimum=1)
        save_dir: str | None = param(None, "Folder for the retrained .onnx models (default: <report "
                "dir>/artifacts/<check id>).")

    needs = frozenset({Need.DATA, Need.LABELS, Need.TRAIN_DATA})
    run_on_baseline = False
    metrics_doc = {
        "runs": "per rule, per optimizer: accuracy, gap_to_backprop, feature_rank, dead_units, dead_fraction, "
                "loss and train_accuracy curves, model_path; or status 'not applicable' with the reason",
        "original": "accuracy, feature_rank, dead_units of the audited model",
        "max_gap_to_backprop": "largest gap_to_backprop over the applicable non-backprop runs",
    }

    def run(self, ctx: AuditContext, p: Params) -> CheckResult:
        """Train each (rule, optimizer) on a copy of the interpreted graph, write it back, evaluate with ORT."""
        backend = ctx.backend("torch")
        from auditor_torch.export import write_model
        from auditor_torch.training import NotApplicable, TrainConfig, train

        if ctx.train_data is None:
            raise SkipCheck("the spec has no train_data: section")
        limit = int(p.limit)
        train_set = ctx.sample(limit, ctx.train_data)
        ytr = ctx.labels(train_set)
        if not (ytr >= 0).all():  # the labelled rows (a subset of a large sample stays a lazy source)
            train_set, ytr = train_set.subset(np.flatnonzero(ytr >= 0)), ytr[ytr >= 0]
        others = ctx.companions(data=train_set)  # the other inputs of the training rows, fed as given
        eval_set = ctx.sample(limit)
        yev = ctx.labels(eval_set)
        if ctx.predictions().task != Task.CLASSIFICATION:
            raise SkipCheck("retraining supports classifiers")
        save = Path(p.save_dir) if p.save_dir else ctx.artifact_path("retrained")
        rules = list(dict.fromkeys(p.rules))
        optimizers = list(dict.fromkeys(p.optimizers))
        if "backprop" not in rules:
            rules.insert(0, "backprop")  # the reference every gap is measured against
        seed = int(ctx.rng.integers(0, 2**31 - 1))
        original = _evaluate(ctx.model, eval_set, yev)
        runs: dict[str, dict[str, Any]] = {}
        notes: list[str] = [f"trained on {len(ytr)} rows of train_data, evaluated on {eval_set.n} rows of data; "
                            f"{'re-initialised' if p.reinit else 'fine-tuned from the shipped'} weights"]
        artifacts: dict[str, Any] = {"models": {}}
        total = len(rules) * len(optimizers)
        done = 0
        for rule in rules:
            runs[rule] = {}
            for opt in optimizers:
                ctx.check_cancelled()
                cfg = TrainConfig(rule=rule, optimizer=opt, epochs=p.epochs, batch_size=p.batch_size, lr=p.lr,
                                  momentum=float(p.momentum), rho=float(p.rho), reinit=p.reinit, seed=seed)
                module = backend.build_module()
                try:
                    res = train(module, backend, train_set.x, ytr, cfg, backend.device, ctx.check_cancelled,
                                inputs=others)
                except NotApplicable as exc:
                    runs[rule][opt] = {"status": "not applicable", "reason": str(exc)}
                    notes.append(f"{rule}: not applicable ({exc})")
                    continue
                values = {name: t.detach().cpu().numpy() for name, t in module.named_onnx_parameters().items()}
                values.update({module.buffer_names[k]: b.detach().cpu().numpy()
                               for k, b in module.named_buffers() if k in module.buffer_names
                               and b.is_floating_point()})
                path = write_model(ctx.model, values, save / f"{ctx.model.path.stem}.{rule}.{opt}.onnx")
                handle = ModelHandle(dataclasses.replace(ctx.model.config, path=path),
                                     batch_size=ctx.model.batch_size, role="retrained")
                ev = _evaluate(handle, eval_set, yev)
                runs[rule][opt] = {"status": "ok", **ev, "loss": res.loss, "train_accuracy": res.train_accuracy,
                                   "model_path": str(path)}
                artifacts["models"][f"{rule}/{opt}"] = str(path)
                notes.extend(f"{rule}/{opt}: {n}" for n in res.notes)
                done += 1
                ctx.report_progress(done, total, f"{rule}/{opt}")
        gaps = []
        for rule, per in runs.items():
            for opt, r in per.items():
                ref = runs["backprop"].get(opt, {})
                if r.get("status") == "ok" and ref.get("status") == "ok":
                    r["gap_to_backprop"] = float(ref["accuracy"] - r["accuracy"])
                    if rule != "backprop":
                        gaps.append(r["gap_to_backprop"])
        metrics = {"runs": runs, "original": original,
                   "max_gap_to_backprop": float(max(gaps)) if gaps else None}
        return CheckResult(metrics=metrics, notes=notes, artifacts=artifacts)


def _evaluate(handle: ModelHandle, data: Dataset, y: np.ndarray) -> dict[str, Any]:
    """Accuracy (ONNX Runtime), feature rank and dead units of the penultimate features of a model."""
    from auditor_torch.export import dead_units, feature_rank

    x = data.x  # read batch by batch by ONNX Runtime's runs
    companions = data.companions()  # the model's other per-sample inputs (none for one input)
    raw = handle.run(x, inputs=companions)
    pred = predictions_of(handle, raw, y=data.y)
    known = y >= 0
    assert pred.labels is not None
    out: dict[str, Any] = {"accuracy": float(np.mean(pred.labels[known] == y[known]))}
    pen = handle.penultimate()
    if pen is not None:
        feats = handle.run(x, [pen], inputs=companions)[pen]
        dead, total = dead_units(feats)
        out.update(feature_rank=feature_rank(feats), dead_units=dead, units=total,
                   dead_fraction=dead / total if total else 0.0)
    return out
