"""Benchmark: data larger than memory, streamed (issue #12).

Two measurements, each audit in a fresh process whose peak resident set size is read with
``resource.getrusage(RUSAGE_CHILDREN)`` by a wrapper process:

``npy``
    An ``.npy`` of 8.4M rows × 60 float32 features (2.0 GB) with labels, audited whole with
    ``performance.metrics`` on a linear softmax classifier. Target: peak RSS under 1 GiB.
``images``
    20,000 generated 224×224 JPEGs in 10 class folders, ``performance.metrics`` + ``robustness.noise``
    (default limit 2000) on a small CNN, with ``data.preprocess: {preset: imagenet}`` (resize 256, crop 224,
    ImageNet mean/std). Target: peak RSS under 1.5 GiB. In the same run, decode + preprocess throughput of the
    auditor's image source on 2,000 of the files against a plain Pillow loop doing the same work (open, RGB,
    resize shorter side to 256, centre crop 224, scale, mean/std, NCHW) in a thread pool of the same size.
    Target: ratio at least 0.8.
``probes``
    2,000 generated 224×224 JPEGs (the default ``limit`` of both checks: 1.1 GiB as float32), audited by
    ``robustness.blind_spots`` (100 pairs, 8 steps, 1 random direction) and ``robustness.fooling`` (5
    generations), each in its own process: the peak RSS of each. ``--code DIR`` measures another checkout's
    auditor on the same files (e.g. the commit before the checks streamed), for a before/after figure.

Files go to a temporary folder (``--dir``) and are deleted after; ``df -h`` it first (about 2.2 GB for the
``.npy``, 0.4 GB for the JPEGs)::

    python benchmarks/bench_data.py [--dir /big/tmp] [--only npy|images|probes] [--images 20000] [--code DIR]

Figures are in docs/data.md (loaded 2-core VM): npy 910 MiB peak RSS; images 609 MiB peak RSS (2,631 MiB
before the noise sweep worked in chunks); throughput ratio 0.97-1.32. Probes: peak RSS 3,523 -> 317 MiB (blind
spots), 4,928 -> 420 MiB (fooling), before/after the two checks streamed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from auditor.testing import make_linear_classifier  # noqa: E402

_WRAP = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
         "rc = subprocess.run(sys.argv[1:]).returncode; "
         "print('RSS', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc, time.perf_counter() - t)")


def audit(spec: Path, code: Path = ROOT) -> tuple[float, int, float]:
    """Peak RSS (MiB), exit code and wall time of ``auditor run spec`` in a fresh process (the auditor of the
    checkout ``code``)."""
    env = {**os.environ, "PYTHONPATH": f"{code}{os.pathsep}{code / 'plugins'}"}
    out = subprocess.run([sys.executable, "-c", _WRAP, sys.executable, "-m", "auditor.cli", "run", str(spec),
                          "--quiet"], capture_output=True, text=True, env=env, cwd=spec.parent)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RSS"))
    _, kb, rc, wall = line.split()
    if int(rc) not in (0, 1):
        print(out.stdout[-2000:], out.stderr[-2000:])
    return int(kb) / 1024, int(rc), float(wall)


def bench_npy(tmp: Path, rows: int) -> dict[str, float]:
    """The 2 GB ``.npy`` audited whole."""
    d = 60
    r = np.random.default_rng(0)
    w = r.normal(size=(d, 3)).astype(np.float32)
    x = np.lib.format.open_memmap(tmp / "x.npy", mode="w+", dtype=np.float32, shape=(rows, d))
    y = np.empty(rows, np.int64)
    for s in range(0, rows, 500_000):
        b = r.normal(size=(min(500_000, rows - s), d)).astype(np.float32)
        x[s:s + len(b)] = b
        y[s:s + len(b)] = (b @ w).argmax(1)
    x.flush()
    del x
    np.save(tmp / "y.npy", y)
    make_linear_classifier(tmp / "m.onnx", w, np.zeros(3, np.float32))
    spec = tmp / "npy.yaml"
    spec.write_text("version: 1\nmodel: {path: m.onnx, device: cpu}\n"
                    "data: {path: x.npy, y: y.npy, batch_size: 65536}\n"
                    "checks:\n  - use: performance.metrics\nreport: {dir: rep_npy, formats: [json]}\n")
    rss, rc, wall = audit(spec)
    acc = json.loads((tmp / "rep_npy" / "report.json").read_text())["checks"][0]["metrics"]["accuracy"]
    size = (tmp / "x.npy").stat().st_size / 2**30
    print(f"npy: {rows} rows, {size:.2f} GiB file: peak RSS {rss:.0f} MiB, {wall:.1f} s, exit {rc}, "
          f"accuracy {acc:.4f}")
    return {"rows": rows, "file_gib": size, "peak_rss_mib": rss, "wall_s": wall}


def _write_jpegs(args: tuple[Path, int, int, int]) -> None:
    from PIL import Image

    root, start, stop, classes = args
    r = np.random.default_rng(start)
    for i in range(start, stop):
        k = i % classes
        base = np.zeros((224, 224, 3), np.float32)
        base[..., k % 3] = 40 + 15 * k
        img = np.clip(base + r.normal(0, 50, (224, 224, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"c{k:02d}" / f"{i:06d}.jpg", quality=90)


def write_cnn(path: Path, classes: int) -> None:
    """Conv 3->8 (4x4, stride 4) -> ReLU -> Conv 8->16 (3x3, stride 2) -> ReLU -> GAP -> Gemm -> Softmax."""
    from tests.builders import save_model

    r = np.random.default_rng(1)
    w = {"c1": (r.normal(size=(8, 3, 4, 4)) * 0.2).astype(np.float32), "b1": np.zeros(8, np.float32),
         "c2": (r.normal(size=(16, 8, 3, 3)) * 0.2).astype(np.float32), "b2": np.zeros(16, np.float32),
         "W": r.normal(size=(16, classes)).astype(np.float32), "b": np.zeros(classes, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "c1", "b1"], ["h1"], strides=[4, 4], kernel_shape=[4, 4]),
             helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("Conv", ["r1", "c2", "b2"], ["h2"], strides=[2, 2], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["h2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "W", "b"], ["z"]), helper.make_node("Softmax", ["z"], ["p"], axis=1)]
    save_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 224, 224])],
               [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", classes])], w, path)


def write_centroid_classifier(path: Path, classes: int) -> None:
    """GlobalAveragePool -> Gemm -> Softmax: nearest channel-mean centroid of :func:`_write_jpegs`' classes on
    ImageNet-normalised inputs (the probes need correctly classified images of several classes)."""
    from tests.builders import save_model

    r = np.random.default_rng(0)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    cents = []
    for k in range(classes):
        base = np.zeros((224, 224, 3))
        base[..., k % 3] = 40 + 15 * k
        px = np.clip(base + r.normal(0, 50, base.shape), 0, 255).mean(axis=(0, 1))
        cents.append((px / 255 - mean) / std)
    c = np.array(cents)
    w = {"W": (2 * c.T * 20).astype(np.float32), "b": (-(c**2).sum(axis=1) * 20).astype(np.float32)}
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "W", "b"], ["z"]), helper.make_node("Softmax", ["z"], ["p"], axis=1)]
    save_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 224, 224])],
               [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", classes])], w, path)


def plain_pillow(files: list[Path], workers: int, batch: int) -> np.ndarray:
    """The baseline: what a user's own loader does, in a thread pool of ``workers``."""
    from PIL import Image

    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)

    def one(p: Path) -> np.ndarray:
        with Image.open(p) as im:
            im = im.convert("RGB")
            w, h = im.size
            im = im.resize((256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256),
                           Image.Resampling.BILINEAR)
            a = np.asarray(im)
        t, left = round((a.shape[0] - 224) / 2), round((a.shape[1] - 224) / 2)
        return a[t:t + 224, left:left + 224]

    last = np.empty(0)
    with ThreadPoolExecutor(workers) as pool:
        for s in range(0, len(files), batch):
            px = np.stack(list(pool.map(one, files[s:s + batch]))).astype(np.float32)
            px *= np.float32(1 / 255)
            px -= mean
            px /= std
            last = np.ascontiguousarray(px.transpose(0, 3, 1, 2))
    return last


