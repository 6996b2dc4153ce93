"""Finding the layer weights of an ONNX graph and reading them in bounded chunks.

A *layer weight* is the kernel of a Conv / ConvTranspose or the matrix of a Gemm / MatMul (and of their
integer and QLinear forms). Exporters often put a node between the stored initializer and the layer
(``Transpose`` from TensorFlow's HWIO kernels, ``DequantizeLinear`` in QDQ models, ``Cast`` or ``Identity``);
:func:`find_layer_weights` follows such a chain so that every statistic is computed on the values the layer
really uses, with the output and input axes located in the *stored* tensor.

Statistics are accumulated over chunks of the stored tensor's first axis (:func:`iter_chunks`), so that a
memory-mapped tensor of many GiB costs only a bounded working set beyond its pages.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from auditor import AuditContext, ModelHandle, SkipCheck
from auditor import graph as G
from auditor.graph import WeightRef, external_location, fold_constant, folded_weight, is_float_dtype

#: Bytes of float64 working memory per chunk. Small enough that a chunk and its temporaries stay in the CPU
#: cache across the several reductions made on it (measured: 2 MiB is ~3x faster than 32 MiB); module-level so
#: that tests can force many tiny chunks.
CHUNK_BYTES = 2 << 20

# (op type, input index of the weight) of the layers whose weights are audited.
_WEIGHT_SLOTS: dict[str, tuple[int, ...]] = {
    "Conv": (1,), "ConvTranspose": (1,), "ConvInteger": (1,), "QLinearConv": (3,),
    "Gemm": (1, 0), "MatMul": (1, 0), "MatMulInteger": (1,), "QLinearMatMul": (3,),
}
# Where the zero point / scale of the weight sits for integer ops: op -> (zero point index, scale index).
_INT_PARAMS: dict[str, tuple[int, int | None]] = {
    "ConvInteger": (3, None), "MatMulInteger": (3, None), "QLinearConv": (5, 4), "QLinearMatMul": (5, 4),
}
_CONV_OPS = frozenset({"Conv", "ConvInteger", "QLinearConv"})
_PASS_THROUGH = frozenset({"Identity", "Cast", "Transpose", "DequantizeLinear"})


@dataclass(frozen=True)
class Dequant:
    """``(q - zero_point) * scale`` along ``axis`` of the stored tensor (``None``: per-tensor)."""

    zero_point: np.ndarray | None
    scale: np.ndarray | None
    axis: int | None


@dataclass(frozen=True)
class LayerWeight:
    """A stored initializer as the weight of one layer.

    ``kind`` is ``conv`` (output filters on ``out_axis``, input channels on ``in_axis``, the rest kernel
    axes), ``conv_transpose`` or ``matrix``. ``out_axis`` / ``in_axis`` are axes of the *stored* tensor;
    ``perm`` the permutation that turns the stored tensor into the layer's own layout (identity if none);
    ``groups`` the conv's ``group``; ``alpha`` Gemm's scale; ``dequant`` integer decoding; ``via`` the
    pass-through ops between initializer and layer.
    """

    ref: WeightRef
    node: str
    op_type: str
    kind: str
    out_axis: int
    in_axis: int
    perm: tuple[int, ...]
    groups: int = 1
    alpha: float = 1.0
    dequant: Dequant | None = None
    via: tuple[str, ...] = ()
    data_input: str | None = None
    slot: int = 1  # the input index of the layer node that receives the weight

    @property
    def name(self) -> str:
        """The initializer's name in the ONNX graph."""
        return self.ref.name

    @property
    def quantized(self) -> bool:
        """Whether the layer sees integer values decoded by a scale and zero point (QDQ, QLinear*, *Integer):
        an exact zero is then a value that rounded to the zero point, not necessarily a pruned weight."""
        return self.dequant is not None or "DequantizeLinear" in self.via

    @property
    def scale_known(self) -> bool:
        """False for an integer weight whose scale could not be located (``ConvInteger`` / ``MatMulInteger``
        outside the dynamic-quantization pattern): values are then ``q - zero_point``, off by one factor."""
        return self.dequant is None or self.dequant.scale is not None or self.op_type not in _INT_PARAMS

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the stored tensor."""
        return self.ref.shape

    @property
    def layer_shape(self) -> tuple[int, ...]:
        """Shape as the layer sees it (after the pass-through transposes)."""
        return tuple(self.ref.shape[p] for p in self.perm)

    @property
    def size(self) -> int:
        """Number of parameters."""
        return int(np.prod(self.ref.shape)) if self.ref.shape else 1


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    """An attribute's value, or ``default`` when the node does not set it (shared with the Lipschitz chain)."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _node_key(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


