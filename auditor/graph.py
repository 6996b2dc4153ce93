"""Pure ONNX graph inspection and surgery (no ONNX Runtime here).

Works on a ``ModelProto`` loaded *without* its external data, so that a model of many GiB costs only its
graph structure in memory; weights are read one tensor at a time (memory-mapped) by :func:`read_tensor`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, GraphProto, ModelProto, TensorProto, ValueInfoProto, helper, numpy_helper

# Operators whose output is a "layer" activation, for ``layers="every"`` style requests.
LAYER_OPS = frozenset(
    {
        "Conv", "ConvTranspose", "Gemm", "MatMul", "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Sigmoid",
        "Tanh", "HardSigmoid", "HardSwish", "Softplus", "Gelu", "Mish", "Clip", "BatchNormalization",
        "LayerNormalization", "InstanceNormalization", "MaxPool", "AveragePool", "GlobalAveragePool",
        "GlobalMaxPool", "Softmax", "Flatten", "Attention",
    }
)
# Operators with a layer weight (matrix or kernel), and the input index where it sits.
WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1, "ConvInteger": 1, "MatMulInteger": 1,
                "QLinearConv": 3, "QLinearMatMul": 3}
LINEAR_OPS = frozenset({"Gemm", "MatMul", "Conv"})


@dataclass(frozen=True)
class TensorSpec:
    """Name, element type and shape of a graph input or output (``None`` for unknown/symbolic dims)."""

    name: str
    elem_type: int
    shape: tuple[int | str | None, ...] | None

    @property
    def dtype(self) -> np.dtype | None:
        """The numpy dtype of the element type, if it is a plain tensor."""
        if self.elem_type == 0:
            return None
        try:
            return np.dtype(helper.tensor_dtype_to_np_dtype(self.elem_type))
        except Exception:
            return None

    def describe(self) -> str:
        """e.g. ``input float32[N,3,32,32]``."""
        dims = "?" if self.shape is None else ",".join("?" if d is None else str(d) for d in self.shape)
        dt = self.dtype.name if self.dtype is not None else "?"
        return f"{self.name} {dt}[{dims}]"


def value_info_spec(vi: ValueInfoProto) -> TensorSpec:
    """A :class:`TensorSpec` from a ``ValueInfoProto``."""
    t = vi.type
    if not t.HasField("tensor_type"):
        return TensorSpec(vi.name, 0, None)
    tt = t.tensor_type
    if not tt.HasField("shape"):
        return TensorSpec(vi.name, tt.elem_type, None)
    dims: list[int | str | None] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return TensorSpec(vi.name, tt.elem_type, tuple(dims))


def initializer_names(graph: GraphProto) -> set[str]:
    """Names of the graph's initializers (and sparse initializers)."""
    names = {t.name for t in graph.initializer}
    names.update(s.values.name for s in graph.sparse_initializer)
    return names


def data_inputs(graph: GraphProto) -> list[ValueInfoProto]:
    """Graph inputs that are data. Old IR versions (< 4) list every initializer as an input too: those are
    weights with a default value, not data."""
    inits = initializer_names(graph)
    return [i for i in graph.input if i.name not in inits]


def subgraph_refs(node: onnx.NodeProto) -> set[str]:
    """Names a control-flow node's subgraphs read from the outer scope."""
    refs: set[str] = set()
    for attr in node.attribute:
        graphs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
        for g in graphs:
            produced = {o for n in g.node for o in n.output} | {i.name for i in g.input}
            produced |= initializer_names(g)
            for n in g.node:
                refs.update(i for i in n.input if i and i not in produced)
                refs.update(r for r in subgraph_refs(n) if r not in produced)
    return refs


