"""Collect a small corpus of real third-party ONNX exports into ``benchmarks/corpus/models/`` (git-ignored).

Sources, all reachable from a machine with PyPI access and nothing else:

* the models that the installed ``onnx`` wheel ships in ``onnx/backend/test/data`` (onnx-caffe2 ``light_*``
  architectures whose weights are ``ConstantOfShape`` nodes; PyTorch 0.x converted layer tests);
* ``.onnx`` files inside PyPI wheels, fetched with ``pip download --no-deps`` and unzipped (their licences are
  in the manifest; the files stay out of git): silero-vad (MIT; PyTorch exports with If subgraphs, a float16
  variant), rapidocr-onnxruntime (Apache-2.0; PaddlePaddle OCR models via paddle2onnx), captcha-whisperer
  (MIT; a CRNN), ddddocr (MIT; OCR / detection models);
* exports made here with the exporters people use: torch.onnx (TorchScript and dynamo), skl2onnx, ONNX
  Runtime's static (QDQ) and dynamic quantizers, onnxconverter-common's float16 pass (its pure-Python wheel
  fetched the same way) and a plain float16 cast of the initializers.

``python benchmarks/corpus/fetch_corpus.py`` writes the files and ``manifest.json`` (name, file, source,
exporter, licence). Run ``audit_corpus.py`` next.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
OUT = HERE / "models"

#: (package==version, licence, files inside the wheel to keep, exporter note)
WHEELS: list[tuple[str, str, list[str], str]] = [
    ("silero-vad==6.2.3", "MIT",
     ["silero_vad/data/silero_vad.onnx", "silero_vad/data/silero_vad_half.onnx",
      "silero_vad/data/silero_vad_op18_ifless.onnx"], "PyTorch (TorchScript), If subgraphs"),
    ("rapidocr-onnxruntime==1.4.4", "Apache-2.0",
     ["rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
      "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
      "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"], "PaddlePaddle (paddle2onnx)"),
    ("captcha-whisperer==0.1.0", "MIT", ["captcha_whisperer/models/captcha_crnn.onnx"], "PyTorch CRNN"),
    ("ddddocr==1.6.1", "MIT", ["ddddocr/common_old.onnx", "ddddocr/common_det.onnx"], "PyTorch OCR / detector"),
]
#: onnx's own test data: architectures (light_*) and layer tests with real weights
ONNX_LIGHT = ["light_bvlc_alexnet", "light_densenet121", "light_inception_v1", "light_inception_v2",
              "light_resnet50", "light_shufflenet", "light_squeezenet", "light_vgg19", "light_zfnet512"]
ONNX_LAYERS = ["test_Conv2d", "test_Conv2d_groups", "test_ConvTranspose2d", "test_Linear", "test_Embedding",
               "test_PReLU_2d_multiparam", "test_BatchNorm2d_eval", "test_PixelShuffle"]


def _entry(name: str, path: Path, source: str, exporter: str, licence: str) -> dict[str, Any]:
    m = onnx.load(str(path), load_external_data=False)
    if m.ir_version > 10:  # onnx 1.23 writes IR 14, which ONNX Runtime 1.31 cannot read
        m.ir_version = 10
        onnx.save(m, str(path))
    return {"name": name, "file": str(path.relative_to(OUT)), "source": source, "exporter": exporter,
            "producer": f"{m.producer_name} {m.producer_version}".strip(), "licence": licence}


def onnx_wheel() -> list[dict[str, Any]]:
    """Models shipped inside the installed onnx package."""
    base = Path(onnx.__file__).parent / "backend" / "test" / "data"
    rows = []
    (OUT / "onnx").mkdir(parents=True, exist_ok=True)
    for name in ONNX_LIGHT:
        src = base / "light" / f"{name}.onnx"
        if src.exists():
            dst = OUT / "onnx" / src.name
            dst.write_bytes(src.read_bytes())
            rows.append(_entry(name, dst, f"onnx {onnx.__version__} wheel (backend/test/data/light)",
                               "onnx-caffe2 (weights as ConstantOfShape)", "Apache-2.0 (onnx)"))
    for name in ONNX_LAYERS:
        src = base / "pytorch-converted" / name / "model.onnx"
        if src.exists():
            dst = OUT / "onnx" / f"{name}.onnx"
            dst.write_bytes(src.read_bytes())
            rows.append(_entry(name, dst, f"onnx {onnx.__version__} wheel (backend/test/data/pytorch-converted)",
                               "PyTorch 0.x", "Apache-2.0 (onnx)"))
    return rows


def pypi_wheels() -> list[dict[str, Any]]:
    """``.onnx`` files inside PyPI wheels (``pip download --no-deps``)."""
    rows = []
    cache = OUT / "wheels"
    cache.mkdir(parents=True, exist_ok=True)
    for req, licence, files, exporter in WHEELS:
        pkg = req.split("==")[0]
        stem = pkg.replace("-", "_")
        whl = next(iter(sorted(cache.glob(f"{stem}-*.whl"))), None)
        if whl is None:
            proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache), req],
                                  capture_output=True, text=True)
            whl = next(iter(sorted(cache.glob(f"{stem}-*.whl"))), None)
            if whl is None:
                print(f"  {req}: not downloadable ({proc.stderr.strip().splitlines()[-1:]})")
                continue
        with zipfile.ZipFile(whl) as z:
            for f in files:
                dst = OUT / pkg / Path(f).name
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(z.read(f))
                rows.append(_entry(f"{pkg}/{Path(f).stem}", dst, f"PyPI {req}", exporter, licence))
    return rows


def _torch_cnn() -> Any:
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(32, 10)).eval()


def _torch_resnet_block() -> Any:
    import torch

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(1)
            self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.c1 = torch.nn.Conv2d(16, 16, 3, padding=1)
            self.c2 = torch.nn.Conv2d(16, 16, 3, padding=1)
            self.head = torch.nn.Linear(16, 10)

        def forward(self, x: Any) -> Any:
            h = torch.relu(self.stem(x))
            h = torch.relu(h + self.c2(torch.relu(self.c1(h))))
            return torch.softmax(self.head(h.mean((2, 3))), 1)

    return Block().eval()


def exporters() -> list[dict[str, Any]]:
    """Exports made here with the usual exporters (rows with source "exporter")."""
    rows: list[dict[str, Any]] = []
    d = OUT / "exporters"
    d.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    import torch

    x = torch.randn(1, 3, 32, 32)
    for name, mod in (("torch_cnn", _torch_cnn()), ("torch_resblock", _torch_resnet_block())):
        p = d / f"{name}_legacy.onnx"
        torch.onnx.export(mod, (x,), str(p), dynamo=False, input_names=["x"], output_names=["y"], opset_version=17,
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
        rows.append(_entry(f"{name} (TorchScript)", p, "made here", f"torch {torch.__version__} torch.onnx legacy",
                           "generated"))
    p = d / "torch_cnn_fixed1.onnx"
    torch.onnx.export(_torch_cnn(), (x,), str(p), dynamo=False, input_names=["x"], output_names=["y"], opset_version=17)
    rows.append(_entry("torch_cnn fixed batch 1", p, "made here", "torch.onnx legacy, no dynamic axes", "generated"))
    try:
        p = d / "torch_cnn_dynamo.onnx"
        prog = torch.onnx.export(_torch_cnn(), (x,), dynamo=True, dynamic_shapes=({0: torch.export.Dim("N")},))
        prog.save(str(p))
        rows.append(_entry("torch_cnn (dynamo)", p, "made here", f"torch {torch.__version__} torch.onnx dynamo",
                           "generated"))
    except Exception as exc:  # the dynamo exporter needs onnxscript
        print(f"  dynamo export skipped: {type(exc).__name__}: {str(exc)[:120]}")
    rows += _quantized(d / "torch_cnn_legacy.onnx", d)
    rows += _float16(d / "torch_cnn_legacy.onnx", d)
    rows += _sklearn(d)
    return rows


def _quantized(src: Path, d: Path) -> list[dict[str, Any]]:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    rng = np.random.default_rng(0)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"x": rng.random((1, 3, 32, 32), dtype=np.float32)} for _ in range(8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    import onnxruntime

    rows = []
    p = d / "torch_cnn_qdq.onnx"
    quantize_static(str(src), str(p), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8)
    rows.append(_entry("torch_cnn QDQ int8 per-channel", p, "made here",
                       f"onnxruntime {onnxruntime.__version__} quantize_static", "generated"))
    p = d / "torch_cnn_dynamic.onnx"
    quantize_dynamic(str(src), str(p))
    rows.append(_entry("torch_cnn dynamic int8", p, "made here",
                       f"onnxruntime {onnxruntime.__version__} quantize_dynamic", "generated"))
    return rows


def _float16(src: Path, d: Path) -> list[dict[str, Any]]:
    rows = []
    m = onnx.load(str(src))
    cache = OUT / "wheels"
    whl = next(iter(sorted(cache.glob("onnxconverter_common-*.whl"))), None)
    if whl is None:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache),
                        "onnxconverter-common==1.16.0"], capture_output=True)
        whl = next(iter(sorted(cache.glob("onnxconverter_common-*.whl"))), None)
    if whl is not None:
        sys.path.insert(0, str(whl))  # a pure-Python wheel imports from the zip itself
        try:
            from onnxconverter_common import float16

            fm = float16.convert_float_to_float16(m, keep_io_types=True)
            fm.ir_version = min(fm.ir_version, 10)
            p = d / "torch_cnn_fp16_occ.onnx"
            onnx.save(fm, str(p))
            rows.append(_entry("torch_cnn float16 (onnxconverter-common)", p, "made here",
                               "onnxconverter-common 1.16 convert_float_to_float16(keep_io_types)", "generated"))
        except Exception as exc:
            print(f"  onnxconverter-common float16 pass failed: {type(exc).__name__}: {exc}")
        finally:
            sys.path.remove(str(whl))
    # the plain variant: float16 initializers, each behind a Cast to float (what a hand-written pass does)
    from onnx import TensorProto, helper, numpy_helper

    hm = onnx.load(str(src))
    g = hm.graph
    casts = []
    for t in list(g.initializer):
        if t.data_type == TensorProto.FLOAT and len(t.dims) >= 2:
            arr = numpy_helper.to_array(t).astype(np.float16)
            old = t.name
            t.CopyFrom(numpy_helper.from_array(arr, old + "_fp16"))
            casts.append(helper.make_node("Cast", [old + "_fp16"], [old], to=TensorProto.FLOAT))
    nodes = casts + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    p = d / "torch_cnn_fp16_cast.onnx"
    onnx.save(hm, str(p))
    rows.append(_entry("torch_cnn float16 weights + Cast", p, "made here", "float16 initializers behind Cast",
                       "generated"))
    return rows


def _sklearn(d: Path) -> list[dict[str, Any]]:
    import skl2onnx
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    rows = []
    for name, est in (("sklearn_logreg", make_pipeline(StandardScaler(), LogisticRegression(max_iter=300))),
                      ("sklearn_mlp", MLPClassifier(hidden_layer_sizes=(32,), max_iter=200, random_state=0)),
                      ("sklearn_forest", RandomForestClassifier(n_estimators=10, max_depth=6, random_state=0))):
        est.fit(x, y)
        m = to_onnx(est, x[:1], target_opset=17)
        m.ir_version = min(m.ir_version, 10)
        p = d / f"{name}.onnx"
        onnx.save(m, str(p))
        rows.append(_entry(name, p, "made here", f"skl2onnx {skl2onnx.__version__}", "generated"))
    np.savez(d / "digits.npz", x=x[:256], y=y[:256].astype(np.int64))
    return rows


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for step in (onnx_wheel, pypi_wheels, exporters):
        print(f"{step.__name__} ...", flush=True)
        with tempfile.TemporaryDirectory() as tmp, _cwd(tmp):
            rows += step()
    (OUT / "manifest.json").write_text(json.dumps(rows, indent=1))
    print(f"{len(rows)} models in {OUT}")
    return 0


class _cwd:
    def __init__(self, path: str) -> None:
        self.path, self.old = path, os.getcwd()

    def __enter__(self) -> None:
        os.chdir(self.path)

    def __exit__(self, *exc: object) -> None:
        os.chdir(self.old)


if __name__ == "__main__":
    sys.exit(main())
