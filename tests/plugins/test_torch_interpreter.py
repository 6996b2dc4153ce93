"""The ONNX-to-torch interpreter against ONNX Runtime (the reference) and torch itself: hand-built graphs op by
op, models exported from torch with many op types, fixed-batch exports, scikit-learn style graphs,
gradients against finite differences and closed forms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")

from auditor_torch import UnsupportedOpError, register_op  # noqa: E402
from auditor_torch.backend import TorchBackend  # noqa: E402
from auditor_torch.interpreter import build_module  # noqa: E402
from torch_helpers import export  # noqa: E402

from auditor.model import ModelConfig, ModelHandle  # noqa: E402
from auditor.testing import make_linear_classifier, readable_ir  # noqa: E402

RNG = np.random.default_rng(0)
F32 = TensorProto.FLOAT


def graph(op: str, x: np.ndarray, consts: list[tuple[str, np.ndarray] | None] = (), attrs: dict | None = None,
          *, n_out: int = 1, opset: int = 17, domain: str = "", out_type: int = F32) -> onnx.ModelProto:
    """One node: input 'x' (data), then constant inputs (None = omitted optional input)."""
    names = ["x"] + [c[0] if c is not None else "" for c in consts]
    outs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op, names, outs, domain=domain, **(attrs or {}))
    inits = [numpy_helper.from_array(np.asarray(a), n) for c in consts if c is not None for n, a in [c]]
    xin = helper.make_tensor_value_info("x", helper.np_dtype_to_tensor_dtype(x.dtype), list(x.shape))
    yout = [helper.make_tensor_value_info(o, out_type, None) for o in outs]
    ops = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return readable_ir(helper.make_model(helper.make_graph([node], "g", [xin], yout, initializer=inits),
                                         opset_imports=ops))


def compare(model: onnx.ModelProto, x: np.ndarray, tol: float = 1e-4) -> None:
    """Every graph output of the interpreter equals ONNX Runtime's (float32 bar 1e-4, scaled)."""
    outs = [o.name for o in model.graph.output]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(outs, {"x": x})
    m = build_module(model, output=outs[0], extra_outputs=outs[1:])
    with torch.no_grad():
        got = m.forward_many(torch.from_numpy(x), outs)
    for name, w in zip(outs, want):
        g = got[name].numpy()
        assert g.shape == w.shape, (name, g.shape, w.shape)
        w64, g64 = np.asarray(w, np.float64), np.asarray(g, np.float64)
        scale = max(1.0, float(np.abs(w64).max()) if w64.size else 1.0)
        assert np.abs(g64 - w64).max(initial=0.0) <= tol * scale, (name, np.abs(g64 - w64).max())