def _small_array(model: ModelHandle, name: str, inits: dict[str, onnx.TensorProto]) -> np.ndarray | None:
    """A (small) parameter initializer such as a zero point or a scale."""
    t = inits.get(name)
    return None if t is None else G.tensor_array(t, model.path.parent)


def find_layer_weights(model: ModelHandle) -> list[LayerWeight]:
    """Every layer weight of the model, in graph order of the consuming layers: the main graph's, then those
    inside subgraphs (``If`` branches, ``Loop`` / ``Scan`` bodies: silero-vad keeps its whole network there),
    each named with its branch path (``/If_0/then_branch/<weight>``) and placed after the node that holds it."""
    g = model.proto.graph
    inits = {t.name: t for t in g.initializer}
    refs = {r.name: r for r in model.weights()}
    order = {_node_key(n): k for k, n in enumerate(g.node)}
    found: list[tuple[tuple[int, ...], LayerWeight]] = []
    covered: set[str] = set()
    for k, lw in _graph_layer_weights(model, g, refs, inits, ""):
        found.append(((order.get(lw.node, k), 0, 0), lw))
        covered.add(lw.node)
    found.extend(((i, 0, 0), lw) for i, lw in _folded_layer_weights(model, covered, order, inits))
    subs = ((top, path, sub) for top, node in enumerate(g.node) for path, sub in G.node_subgraphs(node))
    claimed = {lw.ref.name for _, lw in found}
    for seq, (top, path, sub) in enumerate(subs, start=1):
        sub_refs = {r.name: r for r in G.iter_graph_weights(sub)}
        # the branch's own tensors: initializers, and Constant values (scales, zero points) for dequantization
        sub_inits = {t.name: t for t in sub.initializer}
        sub_inits.update({r.name: r.tensor for r in sub_refs.values() if r.source == "Constant"})
        # main-graph initializers the branch captures by name (silero_vad_op18_ifless keeps every weight in
        # the main graph and its layers in the If branches), each counted once, in the first branch using it
        captured = {i for n in sub.node for i in n.input if i in refs and i not in sub_refs and i not in claimed}
        sub_refs.update({name: refs[name] for name in captured})
        sub_inits.update({name: t for name, t in inits.items() if name not in sub_inits})
        claimed |= captured
        found.extend(((top, seq, k), lw) for k, lw in _graph_layer_weights(model, sub, sub_refs, sub_inits, path))
    found.sort(key=lambda t: t[0])
    return [lw for _, lw in found]


def require_layers(model: ModelHandle, kind: str | None = None) -> list[LayerWeight]:
    """:func:`find_layer_weights` (of ``kind`` only, if given), or a skip saying the model has none."""
    layers = [lw for lw in find_layer_weights(model) if kind in (None, lw.kind)]
    if not layers:
        raise SkipCheck("the model has no convolution weights" if kind == "conv" else
                        "the model has no Conv / Gemm / MatMul layer weights")
    return layers


def audited(ctx: AuditContext, layers: list[LayerWeight]) -> Iterator[LayerWeight]:
    """``layers`` one at a time, with progress and cancellation between them: the weights checks' walk."""
    for k, lw in enumerate(layers):
        ctx.check_cancelled()
        ctx.report_progress(k, len(layers), lw.name)
        yield lw
    ctx.report_progress(len(layers), len(layers), "done")


def head_weight(model: ModelHandle, layers: list[LayerWeight],
                features: str | None) -> tuple[LayerWeight, np.ndarray] | None:
    """The classifier head (the last of ``layers`` reading ``features``, the penultimate features) and its
    values in float64, in the stored layout."""
    head = next((lw for lw in reversed(layers) if features is not None and lw.data_input == features), None)
    if head is None:
        return None
    return head, decode(head, model.read_weight(head.ref), slice(None)).astype(np.float64)


