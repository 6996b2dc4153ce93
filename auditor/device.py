"""Execution-provider choice: CUDA when it truly loads, else CPU, probed once and quietly.

``onnxruntime-gpu`` lists ``CUDAExecutionProvider`` as available even when the CUDA libraries are missing;
asking for it then prints loud errors and silently falls back. So we probe once with a one-node model,
with ONNX Runtime's logger and the process's stderr muted, and look at what the session really got.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import onnxruntime as ort

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

# Warnings from ONNX Runtime (e.g. about initializers listed as graph inputs in old exports) are noise for
# a user of the auditor; real errors still surface as exceptions.
ort.set_default_logger_severity(3)


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence stdout and stderr at the file-descriptor level (C++ libraries write to fds 1 and 2 directly,
    and ``onnxruntime.preload_dlls`` prints), restoring both afterwards."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = (os.dup(1), os.dup(2))
    except (OSError, ValueError, AttributeError):  # no real fds (embedded interpreters): nothing to silence
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        os.close(devnull)


@dataclass(frozen=True)
class CudaProbe:
    """Result of the one-time CUDA probe."""

    available: bool
    reason: str


def _tiny_model() -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return bytes(model.SerializeToString())


@functools.lru_cache(maxsize=1)
def probe_cuda() -> CudaProbe:
    """Whether the CUDA execution provider really loads here (cached for the process)."""
    if os.environ.get("AUDITOR_DISABLE_CUDA"):
        return CudaProbe(False, "disabled by AUDITOR_DISABLE_CUDA")
    if CUDA not in ort.get_available_providers():
        return CudaProbe(False, "this onnxruntime build has no CUDA provider")
    so = ort.SessionOptions()
    so.log_severity_level = 4
    try:
        with quiet_stderr():
            preload = getattr(ort, "preload_dlls", None)
            if preload is not None:  # loads CUDA/cuDNN from pip's nvidia-* wheels when they are installed
                with contextlib.suppress(Exception):
                    preload()
            sess = ort.InferenceSession(_tiny_model(), so, providers=[CUDA, CPU])
    except Exception as exc:  # any failure means: no usable CUDA
        return CudaProbe(False, f"CUDA provider failed to load ({str(exc).splitlines()[0][:120]})")
    if sess.get_providers()[0] != CUDA:
        return CudaProbe(False, "CUDA libraries not found; CUDA provider did not load")
    return CudaProbe(True, "CUDA provider loaded")


def choose_providers(device: str) -> tuple[list[str], str]:
    """Providers to ask ONNX Runtime for, and a one-line note on why.

    ``device`` is ``auto`` (CUDA when it loads, else CPU), ``cpu`` or ``cuda`` (``cuda:N`` picks a GPU).
    Raises ``RuntimeError`` when ``cuda`` is forced and unavailable.
    """
    dev = device.lower()
    if dev == "cpu":
        return [CPU], "CPU (requested)"
    probe = probe_cuda()
    if dev.startswith("cuda"):
        if not probe.available:
            raise RuntimeError(f"device '{device}' requested but {probe.reason}")
        return [CUDA, CPU], "CUDA (requested)"
    if probe.available:
        return [CUDA, CPU], "CUDA (auto)"
    return [CPU], f"CPU (auto: {probe.reason})"


def provider_options(providers: list[str], device: str) -> list[dict[str, str]]:
    """Per-provider options: the GPU index for ``cuda:N``."""
    opts: list[dict[str, str]] = []
    for p in providers:
        if p == CUDA and ":" in device:
            opts.append({"device_id": device.split(":", 1)[1]})
        else:
            opts.append({})
    return opts
