"""Image folders, manifests and a small CNN for the data tests (Pillow writes the files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from builders import save_model
from onnx import TensorProto, helper


def write_images(root: Path, per_class: dict[str, int], *, size: tuple[int, int] = (40, 30), seed: int = 0,
                 fmt: str = "png", vary: bool = False) -> list[Path]:
    """``root/<class>/<i>.<fmt>`` with random RGB content (``size`` is width x height; ``vary`` changes it per
    file). Each class has a different mean colour so that a model can tell them apart."""
    from PIL import Image

    r = np.random.default_rng(seed)
    out = []
    for k, (cls, n) in enumerate(per_class.items()):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            w, h = (size[0] + 3 * i, size[1] + 2 * i) if vary else size
            base = np.zeros((h, w, 3))
            base[..., k % 3] = 120
            arr = np.clip(base + r.normal(0, 60, (h, w, 3)), 0, 255).astype(np.uint8)
            p = root / cls / f"{i:03d}.{fmt}"
            Image.fromarray(arr).save(p, quality=95) if fmt == "jpg" else Image.fromarray(arr).save(p)
            out.append(p)
    return out


def write_cnn(path: Path, *, c: int = 3, hw: tuple[int, int] | None = (16, 16), n_out: int = 3, seed: int = 0,
              layout: str = "NCHW", dtype: int = TensorProto.FLOAT,
              denorm: tuple[list[float], list[float]] | None = None) -> dict[str, np.ndarray]:
    """x -> (x * std + mean) -> (transpose) -> GlobalAveragePool -> Flatten -> Gemm -> Softmax; returns the
    weights. ``denorm`` (mean, std) makes a model that takes normalised inputs and undoes the normalisation
    first: the same function of the pixels as the model without it."""
    r = np.random.default_rng(seed)
    w = {"W": r.normal(size=(c, n_out)).astype(np.float32) * 4, "b": r.normal(size=n_out).astype(np.float32)}
    dims: list[int | str] = ["N", c, *(hw or ("H", "W"))] if layout == "NCHW" else ["N", *(hw or ("H", "W")), c]
    nodes = []
    src = "x"
    if dtype != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT))
        src = "xf"
    if denorm is not None:
        shape = (1, c, 1, 1) if layout == "NCHW" else (1, 1, 1, c)
        w["dn_std"] = np.asarray(denorm[1], np.float32).reshape(shape)
        w["dn_mean"] = np.asarray(denorm[0], np.float32).reshape(shape)
        nodes += [helper.make_node("Mul", [src, "dn_std"], ["xs"]), helper.make_node("Add", ["xs", "dn_mean"], ["xd"])]
        src = "xd"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [src], ["xt"], perm=[0, 3, 1, 2]))
        src = "xt"
    nodes += [helper.make_node("GlobalAveragePool", [src], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
              helper.make_node("Gemm", ["f", "W", "b"], ["z"]), helper.make_node("Softmax", ["z"], ["p"], axis=1)]
    save_model(nodes, [helper.make_tensor_value_info("x", dtype, dims)],
               [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", n_out])], w, path)
    return w
