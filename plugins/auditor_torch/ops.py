"""Torch implementations of ONNX ops, following the ONNX operator specification (and ONNX Runtime where the
specification leaves a choice). Registered in :mod:`auditor_torch.registry` on import.

Every implementation is differentiable where the op is (shape arithmetic on int64 tensors is not) and
batch-agnostic (no loops over samples). Attributes that change semantics between opsets (Softmax's axis,
Split/Squeeze/Unsqueeze/Reduce* axes as inputs, Slice/Pad/Clip attributes vs inputs) are handled per opset.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import Tensor

from auditor_torch.registry import OpFn, UnsupportedOpError, register_op

if TYPE_CHECKING:
    from auditor_torch.interpreter import NodeContext

# A node's input tensors in order. An omitted optional input is None there: such inputs are read with ``_opt``
# (typed ``Tensor | None``); the required ones are indexed directly.
Ins = list[Tensor]

_DTYPES: dict[int, torch.dtype] = {
    onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16, onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.INT64: torch.int64, onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT16: torch.int16, onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT8: torch.uint8, onnx.TensorProto.BOOL: torch.bool,
    # torch has limited unsigned types: wider signed ones hold the same values
    onnx.TensorProto.UINT16: torch.int32, onnx.TensorProto.UINT32: torch.int64,
    onnx.TensorProto.UINT64: torch.int64,
}


def torch_dtype(elem_type: int) -> torch.dtype:
    """The torch dtype of an ONNX element type."""
    if elem_type not in _DTYPES:
        raise UnsupportedOpError(f"element type {onnx.TensorProto.DataType.Name(elem_type)} is not supported")
    return _DTYPES[elem_type]


def _ints(t: Any) -> list[int]:
    if t is None:
        return []
    if isinstance(t, Tensor):
        return [int(v) for v in t.reshape(-1).tolist()]
    return [int(v) for v in t]


def _floats(t: Any) -> list[float]:
    if isinstance(t, Tensor):
        return [float(v) for v in t.reshape(-1).tolist()]
    return [float(v) for v in t]


def _opt(ins: Ins, i: int) -> Tensor | None:
    return ins[i] if len(ins) > i else None


# ---------------------------------------------------------------------------------------------- elementwise
_UNARY: dict[str, Callable[[Tensor], Tensor]] = {
    "Abs": torch.abs, "Neg": torch.neg, "Sqrt": torch.sqrt, "Exp": torch.exp, "Log": torch.log,
    "Reciprocal": torch.reciprocal, "Floor": torch.floor, "Ceil": torch.ceil, "Round": torch.round,
    "Sign": torch.sign, "Sin": torch.sin, "Cos": torch.cos, "Tan": torch.tan, "Atan": torch.atan,
    "Erf": torch.erf, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Relu": torch.relu,
    "Softplus": F.softplus, "Softsign": F.softsign, "IsNaN": torch.isnan, "Not": torch.logical_not,
    "Identity": lambda x: x, "Mish": F.mish,
}


def _div(a: Tensor, b: Tensor) -> Tensor:
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")  # integer division truncates, as in ONNX Runtime
    return a / b


_BINARY: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": _div, "Pow": torch.pow,
    "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le,
    "GreaterOrEqual": torch.ge, "And": torch.logical_and, "Or": torch.logical_or, "Xor": torch.logical_xor,
}


def _elementwise(fn: Callable[..., Tensor], arity: int) -> OpFn:
    """The op applying ``fn`` to its first ``arity`` inputs."""
    return lambda ctx, ins: fn(*ins[:arity])


def _fold(fn: Callable[[Tensor, Tensor], Tensor], ins: Ins) -> Tensor:
    """``fn`` applied pairwise over the inputs (the variadic Max, Min, Sum, Mean)."""
    out = ins[0]
    for t in ins[1:]:
        out = fn(out, t)
    return out


#: Ops that are one expression of their inputs and attributes (the default of each attribute per the spec).
_SIMPLE: dict[str, OpFn] = {
    **{op: _elementwise(fn, 1) for op, fn in _UNARY.items()},
    **{op: _elementwise(fn, 2) for op, fn in _BINARY.items()},
    "Mod": lambda c, i: (torch.fmod if int(c.attr("fmod", 0)) else torch.remainder)(i[0], i[1]),
    "Max": lambda c, i: _fold(torch.maximum, i),
    "Min": lambda c, i: _fold(torch.minimum, i),
    "Sum": lambda c, i: _fold(torch.add, i),
    "Mean": lambda c, i: _fold(torch.add, i) / len(i),
    "Where": lambda c, i: torch.where(i[0].bool(), i[1], i[2]),
    "IsInf": lambda c, i: ((torch.isposinf(i[0]) & bool(int(c.attr("detect_positive", 1))))
                           | (torch.isneginf(i[0]) & bool(int(c.attr("detect_negative", 1))))),
    # activations
    "LeakyRelu": lambda c, i: F.leaky_relu(i[0], float(c.attr("alpha", 0.01))),
    "Elu": lambda c, i: F.elu(i[0], float(c.attr("alpha", 1.0))),
    "Celu": lambda c, i: F.celu(i[0], float(c.attr("alpha", 1.0))),
    "HardSigmoid": lambda c, i: torch.clamp(float(c.attr("alpha", 0.2)) * i[0] + float(c.attr("beta", 0.5)), 0, 1),
    "HardSwish": lambda c, i: i[0] * torch.clamp(i[0] / 6 + 0.5, 0, 1),
    "ThresholdedRelu": lambda c, i: torch.where(i[0] > float(c.attr("alpha", 1.0)), i[0], torch.zeros_like(i[0])),
    "PRelu": lambda c, i: torch.where(i[0] < 0, i[1] * i[0], i[0]),
    "Selu": lambda c, i: float(c.attr("gamma", 1.05070102214813232421875)) * torch.where(
        i[0] > 0, i[0], float(c.attr("alpha", 1.67326319217681884765625)) * (torch.exp(i[0]) - 1)),
    # linear algebra, pooling, normalisation
    "Einsum": lambda c, i: torch.einsum(str(c.attr("equation")), *i),
    "GlobalAveragePool": lambda c, i: i[0].mean(dim=tuple(range(2, i[0].dim())), keepdim=True),
    "GlobalMaxPool": lambda c, i: i[0].amax(dim=tuple(range(2, i[0].dim())), keepdim=True),
    "InstanceNormalization": lambda c, i: F.instance_norm(i[0], None, None, i[1], i[2],
                                                          eps=float(c.attr("epsilon", 1e-5))),
    # shapes and types
    "Transpose": lambda c, i: i[0].permute(*(c.attr("perm") or reversed(range(i[0].dim())))),
    "Concat": lambda c, i: torch.cat([t for t in i if t is not None], dim=int(c.attr("axis"))),
    "Expand": lambda c, i: i[0].expand(torch.broadcast_shapes(tuple(i[0].shape), tuple(_ints(i[1])))),
    "Tile": lambda c, i: i[0].repeat(*_ints(i[1])),
    "Size": lambda c, i: torch.tensor(i[0].numel(), dtype=torch.int64, device=i[0].device),
    "Range": lambda c, i: torch.arange(i[0].item(), i[1].item(), i[2].item(), dtype=i[0].dtype,
                                       device=i[0].device),
    "Cast": lambda c, i: i[0].to(torch_dtype(int(c.attr("to")))),
    "CastLike": lambda c, i: i[0].to(i[1].dtype),
    "Shape": lambda c, i: torch.tensor(list(i[0].shape)[c.attr("start"):c.attr("end")], dtype=torch.int64,
                                       device=i[0].device),  # start / end None: from the first / to the last
    "Gelu": lambda c, i: F.gelu(i[0], approximate="tanh" if c.attr("approximate", "none") == "tanh" else "none"),
    # training: batch statistics, the running ones updated with ONNX's momentum convention (weight of the old)
    "BatchNormalization": lambda c, i: F.batch_norm(
        i[0], i[3], i[4], i[1], i[2], c.training, 1.0 - float(c.attr("momentum", 0.9)), float(c.attr("epsilon", 1e-5))),
}
for _name, _op in _SIMPLE.items():
    register_op(_name)(_op)
register_op("Gelu", "com.microsoft")(_SIMPLE["Gelu"])
register_op("FastGelu", "com.microsoft")(
    lambda c, i: F.gelu(i[0] if _opt(i, 1) is None else i[0] + i[1], approximate="tanh"))


@register_op("Clip")
def _clip(ctx: NodeContext, ins: Ins) -> Tensor:
    lo, hi = (ctx.attr("min"), ctx.attr("max")) if ctx.opset < 11 else (_opt(ins, 1), _opt(ins, 2))
    return ins[0] if lo is None and hi is None else torch.clamp(ins[0], min=lo, max=hi)


def _softmax_like(fn: Callable[..., Tensor]) -> Callable[[NodeContext, Ins], Tensor]:
    def run(ctx: NodeContext, ins: Ins) -> Tensor:
        x = ins[0]
        if ctx.opset < 13:
            # before opset 13 the input is coerced to 2-D at `axis` (default 1) and normalised over the rest
            axis = int(ctx.attr("axis", 1)) % max(x.dim(), 1)
            shape = x.shape
            lead = int(np.prod(shape[:axis])) if axis else 1
            return fn(x.reshape(lead, -1), dim=1).reshape(shape)
        return fn(x, dim=int(ctx.attr("axis", -1)))

    return run


register_op("Softmax")(_softmax_like(torch.softmax))
register_op("LogSoftmax")(_softmax_like(torch.log_softmax))


# ---------------------------------------------------------------------------------------------- linear ops
def _torch_pad(begin: Sequence[int], end: Sequence[int]) -> list[int]:
    """ONNX per-axis (begin, end) pads as F.pad's list, which starts from the last axis."""
    return [int(v) for b, e in zip(reversed(list(begin)), reversed(list(end))) for v in (b, e)]


