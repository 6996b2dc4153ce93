"""``sparsity.conditioning``: singular-value profile of every weight matrix, a Lipschitz upper bound, and the
spread of the classifier's per-class weight norms.

Conv kernels are reshaped to ``out × in·kh·kw`` (per group: a grouped conv is block diagonal, its spectrum the
union of the groups'). Per matrix: ``spectral_norm`` σ_max, ``sigma_min`` (the ``min(m, n)``-th singular
value), ``condition_number`` σ_max/σ_min (Lipschitz Constant Meets Condition Number, which relates both to
robustness), ``effective_rank`` exp(H(σ/Σσ)) (Roy & Vetterli 2007), ``rank_90`` / ``rank_99`` the smallest rank
keeping 90 / 99 % of Σσ² (Trained Rank Pruning, Xu et al. 2019), and ``numerical_rank``.

``spectral_norm_product`` = Π σ_max(W_l) over the layers (a summary, not a bound). ``lipschitz_upper_bound`` is
reported only where the graph from the data input to the audited output is a chain (see
:mod:`auditor_sparsity.lipschitz`): the product of each linear layer's operator-norm bound (a conv's σ_max times
√(kh·kw), since ``||conv_W||_2 <= √(kh·kw) ||reshape(W)||_2``, Singla & Feizi, "Fantastic Four", ICLR 2021) and
the Lipschitz factor of every other op on the chain (Szegedy et al. 2014). A residual addition, a
concatenation, attention, a data-dependent normalisation or a quantizer on the way makes it ``null``, with the
node that prevents it named in the notes.

Class weight imbalance: the L2 norm of each class's weights in the classifier head and their spread
(``class_norm_ratio`` max/min, ``class_norm_cv`` std/mean), the bias that weight aligning corrects (Zhao et al.,
"Maintaining Discrimination and Fairness in Class Incremental Learning", CVPR 2020).

Precision: blocks with ``min(m, n) <= exact_max_dim`` use LAPACK's SVD; larger ones a certified low-rank
projection where the matrix is numerically low-rank, else the float64 Gram eigenvalues, else (too
ill-conditioned for those at ``max_rel_error``) the SVD; each per matrix with its stated error
(``rel_error_bound`` above the numerical-rank tolerance, ``abs_error_bound`` on every value; see
:mod:`auditor_sparsity.spectral`). The Lipschitz bound uses σ_max rounded up by its error. Weights only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from auditor import AuditContext, Check, CheckResult, Finding, SkipCheck, param
from auditor import graph as G
from auditor.graph import is_float_dtype
from auditor_sparsity.lipschitz import chain_factors
from auditor_sparsity.spectral import Spectrum, effective_rank, energy_rank, singular_values
from auditor_sparsity.weights import LayerWeight, audited, head_weight, layer_values, require_layers


def matrix_stack(lw: LayerWeight, w: np.ndarray) -> np.ndarray:
    """The weight (in the layer's layout) as a ``(blocks, rows, cols)`` stack whose block-diagonal matrix is
    the layer's linear map up to transposition: a conv kernel ``(M, C/g, kh, kw)`` becomes ``g`` blocks of
    ``M/g × (C/g)·kh·kw``; a transposed conv ``(C, M/g, k...)`` ``g`` blocks of ``C/g × (M/g)·k…``; a
    batched MatMul weight ``(..., K, N)`` one block per leading index."""
    if lw.kind in ("conv", "conv_transpose"):
        g = lw.groups
        return w.reshape(g, w.shape[0] // g, -1)
    if w.ndim == 2:
        return w[None]
    return w.reshape(-1, w.shape[-2], w.shape[-1])


def computation_eps(dtype: np.dtype) -> float:
    """Machine epsilon of the arithmetic a weight of storage type ``dtype`` is analysed in: float32 for
    float32 and narrower floats (float16 / bfloat16 / float8 are widened exactly, and the decomposition runs
    in float64, so the storage's own coarse epsilon says nothing about the rank), float64 for float64 and
    for dequantized integers (decoded in float64)."""
    if is_float_dtype(dtype) and dtype.itemsize <= 4:
        return float(np.finfo(np.float32).eps)
    return float(np.finfo(np.float64).eps)


class Conditioning(Check):
    """Spectral norm, condition number and rank profile of every weight matrix; Lipschitz bound; class norms."""

    name = "sparsity.conditioning"

    class Params:
        exact_max_dim: int = param(256, "Blocks with min(rows, cols) up to this use the exact SVD; larger ones a "
                "certified low-rank projection or the float64 Gram route where those meet max_rel_error.", minimum=1)
        max_rel_error: float = param(1e-3, "Largest proven relative error of a singular value above the numerical-rank "
                "tolerance allowed on the fast routes (blocks that would exceed it are recomputed exactly).",
                minimum=0)
        max_condition: float = param(1e6, "A weight matrix with a larger condition number is reported as a warning "
                "finding.", minimum=1)

    needs = frozenset()
    metrics_doc = {
        "layers": "per weight (keyed by initializer name): node, op_type, matrix [rows, cols], blocks, "
                  "spectral_norm, sigma_min, condition_number (null if numerically singular: numerical_rank < "
                  "min(rows, cols)), effective_rank, rank_90, "
                  "rank_99 (effective_rank and rank_* of the numerically nonzero values), numerical_rank "
                  "(values above σ_max·max(rows, cols)·eps, eps of the computation: float32's for float32 and "
                  "narrower weights), method (svd | lowrank | gram, or a '+' of several for a stack), "
                  "rel_error_bound (of every value above that tolerance), abs_error_bound (of every value, "
                  "sigma_min of a singular matrix included)",
        "matrices": "weights analysed",
        "max_spectral_norm": "largest spectral norm",
        "max_condition_number": "largest condition number (null if a matrix is singular)",
        "singular_matrices": "matrices whose numerical rank is below min(rows, cols)",
        "spectral_norm_product": "Π of the spectral norms (a summary, not a bound; null on overflow or when an "
                                 "integer weight's scale is unknown)",
        "log10_spectral_norm_product": "log10 of that product",
        "lipschitz_upper_bound": "L2 Lipschitz bound of the input-to-output chain (Π of operator-norm bounds "
                                 "and activation factors); null when the graph is not such a chain (notes say "
                                 "why) or on overflow",
        "log10_lipschitz_upper_bound": "log10 of that bound (null with it)",
        "class_norms": "L2 norm of each class's weights in the classifier head (output order)",
        "class_norm_ratio": "max / min of the class norms",
        "class_norm_cv": "std / mean of the class norms",
        "head": "initializer of the classifier head",
    }

    def run(self, ctx: AuditContext, params: Params) -> CheckResult:
        """One tensor at a time: read, decompose, drop."""
        layers = require_layers(ctx.model)
        exact_dim, max_err = int(params.exact_max_dim), float(params.max_rel_error)
        entries = [(lw, _matrix(ctx, lw, exact_dim, max_err)) for lw in audited(ctx, layers)]
        out = {lw.name: e for lw, e in entries}
        findings: list[Finding] = []
        for lw, e in entries:
            if e["condition_number"] is None:
                findings.append(Finding(message=f"weight '{lw.name}' of {e['node']} is singular (numerical rank "
                                                f"{e['numerical_rank']} of {min(e['matrix'])})",
                                        severity="info", location=lw.name))
            elif e["condition_number"] > float(params.max_condition):
                findings.append(Finding(message=f"weight '{lw.name}' of {e['node']} is ill-conditioned "
                                                f"(condition number {e['condition_number']:.3g})", severity="warn",
                                        location=lw.name))
        unscaled = [lw.name for lw in layers if not lw.scale_known]
        # an upper bound needs σ_max rounded up by its stated error
        op_norms = {lw.node: (e["spectral_norm"] + e["abs_error_bound"]) * _kernel_factor(lw) if lw.scale_known
                    else None for lw, e in entries}
        conds = [e["condition_number"] for e in out.values()]
        singular = sum(1 for c in conds if c is None)
        norms = [e["spectral_norm"] for e in out.values()]
        product, log_product = _power(None if unscaled else sum(math.log10(v) if v > 0 else -math.inf
                                                                 for v in norms))
        metrics: dict[str, Any] = {
            "matrices": len(out),
            "max_spectral_norm": max(norms),
            "max_condition_number": None if singular else max(conds),
            "singular_matrices": singular,
            "log10_spectral_norm_product": log_product,
            "spectral_norm_product": product,
            "layers": out,
        }
        methods = sorted({e["method"] for e in out.values()})
        notes = [f"singular values by {', '.join(methods)} (exact SVD up to {exact_dim} on the short "
                 f"side; larger blocks by a certified low-rank projection or the float64 Gram matrix, each only "
                 f"where its error bound meets {max_err:g} relative above the numerical-rank tolerance, else "
                 f"the SVD; per-matrix bounds in rel_error_bound / abs_error_bound)"]
        if unscaled:
            notes.append(f"{len(unscaled)} integer weight(s) without a known scale ({', '.join(unscaled[:3])}): "
                         f"their spectral norms are of q - zero_point, so no product or bound is reported")
        log_lip, why = _lipschitz(ctx, layers, op_norms)
        metrics["lipschitz_upper_bound"], metrics["log10_lipschitz_upper_bound"] = _power(log_lip)
        notes.append(why)
        quantized = [lw.name for lw in layers if lw.quantized]
        if quantized:
            notes.append(f"{len(quantized)} quantized weight(s): singular values of the dequantized values "
                         f"(q - zero_point) * scale")
        head = head_weight(ctx.model, layers, ctx.model.penultimate())
        if head is not None:
            lw, w = head
            # the L2 norm of each class's weights: over every axis but the head's outputs
            cn = abs(lw.alpha) * np.sqrt(np.sum(w * w, axis=tuple(a for a in range(w.ndim) if a != lw.out_axis)))
            metrics["head"] = lw.name
            metrics["class_norms"] = [float(v) for v in cn]
            metrics["class_norm_ratio"] = float(cn.max() / cn.min()) if cn.min() > 0 else None
            metrics["class_norm_cv"] = float(cn.std() / cn.mean()) if cn.mean() > 0 else None
        else:
            notes.append("no classifier head found (no linear layer reads the penultimate features)")
        return CheckResult(metrics=metrics, findings=findings, notes=notes)


def _matrix(ctx: AuditContext, lw: LayerWeight, exact_dim: int, max_err: float) -> dict[str, Any]:
    """One weight's entry of ``layers``: its spectrum, read whole, decomposed, dropped."""
    w = layer_values(ctx.model, lw)
    if not np.isfinite(w).all():
        raise SkipCheck(f"weight '{lw.name}' of {lw.node} has NaN / infinite values (no singular values; "
                        "sparsity.profile counts them)")
    spec: Spectrum = singular_values(matrix_stack(lw, w), exact_max_dim=exact_dim, max_rel_error=max_err,
                                     eps=computation_eps(lw.ref.dtype), seed=ctx.seed).scaled(abs(lw.alpha))
    s = spec.values
    # below the numerical-rank tolerance a singular value is rounding noise of the stored weights (and known
    # only to abs_error_bound), so the condition number is unbounded (null) rather than a meaningless large
    # number, and the rank profile counts the numerically nonzero values only
    nonzero = spec.nonzero
    return {
        "node": lw.node,
        "op_type": lw.op_type,
        "matrix": [spec.shape[0] * spec.blocks, spec.shape[1] * spec.blocks] if spec.blocks > 1
        else list(spec.shape),
        "blocks": spec.blocks,
        "spectral_norm": float(s[0]),
        "sigma_min": float(s[-1]),
        "condition_number": float(s[0]) / float(s[-1]) if s[-1] > 0 and spec.rank == s.size else None,
        "effective_rank": effective_rank(nonzero),
        "rank_90": energy_rank(nonzero, 0.90),
        "rank_99": energy_rank(nonzero, 0.99),
        "numerical_rank": spec.rank,
        "method": spec.method,
        "rel_error_bound": spec.rel_error_bound,
        "abs_error_bound": spec.abs_error_bound,
    }


def _kernel_factor(lw: LayerWeight) -> float:
    """√(kh·kw): a conv's operator norm over its reshaped kernel's (1 for a matrix)."""
    kernel = lw.layer_shape[2:] if lw.kind in ("conv", "conv_transpose") else ()
    return math.sqrt(float(np.prod(kernel))) if kernel else 1.0


def _lipschitz(ctx: AuditContext, layers: list[LayerWeight],
               op_norms: dict[str, float | None]) -> tuple[float | None, str]:
    """log10 of the chain bound (``-inf`` for a zero factor), or ``None``, and the note that says why."""
    h = ctx.model
    output = _bounded_output(h)
    if output is None:
        return None, ("lipschitz_upper_bound: null, every audited output is integer-valued (labels: a step "
                      "function has no finite Lipschitz constant)")
    slots = {lw.node: lw.slot for lw in layers}
    chain = chain_factors(h.proto, output, h.input.name, h.path.parent, slots)
    if chain.reason is not None:
        return None, (f"lipschitz_upper_bound: null, the graph is not a chain the product of layer norms "
                      f"bounds: {chain.reason}")
    total = 0.0
    for key, op, f in chain.factors:
        if key in chain.linear:
            norm = op_norms.get(key)
            if norm is None:
                return None, f"lipschitz_upper_bound: null, no operator norm for {op} node '{key}'"
            f = norm
        if f <= 0:
            return -math.inf, "lipschitz_upper_bound: 0 (a layer maps everything to a constant)"
        total += math.log10(f)
    nonlinear = sorted({op for key, op, _ in chain.factors if key not in chain.linear})
    return total, (f"lipschitz_upper_bound: L2 bound of the chain of {len(chain.linear)} linear layers "
                   f"from '{h.input.name}' to '{output}' (conv: √(kh·kw)·σ_max), times the Lipschitz factors "
                   f"of {', '.join(nonlinear) or 'no other op'}")


def _bounded_output(h: Any) -> str | None:
    """The audited output the bound is of: the first floating-point one (scikit-learn's probabilities, read
    through their ZipMap, rather than the integer label before them), or ``None`` if all are integer."""
    alias = {z.output: z.tensor for z in h.zipmaps.values()}
    declared = {o.name: o for o in h.proto.graph.output}
    names = list(h.outputs) if h.outputs else [h.proto.graph.output[0].name]
    for name in names:
        if name in alias:
            return str(alias[name])  # a ZipMap wraps a float probability tensor
        vi = declared.get(name)
        dtype = G.np_dtype(vi.type.tensor_type.elem_type) if vi is not None and vi.type.HasField(
            "tensor_type") else None
        if vi is None or dtype is None or is_float_dtype(dtype):
            return str(name)  # an intermediate tensor named in the spec, or a float output
    return None


def _power(log10: float | None) -> tuple[float | None, float | None]:
    """A product and its log10 from the sum of its factors' log10 (``-inf``: a zero factor, whose log10 is
    null): both null when unknown, the product null where it overflows."""
    if log10 is None:
        return None, None
    if log10 == -math.inf:
        return 0.0, None
    return (10.0 ** log10 if log10 < 300 else None), log10
