"""Generators of hostile inputs shared by ``tests/test_fuzz.py`` (short budget) and
``benchmarks/fuzz_inputs.py`` (long runs): YAML spec texts and mutated ONNX models."""

from __future__ import annotations

import random
from typing import Any

import onnx
import yaml
from hypothesis import strategies as st
from onnx import TensorProto

VALID: dict[str, Any] = {
    "version": 1,
    "model": {"path": "mlp.onnx"},
    "data": {"path": "data.npz", "y": "y", "limit": 30},
    "seed": 0,
    "checks": [
        {"use": "performance.metrics", "name": "acc", "gate": {"accuracy": {"min": 0.1}}},
        {"use": "sparsity.profile"},
    ],
    "report": {"dir": "r", "formats": ["json", "markdown", "junit"]},
}

KEYS = ["version", "model", "data", "checks", "use", "with", "gate", "path", "y", "x", "limit", "seed", "min",
        "max", "max_drop", "severity", "report", "dir", "formats", "feeds", "timeout_s", "name", "batch_size",
        "groups", "baseline", "reference", "enabled", "task", "layout", "device", "input", "output"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30), st.sampled_from(["mlp.onnx", "data.npz", "~nobody/x", "../../etc/passwd", "a\0b",
                                           "performance.metrics", "json", "-1", "1e400", ".nan"]))
values = st.recursive(scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), kids,
                                                max_size=4)), max_leaves=12)


def _set_path(doc: Any, path: list[Any], value: Any) -> Any:
    """``doc`` with the value at ``path`` replaced (indices taken modulo the container's size)."""
    if not path:
        return value
    if isinstance(doc, dict) and doc:
        key = list(doc)[path[0] % len(doc)] if isinstance(path[0], int) else path[0]
        out = dict(doc)
        out[key] = _set_path(doc.get(key), path[1:], value)
        return out
    if isinstance(doc, list) and doc:
        out_l = list(doc)
        i = path[0] % len(doc) if isinstance(path[0], int) else 0
        out_l[i] = _set_path(doc[i], path[1:], value)
        return out_l
    return value


@st.composite
def structured_specs(draw: st.DrawFn) -> str:
    """A valid spec with one or a few values replaced by arbitrary YAML values, dumped as YAML."""
    doc: Any = VALID
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.lists(st.one_of(st.integers(0, 7), st.sampled_from(KEYS)), min_size=0, max_size=4))
        doc = _set_path(doc, path, draw(values))
    return yaml.safe_dump(doc, allow_unicode=True)


@st.composite
def mutated_texts(draw: st.DrawFn) -> str:
    """The valid spec's text with characters inserted, deleted, duplicated or replaced, lines repeated (duplicate
    keys), and YAML syntax thrown in (anchors, aliases, tags, flow brackets, tabs)."""
    text = list(yaml.safe_dump(VALID))
    junk = st.sampled_from([*":{}[]&*!|>-?,#'\"\t\n ~%@`", "&a", "*a", "!!set", "!!python/object:os.system",
                            "<<: ", "\x00", "\ufeff", "..."])
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "repeat"]))
        pos = draw(st.integers(0, max(0, len(text) - 1)))
        if op == "insert":
            text[pos:pos] = list(draw(junk))
        elif op == "delete" and text:
            del text[pos:pos + draw(st.integers(1, 5))]
        elif op == "replace" and text:
            text[pos] = draw(junk)
        else:
            joined = "".join(text)
            lines = joined.splitlines(keepends=True)
            if lines:
                i = draw(st.integers(0, len(lines) - 1))
                lines.insert(i, lines[i])
            text = list("".join(lines))
    return "".join(text)


def spec_texts() -> st.SearchStrategy[str]:
    """Both kinds of hostile spec text."""
    return st.one_of(structured_specs(), mutated_texts())


def mutate_model(model: onnx.ModelProto, rng: random.Random) -> bytes:
    """A copy of ``model`` damaged in one to three ways, serialised: proto-level edits (versions, opsets, shapes,
    types, op types, attributes, removed or renamed tensors, external-data entries) or byte-level damage."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(14)
        if op == 0:
            m.ir_version = rng.choice([0, 1, 3, 11, 14, 99, -1 & 0x7FFFFFFF])
        elif op == 1 and m.opset_import:
            m.opset_import[0].version = rng.choice([0, 1, 6, 30, 999])
        elif op == 2 and g.input:
            dims = g.input[0].type.tensor_type.shape.dim
            if dims:
                d = dims[rng.randrange(len(dims))]
                if rng.random() < 0.5:
                    d.dim_value = rng.choice([0, 1, 3, 7, 10**6])
                else:
                    d.dim_param = rng.choice(["", "N", "M"])
        elif op == 3 and g.input:
            g.input[0].type.tensor_type.elem_type = rng.choice([0, 2, 6, 7, 8, 9, 10, 11, 16, 99])
        elif op == 4 and g.node:
            g.node[rng.randrange(len(g.node))].op_type = rng.choice(["Foo", "", "Gemm", "Conv", "Relu", "Loop"])
        elif op == 5 and g.node:
            n = g.node[rng.randrange(len(g.node))]
            if n.attribute:
                del n.attribute[rng.randrange(len(n.attribute))]
            else:
                n.attribute.add(name="axis", type=onnx.AttributeProto.INT, i=rng.choice([-9, 0, 5]))
        elif op == 6 and g.initializer:
            del g.initializer[rng.randrange(len(g.initializer))]
        elif op == 7 and g.initializer:
            t = g.initializer[rng.randrange(len(g.initializer))]
            t.dims[rng.randrange(len(t.dims))] = rng.choice([0, 1, 2, 10**9]) if t.dims else 1
        elif op == 8 and g.initializer:
            t = g.initializer[rng.randrange(len(g.initializer))]
            t.ClearField("raw_data")
            t.data_location = TensorProto.EXTERNAL
            for key, value in [("location", rng.choice(["w.bin", "../x", "/etc/passwd", "", "a\0b"])),
                               ("offset", rng.choice(["0", "-1", "abc", "1e3", "99999999"])),
                               ("length", rng.choice(["16", "x", ""]))]:
                if rng.random() < 0.8:
                    t.external_data.add(key=key, value=value)
        elif op == 9 and g.output:
            if rng.random() < 0.3:
                del g.output[:]
            else:
                g.output[0].name = rng.choice(["nope", "", "x"])
        elif op == 10 and g.node:
            n = g.node[rng.randrange(len(g.node))]
            if n.input:
                other = n.output[0] if n.output else ""
                n.input[rng.randrange(len(n.input))] = rng.choice(["", "missing", "x", other])
        elif op == 11 and g.node:
            g.node.insert(0, g.node.pop() if len(g.node) > 1 else g.node[0])
        elif op == 12 and g.initializer:
            t = g.initializer[rng.randrange(len(g.initializer))]
            t.data_type = rng.choice([0, 1, 7, 8, 10, 16, 99])
        elif g.input:
            g.input.add().CopyFrom(g.input[0])
    data = bytearray(m.SerializeToString())
    if rng.random() < 0.25 and data:
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(data))
            data[i] = rng.randrange(256)
    if rng.random() < 0.1:
        data = data[: rng.randrange(len(data) + 1)]
    return bytes(data)