def _spatial_pads(ctx: NodeContext, x: Tensor, kernel: Sequence[int], strides: Sequence[int],
                  dil: Sequence[int]) -> tuple[list[int], list[int]]:
    n = len(kernel)
    auto = ctx.attr("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for i in range(n):
            size = int(x.shape[2 + i])
            out = -(-size // strides[i])
            total = max((out - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - size, 0)
            b = total // 2 if auto == "SAME_UPPER" else total - total // 2
            begin.append(b)
            end.append(total - b)
        return begin, end
    if auto == "VALID":
        return [0] * n, [0] * n
    pads = list(ctx.attr("pads") or [0] * (2 * n))
    return pads[:n], pads[n:]


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONVT = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@register_op("Conv")
def _conv(ctx: NodeContext, ins: Ins) -> Tensor:
    x, w, b = ins[0], ins[1], _opt(ins, 2)
    n = w.dim() - 2
    kernel = list(ctx.attr("kernel_shape") or w.shape[2:])
    strides = list(ctx.attr("strides") or [1] * n)
    dil = list(ctx.attr("dilations") or [1] * n)
    group = int(ctx.attr("group", 1))
    begin, end = _spatial_pads(ctx, x, kernel, strides, dil)
    padding: list[int] = begin
    if begin != end:
        x = F.pad(x, _torch_pad(begin, end))
        padding = [0] * n
    fn = partial(_CONV[n], bias=None, stride=strides, padding=padding, dilation=dil, groups=group)
    y = ctx.module.linear(ctx, fn, x, ctx.node.input[1], w)
    return y if b is None else y + b.reshape(1, -1, *([1] * n))


@register_op("ConvTranspose")
def _convt(ctx: NodeContext, ins: Ins) -> Tensor:
    x, w, b = ins[0], ins[1], _opt(ins, 2)
    n = w.dim() - 2
    strides = list(ctx.attr("strides") or [1] * n)
    dil = list(ctx.attr("dilations") or [1] * n)
    group = int(ctx.attr("group", 1))
    opad = list(ctx.attr("output_padding") or [0] * n)
    out_shape = ctx.attr("output_shape")
    fn = partial(_CONVT[n], bias=None, stride=strides, padding=0, output_padding=0, groups=group, dilation=dil)
    y = ctx.module.linear(ctx, fn, x, ctx.node.input[1], w)
    if any(opad):
        y = F.pad(y, _torch_pad([0] * n, opad))
    auto = ctx.attr("auto_pad", "NOTSET")
    full = [int(y.shape[2 + i]) for i in range(n)]
    if out_shape or auto in ("SAME_UPPER", "SAME_LOWER"):
        target = list(out_shape)[-n:] if out_shape else [int(x.shape[2 + i]) * strides[i] for i in range(n)]
        total = [full[i] - target[i] for i in range(n)]
        begin = [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in total]
        end = [t - bb for t, bb in zip(total, begin)]
    else:
        pads = list(ctx.attr("pads") or [0] * (2 * n))
        begin, end = pads[:n], pads[n:]
    for i in range(n):
        if begin[i] or end[i]:
            y = y.narrow(2 + i, begin[i], full[i] - begin[i] - end[i])
    return y if b is None else y + b.reshape(1, -1, *([1] * n))


@register_op("Gemm")
def _gemm(ctx: NodeContext, ins: Ins) -> Tensor:
    a, b, c = ins[0], ins[1], _opt(ins, 2)
    alpha, beta = float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0))
    ta, tb = int(ctx.attr("transA", 0)), int(ctx.attr("transB", 0))

    def mm(aa: Tensor, bb: Tensor) -> Tensor:
        y = (aa.t() if ta else aa) @ (bb.t() if tb else bb)
        return y * alpha if alpha != 1.0 else y

    y = _product(ctx, mm, a, b)
    return y if c is None else y + (c * beta if beta != 1.0 else c)


def _product(ctx: NodeContext, fn: Callable[[Tensor, Tensor], Tensor], a: Tensor, b: Tensor) -> Tensor:
    """``fn(a, b)`` of a Gemm / MatMul, through the module's linear hook with the operand that is a weight."""
    m, (name_a, name_b) = ctx.module, ctx.node.input[:2]
    if m.is_param(name_b):
        return m.linear(ctx, fn, a, name_b, b)
    if m.is_param(name_a):
        return m.linear(ctx, lambda xx, ww: fn(ww, xx), b, name_a, a)
    return fn(a, b)


register_op("MatMul")(lambda ctx, ins: _product(ctx, torch.matmul, ins[0], ins[1]))


# ---------------------------------------------------------------------------------------------- pooling
_MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVGPOOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _pool_params(ctx: NodeContext, x: Tensor) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    kernel = list(ctx.attr("kernel_shape"))
    n = len(kernel)
    strides = list(ctx.attr("strides") or [1] * n)
    dil = list(ctx.attr("dilations") or [1] * n)
    begin, end = _spatial_pads(ctx, x, kernel, strides, dil)
    return kernel, strides, dil, begin, end


@register_op("MaxPool")
def _maxpool(ctx: NodeContext, ins: Ins) -> Tensor:
    x = ins[0]
    if len(ctx.node.output) > 1 and ctx.node.output[1]:
        raise UnsupportedOpError("MaxPool with an Indices output is not supported")
    kernel, strides, dil, begin, end = _pool_params(ctx, x)
    ceil = bool(ctx.attr("ceil_mode", 0))
    pool = _MAXPOOL[len(kernel)]
    if begin == end and all(p <= k // 2 for p, k in zip(begin, kernel)):
        return pool(x, kernel, strides, begin, dil, ceil)
    # padding torch cannot express: pad with -inf (never selected), then pool without padding
    xp = F.pad(x, _torch_pad(begin, end), value=float("-inf"))
    return pool(xp, kernel, strides, 0, dil, ceil)


@register_op("AveragePool")
def _avgpool(ctx: NodeContext, ins: Ins) -> Tensor:
    x = ins[0]
    kernel, strides, dil, begin, end = _pool_params(ctx, x)
    if any(d != 1 for d in dil):
        raise UnsupportedOpError("AveragePool with dilations is not supported")
    ceil = bool(ctx.attr("ceil_mode", 0))
    include = bool(ctx.attr("count_include_pad", 0))
    n = len(kernel)
    if begin == end and all(p <= k // 2 for p, k in zip(begin, kernel)):
        return _AVGPOOL[n](x, kernel, strides, begin, ceil, include)
    # asymmetric padding: window sums over a zero-padded input divided by the count of counted elements
    pads = _torch_pad(begin, end)
    xp = F.pad(x, pads)
    ones = F.pad(torch.ones_like(x[:1, :1]), pads, value=1.0 if include else 0.0)
    s = _AVGPOOL[n](xp, kernel, strides, 0, ceil, True) * float(np.prod(kernel))
    c = _AVGPOOL[n](ones, kernel, strides, 0, ceil, True) * float(np.prod(kernel))
    return s / c


# ---------------------------------------------------------------------------------------------- normalization
@register_op("LayerNormalization")
def _ln(ctx: NodeContext, ins: Ins) -> Any:
    x, scale, bias = ins[0], ins[1], _opt(ins, 2)
    axis = int(ctx.attr("axis", -1)) % x.dim()
    eps = float(ctx.attr("epsilon", 1e-5))
    shape = tuple(x.shape[axis:])
    y = F.layer_norm(x, shape, scale.expand(shape), None if bias is None else bias.expand(shape), eps)
    if len(ctx.node.output) > 1:
        dims = tuple(range(axis, x.dim()))
        mean = x.mean(dim=dims, keepdim=True)
        inv = torch.rsqrt(((x - mean) ** 2).mean(dim=dims, keepdim=True) + eps)
        return [y, mean, inv]
    return y


@register_op("LRN")
def _lrn(ctx: NodeContext, ins: Ins) -> Tensor:
    x = ins[0]
    size = int(ctx.attr("size"))
    alpha, beta, k = float(ctx.attr("alpha", 1e-4)), float(ctx.attr("beta", 0.75)), float(ctx.attr("bias", 1.0))
    # ONNX sums over channels [c - floor((size-1)/2), c + ceil((size-1)/2)]
    front, back = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = (x * x).transpose(1, -1)
    sq = F.pad(sq, [front, back]).unfold(-1, size, 1).sum(-1).transpose(1, -1)
    return x / (k + alpha / size * sq) ** beta


# ---------------------------------------------------------------------------------------------- shapes
@register_op("Reshape")
def _reshape(ctx: NodeContext, ins: Ins) -> Tensor:
    x = ins[0]
    shape = _ints(_opt(ins, 1)) if _opt(ins, 1) is not None else _ints(ctx.attr("shape"))
    if not int(ctx.attr("allowzero", 0)):
        shape = [int(x.shape[i]) if s == 0 else s for i, s in enumerate(shape)]
    fb = ctx.module.fixed_batch
    cur = getattr(ctx.module, "current_batch", None)
    # A model exported with a fixed batch size hard-codes it in its reshapes; the interpreter runs any batch.
    if (fb is not None and cur is not None and cur != fb and shape and shape[0] == fb and x.dim()
            and int(x.shape[0]) == cur):
        shape[0] = cur
    return x.reshape(shape)


@register_op("Flatten")
def _flatten(ctx: NodeContext, ins: Ins) -> Tensor:
    x = ins[0]
    axis = int(ctx.attr("axis", 1))
    axis = axis + x.dim() if axis < 0 else axis
    lead = int(np.prod(x.shape[:axis])) if axis else 1
    return x.reshape(lead, int(np.prod(x.shape[axis:])))


@register_op("Split")
def _split(ctx: NodeContext, ins: Ins) -> list[Tensor]:
    x = ins[0]
    axis = int(ctx.attr("axis", 0))
    split = _ints(ins[1]) if _opt(ins, 1) is not None else ctx.attr("split")
    if not split:
        num = int(ctx.attr("num_outputs", len(ctx.node.output)))
        size = int(x.shape[axis])
        chunk = -(-size // num)
        split = [chunk] * (num - 1) + [size - chunk * (num - 1)]
    return list(torch.split(x, [int(s) for s in split], dim=axis))


@register_op("Slice")
def _slice(ctx: NodeContext, ins: Ins) -> Tensor:
    x = ins[0]
    if ctx.opset < 10:
        starts, ends = _ints(ctx.attr("starts")), _ints(ctx.attr("ends"))
        axes = _ints(ctx.attr("axes")) or list(range(len(starts)))
        steps = [1] * len(starts)
    else:
        starts, ends = _ints(ins[1]), _ints(ins[2])
        axes = _ints(ins[3]) if _opt(ins, 3) is not None else list(range(len(starts)))
        steps = _ints(ins[4]) if _opt(ins, 4) is not None else [1] * len(starts)
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = a % x.dim()
        dim = int(x.shape[a])
        if st > 0:
            s = min(max(s + dim if s < 0 else s, 0), dim)
            e = min(max(e + dim if e < 0 else e, 0), dim)
            idx: list[Any] = [slice(None)] * x.dim()
            idx[a] = slice(s, e, st)
            x = x[tuple(idx)]
        else:
            s = min(max(s + dim if s < 0 else s, -1), dim - 1)
            e = min(max(e + dim if e < 0 else e, -1), dim - 1)
            sel = torch.arange(s, e, st, device=x.device)
            x = x.index_select(a, sel)
    return x


def _norm_index(idx: Tensor, dim: int) -> Tensor:
    idx = idx.long()
    return torch.where(idx < 0, idx + dim, idx)


@register_op("Gather")
def _gather(ctx: NodeContext, ins: Ins) -> Tensor:
    x, idx = ins
    axis = int(ctx.attr("axis", 0)) % x.dim()
    idx = _norm_index(idx, int(x.shape[axis])).to(x.device)
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]))


@register_op("GatherElements")
def _gather_el(ctx: NodeContext, ins: Ins) -> Tensor:
    x, idx = ins
    axis = int(ctx.attr("axis", 0)) % x.dim()
    return torch.gather(x, axis, _norm_index(idx, int(x.shape[axis])))


def _axes(ctx: NodeContext, ins: Ins, input_from: int) -> list[int] | None:
    if ctx.opset >= input_from:
        t = _opt(ins, 1)
        return None if t is None else _ints(t)
    a = ctx.attr("axes")
    return None if a is None else _ints(a)


@register_op("Squeeze")
def _squeeze(ctx: NodeContext, ins: Ins) -> Tensor:
    x, axes = ins[0], _axes(ctx, ins, 13)
    return x.squeeze(tuple(a % x.dim() for a in axes)) if axes else x.squeeze()


@register_op("Unsqueeze")
def _unsqueeze(ctx: NodeContext, ins: Ins) -> Tensor:
    x = ins[0]
    axes = _axes(ctx, ins, 13) or []
    rank = x.dim() + len(axes)
    for a in sorted(a % rank for a in axes):
        x = x.unsqueeze(a)
    return x


@register_op("ConstantOfShape")
def _cos(ctx: NodeContext, ins: Ins) -> Tensor:
    shape = _ints(ins[0])
    v = ctx.attr("value")
    arr = numpy_helper.to_array(v) if v is not None else np.zeros(1, np.float32)
    t = torch.from_numpy(np.array(arr).reshape(-1)[:1].copy())
    return torch.full(shape, t.item(), dtype=t.dtype, device=ins[0].device)


@register_op("Dropout")
def _dropout(ctx: NodeContext, ins: Ins) -> Any:
    x = ins[0]
    if ctx.opset < 12:
        ratio, train = float(ctx.attr("ratio", 0.5)), ctx.training
    else:
        r, tm = _opt(ins, 1), _opt(ins, 2)
        ratio = 0.5 if r is None else float(r.item())
        # the graph's own training_mode input (almost always absent/false in exports) or ours
        train = ctx.training or (tm is not None and bool(tm.item()))
    if train and ratio > 0:
        mask = (torch.rand_like(x) >= ratio)
        y = x * mask / (1.0 - ratio)
    else:
        y, mask = x, torch.ones_like(x, dtype=torch.bool)
    return [y, mask] if len(ctx.node.output) > 1 else y


@register_op("ArgMax")
@register_op("ArgMin")
def _argmax(ctx: NodeContext, ins: Ins) -> Tensor:
    x = ins[0]
    axis = int(ctx.attr("axis", 0)) % x.dim()
    keep = bool(ctx.attr("keepdims", 1))
    fn = torch.argmax if ctx.node.op_type == "ArgMax" else torch.argmin
    if int(ctx.attr("select_last_index", 0)):
        return int(x.shape[axis]) - 1 - fn(x.flip(axis), dim=axis, keepdim=keep)
    return fn(x, dim=axis, keepdim=keep)


# ---------------------------------------------------------------------------------------------- reductions
def _prod(x: Tensor, dims: tuple[int, ...], keep: bool) -> Tensor:
    for d in reversed(dims):  # torch's prod takes one dim at a time
        x = x.prod(dim=d, keepdim=keep)
    return x


#: ``fn(x, dims, keepdim)`` of every Reduce* op.
_REDUCTIONS: dict[str, Callable[[Tensor, tuple[int, ...], bool], Tensor]] = {
    "ReduceMean": lambda x, d, k: x.mean(dim=d, keepdim=k),
    "ReduceSum": lambda x, d, k: x.sum(dim=d, keepdim=k),
    "ReduceMax": lambda x, d, k: x.amax(dim=d, keepdim=k),
    "ReduceMin": lambda x, d, k: x.amin(dim=d, keepdim=k),
    "ReduceProd": _prod,
    "ReduceL1": lambda x, d, k: x.abs().sum(dim=d, keepdim=k),
    "ReduceL2": lambda x, d, k: torch.sqrt((x * x).sum(dim=d, keepdim=k)),
    "ReduceSumSquare": lambda x, d, k: (x * x).sum(dim=d, keepdim=k),
    "ReduceLogSum": lambda x, d, k: torch.log(x.sum(dim=d, keepdim=k)),
    "ReduceLogSumExp": lambda x, d, k: torch.logsumexp(x, dim=d, keepdim=k),
}


def _reduce(fn: Callable[[Tensor, tuple[int, ...], bool], Tensor], axes_input_from: int) -> OpFn:
    def run(ctx: NodeContext, ins: Ins) -> Tensor:
        x = ins[0]
        axes = _axes(ctx, ins, axes_input_from)
        if not axes:
            if int(ctx.attr("noop_with_empty_axes", 0)):
                return x
            axes = list(range(x.dim()))
        return fn(x, tuple(sorted(a % x.dim() for a in axes)), bool(ctx.attr("keepdims", 1)))

    return run


for _name, _reduction in _REDUCTIONS.items():
    # the axes became an input in opset 13 for ReduceSum, in opset 18 for the others
    register_op(_name)(_reduce(_reduction, 13 if _name == "ReduceSum" else 18))


# ---------------------------------------------------------------------------------------------- pad, resize
@register_op("Pad")
def _pad(ctx: NodeContext, ins: Ins) -> Tensor:
    x = ins[0]
    mode = ctx.attr("mode", "constant")
    rank = x.dim()
    if ctx.opset < 11:
        pads, value = _ints(ctx.attr("pads")), float(ctx.attr("value", 0.0))
        axes = list(range(rank))
    else:
        pads = _ints(ins[1])
        v = _opt(ins, 2)
        value = 0.0 if v is None or v.numel() == 0 else float(v.reshape(-1)[0].item())
        axes = [a % rank for a in _ints(ins[3])] if _opt(ins, 3) is not None else list(range(rank))
    k = len(axes)
    begin, end = [0] * rank, [0] * rank
    for i, a in enumerate(axes):
        begin[a], end[a] = pads[i], pads[k + i]
    if mode == "constant":
        return F.pad(x, _torch_pad(begin, end), value=value)
    for a in range(rank):
        b, e = begin[a], end[a]
        if not b and not e:
            continue
        n = int(x.shape[a])
        idx = torch.arange(-b, n + e, device=x.device)
        if mode == "edge":
            idx = idx.clamp(0, n - 1)
        elif mode == "reflect":
            period = max(2 * (n - 1), 1)
            idx = torch.remainder(idx, period)
            idx = torch.where(idx >= n, period - idx, idx)
        elif mode == "wrap":
            idx = torch.remainder(idx, n)
        else:
            raise UnsupportedOpError(f"Pad mode {mode!r} is not supported")
        x = x.index_select(a, idx)
    return x


def _cubic_weights(t: Tensor, a: float) -> list[Tensor]:
    def w(s: Tensor) -> Tensor:
        s = s.abs()
        near = ((a + 2) * s - (a + 3)) * s * s + 1
        far = ((a * s - 5 * a) * s + 8 * a) * s - 4 * a
        return torch.where(s <= 1, near, torch.where(s < 2, far, torch.zeros_like(s)))

    return [w(t + 1), w(t), w(1 - t), w(2 - t)]


def _along(x: Tensor, axis: int, vec: Tensor) -> Tensor:
    shape = [1] * x.dim()
    shape[axis] = -1
    return vec.reshape(shape)


#: Resize's coordinate transformations: the input coordinate of output index ``i`` (scale ``s``, sizes ``n``).
_COORDINATES: dict[str, Callable[[Tensor, Tensor, int, int], Tensor]] = {
    "half_pixel": lambda i, s, n_in, n_out: (i + 0.5) / s - 0.5,
    "pytorch_half_pixel": lambda i, s, n_in, n_out: (i + 0.5) / s - 0.5 if n_out > 1 else torch.zeros_like(i),
    "align_corners": lambda i, s, n_in, n_out: i * ((n_in - 1) / (n_out - 1)) if n_out > 1 else torch.zeros_like(i),
    "asymmetric": lambda i, s, n_in, n_out: i / s,
    "tf_half_pixel_for_nn": lambda i, s, n_in, n_out: (i + 0.5) / s,
}
#: Resize's nearest modes: the source index of an input coordinate (``simple``, Upsample / Resize-10: floor when
#: enlarging, ceil when shrinking).
_NEAREST: dict[str, Callable[[Tensor, float], Tensor]] = {
    "round_prefer_floor": lambda v, scale: torch.ceil(v - 0.5),
    "round_prefer_ceil": lambda v, scale: torch.floor(v + 0.5),
    "floor": lambda v, scale: torch.floor(v), "ceil": lambda v, scale: torch.ceil(v),
    "simple": lambda v, scale: torch.ceil(v) if scale < 1 else torch.floor(v),
}


def _resize_axis(ctx: NodeContext, x: Tensor, axis: int, out_n: int, scale: float, mode: str, coord: str,
                 nearest: str) -> Tensor:
    in_n = int(x.shape[axis])
    i = torch.arange(out_n, dtype=torch.float32, device=x.device)
    s = torch.tensor(scale, dtype=torch.float32)
    if coord not in _COORDINATES:
        raise UnsupportedOpError(f"Resize coordinate_transformation_mode {coord!r} is not supported")
    xo = _COORDINATES[coord](i, s, in_n, out_n)
    if mode == "nearest":
        src = _NEAREST.get(nearest, _NEAREST["simple"])(xo, scale)
        return x.index_select(axis, src.long().clamp(0, in_n - 1))
    if mode == "linear":
        xc = xo.clamp(0, in_n - 1)
        i0 = torch.floor(xc).long()
        i1 = (i0 + 1).clamp(max=in_n - 1)
        w = _along(x, axis, (xc - i0.float()).to(x.dtype))
        return x.index_select(axis, i0) * (1 - w) + x.index_select(axis, i1) * w
    if mode == "cubic":
        a = float(ctx.attr("cubic_coeff_a", -0.75))
        i0 = torch.floor(xo)
        t = xo - i0
        ws = _cubic_weights(t, a)
        idxs = [i0.long() + k for k in (-1, 0, 1, 2)]
        if int(ctx.attr("exclude_outside", 0)):
            ws = [torch.where((ix >= 0) & (ix < in_n), wk, torch.zeros_like(wk)) for ix, wk in zip(idxs, ws)]
            total = ws[0] + ws[1] + ws[2] + ws[3]
            ws = [wk / total for wk in ws]
        out = torch.zeros((), dtype=x.dtype, device=x.device)
        for ix, wk in zip(idxs, ws):
            out = out + x.index_select(axis, ix.clamp(0, in_n - 1)) * _along(x, axis, wk.to(x.dtype))
        return out
    raise UnsupportedOpError(f"Resize mode {mode!r} is not supported")


def _resize(ctx: NodeContext, x: Tensor, scales: list[float] | None, sizes: list[int] | None, coord: str,
            nearest: str) -> Tensor:
    mode = ctx.attr("mode", "nearest")
    if int(ctx.attr("antialias", 0)):
        raise UnsupportedOpError("Resize with antialias is not supported")
    axes = _ints(ctx.attr("axes")) if ctx.attr("axes") is not None else list(range(x.dim()))
    axes = [a % x.dim() for a in axes]
    if sizes and ctx.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise UnsupportedOpError("Resize keep_aspect_ratio_policy other than 'stretch' is not supported")
    for k, a in enumerate(axes):
        in_n = int(x.shape[a])
        if sizes:
            out_n = int(sizes[k])
            scale = out_n / in_n
        else:
            assert scales is not None
            scale = float(scales[k])
            out_n = math.floor(in_n * scale)
        if out_n == in_n and scale == 1.0:
            continue
        x = _resize_axis(ctx, x, a, out_n, scale, mode, coord, nearest)
    return x


@register_op("Resize")
def _resize_op(ctx: NodeContext, ins: Ins) -> Tensor:
    x = ins[0]
    if ctx.opset < 11:
        return _resize(ctx, x, _floats(ins[1]), None, "asymmetric", "simple")
    coord = ctx.attr("coordinate_transformation_mode", "half_pixel")
    if coord == "tf_crop_and_resize":
        raise UnsupportedOpError("Resize with tf_crop_and_resize is not supported")
    scales_t, sizes_t = _opt(ins, 2), _opt(ins, 3)
    scales = _floats(scales_t) if scales_t is not None and scales_t.numel() else None
    sizes = _ints(sizes_t) if sizes_t is not None and sizes_t.numel() else None
    return _resize(ctx, x, scales, sizes, coord, ctx.attr("nearest_mode", "round_prefer_floor"))


register_op("Upsample")(lambda c, i: _resize(c, i[0], _floats(c.attr("scales") if c.attr("scales") is not None
                                                              else i[1]), None, "asymmetric", "simple"))


# ---------------------------------------------------------------------------------------------- ai.onnx.ml
def _softmax_zero(s: Tensor) -> Tensor:
    """Softmax over the non-zero scores only (zeros stay zero), as in ONNX Runtime."""
    e = torch.where(s != 0, torch.exp(s - s.amax(dim=1, keepdim=True)), torch.zeros_like(s))
    return e / e.sum(dim=1, keepdim=True).clamp_min(1e-30)


#: The ``post_transform`` of the ai.onnx.ml linear models.
_POST: dict[str, Callable[[Tensor], Tensor]] = {
    "NONE": lambda s: s, "LOGISTIC": torch.sigmoid, "SOFTMAX": lambda s: torch.softmax(s, dim=1),
    "SOFTMAX_ZERO": _softmax_zero, "PROBIT": lambda s: math.sqrt(2.0) * torch.erfinv(2 * s - 1),
}


def _post_transform(s: Tensor, how: str) -> Tensor:
    if how not in _POST:
        raise UnsupportedOpError(f"post_transform {how!r} is not supported")
    return _POST[how](s)


def _real(x: Tensor) -> Tensor:
    """An ai.onnx.ml model's input as floats (they take integers too)."""
    return x if x.is_floating_point() else x.float()


def _vector(ctx: NodeContext, name: str, x: Tensor, default: Sequence[float] | None = None) -> Tensor:
    """A float-list attribute as a tensor in ``x``'s dtype, on its device."""
    return torch.tensor(_floats(ctx.attr(name) or default), dtype=x.dtype, device=x.device)


@register_op("LinearClassifier", "ai.onnx.ml")
def _linear_classifier(ctx: NodeContext, ins: Ins) -> list[Tensor]:
    x = _real(ins[0])
    w = _vector(ctx, "coefficients", x).reshape(-1, int(x.shape[1]))
    s = x @ w.t()
    if ctx.attr("intercepts"):
        s = s + _vector(ctx, "intercepts", x)
    labels = ctx.attr("classlabels_ints")
    strings = ctx.attr("classlabels_strings")
    n_classes = len(labels) if labels else len(strings or [])
    how = ctx.attr("post_transform", "NONE")
    if w.shape[0] == 1 and n_classes == 2:
        # binary with one score: ONNX Runtime reports [1 - p, p] with p the transformed score
        p = _post_transform(s, how)
        scores = torch.cat([1 - p, p], dim=1)
        winner = (s[:, 0] > 0).long()
    else:
        scores = _post_transform(s, how)
        winner = s.argmax(dim=1)
    if labels:
        label = torch.tensor(_ints(labels), dtype=torch.int64, device=x.device)[winner]
    elif len(ctx.node.output) > 0 and ctx.node.output[0] and strings:
        raise UnsupportedOpError("LinearClassifier with string class labels (label output) is not supported")
    else:
        label = winner
    return [label, scores]


@register_op("LinearRegressor", "ai.onnx.ml")
def _linear_regressor(ctx: NodeContext, ins: Ins) -> Tensor:
    x = _real(ins[0])
    y = x @ _vector(ctx, "coefficients", x).reshape(int(ctx.attr("targets", 1)), -1).t()
    if ctx.attr("intercepts"):
        y = y + _vector(ctx, "intercepts", x)
    return _post_transform(y, ctx.attr("post_transform", "NONE"))


@register_op("Normalizer", "ai.onnx.ml")
def _normalizer(ctx: NodeContext, ins: Ins) -> Tensor:
    x = _real(ins[0])
    norm = ctx.attr("norm", "MAX")
    if norm == "MAX":
        return x / x.amax(dim=1, keepdim=True)
    if norm == "L1":
        return x / x.abs().sum(dim=1, keepdim=True)
    return x / torch.sqrt((x * x).sum(dim=1, keepdim=True))


@register_op("Scaler", "ai.onnx.ml")
def _scaler(ctx: NodeContext, ins: Ins) -> Tensor:
    x = _real(ins[0])
    return (x - _vector(ctx, "offset", x, [0.0])) * _vector(ctx, "scale", x, [1.0])


# ---------------------------------------------------------------------------------------------- rearranging
@register_op("DepthToSpace")
def _depth_to_space(ctx: NodeContext, ins: Ins) -> Tensor:
    """(N, C, H, W) -> (N, C/b², H·b, W·b); ``DCR`` (default) reads the channels as (b, b, C/b²), ``CRD`` as
    (C/b², b, b)."""
    x = ins[0]
    b = int(ctx.attr("blocksize"))
    n, c, h, w = (int(v) for v in x.shape)
    if str(ctx.attr("mode", "DCR")).upper() == "CRD":
        y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
    else:
        y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    return y.reshape(n, c // (b * b), h * b, w * b)


@register_op("SpaceToDepth")
def _space_to_depth(ctx: NodeContext, ins: Ins) -> Tensor:
    """(N, C, H, W) -> (N, C·b², H/b, W/b), the block offsets leading the channels (the inverse of DCR)."""
    x = ins[0]
    b = int(ctx.attr("blocksize"))
    n, c, h, w = (int(v) for v in x.shape)
    y = x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * b * b, h // b, w // b)


@register_op("Shrink")
def _shrink(ctx: NodeContext, ins: Ins) -> Tensor:
    """``x - bias`` above ``lambd``, ``x + bias`` below ``-lambd``, 0 between."""
    x = ins[0]
    lambd, bias = float(ctx.attr("lambd", 0.5)), float(ctx.attr("bias", 0.0))
    zero = torch.zeros_like(x)
    return torch.where(x > lambd, x - bias, torch.where(x < -lambd, x + bias, zero))


@register_op("TopK")
def _topk(ctx: NodeContext, ins: Ins) -> list[Tensor]:
    """Values and int64 indices of the k largest (smallest) along ``axis``; equal values keep the lower index
    first, as the specification asks (a stable sort, then the first k)."""
    x = ins[0]
    k = _ints(_opt(ins, 1))[0] if _opt(ins, 1) is not None else int(ctx.attr("k"))
    axis = int(ctx.attr("axis", -1))
    largest = bool(int(ctx.attr("largest", 1)))
    _, idx = torch.sort(x.detach(), dim=axis, descending=largest, stable=True)
    idx = idx.narrow(axis, 0, k)
    return [torch.gather(x, axis, idx), idx.to(torch.int64)]


# ---------------------------------------------------------------------------------------------- control flow
@register_op("If")
def _if(ctx: NodeContext, ins: Ins) -> list[Tensor]:
    """Both branches are evaluated on the outer-scope tensors they read; the outputs of the one ``cond``
    selects are returned, so the gradient flows through that branch only. An error in the branch not taken
    is ignored (ONNX Runtime never runs it either: a branch may be valid only when it is selected)."""
    cond = bool(ins[0].reshape(-1)[0])
    outer = dict(zip(ctx.captured, ins[1:]))
    taken, other = ("then_branch", "else_branch") if cond else ("else_branch", "then_branch")
    out = ctx.subgraphs[taken].run(outer)
    try:
        ctx.subgraphs[other].run(outer)
    except Exception:  # see the docstring
        pass
    return out