def _graph_layer_weights(model: ModelHandle, g: onnx.GraphProto, refs: dict[str, WeightRef],
                         inits: dict[str, onnx.TensorProto], path: str) -> list[tuple[int, LayerWeight]]:
    """``(node index, layer weight)`` for the weights ``refs`` of graph ``g`` consumed by its layers, through
    pass-through chains; weight and node names prefixed with ``path`` for a subgraph."""
    consumers = G.consumers(g)
    index = {_node_key(n): k for k, n in enumerate(g.node)}
    found: list[tuple[int, LayerWeight]] = []
    for ref in refs.values():
        if len(ref.shape) < 2 or 0 in ref.shape or not (ref.dtype.kind in "iu" or is_float_dtype(ref.dtype)):
            continue
        # Follow single-consumer pass-through nodes: the layer sees the weight after them.
        tensor, perm = ref.name, tuple(range(len(ref.shape)))
        via: list[str] = []
        dequant: Dequant | None = None
        for _ in range(4):
            cons = consumers.get(tensor, [])
            if len(cons) != 1 or cons[0][0].op_type not in _PASS_THROUGH or cons[0][1] != 0:
                break
            node = cons[0][0]
            if node.op_type == "Transpose":
                p = _attr(node, "perm", None)
                order_p = tuple(int(v) for v in p) if isinstance(p, list) else tuple(reversed(range(len(perm))))
                perm = tuple(perm[k] for k in order_p)
            elif node.op_type == "DequantizeLinear":
                if dequant is not None or "Transpose" in via:
                    break  # the axis bookkeeping below assumes dequantization of the stored layout
                scale = _small_array(model, node.input[1], inits) if len(node.input) > 1 else None
                zp = _small_array(model, node.input[2], inits) if len(node.input) > 2 and node.input[2] else None
                if scale is None:
                    break
                per_axis = scale.ndim == 1 and scale.size > 1
                ax = int(_attr(node, "axis", 1)) % len(ref.shape) if per_axis else None
                dequant = Dequant(zp, scale, ax)
            via.append(node.op_type)
            tensor = node.output[0]
        for node, idx in consumers.get(tensor, []):
            if idx not in _WEIGHT_SLOTS.get(node.op_type, ()):
                continue
            named = ref if not path else dataclasses.replace(ref, name=f"{path}/{ref.name}")
            lw = _describe(model, node, idx, named, perm, tuple(via), dequant, inits)
            if lw is not None:
                if path:
                    lw = dataclasses.replace(lw, node=f"{path}/{lw.node}")
                found.append((index.get(_node_key(node), 0), lw))
                break
    return found


def _folded_layer_weights(model: ModelHandle, covered: set[str], order: dict[str, int],
                          inits: dict[str, onnx.TensorProto]) -> list[tuple[int, LayerWeight]]:
    """Layer weights computed by a constant sub-graph that is not a plain pass-through chain (a Reshape, an
    Unsqueeze, a Mul by a constant, a DequantizeLinear after a Transpose ...): folded once with onnx's
    reference evaluator and audited as the values the layer receives."""
    out: list[tuple[int, LayerWeight]] = []
    for node in model.proto.graph.node:
        key = _node_key(node)
        if key in covered or node.op_type not in _WEIGHT_SLOTS:
            continue
        for idx in _WEIGHT_SLOTS[node.op_type]:
            if len(node.input) <= idx or not node.input[idx] or node.input[idx] in inits:
                continue
            got = fold_constant(model.proto, node.input[idx], model.path.parent)
            if got is None:
                continue
            value, ops = got
            if value.ndim < 2 or 0 in value.shape or not (value.dtype.kind in "iu" or is_float_dtype(value.dtype)):
                continue
            ref = folded_weight(node.input[idx], value, ops, ((key, node.op_type, idx),))
            lw = _describe(model, node, idx, ref, tuple(range(value.ndim)), ops, None, inits)
            if lw is not None:
                out.append((order.get(key, 0), lw))
                break
    return out


