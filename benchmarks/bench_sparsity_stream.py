"""Benchmark: ``sparsity.profile`` on a model over 2 GiB with external data, against reading the file once.

Builds a MatMul chain of 18 float32 matrices of 4096×8192 (128 MiB each, 2.25 GiB in all, half of every
matrix pruned to zero) whose weights live in one external ``.data`` file, then measures in fresh processes:

* ``read``: reading the ``.data`` file once, sequentially, in 64 MiB blocks (the floor for any audit of it);
* ``profile``: ``sparsity.profile`` (every statistic of every weight), streaming tensor by tensor through the
  memory map, with its peak resident memory beyond what the process held before the check started.

Each is measured twice: after evicting the data file from the page cache (``posix_fadvise(DONTNEED)`` on that
file only: reads come from the disk) and warm. Figures are printed, with the ratios, in one run::

    python benchmarks/bench_sparsity_stream.py [--dir /big/tmp]

Measured (2-core shared VM, two consecutive runs; the virtual disk's speed varies between runs)::

    cold page cache: read once 1.60 s (1.40 GiB/s); sparsity.profile 2.19 s; ratio profile / read = 1.36
    warm page cache: read once 0.19 s (11.73 GiB/s); sparsity.profile 0.70 s; ratio profile / read = 3.64
    cold page cache: read once 0.74 s (3.05 GiB/s); sparsity.profile 1.79 s; ratio profile / read = 2.43
    warm page cache: read once 0.23 s (9.96 GiB/s); sparsity.profile 0.71 s; ratio profile / read = 3.15
    peak resident memory beyond the start of the check: 6 MiB (largest tensor 128 MiB)

Before the streaming reader (page-faulting through the memory map, fresh temporaries per chunk) the same
check took 9.8 s warm (42x the read).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

SHAPE = (4096, 8192)
LAYERS = 18


def build(folder: Path) -> tuple[Path, int]:
    """Write the model and its external data tensor by tensor (never more than one tensor in memory)."""
    r = np.random.default_rng(0)
    data_name = "big.onnx.data"
    inits, nodes = [], []
    offset = 0
    cur = "x"
    with open(folder / data_name, "wb") as f:
        for i in range(LAYERS):
            shape = SHAPE if i % 2 == 0 else SHAPE[::-1]
            w = r.standard_normal(shape, dtype=np.float32)
            w[r.random(shape, dtype=np.float32) < 0.5] = 0.0
            raw = w.tobytes()
            f.write(raw)
            t = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=list(shape))
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(len(raw)))):
                e = t.external_data.add()
                e.key, e.value = k, v
            inits.append(t)
            offset += len(raw)
            nodes.append(helper.make_node("MatMul", [cur, f"w{i}"], [f"h{i}"], name=f"mm{i}"))
            cur = f"h{i}"
            del w, raw
    g = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", SHAPE[0]])],
                          [helper.make_tensor_value_info(cur, TensorProto.FLOAT, ["N", SHAPE[0]])],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    path = folder / "big.onnx"
    onnx.save(m, str(path))
    return path, offset


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    """Reset the kernel's resident-memory high-water mark (VmHWM) of this process (Linux >= 4.0). The
    ru_maxrss of getrusage is no good here: a child inherits its parent's peak across fork + exec."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def child_read(path: Path) -> dict:
    buf = bytearray(64 << 20)
    view = memoryview(buf)
    t0 = time.perf_counter()
    total = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            total += n
    return {"seconds": time.perf_counter() - t0, "bytes": total}


def child_profile(path: Path) -> dict:
    from auditor_sparsity.profile import SparsityProfile

    from auditor.context import AuditContext
    from auditor.model import ModelConfig, ModelHandle

    handle = ModelHandle(ModelConfig(path=path))
    ctx = AuditContext(check_id="p", params=SparsityProfile.defaults(), model=handle, data=None, seed=0,
                       rng=np.random.default_rng(0))
    _reset_peak()
    before = _status_mib("VmRSS")
    t0 = time.perf_counter()
    res = SparsityProfile().run(ctx)
    seconds = time.perf_counter() - t0
    peak = _status_mib("VmHWM")
    return {"seconds": seconds, "rss_before_mib": before, "peak_mib": peak,
            "sparsity": res.metrics["sparsity"], "params": res.metrics["params"]}


def evict(path: Path) -> None:
    """Drop this one file's pages from the page cache (posix_fadvise DONTNEED: no root, nothing else
    touched), so that the next read comes from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _child(mode: str, path: Path) -> dict:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, f"--{mode}", str(path)], capture_output=True, text=True,
                         check=False, env=env)
    if out.returncode != 0:
        print(out.stderr[-3000:], file=sys.stderr)
        sys.exit(1)
    result: dict = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=None, help="folder for the 2.25 GiB model (default: a temporary folder)")
    ap.add_argument("--read", help=argparse.SUPPRESS)
    ap.add_argument("--profile", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.read:
        print(json.dumps(child_read(Path(args.read))))
        return
    if args.profile:
        print(json.dumps(child_profile(Path(args.profile))))
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path, nbytes = build(Path(tmp))
        largest = SHAPE[0] * SHAPE[1] * 4 / 2**20
        print(f"model: {LAYERS} tensors of {SHAPE[0]}x{SHAPE[1]} float32, {nbytes / 2**30:.2f} GiB external data, "
              f"largest tensor {largest:.0f} MiB")
        data = Path(tmp) / "big.onnx.data"
        runs: dict[str, dict[str, dict]] = {"warm": {}, "cold": {}}
        for cache in ("cold", "warm"):
            for mode in ("read", "profile"):
                if cache == "cold":
                    evict(data)
                else:
                    _child("read", data)  # bring the file into the page cache
                runs[cache][mode] = _child(mode, data if mode == "read" else path)
        for cache in ("cold", "warm"):
            read, prof = runs[cache]["read"], runs[cache]["profile"]
            print(f"{cache} page cache: read once {read['seconds']:.2f} s ({nbytes / 2**30 / read['seconds']:.2f} "
                  f"GiB/s); sparsity.profile {prof['seconds']:.2f} s; ratio profile / read = "
                  f"{prof['seconds'] / read['seconds']:.2f}")
        prof = runs["cold"]["profile"]
        beyond = max(r["profile"]["peak_mib"] - r["profile"]["rss_before_mib"] for r in runs.values())
        print(f"sparsity {prof['sparsity']:.4f} of {prof['params'] / 1e6:.0f}M parameters")
        print(f"peak resident memory beyond the start of the check: {beyond:.0f} MiB "
              f"(largest tensor {largest:.0f} MiB; budget: largest tensor + 1 GiB)")

if __name__ == "__main__":
    main()
