"""When is a product of layer norms a Lipschitz bound of the model? Only for a chain.

``Π_l ||layer_l||_2`` bounds the L2 Lipschitz constant of ``f = φ_L ∘ A_L ∘ … ∘ φ_1 ∘ A_1`` when every
``φ_l`` is 1-Lipschitz (Szegedy et al., "Intriguing properties of neural networks", 2014): the operator norm
of a composition is at most the product of the norms. A residual ``x + g(x)`` (bound ``1 + Lip(g)``, not a
product), a concatenation of branches, a product of two activations (attention, gating, Swish), a
normalisation that divides by a data-dependent statistic (LayerNorm, InstanceNorm, LRN) or a quantizer (a
step function: no finite Lipschitz constant at all) breaks that argument, and the product then bounds
nothing. :func:`chain_factors` walks the graph back from the audited output to the data input and returns
the factor of every node on the way, or the first node that makes the graph something other than a chain.

Factors (each an upper bound of the node's L2 Lipschitz constant):

* linear layers: the operator norm the caller computed (``√(kh·kw)·σ_max`` for a conv, Singla & Feizi,
  "Fantastic Four", ICLR 2021; ``|α|·σ_max`` for a Gemm);
* element-wise activations: the supremum of ``|φ'|`` (Relu, Tanh, Softplus, Clip 1; Sigmoid 1/4; LeakyRelu
  and PRelu ``max(1, |slope|)``; Elu ``max(1, α)``; Selu ``γ·max(1, α)``; HardSigmoid ``α``; HardSwish 3/2;
  Gelu 1.129 (``Φ(√2) + √2 φ(√2)``); Mish 1.1);
* adding or subtracting a constant 1; multiplying (dividing) by a constant ``max |c|`` (``1 / min |c|``);
* inference BatchNormalization ``max_c |γ_c| / √(σ²_c + ε)``;
* pooling: max pooling ``√(Π_d w_d)`` with ``w_d`` the most windows that share one input along axis
  ``d`` (1 without overlap), average pooling ``√(Π_d w_d / Π_d n_d)`` with ``n_d`` the fewest inputs a
  window averages (Hölder's ``||A||_2 <= √(||A||_1 ||A||_∞)``); global pooling and ReduceMean 1 (a mean of
  ``k`` inputs has norm ``1/√k``);
* shape ops (Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Identity, inference Dropout), Slice and
  constant Pad 1; a final Softmax 1 (its Jacobian ``diag(p) − p pᵀ`` has norm <= 1/2);
* a Cast between floating-point types 1 (the bound, like every other factor here, is of the real-arithmetic
  function the graph denotes); a Cast to an integer type rounds, a step function, and breaks the chain.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from auditor import graph as G
from auditor_sparsity.weights import _attr
from auditor_sparsity.weights import _node_key as _key

_ONE = frozenset({"Relu", "Tanh", "Softplus", "Softsign", "Clip", "Identity", "Dropout", "Reshape", "Flatten",
                  "Transpose", "Squeeze", "Unsqueeze", "Cast", "Slice", "GlobalAveragePool", "GlobalMaxPool",
                  "Softmax", "Abs", "Neg", "Relu6", "ReduceMean"})
_LINEAR = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
_SHAPE_ONLY_INPUTS = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Slice", "Clip", "Dropout", "Pad", "Expand"})
#: The factor (sup |φ'|) of the other element-wise activations, from their attributes.
_SLOPE: dict[str, Callable[[onnx.NodeProto], float]] = {
    "Sigmoid": lambda n: 0.25,
    "LeakyRelu": lambda n: max(1.0, abs(float(_attr(n, "alpha", 0.01)))),
    "Elu": lambda n: max(1.0, float(_attr(n, "alpha", 1.0))),
    "Selu": lambda n: float(_attr(n, "gamma", 1.05070102214813232421875))
    * max(1.0, float(_attr(n, "alpha", 1.67326319217681884765625))),
    "HardSigmoid": lambda n: abs(float(_attr(n, "alpha", 0.2))),
    "HardSwish": lambda n: 1.5,
    "Gelu": lambda n: 1.1290,  # sup of d/dx x·Φ(x), reached at x = √2 (1.12837...), rounded up
    "Mish": lambda n: 1.1,  # sup of d/dx x·tanh(softplus(x)) is 1.0998...
}


@dataclass(frozen=True)
class Chain:
    """``factors``: (node, op type, factor) from the input to the output; ``linear``: the linear nodes on it,
    whose factors the caller supplies; ``reason``: why the graph is not a chain (``factors`` is then empty)."""

    factors: tuple[tuple[str, str, float], ...]
    linear: tuple[str, ...]
    reason: str | None = None


class _Consts:
    """Which tensors are constants (initializers, Constant / ConstantOfShape outputs, constant sub-graphs),
    with their values on demand."""

    def __init__(self, model: onnx.ModelProto, base_dir: Path) -> None:
        self.model = model
        self.base_dir = base_dir
        self.graph = model.graph
        self.inits = G.initializer_names(model.graph)
        self._memo: dict[str, bool] = {}
        self._shapes: dict[str, list[int | None]] | None = None

    def is_const(self, name: str) -> bool:
        if not name:
            return True
        if name not in self._memo:
            self._memo[name] = name in self.inits or G.constant_subgraph(self.graph, name) is not None
        return self._memo[name]

    def value(self, name: str) -> np.ndarray | None:
        got = G.fold_constant(self.model, name, self.base_dir)
        return None if got is None else np.asarray(got[0], dtype=np.float64)

    def shape(self, name: str) -> list[int | None] | None:
        """The static shape of a computed tensor from ONNX shape inference (``None`` for a symbolic or unknown
        dimension), or ``None`` when inference does not know its rank."""
        if self._shapes is None:
            self._shapes = {}
            try:
                inferred = onnx.shape_inference.infer_shapes(self.model).graph
            except Exception:  # an export shape inference cannot follow: every shape stays unknown
                return None
            for vi in [*inferred.input, *inferred.value_info, *inferred.output]:
                tt = vi.type.tensor_type
                if tt.HasField("shape"):
                    self._shapes[vi.name] = [int(d.dim_value) if d.HasField("dim_value") else None
                                             for d in tt.shape.dim]
        return self._shapes.get(name)

    def copies(self, path_input: str, const_shapes: list[tuple[int, ...]]) -> int | str:
        """How many times broadcasting against constants of ``const_shapes`` repeats each element of
        ``path_input`` in the output (``x [N, 1] + c [1, 10]`` repeats it 10 times, so the node's factor grows by
        the square root of 10), or why that cannot be told."""
        if all(d == 1 for cs in const_shapes for d in cs):
            return 1  # scalars and size-one constants never enlarge the activation
        xs = self.shape(path_input)
        if xs is None:
            return "a constant that may broadcast the activation (its shape is unknown)"
        rank = max([len(xs), *(len(cs) for cs in const_shapes)])
        x_dims = [1] * (rank - len(xs)) + list(xs)
        k = 1
        for axis in range(rank):
            widest = max((cs[axis - rank + len(cs)] if axis - rank + len(cs) >= 0 else 1) for cs in const_shapes)
            if widest == 1:
                continue
            if x_dims[axis] is None:
                return "a constant that may broadcast the activation (an unknown dimension)"
            if x_dims[axis] == 1:
                k *= widest
        return k


def _window_overlap(node: onnx.NodeProto) -> tuple[list[int], list[int]] | None:
    """Per spatial axis: the most windows sharing one input, and the fewest inputs in a window."""
    kernel = [int(v) for v in _attr(node, "kernel_shape", [])]
    if not kernel:
        return None
    strides = [int(v) for v in _attr(node, "strides", [1] * len(kernel))]
    dil = [int(v) for v in _attr(node, "dilations", [1] * len(kernel))]
    pads = [int(v) for v in _attr(node, "pads", [0] * (2 * len(kernel)))]
    share, fewest = [], []
    for d, k in enumerate(kernel):
        s = max(strides[d], 1)
        # with dilation the k taps of a window are spread out; each tap hits an input at most once
        share.append(min(k, math.ceil(((k - 1) * dil[d] + 1) / s)) if dil[d] > 1 else math.ceil(k / s))
        fewest.append(max(1, k - max(pads[d], pads[d + len(kernel)])))
    return share, fewest


def _node_factor(node: onnx.NodeProto, consts: _Consts, path_input: str) -> float | str:
    """The Lipschitz factor of a non-linear-layer node with respect to ``path_input``, or why there is none."""
    op = node.op_type
    if op == "Cast":
        dtype = G.np_dtype(int(_attr(node, "to", 0)))
        if dtype is None or not G.is_float_dtype(dtype):
            return f"Cast to {dtype if dtype is not None else 'a non-numeric type'} (a step function)"
        return 1.0
    if op in _ONE:
        if op == "Dropout" and len(node.input) > 2 and node.input[2] and not consts.is_const(node.input[2]):
            return "Dropout with a training-mode input"
        return 1.0
    if op in _SLOPE:
        return _SLOPE[op](node)
    if op == "PRelu":
        slope = consts.value(node.input[1])
        return "PRelu with a computed slope" if slope is None else max(1.0, float(np.max(np.abs(slope))))
    if op in ("Add", "Sub", "Mul", "Div", "Sum"):
        others = [i for i in node.input if i != path_input]
        if len(others) != len(node.input) - 1 or not all(consts.is_const(i) for i in others):
            what = "a residual connection" if op in ("Add", "Sum") else "a product of two activations"
            return f"{op} of two computed tensors ({what})"
        values = [consts.value(i) for i in others]
        if any(v is None for v in values):
            return f"{op} by a constant that cannot be read"
        read = [v for v in values if v is not None]
        copies = consts.copies(path_input, [tuple(int(d) for d in v.shape) for v in read])
        if isinstance(copies, str):
            return f"{op} by {copies}"
        spread = math.sqrt(copies)  # each input element appears `copies` times in the output
        if op in ("Add", "Sub", "Sum"):
            return spread
        c = read[0]
        if op == "Mul":
            return spread * float(np.max(np.abs(c))) if c.size else 0.0
        if node.input[0] != path_input:
            return "Div of a constant by an activation"
        small = float(np.min(np.abs(c))) if c.size else 0.0
        return spread / small if small > 0 else "Div by a constant that contains zero"
    if op == "BatchNormalization":
        vals = [consts.value(i) for i in node.input[1:5]]
        if any(v is None for v in vals) or (len(node.output) > 1 and any(node.output[1:])):
            return "BatchNormalization in training mode or with computed statistics"
        scale, var = np.asarray(vals[0]), np.asarray(vals[3])
        eps = float(_attr(node, "epsilon", 1e-5))
        return float(np.max(np.abs(scale) / np.sqrt(var + eps)))
    if op == "Pad":
        mode = _attr(node, "mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        return 1.0 if mode == "constant" else f"Pad in {mode} mode (copies inputs)"
    if op in ("MaxPool", "AveragePool", "LpPool"):
        if op == "MaxPool" and len(node.output) > 1 and node.output[1]:
            return "MaxPool with indices output"
        ov = _window_overlap(node)
        if ov is None:
            return f"{op} without kernel_shape"
        share, fewest = ov
        if op == "MaxPool":
            return math.sqrt(float(np.prod(share)))
        if op == "LpPool":
            return f"{op} (not bounded here)"
        include_pad = int(_attr(node, "count_include_pad", 0))
        kernel = [int(v) for v in _attr(node, "kernel_shape", [])]
        n = kernel if include_pad else fewest
        return math.sqrt(float(np.prod(share)) / float(np.prod(n)))
    if op in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"):
        return f"{op} on the activations (rounding is a step function: no finite Lipschitz constant)"
    if op in ("LayerNormalization", "InstanceNormalization", "LRN", "GroupNormalization",
              "MeanVarianceNormalization"):
        return f"{op} (divides by a statistic of the input)"
    return f"{op} (no bound implemented)"


def chain_factors(model: onnx.ModelProto, output: str, data_input: str, base_dir: Path,
                  weight_slots: dict[str, int]) -> Chain:
    """Walk back from ``output`` to ``data_input``; ``weight_slots`` maps each linear node (by key) whose
    weight was found to the input index of that weight. See the module docstring."""
    g = model.graph
    producers = G.produced_tensors(g)
    consts = _Consts(model, base_dir)
    factors: list[tuple[str, str, float]] = []
    linear: list[str] = []
    t = output
    seen: set[str] = set()
    while t != data_input:
        if t in seen:
            return Chain((), (), f"a cycle at '{t}'")
        seen.add(t)
        node = producers.get(t)
        if node is None:
            return Chain((), (), f"'{t}' is not computed from the data input")
        if node.domain not in ("", "ai.onnx"):
            return Chain((), (), f"{node.domain}::{node.op_type} node '{_key(node)}' (no bound implemented)")
        key = _key(node)
        if any(at.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for at in node.attribute):
            # control flow (If / Loop / Scan): its subgraphs read the data from the outer scope
            return Chain((), (), f"{node.op_type} node '{key}' computes in subgraphs (control flow: no bound "
                                 f"implemented)")
        if node.op_type in _LINEAR:
            slot = weight_slots.get(key)
            if slot is None:
                return Chain((), (), f"{node.op_type} node '{key}' has no constant weight (both operands "
                                     f"computed, e.g. attention)")
            data_slots = [k for k, i in enumerate(node.input[:2]) if k != slot and i]
            if len(data_slots) != 1:
                return Chain((), (), f"{node.op_type} node '{key}': cannot tell its data input")
            bias = node.input[2:]
            if any(not consts.is_const(b) for b in bias if b):
                return Chain((), (), f"{node.op_type} node '{key}' adds a computed tensor")
            factors.append((key, node.op_type, math.nan))
            linear.append(key)
            t = node.input[data_slots[0]]
            continue
        if node.op_type in _SHAPE_ONLY_INPUTS or node.op_type in ("Cast", "Identity", "Transpose", "Flatten"):
            path_in = node.input[0]  # the other inputs only say which shape / range: no data flows
        else:
            computed = [i for i in dict.fromkeys(node.input) if i and not consts.is_const(i)]
            if len(computed) != 1:
                if not computed:
                    return Chain((), (), f"'{t}' does not depend on the data input")
                what = ("a residual connection" if node.op_type in ("Add", "Sum") else
                        "branches joined" if node.op_type == "Concat" else "several computed inputs")
                return Chain((), (), f"{node.op_type} node '{key}' joins {len(computed)} computed tensors ({what})")
            path_in = computed[0]
            if list(node.input).count(path_in) > 1:
                return Chain((), (), f"{node.op_type} node '{key}' uses the same activation twice")
        f = _node_factor(node, consts, path_in)
        if isinstance(f, str):
            return Chain((), (), f"{f} at node '{key}'")
        factors.append((key, node.op_type, f))
        t = path_in
    factors.reverse()
    linear.reverse()
    return Chain(tuple(factors), tuple(linear))