def _describe(model: ModelHandle, node: onnx.NodeProto, idx: int, ref: WeightRef, perm: tuple[int, ...],
              via: tuple[str, ...], dequant: Dequant | None,
              inits: dict[str, onnx.TensorProto]) -> LayerWeight | None:
    """Locate the output and input axes of the layer's weight in the stored tensor."""
    op = node.op_type
    rank = len(perm)
    others = [i for k, i in enumerate(node.input) if k != idx and i and i not in inits]
    data_input = others[0] if others else None
    if op in _INT_PARAMS and dequant is None:
        zpi, sci = _INT_PARAMS[op]
        zp = _small_array(model, node.input[zpi], inits) if len(node.input) > zpi and node.input[zpi] else None
        sc = None
        if sci is not None and len(node.input) > sci:
            sc = _small_array(model, node.input[sci], inits)
        elif sci is None:
            sc = _integer_op_scale(model, node, inits)
        arrays = [a for a in (zp, sc) if a is not None]
        per_axis = any(a.ndim == 1 and a.size > 1 for a in arrays)
        # Per-channel parameters of these ops run along the output channels.
        ax = (perm[0] if op in _CONV_OPS else perm[rank - 1]) if per_axis else None
        dequant = Dequant(zp, sc, ax)
    alpha, groups, kind = 1.0, int(_attr(node, "group", 1)), "matrix"
    if op in _CONV_OPS or op == "ConvTranspose":
        # ConvTranspose's (C_in, C_out / group, k...): axis 0 indexes inputs, axis 1 outputs within a group.
        kind, (out_l, in_l) = ("conv_transpose", (1, 0)) if op == "ConvTranspose" else ("conv", (0, 1))
    elif op == "Gemm":
        if rank != 2:
            return None
        alpha = float(_attr(node, "alpha", 1.0))
        # B (K, N) maps K inputs to N outputs; a weight as A (M, K) computes A @ X, M outputs from K inputs;
        # transB / transA swap the two axes
        trans = bool(_attr(node, "transB" if idx == 1 else "transA", 0))
        out_l, in_l = (0, 1) if trans == (idx == 1) else (1, 0)
    else:
        # MatMul (and integer forms): X @ W with W (..., K, N), or W @ X with W (M, K) when W comes first.
        out_l, in_l = (rank - 1, rank - 2) if idx != 0 else (rank - 2, rank - 1)
    return LayerWeight(ref, _node_key(node), op, kind, out_axis=perm[out_l], in_axis=perm[in_l], perm=perm,
                       groups=groups, alpha=alpha, dequant=dequant, via=via, data_input=data_input, slot=idx)


def _integer_op_scale(model: ModelHandle, node: onnx.NodeProto,
                      inits: dict[str, onnx.TensorProto]) -> np.ndarray | None:
    """The weight scale of a ``ConvInteger`` / ``MatMulInteger``, which the op itself does not take: ONNX
    Runtime's dynamic quantizer multiplies the (cast) integer result by ``x_scale * w_scale`` right after it.
    Found by that pattern (``Mul(x_scale, w_scale)`` with ``w_scale`` an initializer); ``None`` otherwise."""
    g = model.proto.graph
    prod, cons = G.produced_tensors(g), G.consumers(g)
    t = node.output[0]
    for _ in range(2):
        nxt = cons.get(t, [])
        if len(nxt) != 1:
            return None
        n = nxt[0][0]
        if n.op_type == "Cast":
            t = n.output[0]
            continue
        if n.op_type != "Mul":
            return None
        other = n.input[1] if n.input[0] == t else n.input[0]
        sp = prod.get(other)
        if sp is None or sp.op_type != "Mul":
            return None
        # x_scale is computed (DynamicQuantizeLinear's second output); the initializer is the weight's
        cands = [i for i in sp.input if i in inits]
        if len(cands) != 1:
            return None
        return _small_array(model, cands[0], inits)
    return None


def _broadcast(param: np.ndarray, axis: int | None, ndim: int, rows: slice) -> np.ndarray:
    """A per-tensor or per-axis parameter shaped to broadcast against a chunk of rows of the stored tensor."""
    if axis is None or param.ndim == 0 or param.size == 1:
        return np.asarray(param).reshape(())
    shape = [1] * ndim
    shape[axis] = param.size
    p = param.reshape(shape)
    return p[rows] if axis == 0 else p


