"""``auditor init``: a commented starter spec for a model, with its inputs and outputs filled in."""

from __future__ import annotations

import os
from pathlib import Path

from auditor import graph as G
from auditor.model import ModelConfig, ModelHandle


def _rel(path: Path, out: Path) -> str:
    try:
        return os.path.relpath(path.resolve(), out.resolve().parent)
    except ValueError:
        return str(path.resolve())


def _data_block(handle: ModelHandle, data_path: Path | None, out: Path) -> list[str]:
    """The ``data:`` lines: an image folder gets its layout and a preprocessing block fitted to the input."""
    if data_path is not None and data_path.is_dir():
        from auditor.datasets.initblock import image_data_block

        shape = tuple(handle.input.shape) if handle.input.shape else None
        return image_data_block(data_path, _rel(data_path, out), shape, handle.input.dtype, handle.layout)
    return [
        "data:",
        f"  path: {_rel(data_path, out) if data_path else 'test.npz   # .npz .npy .csv .parquet, image folder'}",
        (f"  x: {handle.input.name}" if handle.sample_inputs else "  x: x")
        + "                  # input array (npz key) or feature columns (csv/parquet)",
        "  y: y                  # labels",
        "  # groups: [sex]       # sensitive-attribute columns, for bias checks",
        "  # limit: 2000         # audit a seeded, stratified sample",
        "  batch_size: 256",
    ]


def _scalar_inputs(model_path: Path) -> list[str]:
    """Data inputs of rank 0 (placeholders such as keep_prob): they take one value, never per-sample data."""
    import onnx

    try:
        proto = onnx.load(str(model_path), load_external_data=False)
    except Exception:
        return []  # ModelHandle explains what is wrong with the file
    specs = [G.value_info_spec(i) for i in G.data_inputs(proto.graph)]
    return [sp.name for sp in specs if sp.shape is not None and len(sp.shape) == 0]


def starter_spec(model_path: Path, data_path: Path | None, out: Path) -> str:
    """YAML text of a starter spec (the model is opened to read its inputs and outputs)."""
    scalars = _scalar_inputs(model_path)
    # scalar placeholders (keep_prob, is_training) need a value the model cannot tell us: the spec leaves a
    # commented line for each; the model is opened here with a stand-in only to read its inputs and outputs
    handle = ModelHandle(ModelConfig(path=model_path, device="cpu", feeds={n: 0 for n in scalars} or None))
    g = handle.proto.graph
    inputs = [G.value_info_spec(i).describe() for i in G.data_inputs(g)]
    outputs = [G.value_info_spec(o).describe() for o in g.output]
    pen = handle.penultimate()
    lines = [
        "# onnx-auditor spec. Run: auditor run " + str(out),
        "# Every key is documented by `auditor checks` and `auditor schema`.",
        "version: 1",
        "model:",
        f"  path: {_rel(model_path, out)}",
        f"  # data inputs: {', '.join(inputs)}",
        f"  input: {handle.input.name}" + ("        # primary input (data.x): the one perturbation checks perturb"
                                           if handle.sample_inputs else ""),
        *(["  inputs:                # other per-sample inputs -> their key (npz) or column(s) in the data"]
          + [f"    {name}: {key}" for name, key in handle.input_keys.items()] if handle.sample_inputs else []),
        *([f"  # feeds: {{{', '.join(f'{n}: VALUE' for n in scalars)}}}   # scalar input(s), not data: "
           f"give each its value (e.g. keep_prob: 1.0) and uncomment"] if scalars else []),
        f"  # graph outputs: {', '.join(outputs)}",
        "  # output: any tensor of the graph; the model is cut to what it needs"
        + (f" (penultimate features: {pen})" if pen else ""),
        f"  # output: {handle.outputs[0]}",
        "  device: auto          # auto: CUDA when it loads, else CPU; or cpu / cuda",
        "",
        *_data_block(handle, data_path, out),
        "",
        "# baseline: {path: last_release.onnx}   # checks run on both; gates can bound the change",
        "seed: 0",
        "",
        "checks:",
        "  - use: performance.metrics",
        "    gate:",
        "      accuracy: {min: 0.9}              # fail the release below 90 % accuracy",
        "      # accuracy: {max_drop: 0.01}      # with a baseline: at most 1 point worse than the last release",
        "      ece: {max: 0.1, severity: warn}",
        "",
        "report:",
        "  dir: reports",
        "  formats: [json, markdown, junit]",
        "",
    ]
    return "\n".join(lines)