def r(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


i64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
f32 = lambda *v: np.array(v, dtype=np.float32)  # noqa: E731
EMPTY = np.zeros(0, np.float32)

CASES: list[tuple[str, Any, dict[str, Any]]] = [
    # resizing: every coordinate transformation / nearest mode used by exporters
    ("resize-nearest-halfpixel", lambda: graph("Resize", r(1, 2, 5, 7), [("roi", EMPTY), ("s", f32(1, 1, 1.6, 0.7))],
                                               {"mode": "nearest"}), {}),
    ("resize-linear-align", lambda: graph("Resize", r(1, 2, 5, 7), [None, None, ("z", i64(1, 2, 9, 4))],
                                          {"mode": "linear", "coordinate_transformation_mode": "align_corners"}), {}),
    ("resize-linear-halfpixel", lambda: graph("Resize", r(2, 3, 4, 4), [None, ("s", f32(1, 1, 2, 2))],
                                              {"mode": "linear"}), {}),
    ("resize-linear-pytorch", lambda: graph("Resize", r(1, 1, 6, 5), [None, ("s", f32(1, 1, 0.5, 1.5))],
                                            {"mode": "linear",
                                             "coordinate_transformation_mode": "pytorch_half_pixel"}), {}),
    ("resize-cubic", lambda: graph("Resize", r(1, 2, 5, 5), [None, ("s", f32(1, 1, 2, 2))],
                                   {"mode": "cubic"}), {}),
    ("resize-cubic-exclude", lambda: graph("Resize", r(1, 1, 5, 6), [None, ("s", f32(1, 1, 1.5, 2))],
                                           {"mode": "cubic", "exclude_outside": 1, "cubic_coeff_a": -0.5}), {}),
    ("resize-nearest-asym-floor", lambda: graph("Resize", r(1, 2, 3, 3), [("roi", EMPTY), ("s", f32(1, 1, 2, 2))],
                                                {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                                                 "nearest_mode": "floor"}), {}),
    ("resize-nearest-tfnn-ceil", lambda: graph("Resize", r(1, 1, 4, 6), [None, ("s", f32(1, 1, 1.5, 0.5))],
                                               {"mode": "nearest", "nearest_mode": "round_prefer_ceil",
                                                "coordinate_transformation_mode": "tf_half_pixel_for_nn"}), {}),
    ("upsample-9", lambda: graph("Upsample", r(1, 2, 3, 4), [("s", f32(1, 1, 2, 3))], {"mode": "nearest"},
                                 opset=9), {}),
    ("resize-10-linear", lambda: graph("Resize", r(1, 2, 3, 4), [("s", f32(1, 1, 2, 2))], {"mode": "linear"},
                                       opset=10), {}),
    # padding, slicing, gathering, splitting
    ("pad-reflect", lambda: graph("Pad", r(2, 3, 4, 5), [("p", i64(0, 0, 2, 1, 0, 0, 1, 3))], {"mode": "reflect"}), {}),
    ("pad-edge", lambda: graph("Pad", r(2, 3, 4), [("p", i64(0, 1, 2, 0, 2, 1))], {"mode": "edge"}), {}),
    ("pad-constant-negative", lambda: graph("Pad", r(2, 3, 4), [("p", i64(0, -1, 2, 0, 1, -2)), ("v", f32(1.5))]),
     {}),
    ("pad-wrap-19", lambda: graph("Pad", r(1, 3, 4), [("p", i64(0, 1, 2, 0, 2, 1))], {"mode": "wrap"}, opset=19), {}),
    ("pad-2-attrs", lambda: graph("Pad", r(1, 2, 3), [], {"pads": [0, 1, 1, 0, 0, 2], "value": 0.5}, opset=10), {}),
    ("slice-negative-step", lambda: graph("Slice", r(3, 6, 5), [("s", i64(-1, 4)), ("e", i64(-100, 0)),
                                                                ("a", i64(1, 2)), ("t", i64(-2, -1))]), {}),
    ("slice-large-end", lambda: graph("Slice", r(3, 6), [("s", i64(1)), ("e", i64(2**62)), ("a", i64(-1)),
                                                         ("t", i64(2))]), {}),
    ("slice-9-attrs", lambda: graph("Slice", r(4, 5), [], {"starts": [1, 0], "ends": [3, -1], "axes": [0, 1]},
                                    opset=9), {}),
    ("gather-2d", lambda: graph("Gather", r(3, 5, 2), [("i", i64(0, -1, 2, 2).reshape(2, 2))], {"axis": 1}), {}),
    ("gather-scalar", lambda: graph("Gather", r(3, 5), [("i", np.array(2, np.int64))], {"axis": 0}), {}),
    ("gather-elements", lambda: graph("GatherElements", r(3, 4), [("i", i64(0, 3, 1, 2, 0, 0).reshape(3, 2))],
                                      {"axis": 1}), {}),
    ("split-11-attr", lambda: graph("Split", r(4, 6), [], {"axis": 1, "split": [1, 2, 3]}, n_out=3, opset=11), {}),
    ("split-13-input", lambda: graph("Split", r(4, 6), [("s", i64(4, 2))], {"axis": 1}, n_out=2, opset=13), {}),
    ("split-18-uneven", lambda: graph("Split", r(7, 2), [], {"num_outputs": 3}, n_out=3, opset=18), {}),
    ("squeeze-11", lambda: graph("Squeeze", r(1, 3, 1, 2), [], {"axes": [0, -2]}, opset=11), {}),
    ("unsqueeze-13", lambda: graph("Unsqueeze", r(3, 2), [("a", i64(-1, 0))]), {}),
    ("flatten-2", lambda: graph("Flatten", r(2, 3, 4, 5), [], {"axis": 2}), {}),
    ("transpose", lambda: graph("Transpose", r(2, 3, 4), [], {"perm": [2, 0, 1]}), {}),
    ("expand", lambda: graph("Expand", r(3, 1), [("s", i64(2, 3, 4))]), {}),
    ("tile", lambda: graph("Tile", r(2, 3), [("t", i64(2, 3))]), {}),
    # softmax semantics changed at opset 13
    ("softmax-11-3d", lambda: graph("Softmax", r(2, 3, 4), [], {"axis": 1}, opset=11), {}),
    ("logsoftmax-13", lambda: graph("LogSoftmax", r(2, 3, 4), [], {"axis": 1}), {}),
    # reductions (axes as attribute, then as input)
    ("reducemean-13", lambda: graph("ReduceMean", r(2, 3, 4), [], {"axes": [1, -1], "keepdims": 0}, opset=13), {}),
    ("reducesum-13", lambda: graph("ReduceSum", r(2, 3, 4), [("a", i64(1))]), {}),
    ("reducemax-18", lambda: graph("ReduceMax", r(2, 3, 4), [("a", i64(0, 2))], opset=18), {}),
    ("reducel2", lambda: graph("ReduceL2", r(2, 3, 4), [], {"axes": [2]}), {}),
    ("reducelogsumexp", lambda: graph("ReduceLogSumExp", r(2, 3), [], {"keepdims": 0}), {}),
    ("reduceprod", lambda: graph("ReduceProd", r(2, 3, 2), [], {"axes": [0, 2]}), {}),
    ("argmax-last", lambda: graph("ArgMax", np.array([[1, 3, 3], [2, 2, 0]], np.float32), [],
                                  {"axis": 1, "keepdims": 0, "select_last_index": 1}, out_type=TensorProto.INT64), {}),
    # convolutions and pooling
    ("conv-same-upper", lambda: graph("Conv", r(2, 3, 7, 6), [("w", r(4, 3, 3, 3)), ("b", r(4))],
                                      {"auto_pad": "SAME_UPPER", "strides": [2, 2]}), {}),
    ("conv-asym-dil-group", lambda: graph("Conv", r(1, 4, 9, 9), [("w", r(6, 2, 3, 2))],
                                          {"pads": [1, 0, 2, 1], "dilations": [2, 1], "group": 2}), {}),
    ("conv-1d", lambda: graph("Conv", r(2, 3, 10), [("w", r(5, 3, 4))], {"strides": [3], "pads": [1, 2]}), {}),
    ("convtranspose-opad", lambda: graph("ConvTranspose", r(1, 3, 4, 5), [("w", r(3, 2, 3, 3)), ("b", r(2))],
                                         {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 0]}), {}),
    ("convtranspose-outshape", lambda: graph("ConvTranspose", r(1, 2, 4, 4), [("w", r(2, 3, 3, 3))],
                                             {"strides": [2, 2], "output_shape": [8, 8],
                                              "auto_pad": "SAME_UPPER"}), {}),
    ("maxpool-ceil-pads", lambda: graph("MaxPool", r(1, 2, 7, 8), [], {"kernel_shape": [3, 3], "strides": [2, 2],
                                                                       "pads": [1, 1, 1, 1], "ceil_mode": 1}), {}),
    ("maxpool-same", lambda: graph("MaxPool", r(1, 2, 7, 8), [], {"kernel_shape": [2, 3], "strides": [2, 2],
                                                                  "auto_pad": "SAME_UPPER"}), {}),
    ("avgpool-include", lambda: graph("AveragePool", r(1, 2, 6, 6), [], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1],
                                                                         "count_include_pad": 1}), {}),
    ("avgpool-asym-exclude", lambda: graph("AveragePool", r(1, 2, 6, 7), [], {"kernel_shape": [2, 3],
                                                                              "pads": [0, 1, 1, 2]}), {}),
    ("globalmaxpool", lambda: graph("GlobalMaxPool", r(2, 3, 4, 5)), {}),
    ("lrn-5", lambda: graph("LRN", r(2, 6, 3, 3), [], {"size": 5, "alpha": 0.5, "beta": 0.75, "bias": 2.0}), {}),
    ("lrn-odd", lambda: graph("LRN", r(2, 5, 3, 3), [], {"size": 3}), {}),
    # normalization
    ("instancenorm", lambda: graph("InstanceNormalization", r(2, 3, 4, 4), [("s", r(3)), ("b", r(3))]), {}),
    ("layernorm-axis1", lambda: graph("LayerNormalization", r(2, 3, 4), [("s", r(3, 4)), ("b", r(3, 4))],
                                      {"axis": 1}), {}),
    ("batchnorm", lambda: graph("BatchNormalization", r(2, 3, 4), [("s", r(3)), ("b", r(3)), ("m", r(3)),
                                                                   ("v", np.abs(r(3)) + 0.5)]), {}),
    # elementwise and activations
    ("clip-6", lambda: graph("Clip", r(3, 4), [], {"min": -0.5, "max": 0.3}, opset=6), {}),
    ("clip-13-max-only", lambda: graph("Clip", r(3, 4), [None, ("hi", f32(0.2))]), {}),
    ("hardsigmoid", lambda: graph("HardSigmoid", r(3, 4), [], {"alpha": 0.3}), {}),
    ("hardswish", lambda: graph("HardSwish", 3 * r(3, 4)), {}),
    ("selu", lambda: graph("Selu", r(3, 4)), {}),
    ("celu", lambda: graph("Celu", r(3, 4), [], {"alpha": 0.7}), {}),
    ("prelu", lambda: graph("PRelu", r(2, 3, 4), [("s", r(3, 1))]), {}),
    ("thresholdedrelu", lambda: graph("ThresholdedRelu", r(3, 4), [], {"alpha": 0.2}), {}),
    ("softsign", lambda: graph("Softsign", r(3, 4)), {}),
    ("mish-18", lambda: graph("Mish", r(3, 4), opset=18), {}),
    ("gelu-20-tanh", lambda: graph("Gelu", r(3, 4), [], {"approximate": "tanh"}, opset=20), {}),
    ("round", lambda: graph("Round", f32(0.5, 1.5, 2.5, -0.5, -1.7)), {}),
    ("mod-fmod", lambda: graph("Mod", r(3, 4), [("d", f32(0.7))], {"fmod": 1}), {}),
    ("pow", lambda: graph("Pow", np.abs(r(3, 4)), [("p", f32(1.7))]), {}),
    ("where", lambda: graph("Where", np.array([True, False, True]), [("a", r(2, 3)), ("b", r(3))]), {}),
    ("einsum", lambda: graph("Einsum", r(2, 3, 4), [("w", r(4, 5))], {"equation": "bij,jk->bik"}), {}),
    ("gemm-trans", lambda: graph("Gemm", r(4, 3), [("b", r(5, 4)), ("c", r(5))],
                                 {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0}), {}),
    ("cast-int", lambda: graph("Cast", 3 * r(3, 4), [], {"to": TensorProto.INT32}, out_type=TensorProto.INT32), {}),
    ("div-int", lambda: graph("Div", i64(-7, 7, 9), [("d", i64(2, -2, 4))], out_type=TensorProto.INT64), {}),
]