def decode(lw: LayerWeight, raw: np.ndarray, rows: slice) -> np.ndarray:
    """The values the layer uses for stored rows ``rows`` (dequantized where the weight is integer)."""
    dq = lw.dequant
    if dq is None:
        if raw.dtype.kind == "f" and raw.dtype.itemsize >= 4:
            return np.asarray(raw)
        return np.asarray(raw, dtype=np.float64)
    vals = np.asarray(raw, dtype=np.float64)
    if dq.zero_point is not None:
        vals = vals - _broadcast(dq.zero_point.astype(np.float64), dq.axis, raw.ndim, rows)
    if dq.scale is not None:
        vals = vals * _broadcast(dq.scale.astype(np.float64), dq.axis, raw.ndim, rows)
    return vals


def iter_chunks(model: ModelHandle, lw: LayerWeight) -> Iterator[tuple[slice, np.ndarray]]:
    """``(rows, values)`` over chunks of the stored tensor's first axis, decoded.

    A tensor in external data is read chunk by chunk with positioned reads, so it never occupies more than a
    chunk of memory; on the 2.25 GiB benchmark this is 10x faster than page-faulting through the memory map
    that :meth:`ModelHandle.read_weight` gives (which is used for tensors stored inside the model file).
    The next chunk is read by a helper thread while the current one is reduced (file reads and numpy both
    release the GIL), into one of two alternating buffers: a yielded array is valid until the next chunk is
    requested.
    """
    n0 = lw.shape[0]
    row_elems = max(1, lw.size // max(n0, 1))
    step = max(1, CHUNK_BYTES // (row_elems * 8))
    if lw.ref.external:
        yield from _read_external(model, lw, step, row_elems)
        return
    arr = model.read_weight(lw.ref)
    try:
        for start in range(0, n0, step):
            rows = slice(start, min(start + step, n0))
            yield rows, decode(lw, arr[rows], rows)
    finally:
        del arr


def _read_external(model: ModelHandle, lw: LayerWeight, step: int,
                   row_elems: int) -> Iterator[tuple[slice, np.ndarray]]:
    n0 = lw.shape[0]
    path, offset, _ = external_location(lw.ref.tensor, model.path.parent)
    dtype = lw.ref.dtype.newbyteorder("<")
    starts = list(range(0, n0, step))
    buffers = [np.empty(min(step, n0) * row_elems, dtype=dtype) for _ in range(min(2, len(starts)))]

    with open(path, "rb", buffering=0) as f, ThreadPoolExecutor(max_workers=1) as pool:
        if hasattr(os, "posix_fadvise"):
            # let the kernel read the whole tensor ahead (into the page cache, not this process): from a cold
            # disk, 1 MiB reads would otherwise each wait for the device
            os.posix_fadvise(f.fileno(), offset, lw.size * dtype.itemsize, os.POSIX_FADV_WILLNEED)

        def read(k: int) -> np.ndarray:
            start = starts[k]
            stop = min(start + step, n0)
            buf = buffers[k % len(buffers)][: (stop - start) * row_elems]
            f.seek(offset + start * row_elems * dtype.itemsize)
            _read_exactly(f, buf.data.cast("B"), path)
            return buf.reshape((stop - start, *lw.shape[1:]))

        pending = pool.submit(read, 0)
        for k, start in enumerate(starts):
            raw = pending.result()
            if k + 1 < len(starts):
                pending = pool.submit(read, k + 1)  # overlaps the disk with the reductions of this chunk
            rows = slice(start, min(start + step, n0))
            if not dtype.isnative:
                raw = raw.astype(lw.ref.dtype.newbyteorder("="))
            yield rows, decode(lw, raw, rows)


def _read_exactly(f: io.FileIO, view: memoryview, path: Path) -> None:
    """Fill ``view`` from ``f`` (short reads happen on some file systems)."""
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise ValueError(f"{path}: external data ends before the tensor does")
        got += n


def layer_values(model: ModelHandle, lw: LayerWeight) -> np.ndarray:
    """The whole weight in the layer's own layout (one tensor in memory: for the spectral checks)."""
    arr = model.read_weight(lw.ref)
    vals = decode(lw, arr, slice(None))
    return np.ascontiguousarray(np.transpose(vals, lw.perm))
