"""``auditor init``: a commented starter spec for a model, with its inputs and outputs filled in."""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from auditor import graph as G
from auditor.model import ModelConfig, ModelHandle


def _rel(path: Path, out: Path) -> str:
    try:
        return os.path.relpath(path.resolve(), out.resolve().parent)
    except ValueError:
        return str(path.resolve())


def _data_block(handle: ModelHandle, data_path: Path | None, out: Path, groups: list[str] | None = None,
                labels: bool = True) -> list[str]:
    """The ``data:`` lines: an image folder gets its layout and a preprocessing block fitted to the input."""
    if data_path is None:
        # no data yet: the spec runs as written (weights checks only); the block shows what to add
        return [
            "# data: the audit data, needed by the checks that run the model (performance.metrics,",
            "# robustness.noise, bias.*, torch.*). To use it, uncomment this block, point path at your file",
            "# (or rerun `auditor init MODEL --data FILE`, which also picks the checks that fit it):",
            "# data:",
            "#   path: test.npz      # .npz .npy .csv .parquet, or an image folder (one sub-folder per class)",
            f"#   x: {handle.input.name if handle.sample_inputs else 'x'}"
            + "                # input array (npz key) or feature columns (csv/parquet)",
            "#   y: y                # labels",
            "#   # groups: [sex]     # sensitive-attribute columns, for bias checks",
            "#   batch_size: 256",
        ]
    if data_path.is_dir():
        from auditor.datasets.initblock import image_data_block

        shape = tuple(handle.input.shape) if handle.input.shape else None
        return image_data_block(data_path, _rel(data_path, out), shape, handle.input.dtype, handle.layout)
    return [
        "data:",
        f"  path: {_rel(data_path, out) if data_path else 'test.npz   # .npz .npy .csv .parquet, image folder'}",
        (f"  x: {handle.input.name}" if handle.sample_inputs else "  x: x")
        + "                  # input array (npz key) or feature columns (csv/parquet)",
        "  y: y                  # labels" if labels else "  # y: y                # labels (none in this file)",
        (f"  groups: [{', '.join(groups)}]    # sensitive-attribute columns, for bias checks" if groups else
         "  # groups: [sex]       # sensitive-attribute columns, for bias checks"),
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


def _data_has(data_path: Path | None) -> tuple[bool, bool, list[str]]:
    """Whether there is data, whether it has labels, and its likely group columns (read from the file's keys or
    header only; an unknown or unreadable file is assumed to have labels, as the data block says)."""
    if data_path is None:
        return False, False, []
    if data_path.is_dir():
        return True, True, []  # an image folder: labels from the sub-folder names
    keys: list[str] = []
    try:
        suffix = data_path.suffix.lower()
        if suffix == ".npz":
            import numpy as np

            with np.load(data_path, allow_pickle=False) as z:  # the key list only: no array is read
                keys = list(z.files)
        elif suffix == ".csv":
            with open(data_path, encoding="utf-8-sig") as f:
                keys = [k.strip() for k in f.readline().split(",")]
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            keys = list(pq.read_schema(data_path).names)
        else:
            return True, True, []
    except Exception:
        return True, True, []
    labels = "y" in keys
    groups = [k for k in keys if k.lower() in GROUP_NAMES]
    return True, labels, groups


#: Column names read as sensitive attributes by ``auditor init`` (the spec says so; edit as needed).
GROUP_NAMES = {"sex", "gender", "age_group", "race", "ethnicity", "site", "group", "country", "region"}


def _op_types(graph: onnx.GraphProto) -> set[str]:
    """The op types of the graph and its subgraphs: the weights checks skip a model without layers (and a gate
    on a skipped check fails), ``sparsity.filters`` one without convolutions."""
    return {n.op_type for g in [graph, *(sub for _, sub in G.subgraphs(graph))] for n in g.node}


def _suite(has_data: bool, labels: bool, groups: list[str], ops: set[str]) -> list[str]:
    """The ``checks:`` entries that fit the model and data: weight checks always, gated on defects no healthy
    model has (NaN / infinite weights, a layer weight that is zero throughout, a convolution whose every filter is
    degenerate); metrics (with calibration), noise when there are labels; group fairness when there are group
    columns. Each has a gate to start from (commented where no threshold is a safe default)."""
    out: list[str] = []
    if has_data and labels:
        out += ["  - use: performance.metrics          # accuracy, calibration (ece), per-class recall",
                "    gate:",
                "      accuracy: {min: 0.9}              # fail the release below 90 % accuracy",
                "      # accuracy: {max_drop: 0.01}      # with a baseline: at most 1 point below the last release",
                "      ece: {max: 0.1, severity: warn}   # calibration: expected calibration error",
                "  - use: robustness.noise             # accuracy under Gaussian input noise",
                "    # gate: {max_accuracy_drop: {max: 0.05}}"]
    if has_data and labels and groups:
        out += ["  - use: bias.group_metrics           # per-group accuracy and fairness gaps, with intervals",
                "    # gate: {demographic_parity_difference: {max: 0.1}}"]
    if not has_data:
        out += ["  # with a data: section (above), add checks that run the model, e.g.:",
                "  # - use: performance.metrics        # accuracy, calibration (ece), per-class recall",
                "  #   gate: {accuracy: {min: 0.9}}",
                "  # - use: robustness.noise           # accuracy under Gaussian input noise"]
    # no Conv / Gemm / MatMul: both weights checks skip, and a gate on a skipped check fails, so none is written
    layers = bool(ops & set(G.WEIGHT_INPUT))
    out.append("  - use: sparsity.profile             # zero and near-zero weights per layer")
    if layers:
        out += ["    gate:                             # defects, never a trait of a healthy model",
                "      nonfinite: {max: 0}               # NaN / infinite weights: a broken export or a diverged run",
                "      all_zero_weights: {max: 0}        # a layer weight that is zero throughout passes nothing on",
                "      # max_layer_sparsity: {max: 0.95, severity: warn}   # heavy pruning"]
    if ops & {"Conv", "ConvInteger", "QLinearConv"}:
        out += ["  - use: sparsity.filters             # all-zero, near-zero and constant filters per convolution",
                "    gate:",
                "      degenerate_layers: {max: 0}       # a convolution whose every filter is degenerate (e.g. a",
                "                                        # constant fill: placeholder weights, not a trained model)",
                "      # max_degenerate_fraction: {max: 0.5, severity: warn}"]
    out.append("  - use: sparsity.conditioning        # spectral norms and condition numbers of the weight matrices")
    if layers:
        out.append("    # gate: {singular_matrices: {max: 0}}")
    return out


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
    has_data, labels, groups = _data_has(data_path)
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
        *_data_block(handle, data_path, out, groups, labels),
        "",
        "# baseline: {path: last_release.onnx}   # checks run on both; gates can bound the change",
        "seed: 0",
        "",
        "checks:",
        *_suite(has_data, labels, groups, _op_types(g)),
        "",
        "report:",
        "  dir: reports",
        "  formats: [json, markdown, junit]",
        "",
    ]
    return "\n".join(lines)
