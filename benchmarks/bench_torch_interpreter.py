"""Benchmark: the ONNX-to-torch interpreter against the same architecture written directly in torch.

Forward (no gradients) and forward + backward (gradient of the summed logits w.r.t. the input, what attacks
and attributions need) of a small residual CNN, exported to ONNX and interpreted by ``auditor_torch``; also
ONNX Runtime's forward for scale. Median of repeated runs in one process; prints the ratios.

    python benchmarks/bench_torch_interpreter.py [--batch 64] [--repeats 20] [--threads 1]

Measured (CPU build of torch 2.13, 1 thread, 2-core VM shared with other jobs, interleaved medians):
    batch 64: forward 76.95 ms torch vs 88.00 ms interpreter (1.14x); forward+input grad 170.89 vs 200.20 ms
              (1.17x); onnxruntime forward 44.25 ms
    batch 8:  forward 7.64 vs 8.26 ms (1.08x); forward+input grad 19.37 vs 21.34 ms (1.10x); onnxruntime 4.41 ms
The interpreter adds a Python dispatch per ONNX node (21 here) on top of the same torch kernels.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
import warnings
from collections.abc import Callable

import onnx
import onnxruntime as ort
import torch
from auditor_torch.interpreter import build_module


class Block(torch.nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(c, c, 3, padding=1)
        self.c2 = torch.nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.c2(torch.relu(self.c1(x))))


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 32, 3, padding=1)
        self.b1, self.b2 = Block(32), Block(32)
        self.down = torch.nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.b3 = Block(64)
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.b2(self.b1(torch.relu(self.stem(x))))
        x = self.b3(torch.relu(self.down(x)))
        return self.fc(x.mean(dim=(2, 3)))


def median_times(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median time of each function, measured interleaved (a, b, c, a, b, c, ...) so that load from other
    processes on a shared machine hits all of them alike."""
    for fn in fns:
        fn()  # warm-up
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(args.batch, 3, 32, 32)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), buf, dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}}, opset_version=17)
    model = onnx.load_from_string(buf.getvalue())
    model.ir_version = 9
    interp = build_module(model).eval()
    with torch.no_grad():
        assert float((interp(x) - net(x)).abs().max()) < 1e-4
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    xn = x.numpy()

    def fwd(m: torch.nn.Module) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                return m(x)
        return run

    def bwd(m: torch.nn.Module) -> Callable[[], object]:
        def run() -> object:
            xi = x.clone().requires_grad_(True)
            return torch.autograd.grad(m(xi).sum(), xi)[0]
        return run

    t_fwd_torch, t_fwd_int, t_bwd_torch, t_bwd_int, t_ort = median_times(
        [fwd(net), fwd(interp), bwd(net), bwd(interp), lambda: sess.run(None, {"x": xn})], args.repeats)
    print(f"batch {args.batch}, 3x32x32, {len(model.graph.node)} ONNX nodes, {args.threads} thread(s), "
          f"median of {args.repeats}")
    print(f"{'':28s}{'torch':>10s}{'interpreter':>13s}{'ratio':>8s}")
    print(f"{'forward (ms)':28s}{1e3 * t_fwd_torch:10.2f}{1e3 * t_fwd_int:13.2f}{t_fwd_int / t_fwd_torch:7.2f}x")
    print(f"{'forward+input grad (ms)':28s}{1e3 * t_bwd_torch:10.2f}{1e3 * t_bwd_int:13.2f}"
          f"{t_bwd_int / t_bwd_torch:7.2f}x")
    print(f"{'onnxruntime forward (ms)':28s}{1e3 * t_ort:10.2f}   (interpreter/ORT {t_fwd_int / t_ort:.2f}x)")


if __name__ == "__main__":
    main()