ML_CASES = [
    ("linclf-softmax", dict(coefficients=r(3 * 4).tolist(), intercepts=r(3).tolist(), classlabels_ints=[0, 1, 2],
                            post_transform="SOFTMAX")),
    ("linclf-logistic", dict(coefficients=r(3 * 4).tolist(), intercepts=r(3).tolist(), classlabels_ints=[5, 6, 7],
                             post_transform="LOGISTIC")),
    ("linclf-none", dict(coefficients=r(3 * 4).tolist(), intercepts=r(3).tolist(), classlabels_ints=[0, 1, 2])),
    ("linclf-binary-logistic", dict(coefficients=r(4).tolist(), intercepts=[0.3], classlabels_ints=[0, 1],
                                    post_transform="LOGISTIC")),
    ("linclf-binary-none", dict(coefficients=r(4).tolist(), intercepts=[0.3], classlabels_ints=[0, 1])),
]


@pytest.mark.parametrize("name,make,_", CASES, ids=[c[0] for c in CASES])
def test_op_matches_onnxruntime(name: str, make: Any, _: dict) -> None:
    model = make()
    inp = model.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    # regenerate the data input deterministically from the declared shape and type
    dt = helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
    rng = np.random.default_rng(1)
    if dt == np.bool_:
        xv = rng.random(shape) > 0.5
    elif np.issubdtype(dt, np.integer):
        xv = rng.integers(-9, 10, shape).astype(dt)
    else:
        xv = rng.standard_normal(shape).astype(dt)
        if name in ("pow",):
            xv = np.abs(xv)
        if name == "round":
            xv = np.array([0.5, 1.5, 2.5, -0.5, -1.7], np.float32)
        if name == "argmax-last":
            xv = np.array([[1, 3, 3], [2, 2, 0]], np.float32)
    if name == "div-int":
        xv = np.array([-7, 7, 9], np.int64)
    compare(model, xv)


