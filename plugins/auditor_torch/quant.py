"""QuantizeLinear / DequantizeLinear as fake quantization with a straight-through gradient.

``QuantizeLinear`` computes ``q = saturate(round(x / scale) + zero_point)`` (round half to even, saturation to
the range of the zero point's integer type, uint8 by default). The interpreter keeps ``q`` in the input's
float type, holding exactly those integer values, so that a following ``DequantizeLinear``
(``(q - zero_point) * scale``) gives ONNX Runtime's numbers while gradients can flow: the rounding passes the
gradient straight through (Bengio et al., "Estimating or Propagating Gradients Through Stochastic Neurons",
2013), the saturation stops it outside the representable range — what ``torch.fake_quantize_per_*_affine``
does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from auditor_torch.ops import torch_dtype
from auditor_torch.registry import UnsupportedOpError, register_op

if TYPE_CHECKING:
    from auditor_torch.interpreter import NodeContext

Tensor = torch.Tensor
_RANGES = {torch.int8: (-128, 127), torch.uint8: (0, 255), torch.int16: (-32768, 32767),
           torch.int32: (-2**31, 2**31 - 1)}


def _per_axis(p: Tensor, x: Tensor, axis: int) -> Tensor:
    """A scale / zero point shaped to broadcast along ``axis`` of ``x`` (per-tensor ones stay scalars)."""
    if p.dim() == 0 or p.numel() == 1:
        return p.reshape(())
    shape = [1] * x.dim()
    shape[axis % x.dim()] = p.numel()
    return p.reshape(shape)


def _check_block(ctx: NodeContext) -> None:
    if int(ctx.attr("block_size", 0) or 0):
        raise UnsupportedOpError(f"{ctx.node.op_type} with block_size (blocked quantization) is not supported")


class _RoundSTE(torch.autograd.Function):
    """Round half to even forward, identity backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        return g


@register_op("QuantizeLinear")
def _quantize(ctx: NodeContext, ins: list[Any]) -> Tensor:
    _check_block(ctx)
    x, scale = ins[0], ins[1]
    zp = ins[2] if len(ins) > 2 else None
    axis = int(ctx.attr("axis", 1))
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
    q = _RoundSTE.apply(xf / s) + z
    # clamp: zero gradient outside the representable range, as fake quantization does
    return torch.clamp(q, float(lo), float(hi))


@register_op("DequantizeLinear")
def _dequantize(ctx: NodeContext, ins: list[Any]) -> Tensor:
    _check_block(ctx)
    q, scale = ins[0], ins[1]
    zp = ins[2] if len(ins) > 2 else None
    axis = int(ctx.attr("axis", 1))
    out_type = scale.dtype if scale.is_floating_point() else torch.float32
    if q.dtype in (torch.int32,) and zp is None:
        qf = q.to(torch.float64)  # int32 biases: exact in float64 before the scale
    else:
        qf = q.to(out_type) if not q.is_floating_point() else q
    s = _per_axis(scale, qf, axis)
    y = qf - _per_axis(zp.to(qf.dtype), qf, axis) if zp is not None else qf
    return (y * s.to(y.dtype)).to(out_type)
