"""An ONNX graph as a differentiable ``torch.nn.Module``.

Written here rather than taken from a converter package (see the plugin's README section in the issue): the
module evaluates the ONNX nodes in their (topological) order, each through the op registry
(:mod:`auditor_torch.registry`), so that every op's semantics follow the ONNX specification and ONNX Runtime,
not a framework's re-interpretation. Float initializers become ``nn.Parameter`` s (gradients, retraining),
other initializers, ``Constant`` node values and fixed feeds become buffers (they follow ``.to(device)``).

Linear ops (Conv, ConvTranspose, Gemm, MatMul) go through :meth:`OnnxModule.linear`, where a training rule
(feedback alignment, direct feedback alignment; :mod:`auditor_torch.training`) can replace how the error flows
back to the op's input while the forward value stays exactly the same.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from auditor import graph as G
from auditor_torch import ops as _ops  # noqa: F401  (registers the built-in ops)
from auditor_torch import quant as _quant  # noqa: F401  (QuantizeLinear / DequantizeLinear)
from auditor_torch import recurrent as _recurrent  # noqa: F401  (LSTM / GRU / RNN)
from auditor_torch.registry import OpFn, UnsupportedOpError, lookup

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
               onnx.TensorProto.BFLOAT16}
LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
LinearFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TrainingRule(Protocol):
    """A training rule (:mod:`auditor_torch.training`): how the error reaches the input of a linear op."""

    def capture(self, logits: torch.Tensor) -> None:
        """Called on the logits of each forward pass (before the loss is taken)."""

    def linear(self, ctx: NodeContext, fn: LinearFn, x: torch.Tensor, name: str, w: torch.Tensor) -> torch.Tensor:
        """``fn(x, w)`` in value, with the rule's gradient to ``x``."""


@dataclass
class NodeContext:
    """What an op implementation sees besides its inputs."""

    node: onnx.NodeProto
    attrs: dict[str, Any]
    opset: int
    module: OnnxModule
    index: int = 0
    #: outer-scope tensors a control-flow node's subgraphs read (appended to its inputs, in this order)
    captured: list[str] = field(default_factory=list)
    #: the node's graph attributes compiled for evaluation (``then_branch`` -> :class:`SubGraph`)
    subgraphs: dict[str, SubGraph] = field(default_factory=dict)

    def attr(self, name: str, default: Any = None) -> Any:
        """An attribute's value (strings decoded), or ``default``."""
        return self.attrs.get(name, default)

    @property
    def training(self) -> bool:
        """Whether the module is in training mode (dropout active, batch norm on batch statistics)."""
        return bool(self.module.training)

    @property
    def name(self) -> str:
        """The node's name (its first output when unnamed)."""
        return self.node.name or self.node.output[0]


@dataclass
class _Step:
    ctx: NodeContext
    fn: OpFn
    inputs: list[tuple[str, str] | None]  # (kind, key): kind "env" | "param" | "buf"
    outputs: list[str]
    free: list[str] = field(default_factory=list)  # env tensors not needed after this step

    @property
    def reads(self) -> list[str]:
        """The computed tensors the step reads (not parameters, buffers or constants), in input order."""
        return [src[1] for src in self.inputs if src is not None and src[0] == "env"]


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [s.decode() for s in v]
        out[a.name] = v
    return out


def _key(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^0-9A-Za-z_]", "_", name) or "t"
    if base[0].isdigit():
        base = "t_" + base
    k, i = base, 1
    while k in taken:
        i += 1
        k = f"{base}_{i}"
    taken.add(k)
    return k


def to_torch(a: np.ndarray) -> torch.Tensor:
    """A numpy array as a torch tensor (copied: memory maps and read-only arrays are not writable)."""
    a = np.asarray(a)
    if a.dtype == np.object_ or a.dtype.kind in "US":
        raise UnsupportedOpError("string tensors cannot be represented in torch")
    return torch.from_numpy(np.array(a, copy=True, order="C"))


