"""QuantizeLinear / DequantizeLinear (and ONNX Runtime's dynamic quantization: DynamicQuantizeLinear,
ConvInteger, MatMulInteger) as fake quantization with a straight-through gradient.

``QuantizeLinear`` computes ``q = saturate(round(x / scale) + zero_point)`` (round half to even, saturation to
the range of the zero point's integer type, uint8 by default). The interpreter keeps ``q`` in the input's
float type, holding exactly those integer values, so that a following ``DequantizeLinear``
(``(q - zero_point) * scale``) gives ONNX Runtime's numbers while gradients can flow: the rounding passes the
gradient straight through (Bengio et al., "Estimating or Propagating Gradients Through Stochastic Neurons",
2013), the saturation stops it outside the representable range — what ``torch.fake_quantize_per_*_affine``
does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from auditor_torch.ops import Ins, _opt, torch_dtype
from auditor_torch.registry import UnsupportedOpError, register_op

if TYPE_CHECKING:
    from auditor_torch.interpreter import NodeContext

_RANGES = {torch.int8: (-128, 127), torch.uint8: (0, 255), torch.int16: (-32768, 32767),
           torch.int32: (-2**31, 2**31 - 1)}


def _per_axis(p: Tensor, x: Tensor, axis: int) -> Tensor:
    """A scale / zero point shaped to broadcast along ``axis`` of ``x`` (per-tensor ones stay scalars)."""
    if p.dim() == 0 or p.numel() == 1:
        return p.reshape(())
    shape = [1] * x.dim()
    shape[axis % x.dim()] = p.numel()
    return p.reshape(shape)


class _RoundSTE(torch.autograd.Function):
    """Round half to even forward, identity backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        return g


# ``Function.apply`` is untyped in torch: typed once here.
_round_ste: Callable[[Tensor], Tensor] = _RoundSTE.apply


def _qargs(ctx: NodeContext, ins: Ins) -> tuple[Tensor, Tensor, Tensor | None, int]:
    """(Dequantize|Quantize)Linear's operands: input, scale, optional zero point, and the axis."""
    if int(ctx.attr("block_size", 0) or 0):
        raise UnsupportedOpError(f"{ctx.node.op_type} with block_size (blocked quantization) is not supported")
    return ins[0], ins[1], _opt(ins, 2), int(ctx.attr("axis", 1))


@register_op("QuantizeLinear")
def _quantize(ctx: NodeContext, ins: Ins) -> Tensor:
    x, scale, zp, axis = _qargs(ctx, ins)
    if zp is not None:
        qtype = zp.dtype
    elif ctx.attr("output_dtype"):
        qtype = torch_dtype(int(ctx.attr("output_dtype")))
    else:
        qtype = torch.uint8
    if qtype not in _RANGES:
        raise UnsupportedOpError(f"QuantizeLinear to {qtype} is not supported")
    lo, hi = _RANGES[qtype]
    xf = x if x.is_floating_point() else x.to(torch.float32)
    s = _per_axis(scale.to(xf.dtype), xf, axis)
    z = _per_axis(zp.to(xf.dtype), xf, axis) if zp is not None else torch.zeros((), dtype=xf.dtype, device=xf.device)
    q = _round_ste(xf / s) + z
    # clamp: zero gradient outside the representable range, as fake quantization does
    return torch.clamp(q, float(lo), float(hi))


@register_op("DequantizeLinear")
def _dequantize(ctx: NodeContext, ins: Ins) -> Tensor:
    q, scale, zp, axis = _qargs(ctx, ins)
    out_type = scale.dtype if scale.is_floating_point() else torch.float32
    if q.dtype in (torch.int32,) and zp is None:
        qf = q.to(torch.float64)  # int32 biases: exact in float64 before the scale
    else:
        qf = q.to(out_type) if not q.is_floating_point() else q
    s = _per_axis(scale, qf, axis)
    y = qf - _per_axis(zp.to(qf.dtype), qf, axis) if zp is not None else qf
    return (y * s.to(y.dtype)).to(out_type)


# ---------------------------------------------------------------------------------------------- dynamic quantization
@register_op("DynamicQuantizeLinear")
def _dynamic_quantize(ctx: NodeContext, ins: Ins) -> list[Tensor]:
    """uint8 quantization with the scale and zero point of the input's range (extended to contain 0):
    ``scale = (max(0, max x) - min(0, min x)) / 255``, ``zp = saturate(round(-min / scale))``; ``q`` held in
    float with the straight-through gradient of :func:`_quantize`."""
    x = ins[0]
    lo = torch.clamp(x.detach().min(), max=0.0)
    hi = torch.clamp(x.detach().max(), min=0.0)
    scale = (hi - lo) / 255.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zp = torch.clamp(torch.round(-lo / scale), 0.0, 255.0)
    q = torch.clamp(_round_ste(x / scale) + zp, 0.0, 255.0)
    return [q, scale.to(x.dtype), zp.to(torch.uint8)]


def _centred(t: Tensor, zp: Tensor | None, axis: int) -> Tensor:
    """``t - zero_point`` in float64 (exact for 8-bit operands and their int32 sums)."""
    t64 = t.to(torch.float64)
    if zp is None:
        return t64
    return t64 - _per_axis(zp.to(torch.float64), t64, axis)


@register_op("MatMulInteger")
def _matmul_integer(ctx: NodeContext, ins: Ins) -> Tensor:
    """``(A - a_zp) @ (B - b_zp)``: int32 values, kept in float64 (exact) so that gradients can flow; a
    per-column ``b_zero_point`` runs along B's last axis."""
    return torch.matmul(_centred(ins[0], _opt(ins, 2), -1), _centred(ins[1], _opt(ins, 3), -1))


@register_op("ConvInteger")
def _conv_integer(ctx: NodeContext, ins: Ins) -> Tensor:
    """``conv(x - x_zp, w - w_zp)`` with the Conv attributes (padding with the zero point, i.e. 0 after
    centring), in float64; a per-channel ``w_zero_point`` runs along the output channels."""
    from auditor_torch.ops import _conv

    return _conv(ctx, [_centred(ins[0], _opt(ins, 2), 1), _centred(ins[1], _opt(ins, 3), 0)])
