"""Small models and data for the torch plugin's tests (nothing downloaded)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx

from auditor.testing import readable_ir, save_model


def export(module: object, example: object, path: Path | None = None, *, opset: int = 17,
           dynamic: bool = True) -> onnx.ModelProto:
    """Export a torch module with the TorchScript exporter (at an IR onnxruntime reads)."""
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), buf, dynamo=False, input_names=["x"], output_names=["y"],
                          opset_version=opset,
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}} if dynamic else None)
    model = readable_ir(onnx.load_from_string(buf.getvalue()))
    if path is not None:
        save_model(model, path)
    return model


def digits(n_train: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits as (N, 1, 8, 8) float32 in [0, 1]: train/test split 1297/500."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(y))
    tr, te = idx[:-500], idx[-500:]
    if n_train is not None:
        tr = tr[:n_train]
    return x[tr], y[tr], x[te], y[te]


def small_cnn(seed: int = 0) -> object:
    """A conv -> relu -> pool -> linear -> softmax digits classifier (untrained)."""
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 10), torch.nn.Softmax(dim=1),
    ).eval()


def mlp(sizes: list[int], seed: int = 0, softmax: bool = True) -> object:
    """Linear/ReLU layers (untrained)."""
    import torch

    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = [torch.nn.Flatten()]
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    if softmax:
        layers.append(torch.nn.Softmax(dim=1))
    return torch.nn.Sequential(*layers).eval()