def bench_images(tmp: Path, n: int, workers: int) -> dict[str, float]:
    """20,000 JPEGs: the audit's RSS, and decode throughput against plain Pillow."""
    from auditor.data import DataConfig, load_dataset
    from auditor.datasets.registry import LoadRequest

    classes = 10
    root = tmp / "val"
    for k in range(classes):
        (root / f"c{k:02d}").mkdir(parents=True)
    t = time.perf_counter()
    chunks = [(root, s, min(s + 1000, n), classes) for s in range(0, n, 1000)]
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(_write_jpegs, chunks))
    print(f"images: wrote {n} JPEGs in {time.perf_counter() - t:.0f} s "
          f"({sum(f.stat().st_size for f in root.rglob('*.jpg')) / 2**20:.0f} MiB)")
    write_cnn(tmp / "cnn.onnx", classes)

    # throughput, same work, same threads, same run
    sample = 2000
    ds = load_dataset(DataConfig(path=root, preprocess={"preset": "imagenet"}, workers=workers, limit=sample),
                      request=LoadRequest(rng=np.random.default_rng(0), input_shape=("N", 3, 224, 224),
                                          input_dtype=np.dtype(np.float32), layout="NCHW"))
    files = list(ds.x.files)  # type: ignore[union-attr]
    times: dict[str, list[float]] = {"auditor": [], "pillow": []}
    for _ in range(2):  # interleaved, best of two each: the machine is shared
        t = time.perf_counter()
        for _sl, _b in ds.batches(64):
            pass
        times["auditor"].append(time.perf_counter() - t)
        t = time.perf_counter()
        plain_pillow(files, workers, 64)
        times["pillow"].append(time.perf_counter() - t)
    ta, tp = min(times["auditor"]), min(times["pillow"])
    ratio = tp / ta
    print(f"images: decode+preprocess of {len(files)} files, {workers} threads: auditor {len(files) / ta:.0f}/s, "
          f"plain Pillow {len(files) / tp:.0f}/s, throughput ratio {ratio:.2f}")

    spec = tmp / "img.yaml"
    spec.write_text("version: 1\nmodel: {path: cnn.onnx, device: cpu}\n"
                    f"data: {{path: val, preprocess: {{preset: imagenet}}, batch_size: 32, workers: {workers}}}\n"
                    "checks:\n  - use: performance.metrics\n  - use: robustness.noise\n"
                    "report: {dir: rep_img, formats: [json]}\n")
    rss, rc, wall = audit(spec)
    rep = json.loads((tmp / "rep_img" / "report.json").read_text())
    status = {c["id"]: c["status"] for c in rep["checks"]}
    print(f"images: audit of {rep['data']['rows']} images (metrics + noise on 2000): peak RSS {rss:.0f} MiB, "
          f"{wall:.0f} s, exit {rc}, {status}")
    return {"images": n, "peak_rss_mib": rss, "wall_s": wall, "throughput_ratio": ratio,
            "auditor_per_s": len(files) / ta, "pillow_per_s": len(files) / tp}