class OnnxModule(torch.nn.Module):
    """An ONNX graph evaluated with torch ops.

    ``forward(x)`` maps the data input to the audited output. :meth:`run` evaluates any tensors from any
    starting environment (used for layer-wise training rules). ``param_names`` maps each parameter key back
    to its ONNX initializer name (for writing retrained weights back into the graph).
    """

    def __init__(self, graph: onnx.GraphProto, *, opsets: dict[str, int], input_name: str,
                 output_names: Sequence[str], initializers: dict[str, np.ndarray],
                 feeds: dict[str, np.ndarray] | None = None, fixed_batch: int | None = None) -> None:
        super().__init__()
        self.graph = graph
        self.opsets = opsets
        self.input_name = input_name
        self.output_names = list(output_names)
        self.fixed_batch = fixed_batch
        self.current_batch: int | None = None
        #: a training rule that may intercept linear ops; None = backprop
        self.rule: TrainingRule | None = None
        self.params = torch.nn.ParameterDict()
        self._taken: set[str] = set()  # the keys of parameters and buffers
        self._where: dict[str, tuple[str, str]] = {}
        self.param_names: dict[str, str] = {}
        self.buffer_names: dict[str, str] = {}
        # BatchNormalization running statistics are state, not weights: buffers (updated in training mode).
        bn_stats = {n.input[i] for n in graph.node if n.op_type == "BatchNormalization"
                    for i in (3, 4) if len(n.input) > i}
        for name, arr in initializers.items():
            t = to_torch(arr)
            if t.is_floating_point() and name not in bn_stats:
                k = _key(name, self._taken)
                self.params[k] = torch.nn.Parameter(t, requires_grad=False)
                self._where[name] = ("param", k)
                self.param_names[k] = name
            else:
                self._where[name] = ("buf", self._hold(name, t))
                self.buffer_names[self._where[name][1]] = name
        for name, arr in (feeds or {}).items():
            self._where[name] = ("buf", self._hold(name, to_torch(arr)))
        self.producers: dict[str, onnx.NodeProto] = {}
        steps: list[_Step] = []
        missing: dict[str, int] = {}
        # exporters such as keras2onnx write nodes out of order; evaluation needs producers first
        for idx, node in enumerate(G.topological_order(graph)):
            for o in node.output:
                if o:
                    self.producers[o] = node
            value = _constant_value(node)
            if value is not None:
                self._where[node.output[0]] = ("buf", self._hold(node.output[0], to_torch(value)))
                continue
            compiled = self._compile(node, idx, missing)
            if compiled is None:
                continue
            ctx, fn = compiled
            ins = [self._where.get(i, ("env", i)) if i else None for i in [*node.input, *ctx.captured]]
            steps.append(_Step(ctx, fn, ins, list(node.output)))
        if missing:
            listing = ", ".join(f"{k} (x{v})" if v > 1 else k for k, v in sorted(missing.items()))
            raise UnsupportedOpError(
                f"the torch backend cannot interpret op(s): {listing}; an implementation can be added with "
                f"auditor_torch.register_op(op_type, domain)"
            )
        # Free intermediate tensors after their last use (memory of big models at large batches).
        last = {name: si for si, s in enumerate(steps) for name in s.reads}
        keep = set(self.output_names)
        for name, si in last.items():
            if name not in keep and name != input_name:
                steps[si].free.append(name)
        #: The evaluation plan (one step per non-constant node).
        self.steps = steps
        self.train(False)  # inference semantics unless a trainer says otherwise

    def _compile(self, node: onnx.NodeProto, idx: int, missing: dict[str, int]) -> tuple[NodeContext, OpFn] | None:
        """The :class:`NodeContext` of a node (its subgraphs compiled) and its implementation, or ``None`` with the
        op counted in ``missing`` when no implementation is registered (ops inside subgraphs are counted too)."""
        fn = lookup(node.op_type, node.domain)
        subs: dict[str, SubGraph] = {}
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                subs[a.name] = SubGraph(a.g, self, missing)
            elif a.type == onnx.AttributeProto.GRAPHS:
                raise UnsupportedOpError(f"{node.op_type} with a list of subgraphs is not supported")
        if fn is None:
            label = f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
            missing[label] = missing.get(label, 0) + 1
            return None
        dom = node.domain if node.domain not in ("", "ai.onnx") else ""
        captured = sorted(G.subgraph_refs(node)) if subs else []
        return NodeContext(node, _attrs(node), self.opsets.get(dom, self.opsets.get("", 17)), self, idx,
                           captured, subs), fn

    def _hold(self, name: str, t: torch.Tensor) -> str:
        """Register ``t`` as a buffer (it follows ``.to(device)``) under a new key made from ``name``; the key."""
        k = _key(name, self._taken)
        self.register_buffer(k, t)
        return k

    def lookup_tensor(self, name: str, env: dict[str, torch.Tensor]) -> torch.Tensor:
        """``name`` from ``env``, else a parameter / buffer / constant of the module."""
        if name in env:
            return env[name]
        t = self.tensor(name)
        if t is None:
            raise KeyError(f"tensor '{name}' was not computed")
        return t

    # ------------------------------------------------------------------------------------------ lookups
    def tensor(self, name: str) -> torch.Tensor | None:
        """A parameter, buffer or constant by its ONNX name (``None`` if it is computed)."""
        where = self._where.get(name)
        return None if where is None else self._held(*where)

    def _held(self, kind: str, key: str) -> torch.Tensor:
        """The parameter (``kind`` ``param``) or buffer held under ``key``."""
        t: torch.Tensor = self.params[key] if kind == "param" else getattr(self, key)
        return t

    def is_param(self, name: str) -> bool:
        """Whether ``name`` is a float initializer held as a parameter."""
        return self._where.get(name, ("", ""))[0] == "param"

    def named_onnx_parameters(self) -> dict[str, torch.nn.Parameter]:
        """ONNX initializer name -> parameter."""
        return {self.param_names[k]: p for k, p in self.params.items()}

    # ------------------------------------------------------------------------------------------ evaluation
    def linear(self, ctx: NodeContext, fn: LinearFn, x: torch.Tensor, weight_name: str, w: torch.Tensor
               ) -> torch.Tensor:
        """``fn(x, w)`` for a linear op (bias added by the caller); a training rule may change how the error
        reaches ``x`` (not the forward value)."""
        if self.rule is not None and self.is_param(weight_name):
            return self.rule.linear(ctx, fn, x, weight_name, w)
        return fn(x, w)

    def run(self, env: dict[str, torch.Tensor], outputs: Sequence[str],
            steps: Sequence[_Step] | None = None) -> dict[str, torch.Tensor]:
        """Evaluate ``steps`` (default: all) from the tensors in ``env``; returns the requested tensors."""
        env = dict(env)
        want = set(outputs)
        if self.input_name in env and env[self.input_name].dim():
            self.current_batch = int(env[self.input_name].shape[0])
        for s in (self.steps if steps is None else steps):
            args: list[Any] = [None if src is None else env[src[1]] if src[0] == "env" else self._held(*src)
                               for src in s.inputs]
            try:
                res = s.fn(s.ctx, args)
            except UnsupportedOpError:
                raise
            except Exception as exc:
                raise RuntimeError(f"{s.ctx.node.op_type} node '{s.ctx.name}': {type(exc).__name__}: {exc}") \
                    from exc
            _store(env, s.outputs, res)
            if steps is None:
                for name in s.free:
                    if name not in want:
                        env.pop(name, None)
        return {o: self.lookup_tensor(o, env) for o in outputs}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The first output for the data input ``x``."""
        return self.run({self.input_name: x}, self.output_names[:1])[self.output_names[0]]

    def forward_many(self, x: torch.Tensor, outputs: Sequence[str],
                     inputs: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Several tensors for the data input ``x`` in one pass; ``inputs`` holds the graph's other data inputs
        (an attention mask, a recurrent state), as the graph takes them."""
        return self.run({**(inputs or {}), self.input_name: x}, outputs)