@pytest.mark.parametrize("name,attrs", ML_CASES, ids=[c[0] for c in ML_CASES])
def test_sklearn_linear_classifier_matches_onnxruntime(name: str, attrs: dict) -> None:
    x = r(6, 4)
    n1 = helper.make_node("LinearClassifier", ["x"], ["label", "scores"], domain="ai.onnx.ml", **attrs)
    n2 = helper.make_node("Normalizer", ["scores"], ["probs"], domain="ai.onnx.ml", norm="L1")
    g = helper.make_graph([n1, n2], "skl", [helper.make_tensor_value_info("x", F32, [None, 4])],
                          [helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
                           helper.make_tensor_value_info("scores", F32, [None, None])])
    compare(readable_ir(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                                            helper.make_opsetid("ai.onnx.ml", 1)])), x)


@pytest.mark.parametrize("op,attrs", [("Normalizer", {"norm": "L2"}), ("Normalizer", {"norm": "MAX"}),
                                      ("Scaler", {"offset": [0.5, -1.0, 0.0, 2.0], "scale": [2.0, 0.5, 1.0, 3.0]}),
                                      ("LinearRegressor", {"coefficients": [1.0, -2.0, 0.5, 3.0, 0, 1, 0, 1],
                                                           "intercepts": [0.5, -0.5], "targets": 2})])