def topological_order(graph: GraphProto) -> list[onnx.NodeProto]:
    """The graph's nodes in an order where every node comes after the producers of its inputs (including the
    outer-scope names its subgraphs read), by Kahn's algorithm, stable: a sorted graph keeps its order.

    ONNX requires this order, ONNX Runtime sorts anyway, and some exporters (keras2onnx) write nodes out of
    order. Names no node produces (graph inputs, initializers, outer-scope names of a subgraph) are ready from
    the start. Raises ``ValueError`` on a cycle."""
    nodes = list(graph.node)
    producer: dict[str, int] = {}
    for k, n in enumerate(nodes):
        for o in n.output:
            if o:
                producer[o] = k
    deps: list[set[int]] = []
    users: dict[int, list[int]] = {}
    for k, n in enumerate(nodes):
        names = {i for i in n.input if i} | subgraph_refs(n)
        d = {producer[i] for i in names if i in producer and producer[i] != k}
        deps.append(d)
        for p in d:
            users.setdefault(p, []).append(k)
    if all(max(d, default=-1) < k for k, d in enumerate(deps)):
        return nodes
    import heapq

    missing = [len(d) for d in deps]
    ready = [k for k, m in enumerate(missing) if m == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        k = heapq.heappop(ready)
        order.append(k)
        for u in users.get(k, []):
            missing[u] -= 1
            if missing[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        stuck = [nodes[k].name or nodes[k].output[0] for k, m in enumerate(missing) if m > 0][:3]
        raise ValueError(f"the graph has a cycle (nodes {', '.join(stuck)} never become computable)")
    return [nodes[k] for k in order]


def sorted_graph(model: ModelProto) -> ModelProto:
    """``model`` itself if its main graph is in topological order, else a copy whose nodes are sorted."""
    nodes = topological_order(model.graph)
    if all(a is b for a, b in zip(nodes, model.graph.node)):
        return model
    out = ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def produced_tensors(graph: GraphProto) -> dict[str, onnx.NodeProto]:
    """Map tensor name -> node that produces it."""
    return {o: n for n in graph.node for o in n.output if o}


def prune(model: ModelProto, outputs: list[str]) -> ModelProto:
    """A copy of ``model`` whose graph computes exactly ``outputs`` and nothing else.

    Nodes, inputs and initializers not needed by those outputs vanish (e.g. the label placeholder that a
    TensorFlow graph's accuracy output needs, when the audit asks for the softmax inside it). External data
    references are kept as references.
    """
    model = sorted_graph(model)  # the backward sweep below needs topological order
    g = model.graph
    known = {i.name for i in g.input} | initializer_names(g) | set(produced_tensors(g))
    missing = [o for o in outputs if o not in known]
    if missing:
        raise KeyError(", ".join(missing))
    needed = set(outputs)
    keep: list[onnx.NodeProto] = []
    for node in reversed(g.node):  # ONNX requires topological order, so one backward sweep suffices
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
            needed.update(subgraph_refs(node))
    keep.reverse()
    infos = {vi.name: vi for vi in list(g.value_info) + list(g.output) + list(g.input)}
    new_outputs = []
    for o in outputs:
        vi = ValueInfoProto()
        if o in infos:
            vi.CopyFrom(infos[o])
        else:
            vi.name = o
        new_outputs.append(vi)
    graph = helper.make_graph(
        nodes=keep,
        name=g.name,
        inputs=[i for i in g.input if i.name in needed],
        outputs=new_outputs,
        initializer=[t for t in g.initializer if t.name in needed],
        value_info=[vi for vi in g.value_info if vi.name in needed],
        sparse_initializer=[s for s in g.sparse_initializer if s.values.name in needed],
    )
    out = ModelProto()
    out.CopyFrom(model)
    out.graph.CopyFrom(graph)
    return out


def make_batch_symbolic(model: ModelProto, input_name: str, symbol: str = "auditor_batch") -> ModelProto:
    """A copy of ``model`` whose data input's first dimension (and every output's, where it equals the
    input's fixed batch) is symbolic. Intermediate shape annotations are dropped because they would pin the
    old batch size. The caller must verify the result against the original (see ``ModelHandle``)."""
    out = ModelProto()
    out.CopyFrom(model)
    g = out.graph
    fixed: int | None = None
    for i in g.input:
        if i.name == input_name and i.type.tensor_type.shape.dim:
            d0 = i.type.tensor_type.shape.dim[0]
            fixed = d0.dim_value if d0.HasField("dim_value") else None
            d0.Clear()
            d0.dim_param = symbol
    for o in g.output:
        dims = o.type.tensor_type.shape.dim
        if dims and fixed is not None and dims[0].HasField("dim_value") and dims[0].dim_value == fixed:
            dims[0].Clear()
            dims[0].dim_param = symbol
    del g.value_info[:]
    return out


@dataclass(frozen=True)
class ZipMapInfo:
    """A scikit-learn style ZipMap output replaced by the probability tensor it wraps."""

    output: str
    tensor: str
    classes: tuple[int | str, ...]


def find_zipmaps(graph: GraphProto) -> dict[str, ZipMapInfo]:
    """ZipMap nodes producing graph outputs, keyed by the output name.

    ZipMap turns a probability matrix into a list of per-sample dicts; reading that back in Python would be a
    loop over samples, so the auditor reads the matrix before it instead, with the class labels from the
    node's attributes.
    """
    outs = {o.name for o in graph.output}
    found: dict[str, ZipMapInfo] = {}
    for node in graph.node:
        if node.op_type == "ZipMap" and node.output[0] in outs:
            classes: tuple[int | str, ...] = ()
            for a in node.attribute:
                if a.name == "classlabels_int64s":
                    classes = tuple(int(v) for v in a.ints)
                elif a.name == "classlabels_strings":
                    classes = tuple(v.decode() for v in a.strings)
            found[node.output[0]] = ZipMapInfo(node.output[0], node.input[0], classes)
    return found


def consumers(graph: GraphProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    """Map tensor name -> [(consuming node, input index)]."""
    out: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for n in graph.node:
        for idx, i in enumerate(n.input):
            if i:
                out.setdefault(i, []).append((n, idx))
    return out


def layer_outputs(graph: GraphProto, ops: Iterable[str] = LAYER_OPS) -> list[str]:
    """Outputs of every activation-producing node, in graph order (what ``"every layer"`` means)."""
    ops = set(ops)
    return [n.output[0] for n in graph.node if n.op_type in ops and n.output and n.output[0]]


def penultimate(graph: GraphProto, output: str) -> str | None:
    """The features entering the last linear layer (Gemm/MatMul/Conv) on the path to ``output``.

    Walks back from ``output`` through the graph; the first linear node met is the classifier head and its
    data input (the one that is not an initializer) is the penultimate representation.
    """
    producers = produced_tensors(graph)
    inits = initializer_names(graph)
    frontier = [output]
    seen: set[str] = set()
    while frontier:
        t = frontier.pop(0)
        if t in seen or t not in producers:
            continue
        seen.add(t)
        node = producers[t]
        if node.op_type in LINEAR_OPS:
            data_in = [i for i in node.input if i and i not in inits and _not_constant(i, producers)]
            if data_in:
                return str(data_in[0])
        frontier.extend(i for i in node.input if i and i not in inits)
    return None


def _not_constant(name: str, producers: dict[str, onnx.NodeProto]) -> bool:
    p = producers.get(name)
    return p is None or p.op_type not in ("Constant", "ConstantOfShape")


# ---------------------------------------------------------------------------------------------- weights


@dataclass(frozen=True)
class WeightRef:
    """A weight tensor of the graph, not yet read: an initializer, a ``Constant`` node's value, a
    ``ConstantOfShape`` node's output (``fill`` holds its one value; nothing is materialised) or a tensor
    folded from a constant sub-graph (``folded_from`` names its ops)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    consumers: tuple[tuple[str, str, int], ...]  # (node name, op type, input index)
    external: bool
    nbytes: int
    tensor: TensorProto = field(repr=False, compare=False)
    fill: float | int | None = None
    folded_from: tuple[str, ...] = ()
    source: str = "initializer"  # initializer | Constant | ConstantOfShape | folded

    @property
    def is_layer_weight(self) -> bool:
        """Whether this is the weight (input 1) of a Conv/Gemm/MatMul-like layer."""
        return any(WEIGHT_INPUT.get(op) == idx for _, op, idx in self.consumers) or any(
            op == "Gemm" and idx == 0 for _, op, idx in self.consumers
        )

    @property
    def op_type(self) -> str | None:
        """Op type of the first consuming node."""
        return self.consumers[0][1] if self.consumers else None


def np_dtype(elem_type: int) -> np.dtype | None:
    """The numpy dtype of an ONNX element type (``ml_dtypes`` ones for bfloat16 / float8), or ``None``."""
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except Exception:
        return None


def is_float_dtype(dtype: np.dtype) -> bool:
    """Float storage, including the ``ml_dtypes`` types numpy does not call inexact (bfloat16, float8)."""
    return dtype.kind == "f" or "float" in dtype.name


def constant_tensor(node: onnx.NodeProto, base_dir: Path | None = None) -> TensorProto | None:
    """The value of a ``Constant`` node as a tensor named after its output, whichever attribute holds it
    (``value``, ``value_float(s)``, ``value_int(s)``, ``sparse_value``); ``None`` for string values, and for
    a ``sparse_value`` kept in external files when no ``base_dir`` says where they may be read from."""
    for a in node.attribute:
        arr: np.ndarray | None = None
        if a.name == "value" and a.HasField("t"):
            t = TensorProto()
            t.CopyFrom(a.t)
            t.name = node.output[0]
            return t
        if a.name == "sparse_value" and a.HasField("sparse_tensor"):
            sp = a.sparse_tensor
            if base_dir is None and TensorProto.EXTERNAL in (sp.values.data_location, sp.indices.data_location):
                return None
            values = tensor_array(sp.values, base_dir)
            idx = tensor_array(sp.indices, base_dir).astype(np.int64)
            dims = tuple(int(d) for d in sp.dims)
            dense = np.zeros(int(np.prod(dims)), dtype=values.dtype)
            flat = idx if idx.ndim == 1 else np.ravel_multi_index(tuple(idx.T), dims)
            dense[flat] = values
            arr = dense.reshape(dims)
        elif a.name == "value_float":
            arr = np.asarray(a.f, dtype=np.float32)
        elif a.name == "value_floats":
            arr = np.asarray(list(a.floats), dtype=np.float32)
        elif a.name == "value_int":
            arr = np.asarray(a.i, dtype=np.int64)
        elif a.name == "value_ints":
            arr = np.asarray(list(a.ints), dtype=np.int64)
        if arr is not None:
            return numpy_helper.from_array(arr, node.output[0])
    return None


def _static_ints(name: str, inits: dict[str, TensorProto], consts: dict[str, TensorProto]) -> list[int] | None:
    t = inits.get(name) or consts.get(name)
    if t is None or t.data_location == TensorProto.EXTERNAL:
        return None
    return [int(v) for v in tensor_array(t).reshape(-1)]


def iter_weights(model: ModelProto) -> Iterator[WeightRef]:
    """Every weight tensor of the main graph with its consumers, without reading data: initializers,
    ``Constant`` values and ``ConstantOfShape`` outputs whose shape is a constant (exporters such as
    onnx-caffe2 write every weight that way). Subgraphs: :func:`subgraphs` and :func:`iter_graph_weights`."""
    return iter_graph_weights(model.graph)


def subgraphs(graph: GraphProto, path: str = "") -> Iterator[tuple[str, GraphProto]]:
    """Every subgraph below ``graph`` (``If`` branches, ``Loop`` / ``Scan`` bodies, nested at any depth), depth
    first, with its path ``/<node>/<attribute>`` (e.g. ``/If_0/then_branch/inner_if/else_branch``)."""
    for node in graph.node:
        yield from node_subgraphs(node, path)


def node_subgraphs(node: onnx.NodeProto, path: str = "") -> Iterator[tuple[str, GraphProto]]:
    """:func:`subgraphs` of one node (its own, then theirs), paths starting ``{path}/<node>/<attribute>``."""
    key = node.name or (node.output[0] if node.output else node.op_type)
    for a in node.attribute:
        bodies = [a.g] if a.type == AttributeProto.GRAPH else list(a.graphs) if a.type == AttributeProto.GRAPHS \
            else []
        for k, body in enumerate(bodies):
            sub = f"{path}/{key}/{a.name}" + (f"[{k}]" if a.type == AttributeProto.GRAPHS else "")
            yield sub, body
            yield from subgraphs(body, sub)


def iter_graph_weights(g: GraphProto) -> Iterator[WeightRef]:
    """:func:`iter_weights` of one graph (the main graph or a subgraph: its own initializers and constants;
    consumers are that graph's nodes)."""
    cons = consumers(g)
    tensors: list[tuple[TensorProto, float | int | None, str]] = [(t, None, "initializer") for t in g.initializer]
    inits = {t.name: t for t in g.initializer}
    consts: dict[str, TensorProto] = {}
    for n in g.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and n.output:
            t = constant_tensor(n)
            if t is not None:
                consts[t.name] = t
                tensors.append((t, None, "Constant"))
    for n in g.node:
        if n.op_type != "ConstantOfShape" or n.domain not in ("", "ai.onnx") or not n.input or not n.output:
            continue
        dims = _static_ints(n.input[0], inits, consts)
        if dims is None or any(d < 0 for d in dims):
            continue
        value = np.zeros(1, dtype=np.float32)
        for a in n.attribute:
            if a.name == "value" and a.t.data_location != TensorProto.EXTERNAL:
                value = tensor_array(a.t).reshape(-1)
        t = TensorProto()
        t.name, t.data_type = n.output[0], helper.np_dtype_to_tensor_dtype(value.dtype)
        t.dims.extend(dims)
        fill = value[0].item() if value.size else 0
        tensors.append((t, fill, "ConstantOfShape"))
    for t, fill, source in tensors:
        dtype = np_dtype(t.data_type)
        if dtype is None:
            continue
        shape = tuple(int(d) for d in t.dims)
        external = t.data_location == TensorProto.EXTERNAL
        c = tuple((n.name or n.output[0], n.op_type, idx) for n, idx in cons.get(t.name, []))
        yield WeightRef(t.name, shape, dtype, c, external, int(np.prod(shape)) * dtype.itemsize, t, fill,
                        source=source)


def folded_weight(name: str, value: np.ndarray, ops: tuple[str, ...],
                  consumers_of: tuple[tuple[str, str, int], ...] = ()) -> WeightRef:
    """A :class:`WeightRef` for a tensor computed by constant folding (held in memory)."""
    arr = np.ascontiguousarray(value)
    t = numpy_helper.from_array(arr, name)
    return WeightRef(name, tuple(int(d) for d in arr.shape), arr.dtype, consumers_of, False, int(arr.nbytes), t,
                     None, ops, "folded")


#: Ops a constant sub-graph may contain for :func:`fold_constant` (deterministic, no subgraphs, no data).
FOLDABLE_OPS = frozenset({
    "Identity", "Cast", "CastLike", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Concat",
    "Split", "Slice", "Gather", "Expand", "Tile", "Pad", "Mul", "Add", "Sub", "Div", "Neg", "Abs", "Sqrt",
    "Reciprocal", "Pow", "Exp", "Log", "Clip", "Max", "Min", "Sum", "Where", "Not", "Equal", "Less",
    "Greater", "DequantizeLinear", "QuantizeLinear", "ConstantOfShape", "Constant", "Shape", "Size", "Range",
    "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceL2", "MatMul", "Sign", "Floor", "Ceil",
    "Round",
})


def constant_subgraph(graph: GraphProto, name: str, *, max_nodes: int = 64) -> list[onnx.NodeProto] | None:
    """The nodes computing ``name`` from initializers and constants only (graph order), or ``None`` if it
    depends on a graph input or on an op outside :data:`FOLDABLE_OPS`. ``[]`` for an initializer."""
    producers = produced_tensors(graph)
    inits = initializer_names(graph)
    data = {i.name for i in graph.input if i.name not in inits}
    needed: dict[int, onnx.NodeProto] = {}
    order = {id(n): k for k, n in enumerate(graph.node)}
    stack, seen = [name], set()
    while stack:
        t = stack.pop()
        if t in seen or not t:
            continue
        seen.add(t)
        if t in inits:
            continue
        if t in data or t not in producers:
            return None
        node = producers[t]
        if node.op_type not in FOLDABLE_OPS or node.domain not in ("", "ai.onnx"):
            return None
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            return None
        needed[id(node)] = node
        if len(needed) > max_nodes:
            return None
        stack.extend(node.input)
    return sorted(needed.values(), key=lambda n: order[id(n)])


def fold_constant(model: ModelProto, name: str, base_dir: Path) -> tuple[np.ndarray, tuple[str, ...]] | None:
    """The value of tensor ``name`` if it is computed from constants alone (see :func:`constant_subgraph`),
    evaluated with onnx's reference implementation, and the op types it went through."""
    g = model.graph
    nodes = constant_subgraph(g, name)
    if nodes is None:
        return None
    refs = {r.name: r for r in iter_weights(model)}
    if not nodes:
        ref = refs.get(name)
        return None if ref is None else (np.asarray(read_tensor(ref, base_dir)), ())
    from onnx.reference import ReferenceEvaluator

    needed_inits = {i for n in nodes for i in n.input if i} - {o for n in nodes for o in n.output}
    feeds: dict[str, np.ndarray] = {}
    for i in needed_inits:
        ref = refs.get(i)
        if ref is None:
            return None
        feeds[i] = np.asarray(read_tensor(ref, base_dir))
    sub = helper.make_graph(
        list(nodes), "fold",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
         for k, v in feeds.items()],
        [helper.make_tensor_value_info(name, 0, None)],
    )
    m = helper.make_model(sub, opset_imports=list(model.opset_import))
    m.ir_version = min(int(model.ir_version) or 9, 10)
    try:
        values: list[Any] = list(ReferenceEvaluator(m).run(None, feeds))
        value = values[0]
    except Exception:
        return None
    return np.asarray(value), tuple(n.op_type for n in nodes)


class ExternalDataError(ValueError):
    """A tensor's external data cannot be used: its location leaves the model's folder, its ``offset`` or
    ``length`` is not a non-negative integer, or it is read where no folder is known."""


def external_location(tensor: TensorProto, base_dir: Path) -> tuple[Path, int, int | None]:
    """Resolved file, offset and length of an external tensor; refuses paths outside ``base_dir`` and offsets
    or lengths that are not non-negative integers (:class:`ExternalDataError`, naming the tensor and why)."""
    info = {e.key: e.value for e in tensor.external_data}
    loc = info.get("location", "")
    name = tensor.name or "(unnamed)"
    if not loc:
        raise ExternalDataError(f"external data of tensor '{name}' has no location")
    if "\0" in loc:
        raise ExternalDataError(f"external data of tensor '{name}' has a location with a NUL byte: refused")
    base = base_dir.resolve()
    target = (base / loc).resolve()
    if os.path.isabs(loc) or not target.is_relative_to(base):
        raise ExternalDataError(
            f"external data of tensor '{name}' points outside the model's folder ({loc!r}): refused"
        )

    def count(key: str) -> int | None:
        raw = info.get(key)
        if raw is None or raw == "":
            return None
        text = raw.strip()
        if not text.isdigit():  # digits only: no sign, no fraction, no exponent
            raise ExternalDataError(f"external data of tensor '{name}': {key} {raw[:40]!r} is not a "
                                    f"non-negative integer")
        return int(text)

    offset = count("offset") or 0
    length = count("length")
    return target, offset, length


def all_tensors(model: ModelProto) -> Iterator[TensorProto]:
    """Every ``TensorProto`` a model holds: initializers and sparse initializers (values and indices) of the
    main graph and every subgraph, tensor attributes (``t``, ``tensors``, ``sparse_tensor(s)`` as used by
    ``Constant.sparse_value``), and the same inside local function bodies."""

    def sparse(sp: onnx.SparseTensorProto) -> Iterator[TensorProto]:
        yield sp.values
        yield sp.indices

    def nodes(ns: Iterable[onnx.NodeProto]) -> Iterator[TensorProto]:
        for n in ns:
            for a in n.attribute:
                if a.HasField("t"):
                    yield a.t
                yield from a.tensors
                if a.HasField("sparse_tensor"):
                    yield from sparse(a.sparse_tensor)
                for sp in a.sparse_tensors:
                    yield from sparse(sp)
                for sub in [*a.graphs, *([a.g] if a.HasField("g") else [])]:
                    yield from graph(sub)

    def graph(g: GraphProto) -> Iterator[TensorProto]:
        yield from g.initializer
        for sp in g.sparse_initializer:
            yield from sparse(sp)
        yield from nodes(g.node)

    yield from graph(model.graph)
    for f in model.functions:
        yield from nodes(f.node)


def check_external_paths(model: ModelProto, base_dir: Path) -> None:
    """Raise :class:`ExternalDataError` if any external tensor anywhere in the model (see :func:`all_tensors`)
    points outside ``base_dir`` or has a malformed offset or length."""
    for t in all_tensors(model):
        if t.data_location != TensorProto.EXTERNAL:
            continue
        path, offset, length = external_location(t, base_dir)
        name = t.name or "(unnamed)"
        # The real cause, named at load time, rather than an mmap error when a check first reads the tensor.
        if not path.is_file():
            raise ExternalDataError(f"external data of tensor '{name}': file {path.name!r} not found in the "
                                    f"model's folder")
        dtype = np_dtype(t.data_type)
        if dtype is None:
            continue
        need = (int(np.prod([int(d) for d in t.dims])) if len(t.dims) else 1) * dtype.itemsize
        if length is not None and length < need:
            raise ExternalDataError(f"external data of tensor '{name}': length {length} is shorter than its "
                                    f"shape and type need ({need} bytes)")
        size = path.stat().st_size
        if offset + need > size:
            raise ExternalDataError(f"external data of tensor '{name}': bytes {offset}..{offset + need} of "
                                    f"{path.name!r} are needed, but the file has {size}")


def tensor_array(t: TensorProto, base_dir: Path | None = None) -> np.ndarray:
    """The values of any tensor: inline data through onnx, external data from ``base_dir`` only (confined and
    checked by :func:`external_location`). onnx's own reader would resolve an external location against the
    current folder; without ``base_dir`` an external tensor is refused instead."""
    if t.data_location != TensorProto.EXTERNAL:
        return numpy_helper.to_array(t)
    if base_dir is None:
        raise ExternalDataError(f"tensor '{t.name or '(unnamed)'}' keeps its data in an external file where "
                                "only inline values are read")
    dtype = np_dtype(t.data_type)
    if dtype is None:
        raise ExternalDataError(f"external tensor '{t.name}' has a data type ({t.data_type}) that is not numeric")
    path, offset, length = external_location(t, base_dir)
    shape = tuple(int(d) for d in t.dims)
    n = int(np.prod(shape)) if shape else 1
    if length is not None and length < n * dtype.itemsize:
        raise ExternalDataError(f"external data of '{t.name}' is shorter than its shape says")
    arr = np.memmap(path, dtype=dtype.newbyteorder("<"), mode="r", offset=offset, shape=(n,))
    return np.asarray(arr).reshape(shape)


def read_tensor(ref: WeightRef, base_dir: Path) -> np.ndarray:
    """The values of a weight; external data is memory-mapped (read-only), not loaded."""
    t = ref.tensor
    if ref.external:
        path, offset, length = external_location(t, base_dir)
        count = int(np.prod(ref.shape)) if ref.shape else 1
        if length is not None and length < count * ref.dtype.itemsize:
            raise ExternalDataError(f"external data of '{t.name}' is shorter than its shape says")
        arr = np.memmap(path, dtype=ref.dtype.newbyteorder("<"), mode="r", offset=offset, shape=(count,))
        return arr.reshape(ref.shape)
    if ref.fill is not None:
        # a ConstantOfShape output: one value broadcast (no memory), read-only like a memory map
        return np.broadcast_to(np.asarray(ref.fill, dtype=ref.dtype), ref.shape)
    return tensor_array(t)