class SubGraph:
    """A control-flow node's subgraph (an ``If`` branch), compiled like the main graph: its initializers and
    ``Constant`` values become buffers of the owning module (they follow ``.to(device)``), its nodes steps.
    :meth:`run` evaluates it from the outer-scope tensors it reads and returns its outputs in order."""

    def __init__(self, graph: onnx.GraphProto, module: OnnxModule, missing: dict[str, int]) -> None:
        self.graph = graph
        self.module = module
        self.outputs = [o.name for o in graph.output]
        self.local: dict[str, str] = {}  # subgraph constant -> buffer key of the module
        for t in graph.initializer:
            self.local[t.name] = module._hold("sub_" + t.name, to_torch(numpy_helper.to_array(t)))
        self.steps: list[tuple[NodeContext, OpFn, list[str]]] = []
        for idx, node in enumerate(G.topological_order(graph)):
            value = _constant_value(node)
            if value is not None:
                self.local[node.output[0]] = module._hold("sub_" + node.output[0], to_torch(value))
                continue
            compiled = module._compile(node, idx, missing)
            if compiled is not None:
                self.steps.append((*compiled, [*node.input, *compiled[0].captured]))

    def run(self, outer: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The subgraph's outputs, from the outer-scope tensors in ``outer``."""
        env = dict(outer)
        for name, k in self.local.items():
            env[name] = getattr(self.module, k)
        for ctx, fn, ins in self.steps:
            args = [self.module.lookup_tensor(i, env) if i else None for i in ins]
            _store(env, list(ctx.node.output), fn(ctx, args))
        return [self.module.lookup_tensor(o, env) for o in self.outputs]


def _store(env: dict[str, torch.Tensor], names: list[str], res: Any) -> None:
    """An op's result (one tensor or a sequence, matched to the node's outputs in order) into ``env``; an
    output the graph leaves unnamed is dropped."""
    for name, t in zip(names, res if isinstance(res, (list, tuple)) else [res]):
        if name:
            env[name] = t


#: The number-valued attributes of a ``Constant`` node besides ``value`` (a tensor), and their dtypes.
_CONSTANTS = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64}


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a ``Constant`` node, ``None`` for any other node (and for a string or sparse value, which
    the interpreter then reports as an op it cannot run)."""
    for a in node.attribute if node.op_type == "Constant" and node.domain in ("", "ai.onnx") else []:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name in _CONSTANTS:
            return np.asarray(helper.get_attribute_value(a), dtype=_CONSTANTS[a.name])
    return None


def read_initializers(model: onnx.ModelProto, base_dir: Path | None) -> dict[str, np.ndarray]:
    """Every initializer of the main graph (external data memory-mapped, then copied into torch)."""
    out: dict[str, np.ndarray] = {}
    names = G.initializer_names(model.graph)
    for ref in G.iter_weights(model):
        if ref.name in names:
            out[ref.name] = G.read_tensor(ref, base_dir or Path("."))
    for sp in model.graph.sparse_initializer:
        # external parts are read from the model's folder only (auditor.graph confines them)
        values = G.tensor_array(sp.values, base_dir)
        idx = G.tensor_array(sp.indices, base_dir).astype(np.int64)
        dims = tuple(int(d) for d in sp.dims)
        dense = np.zeros(int(np.prod(dims)), dtype=values.dtype)
        # indices are linear positions (1-D) or coordinates (one row per value)
        flat = idx if idx.ndim == 1 else np.ravel_multi_index(tuple(idx.T), dims)
        dense[flat] = values
        out[sp.values.name] = dense.reshape(dims)
    return out


def build_module(model: onnx.ModelProto, *, output: str | None = None, input_name: str | None = None,
                 base_dir: Path | None = None, feeds: dict[str, np.ndarray] | None = None,
                 fixed_batch: int | None = None, extra_outputs: Sequence[str] = ()) -> OnnxModule:
    """An :class:`OnnxModule` computing ``output`` (default: the first graph output) and ``extra_outputs``
    from the data input (default: the only data input)."""
    g = model.graph
    out = output or g.output[0].name
    wanted = list(dict.fromkeys([out, *extra_outputs]))
    pruned = G.prune(model, wanted)
    data_in = [i.name for i in G.data_inputs(pruned.graph)]
    if input_name is None:
        rest = [i for i in data_in if i not in (feeds or {})]
        if len(rest) != 1:
            raise ValueError(f"cannot tell the data input among {data_in}")
        input_name = rest[0]
    inits = read_initializers(pruned, base_dir)
    opsets = {("" if o.domain in ("", "ai.onnx") else o.domain): int(o.version) for o in model.opset_import}
    return OnnxModule(pruned.graph, opsets=opsets, input_name=input_name, output_names=wanted,
                      initializers=inits, feeds=feeds, fixed_batch=fixed_batch)
