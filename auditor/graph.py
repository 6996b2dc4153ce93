"""Pure ONNX graph inspection and surgery (no ONNX Runtime here).

Works on a ``ModelProto`` loaded *without* its external data, so that a model of many GiB costs only its
graph structure in memory; weights are read one tensor at a time (memory-mapped) by :func:`read_tensor`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import GraphProto, ModelProto, TensorProto, ValueInfoProto, helper, numpy_helper

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
WEIGHT_OPS = frozenset(WEIGHT_INPUT)
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


def _subgraph_refs(node: onnx.NodeProto) -> set[str]:
    """Names a control-flow node's subgraphs read from the outer scope."""
    refs: set[str] = set()
    for attr in node.attribute:
        graphs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
        for g in graphs:
            produced = {o for n in g.node for o in n.output} | {i.name for i in g.input}
            produced |= initializer_names(g)
            for n in g.node:
                refs.update(i for i in n.input if i and i not in produced)
                refs.update(r for r in _subgraph_refs(n) if r not in produced)
    return refs


def produced_tensors(graph: GraphProto) -> dict[str, onnx.NodeProto]:
    """Map tensor name -> node that produces it."""
    return {o: n for n in graph.node for o in n.output if o}


def prune(model: ModelProto, outputs: list[str]) -> ModelProto:
    """A copy of ``model`` whose graph computes exactly ``outputs`` and nothing else.

    Nodes, inputs and initializers not needed by those outputs vanish (e.g. the label placeholder that a
    TensorFlow graph's accuracy output needs, when the audit asks for the softmax inside it). External data
    references are kept as references.
    """
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
            needed.update(_subgraph_refs(node))
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
                return data_in[0]
        frontier.extend(i for i in node.input if i and i not in inits)
    return None


def _not_constant(name: str, producers: dict[str, onnx.NodeProto]) -> bool:
    p = producers.get(name)
    return p is None or p.op_type != "Constant"


# ---------------------------------------------------------------------------------------------- weights


@dataclass(frozen=True)
class WeightRef:
    """A weight tensor of the graph (an initializer or a Constant node's value), not yet read."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    consumers: tuple[tuple[str, str, int], ...]  # (node name, op type, input index)
    external: bool
    nbytes: int
    tensor: TensorProto = field(repr=False, compare=False)

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


def iter_weights(model: ModelProto) -> Iterator[WeightRef]:
    """Every initializer and Constant tensor of the main graph, with its consumers, without reading data."""
    g = model.graph
    cons = consumers(g)
    tensors: list[TensorProto] = list(g.initializer)
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.HasField("t"):
                    t = TensorProto()
                    t.CopyFrom(a.t)
                    t.name = n.output[0]
                    tensors.append(t)
    for t in tensors:
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
        except Exception:
            continue
        shape = tuple(int(d) for d in t.dims)
        external = t.data_location == TensorProto.EXTERNAL
        c = tuple((n.name or n.output[0], n.op_type, idx) for n, idx in cons.get(t.name, []))
        yield WeightRef(t.name, shape, dtype, c, external, int(np.prod(shape)) * dtype.itemsize, t)


def external_location(tensor: TensorProto, base_dir: Path) -> tuple[Path, int, int | None]:
    """Resolved file, offset and length of an external tensor; refuses paths outside ``base_dir``."""
    info = {e.key: e.value for e in tensor.external_data}
    loc = info.get("location", "")
    base = base_dir.resolve()
    target = (base / loc).resolve()
    if os.path.isabs(loc) or not target.is_relative_to(base):
        raise PermissionError(
            f"external data of tensor '{tensor.name}' points outside the model's folder ({loc!r}): refused"
        )
    offset = int(info.get("offset", 0) or 0)
    length = int(info["length"]) if "length" in info else None
    return target, offset, length


def check_external_paths(model: ModelProto, base_dir: Path) -> None:
    """Raise ``PermissionError`` if any external tensor (in any subgraph) points outside ``base_dir``."""

    def tensors(g: GraphProto) -> Iterator[TensorProto]:
        yield from g.initializer
        for n in g.node:
            for a in n.attribute:
                if a.HasField("t"):
                    yield a.t
                for sub in list(a.graphs) + ([a.g] if a.HasField("g") else []):
                    yield from tensors(sub)

    for t in tensors(model.graph):
        if t.data_location == TensorProto.EXTERNAL:
            external_location(t, base_dir)


def read_tensor(ref: WeightRef, base_dir: Path) -> np.ndarray:
    """The values of a weight; external data is memory-mapped (read-only), not loaded."""
    t = ref.tensor
    if ref.external:
        path, offset, length = external_location(t, base_dir)
        count = int(np.prod(ref.shape)) if ref.shape else 1
        if length is not None and length < count * ref.dtype.itemsize:
            raise ValueError(f"external data of '{t.name}' is shorter than its shape says")
        arr = np.memmap(path, dtype=ref.dtype.newbyteorder("<"), mode="r", offset=offset, shape=(count,))
        return arr.reshape(ref.shape)
    return numpy_helper.to_array(t)