def test_ml_ops_match_onnxruntime(op: str, attrs: dict) -> None:
    x = np.abs(r(5, 4)) + 0.1
    compare(graph(op, x, [], attrs, domain="ai.onnx.ml"), x)


class ManyOps(torch.nn.Module):
    """A network using many op types, as the PyTorch exporter writes them."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.c2 = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2)
        self.ct = torch.nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.inorm = torch.nn.InstanceNorm2d(4, affine=True)
        self.prelu = torch.nn.PReLU(4)
        self.ln = torch.nn.LayerNorm(8)
        self.fc = torch.nn.Linear(4 * 8 * 8, 5)
        self.up = torch.nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)

    def forward(self, x: Any) -> Any:
        F = torch.nn.functional
        x = torch.relu(self.bn(self.c1(x)))
        x = F.max_pool2d(x, 2)
        x = self.up(x)
        x = F.gelu(self.c2(x))
        x = self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.prelu(self.inorm(self.ct(x)))
        x = F.pad(x, (1, 0, 0, 1), mode="reflect")[:, :, 1:, :-1]
        x = F.avg_pool2d(F.hardswish(x), 2, ceil_mode=True)
        x = torch.cat([x, x.flip(1)], 1)[:, :4]
        x = F.leaky_relu(x.reshape(x.shape[0], -1), 0.1)
        a, b = x.split([200, 56], 1)
        x = torch.cat([b, torch.tanh(a) * torch.sigmoid(a)], 1)
        z = F.elu(self.fc(x)) * 0.5 + x.mean(1, keepdim=True) - x.amax(1, keepdim=True).abs().sqrt()
        return torch.softmax(z, 1)


@pytest.fixture(scope="module")
def many_ops() -> tuple[Any, onnx.ModelProto]:
    torch.manual_seed(0)
    net = ManyOps().eval()
    with torch.no_grad():
        for p in net.bn.parameters():
            p.uniform_(0.5, 1.5)
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 1.5)
    return net, export(net, torch.zeros(2, 3, 16, 16))


def test_torch_export_with_many_ops_matches_torch_and_onnxruntime(many_ops: Any) -> None:
    net, model = many_ops
    ops = {n.op_type for n in model.graph.node}
    assert {"Conv", "ConvTranspose", "InstanceNormalization", "LayerNormalization", "Resize",
            "Pad", "Slice", "Split", "Concat", "Gemm", "Softmax", "Erf", "PRelu", "AveragePool", "MaxPool"} <= ops
    x = RNG.standard_normal((7, 3, 16, 16)).astype(np.float32)
    mod = build_module(model)
    with torch.no_grad():
        got = mod(torch.from_numpy(x)).numpy()
        ref = net(torch.from_numpy(x)).numpy()
    onnx_out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    assert np.abs(got - onnx_out).max() < 1e-5
    assert np.abs(got - ref).max() < 1e-5


def test_gradients_match_finite_differences(many_ops: Any) -> None:
    """Directional central differences in float64: (f(x + εv) − f(x − εv)) / 2ε = ∇f(x)·v for random v, and
    torch.autograd.gradcheck on a small hand-built graph (every input coordinate)."""
    _, model = many_ops
    mod = build_module(model).double()
    x = torch.from_numpy(RNG.standard_normal((2, 3, 16, 16))).requires_grad_(True)
    w = torch.from_numpy(RNG.standard_normal((2, 5)))

    def f(t: Any) -> Any:
        return (mod(t) * w).sum()

    g, = torch.autograd.grad(f(x), x)
    eps = 1e-6
    with torch.no_grad():
        for _ in range(4):
            v = torch.from_numpy(RNG.standard_normal(x.shape))
            fd = (f(x + eps * v) - f(x - eps * v)) / (2 * eps)
            assert float(fd) == pytest.approx(float((g * v).sum()), rel=1e-5, abs=1e-8)
    small = graph("Resize", r(1, 2, 3, 3), [None, ("s", f32(1, 1, 2, 2))], {"mode": "cubic"})
    sm = build_module(small).double()
    xs = torch.from_numpy(RNG.standard_normal((1, 2, 3, 3))).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: sm(t).sum(), (xs,), eps=1e-6, atol=1e-6)


def test_input_gradients_closed_form(tmp_path: Path) -> None:
    """softmax(x W + b): d logit_t/dx = W[:, t]; d p_t/dx = p_t (W[:, t] − W p); d CE/dx = −(W[:, t] − W p)."""
    w, b = r(6, 4), r(4)
    path = make_linear_classifier(tmp_path / "lin.onnx", w, b)
    be = TorchBackend(ModelHandle(ModelConfig(path=path)))
    x, t = r(9, 6), RNG.integers(0, 4, 9)
    z = x.astype(np.float64) @ w + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    wt = w.T[t].astype(np.float64)
    wp = p @ w.T.astype(np.float64)
    np.testing.assert_allclose(be.input_gradients(x, t, of="logit"), wt, atol=1e-5)
    np.testing.assert_allclose(be.input_gradients(x, t, of="prob"), p[np.arange(9), t][:, None] * (wt - wp),
                               atol=1e-5)
    np.testing.assert_allclose(be.input_gradients(x, t, of="loss"), -(wt - wp), atol=1e-5)
    np.testing.assert_allclose(be.forward(x), p, atol=1e-6)
    assert be.kind == "softmax" and be.input_gradients(x, t).shape == x.shape


def test_fixed_batch_export_runs_any_batch(tmp_path: Path) -> None:
    """A model exported with batch 1 hard-codes it in Reshape; the interpreter batches anyway."""
    class Head(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3)
            self.fc = torch.nn.Linear(2 * 6 * 6, 3)

        def forward(self, x: Any) -> Any:
            return torch.softmax(self.fc(torch.relu(self.conv(x)).reshape(1, -1)), 1)

    path = tmp_path / "fixed.onnx"
    export(Head().eval(), torch.zeros(1, 1, 8, 8), path, dynamic=False)
    handle = ModelHandle(ModelConfig(path=path))
    x = r(5, 1, 8, 8)
    ort_out = handle.predict(x)  # the core runs a fixed-batch model in chunks
    be = TorchBackend(handle)
    assert be.module.fixed_batch == 1
    np.testing.assert_allclose(be.forward(x), ort_out, atol=1e-5)


def test_unsupported_ops_are_listed() -> None:
    n1 = helper.make_node("Foo", ["x"], ["a"], domain="my.ops")
    n2 = helper.make_node("Bar", ["a"], ["y"], domain="my.ops")
    g = helper.make_graph([n1, n2], "g", [helper.make_tensor_value_info("x", F32, [2])],
                          [helper.make_tensor_value_info("y", F32, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("my.ops", 1)])
    with pytest.raises(UnsupportedOpError, match=r"my\.ops::Bar, my\.ops::Foo"):
        build_module(m)


def test_plugins_can_register_ops() -> None:
    @register_op("Twice", domain="test.auditor")
    def twice(ctx: Any, ins: list) -> Any:
        return ins[0] * float(ctx.attr("k", 2.0))

    node = helper.make_node("Twice", ["x"], ["y"], domain="test.auditor", k=3.0)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", F32, [2])],
                          [helper.make_tensor_value_info("y", F32, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("test.auditor", 1)])
    out = build_module(m)(torch.tensor([1.0, -2.0]))
    assert out.tolist() == [3.0, -6.0]
    with pytest.raises(ValueError, match="already registered"):
        register_op("Twice", domain="test.auditor")(lambda ctx, ins: ins[0])