def bench_probes(tmp: Path, n: int, workers: int, code: Path) -> dict[str, float]:
    """robustness.blind_spots and robustness.fooling on ``n`` JPEGs, each audit in its own process."""
    classes = 10
    root = tmp / "probe_val"
    for k in range(classes):
        (root / f"c{k:02d}").mkdir(parents=True)
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(_write_jpegs, [(root, s, min(s + 500, n), classes) for s in range(0, n, 500)]))
    write_centroid_classifier(tmp / "centroid.onnx", classes)
    out: dict[str, float] = {"images": n}
    for use, args in (("robustness.blind_spots", "{pairs: 100, steps: 8, refine: 3, random_directions: 1}"),
                      ("robustness.fooling", "{generations: 5}")):
        spec = tmp / "probe.yaml"
        spec.write_text("version: 1\nmodel: {path: centroid.onnx, device: cpu}\n"
                        f"data: {{path: probe_val, preprocess: {{preset: imagenet}}, batch_size: 32, "
                        f"workers: {workers}}}\nchecks:\n  - use: {use}\n    with: {args}\n"
                        "report: {dir: rep_probe, formats: [json]}\n")
        rss, rc, wall = audit(spec, code)
        check = json.loads((tmp / "rep_probe" / "report.json").read_text())["checks"][0]
        print(f"probes: {use} on {n} images ({code}): peak RSS {rss:.0f} MiB, {wall:.0f} s, exit {rc}, "
              f"{check['status']} {check.get('skip_reason') or ''}")
        out[f"{use}_peak_rss_mib"] = rss
    return out


def main() -> None:
    """Run the measurements and print their figures."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=None)
    ap.add_argument("--only", choices=["npy", "images", "probes"], default=None)
    ap.add_argument("--rows", type=int, default=8_400_000)
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--probe-images", type=int, default=2000)
    ap.add_argument("--code", type=Path, default=ROOT, help="checkout whose auditor the probes measure")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="auditor-bench-data-", dir=a.dir))
    try:
        out = {}
        if a.only in (None, "npy"):
            out["npy"] = bench_npy(tmp, a.rows)
            for f in ("x.npy", "y.npy"):
                (tmp / f).unlink()
        if a.only in (None, "images"):
            out["images"] = bench_images(tmp, a.images, a.workers)
        if a.only in (None, "probes"):
            out["probes"] = bench_probes(tmp, a.probe_images, a.workers, a.code.resolve())
        print(json.dumps(out, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
