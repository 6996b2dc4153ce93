"""The torch interpreter's LSTM / GRU / RNN against ONNX Runtime (onnx's reference evaluator for the batch-first
layout, which ONNX Runtime's CPU kernels refuse) on hand-built nodes: both
directions, batch-first layout, initial states, peepholes, clip, input_forget, linear_before_reset, other
activations and ragged sequence lengths; and gradients through an LSTM against finite differences."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")

from auditor_torch.interpreter import build_module  # noqa: E402

from auditor.testing import readable_ir  # noqa: E402

F32 = TensorProto.FLOAT
SEQ, BATCH, IN, H = 5, 3, 4, 6
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def recurrent(op: str, attrs: dict[str, Any], *, bias: bool = True, lengths: np.ndarray | None = None,
              init: bool = False, peep: bool = False, seed: int = 0) -> tuple[onnx.ModelProto, np.ndarray]:
    """One recurrent node with weights as initializers; input 'x'; every output exposed."""
    r = np.random.default_rng(seed)
    dirs = 2 if attrs.get("direction") == "bidirectional" else 1
    layout = attrs.get("layout", 0)
    g = GATES[op]
    inits = {"W": r.normal(size=(dirs, g * H, IN)).astype(np.float32) * 0.5,
             "R": r.normal(size=(dirs, g * H, H)).astype(np.float32) * 0.5}
    names = ["x", "W", "R"]
    names.append("B" if bias else "")
    if bias:
        inits["B"] = r.normal(size=(dirs, 2 * g * H)).astype(np.float32) * 0.3
    names.append("L" if lengths is not None else "")
    if lengths is not None:
        inits["L"] = lengths.astype(np.int32)
    state = (BATCH, dirs, H) if layout else (dirs, BATCH, H)
    names.append("H0" if init else "")
    if init:
        inits["H0"] = r.normal(size=state).astype(np.float32)
    if op == "LSTM":
        names.append("C0" if init else "")
        if init:
            inits["C0"] = r.normal(size=state).astype(np.float32)
        names.append("P" if peep else "")
        if peep:
            inits["P"] = r.normal(size=(dirs, 3 * H)).astype(np.float32) * 0.3
    while names and not names[-1]:
        names.pop()
    outs = ["Y", "Y_h", "Y_c"] if op == "LSTM" else ["Y", "Y_h"]
    node = helper.make_node(op, names, outs, hidden_size=H, **attrs)
    xshape = [BATCH, SEQ, IN] if layout else [SEQ, BATCH, IN]
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", F32, xshape)],
                              [helper.make_tensor_value_info(o, F32, None) for o in outs],
                              initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = readable_ir(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]))
    x = r.normal(size=xshape).astype(np.float32)
    return m, x


CASES = [
    ("lstm", "LSTM", {}, {}),
    ("lstm-bidirectional-init-peep", "LSTM", {"direction": "bidirectional"}, {"init": True, "peep": True}),
    ("lstm-reverse-nobias", "LSTM", {"direction": "reverse"}, {"bias": False}),
    ("lstm-batch-first", "LSTM", {"layout": 1, "direction": "bidirectional"}, {"init": True}),
    ("lstm-lengths-bidirectional", "LSTM", {"direction": "bidirectional"}, {"lengths": np.array([5, 2, 4])}),
    ("lstm-clip-input-forget", "LSTM", {"clip": 0.7, "input_forget": 1}, {"init": True}),
    ("gru", "GRU", {}, {"init": True}),
    ("gru-linear-before-reset-bidirectional", "GRU", {"linear_before_reset": 1, "direction": "bidirectional"}, {}),
    ("gru-lengths-reverse", "GRU", {"direction": "reverse"}, {"lengths": np.array([1, 5, 3])}),
    ("gru-activations", "GRU", {"activations": ["HardSigmoid", "LeakyRelu"], "activation_alpha": [0.3, 0.1],
                                "activation_beta": [0.4, 0.0]}, {}),
    ("rnn", "RNN", {}, {"init": True}),
    ("rnn-relu-bidirectional", "RNN", {"activations": ["Relu", "Tanh"], "direction": "bidirectional"}, {}),
    ("rnn-batch-first-reverse", "RNN", {"layout": 1, "direction": "reverse"}, {"init": True}),
]


@pytest.mark.parametrize("name,op,attrs,kw", CASES, ids=[c[0] for c in CASES])
def test_recurrent_op_matches_onnxruntime(name: str, op: str, attrs: dict[str, Any], kw: dict[str, Any]) -> None:
    model, x = recurrent(op, attrs, **kw)
    outs = [o.name for o in model.graph.output]
    if attrs.get("layout", 0):  # ONNX Runtime's CPU kernels refuse batch-first layouts: onnx's own reference
        from onnx.reference import ReferenceEvaluator

        want = ReferenceEvaluator(model).run(outs, {"x": x})
    else:
        want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(outs, {"x": x})
    m = build_module(model, output=outs[0], extra_outputs=outs[1:])
    with torch.no_grad():
        got = m.forward_many(torch.from_numpy(x), outs)
    for o, w in zip(outs, want):
        g = got[o].numpy()
        assert g.shape == w.shape, (o, g.shape, w.shape)
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=o)


def test_gradients_through_an_lstm_match_finite_differences() -> None:
    model, x = recurrent("LSTM", {"direction": "bidirectional"}, init=True, peep=True, seed=3)
    m = build_module(model, output="Y_h")
    xt = torch.from_numpy(x.astype(np.float64))
    m = m.double()
    xt.requires_grad_(True)
    w = torch.from_numpy(np.random.default_rng(4).normal(size=(2, BATCH, H)))
    (m.forward(xt) * w).sum().backward()
    assert xt.grad is not None
    g = xt.grad.numpy()
    eps = 1e-6
    for idx in [(0, 0, 0), (2, 1, 3), (4, 2, 1)]:
        d = np.zeros_like(x, dtype=np.float64)
        d[idx] = eps
        with torch.no_grad():
            up = (m.forward(torch.from_numpy(x + d)) * w).sum().item()
            down = (m.forward(torch.from_numpy(x - d)) * w).sum().item()
        assert g[idx] == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-8)
