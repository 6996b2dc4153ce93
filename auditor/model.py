"""Loading a model and running it through ONNX Runtime: device, batching, extra outputs, messy exports."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError

from auditor import graph as G
from auditor.cancel import progress_sink, raise_if_cancelled
from auditor.datasets.sources import XArray
from auditor.device import CUDA, choose_providers, provider_options, quiet_stderr
from auditor.errors import DataError, ModelLoadError

# Domains that ONNX Runtime implements itself; anything else is a custom domain needing a custom-op library.
_KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc", "ai.onnx.training",
                  "ai.onnx.preview.training", "com.microsoft.experimental", "com.ms.internal.nhwc",
                  "org.pytorch.aten", "com.microsoft.dml"}


@dataclass(frozen=True)
class ModelConfig:
    """The ``model:`` (or ``baseline:`` / ``reference:``) section of a spec."""

    path: Path
    input: str | None = None
    output: str | None = None
    device: str = "auto"
    feeds: dict[str, Any] | None = None
    task: str = "auto"
    layout: str | None = None


def explain_ort_error(path: Path, proto: onnx.ModelProto | None, exc: BaseException) -> str:
    """One line that says why ONNX Runtime refused a model, and what to do about it."""
    text = str(exc)
    m = re.search(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)", text)
    if m:
        return (
            f"{path}: IR version {m.group(1)} is newer than onnxruntime {ort.__version__} supports "
            f"(max {m.group(2)}); save the model with model.ir_version = {m.group(2)} (onnx writes the newest "
            f"by default) or upgrade onnxruntime"
        )
    if proto is not None:
        custom = sorted({n.domain for n in proto.graph.node if n.domain not in _KNOWN_DOMAINS})
        if custom:
            ops = sorted({n.op_type for n in proto.graph.node if n.domain in custom})
            return (
                f"{path}: uses operators from custom domain(s) {', '.join(custom)} ({', '.join(ops[:5])}) "
                f"that onnxruntime does not implement; a custom-op library is needed"
            )
    m = re.search(r"[Oo]pset (\d+)[^.]*(under development|not supported|is not)", text)
    if m or ("opset" in text.lower() and "support" in text.lower()):
        opsets = {} if proto is None else {o.domain or "ai.onnx": o.version for o in proto.opset_import}
        return (
            f"{path}: opset {opsets or '?'} is not supported by onnxruntime {ort.__version__}; "
            f"export with an older opset or upgrade onnxruntime"
        )
    first = " ".join(text.split())
    first = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", first)
    return f"{path}: onnxruntime cannot load the model: {first[:300]}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ModelHandle:
    """One ONNX model as the auditor sees it.

    Loads the graph without external data (weights stay on disk until read), opens ONNX Runtime sessions on
    demand (one per set of requested outputs, cached), runs data in batches, and explains every failure in
    one line (:class:`~auditor.errors.ModelLoadError`).

    Attributes most checks use: :attr:`input` (the data input), :attr:`output` (the audited output),
    :attr:`provider`, :meth:`run`, :meth:`predict`, :meth:`weights`, :meth:`read_weight`,
    :meth:`layer_names`, :meth:`penultimate`.
    """

    def __init__(self, config: ModelConfig, *, batch_size: int = 256, role: str = "model") -> None:
        self.config = config
        self.role = role
        self.path = Path(config.path)
        self.batch_size = batch_size
        self.notes: list[str] = []
        self._sessions: dict[tuple[str, ...], tuple[ort.InferenceSession, dict[str, str]]] = {}
        self._lock = threading.RLock()
        self._batch_mode: str | None = None
        self._fixed_batch: int | None = None
        self._io_binding: bool | None = None
        self._load()

    # ------------------------------------------------------------------------------------------ loading
    def _load(self) -> None:
        path = self.path
        if not path.exists():
            raise ModelLoadError(f"{self.role}.path: model file not found: {path}")
        if path.is_dir():
            raise ModelLoadError(f"{self.role}.path: {path} is a folder, not an .onnx file")
        try:
            self.proto = onnx.load(str(path), load_external_data=False)
        except (DecodeError, RuntimeWarning, ValueError, OSError) as exc:
            raise ModelLoadError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
        except Exception as exc:
            raise ModelLoadError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
        if not self.proto.graph.node and not self.proto.graph.output:
            raise ModelLoadError(f"{path}: not an ONNX model (the file parses to an empty graph)")
        try:
            G.check_external_paths(self.proto, path.parent)
        except PermissionError as exc:
            raise ModelLoadError(f"{path}: {exc}") from None
        self.has_external_data = any(
            t.data_location == onnx.TensorProto.EXTERNAL for t in self.proto.graph.initializer
        )
        self.zipmaps = G.find_zipmaps(self.proto.graph)
        try:
            self.providers, self.device_note = choose_providers(self.config.device)
        except RuntimeError as exc:
            raise ModelLoadError(f"{self.role}.device: {exc}") from None
        self._resolve_io()

    def _resolve_io(self) -> None:
        g = self.proto.graph
        produced = G.produced_tensors(g)
        inits = G.initializer_names(g)
        out = self.config.output
        if out is not None and out not in produced and out not in {i.name for i in g.input} | inits:
            outs = ", ".join(o.name for o in g.output)
            raise ModelLoadError(
                f"{self.role}.output: tensor '{out}' is not in {self.path} (graph outputs: {outs})"
            )
        # The audited outputs: the named one, or every declared output (sklearn gives label + probabilities).
        self.outputs: list[str] = [out] if out else [o.name for o in g.output]
        # A ZipMap output is read as the probability matrix it wraps (vectorised, no per-sample dicts).
        self._alias = {z.output: z.tensor for z in self.zipmaps.values()}
        tensors = [self._alias.get(o, o) for o in self.outputs]
        self.base = G.prune(self.proto, tensors) if tensors != [o.name for o in g.output] else self.proto
        data_ins = G.data_inputs(self.base.graph)
        feeds = dict(self.config.feeds or {})
        if self.config.input is not None:
            names = [i.name for i in G.data_inputs(g)]
            if self.config.input not in names:
                raise ModelLoadError(
                    f"{self.role}.input: '{self.config.input}' is not a data input of {self.path} "
                    f"(inputs: {', '.join(names)})"
                )
            if self.config.input not in {i.name for i in data_ins}:
                raise ModelLoadError(
                    f"{self.role}.input: '{self.config.input}' is not needed to compute "
                    f"{', '.join(self.outputs)}"
                )
            chosen = self.config.input
        else:
            candidates = [i for i in data_ins if i.name not in feeds]
            if len(candidates) == 1:
                chosen = candidates[0].name
            elif not candidates:
                raise ModelLoadError(f"{self.path}: the model has no data input")
            else:
                # Prefer the one input that looks like batched data (rank >= 1, float); scalars such as a
                # keep_prob placeholder are not data.
                batched = [i for i in candidates if (s := G.value_info_spec(i)).shape and len(s.shape) >= 1
                           and s.dtype is not None and s.dtype.kind == "f"]
                if len(batched) != 1:
                    raise ModelLoadError(
                        f"{self.path}: several data inputs ({', '.join(i.name for i in candidates)}); "
                        f"set {self.role}.input, and {self.role}.feeds for the others"
                    )
                chosen = batched[0].name
        others = [i.name for i in data_ins if i.name != chosen]
        unfed = [n for n in others if n not in feeds]
        if unfed:
            raise ModelLoadError(
                f"{self.path}: input(s) {', '.join(unfed)} are needed for {', '.join(self.outputs)} but are "
                f"not data; give them values with {self.role}.feeds, or pick an earlier {self.role}.output"
            )
        self.input = G.value_info_spec(next(i for i in data_ins if i.name == chosen))
        specs = {i.name: G.value_info_spec(i) for i in data_ins}
        self.feeds: dict[str, np.ndarray] = {}
        for name in others:
            dt = specs[name].dtype or np.dtype(np.float32)
            self.feeds[name] = np.asarray(feeds[name], dtype=dt)
        shape = self.input.shape
        d0 = shape[0] if shape else None
        self._fixed_batch = d0 if isinstance(d0, int) else None
        if not shape:
            self._batch_mode = "unbatched"
        elif self._fixed_batch is None:
            self._batch_mode = "dynamic"

    # ------------------------------------------------------------------------------------------ info
    @property
    def provider(self) -> str:
        """The execution provider in use (``CUDAExecutionProvider`` or ``CPUExecutionProvider``)."""
        return self.providers[0]

    @property
    def layout(self) -> str | None:
        """``NCHW`` or ``NHWC`` for 4-D image inputs (from ``model.layout`` or the input's shape)."""
        if self.config.layout:
            return self.config.layout.upper()
        s = self.input.shape
        if not s or len(s) != 4:
            return None
        c1, c3 = s[1], s[3]
        if isinstance(c1, int) and c1 in (1, 2, 3, 4) and not (isinstance(c3, int) and c3 in (1, 3, 4)):
            return "NCHW"
        if isinstance(c3, int) and c3 in (1, 2, 3, 4):
            return "NHWC"
        return "NCHW"

    def info(self) -> dict[str, Any]:
        """What the report says about the model."""
        p = self.proto
        opset = {o.domain or "ai.onnx": int(o.version) for o in p.opset_import}
        return {
            "path": str(self.path),
            "sha256": _sha256(self.path),
            "producer": f"{p.producer_name} {p.producer_version}".strip() or None,
            "ir_version": int(p.ir_version),
            "opset": opset.get("ai.onnx"),
            "opsets": opset,
            "input": self.input.describe(),
            "outputs": list(self.outputs),
            "provider": self.provider,
            "device": self.device_note,
            "batching": self._batch_mode or "not yet run",
            "external_data": self.has_external_data,
            "notes": list(self.notes),
        }

    # ------------------------------------------------------------------------------------------ sessions
    def _session_options(self) -> ort.SessionOptions:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if self.has_external_data:
            # Models built in memory need to be told where their external weight files live.
            so.add_session_config_entry(
                "session.model_external_initializers_file_folder_path", str(self.path.parent.resolve())
            )
        return so

    def _make_session(self, model: onnx.ModelProto | None) -> ort.InferenceSession:
        so = self._session_options()
        source: str | bytes = str(self.path) if model is None else model.SerializeToString()
        try:
            with quiet_stderr():
                return ort.InferenceSession(
                    source, so, providers=self.providers,
                    provider_options=provider_options(self.providers, self.config.device),
                )
        except Exception as exc:
            raise ModelLoadError(explain_ort_error(self.path, self.proto, exc)) from None

    def check_loads(self) -> None:
        """Open the base session now, so that a model ONNX Runtime refuses fails before any check runs."""
        self._session(())

    def _graph_for(self, extra: Sequence[str]) -> tuple[onnx.ModelProto | None, dict[str, str]]:
        """The model to run for the audited outputs plus ``extra`` tensors (and the name map)."""
        names = {o: self._alias.get(o, o) for o in self.outputs}
        for e in extra:
            names[e] = self._alias.get(e, e)
        tensors = list(dict.fromkeys(names.values()))
        if not extra and self.base is self.proto and self._batch_mode != "symbolic":
            return None, names
        try:
            model = G.prune(self.proto, tensors)
        except KeyError as exc:
            raise ModelLoadError(f"{self.path}: tensor(s) not in the graph: {exc.args[0]}") from None
        if self._batch_mode == "symbolic":
            model = G.make_batch_symbolic(model, self.input.name)
        return model, names

    def _session(self, extra: Sequence[str]) -> tuple[ort.InferenceSession, dict[str, str]]:
        """The base session (no extras), or the one extended session whose outputs include ``extra``.

        Requested intermediate tensors are added as outputs once: a later request for tensors not yet exposed
        rebuilds the extended session with the union, so checks asking for layers never multiply sessions.
        """
        wanted = set(extra)
        with self._lock:
            if not wanted:
                key: tuple[str, ...] = ()
            else:
                current = next((k for k in self._sessions if k), None)
                if current is not None and wanted <= set(current):
                    return self._sessions[current]
                key = tuple(sorted(wanted | set(current or ())))
                if current is not None:
                    del self._sessions[current]
            if key not in self._sessions:
                model, names = self._graph_for(key)
                self._sessions[key] = (self._make_session(model), names)
            return self._sessions[key]

    # ------------------------------------------------------------------------------------------ running
    def prepare(self, x: np.ndarray) -> np.ndarray:
        """Cast data to the input's dtype (no copy when it already fits)."""
        dt = self.input.dtype
        if dt is None or x.dtype == dt:
            return x
        if dt.kind in "iu" and x.dtype.kind == "f":
            if not np.all(np.isfinite(x)) or not np.all(np.mod(x, 1) == 0):
                raise DataError(f"model input '{self.input.name}' wants integers ({dt}) but the data has "
                                f"fractional values")
        return x.astype(dt, copy=False)

    @property
    def use_io_binding(self) -> bool:
        """IO binding on CUDA: inputs are copied to the GPU once per batch and outputs allocated there, instead
        of ONNX Runtime staging every tensor through host buffers. (Settable, so tests can exercise the path
        on the CPU.)"""
        return self._io_binding if self._io_binding is not None else self.provider == CUDA

    @use_io_binding.setter
    def use_io_binding(self, value: bool) -> None:
        self._io_binding = value

    def _raw(self, sess: ort.InferenceSession, names: list[str], feed: dict[str, np.ndarray]) -> list[Any]:
        if self.use_io_binding:
            device = "cuda" if self.provider == CUDA else "cpu"
            device_id = int(self.config.device.split(":", 1)[1]) if ":" in self.config.device else 0
            binding = sess.io_binding()
            for k, v in feed.items():
                binding.bind_cpu_input(k, np.ascontiguousarray(v))
            for n in names:
                binding.bind_output(n, device, device_id if device == "cuda" else 0)
            sess.run_with_iobinding(binding)
            return list(binding.copy_outputs_to_cpu())
        return sess.run(names, feed)

    def _feed(self, xb: np.ndarray) -> dict[str, np.ndarray]:
        feed = {self.input.name: xb}
        feed.update(self.feeds)
        return feed

    def _decide_batching(self, x: XArray) -> None:
        """For a model exported with a fixed batch size: try a symbolic batch dimension and keep it only if
        it gives the same answers as the fixed model on real samples; else fall back to fixed-size chunks."""
        if self._batch_mode is not None:
            return
        fixed = self._fixed_batch or 1
        k = min(len(x), max(2 * fixed, 8))
        if k < 2:
            self._batch_mode = "fixed"
            return
        sample = self.prepare(np.asarray(x[:k]))
        ref_sess, ref_names = self._session(())
        tensors = [ref_names[o] for o in self.outputs]
        try:
            expected = self._chunked(ref_sess, tensors, sample, fixed)
        except Exception as exc:
            raise DataError(f"{self.path}: the model fails on the data: {str(exc).splitlines()[0]}") from None
        self._batch_mode = "symbolic"
        self._sessions.clear()
        try:
            sess, names = self._session(())
            got = sess.run([names[o] for o in self.outputs], self._feed(sample))
            same = all(
                np.asarray(g).shape == np.asarray(e).shape
                and np.allclose(np.asarray(g, dtype=np.float64), np.asarray(e, dtype=np.float64),
                                rtol=1e-4, atol=1e-5, equal_nan=True)
                for g, e in zip(got, expected)
            )
        except Exception:
            same = False
        if same:
            self.notes.append(f"fixed batch size {fixed} made symbolic (verified on {k} samples)")
        else:
            self._batch_mode = "fixed"
            self._sessions.clear()
            self.notes.append(
                f"model has a fixed batch size of {fixed} that cannot be made symbolic safely; "
                f"evaluated in chunks of {fixed}"
            )

    def _chunked(self, sess: ort.InferenceSession, names: list[str], x: np.ndarray, size: int) -> list[Any]:
        parts: list[list[Any]] = [[] for _ in names]
        n = len(x)
        for start in range(0, n, size):
            xb = x[start:start + size]
            pad = size - len(xb)
            if pad:  # the fixed shape must be met exactly: pad with the last row, drop its outputs after
                xb = np.concatenate([xb, np.repeat(xb[-1:], pad, axis=0)])
            outs = self._raw(sess, names, self._feed(xb))
            for i, o in enumerate(outs):
                parts[i].append(np.asarray(o)[: size - pad] if pad else np.asarray(o))
        return [np.concatenate(p) if p and np.asarray(p[0]).ndim else np.asarray(p) for p in parts]

    def run(
        self,
        x: XArray,
        outputs: Sequence[str] | None = None,
        *,
        batch_size: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run ``x`` (a batch-first array, or a lazy source read batch by batch) through the model in batches.

        ``outputs`` are tensor names to return (any tensor in the graph: intermediate ones are added as
        outputs once and cached); ``None`` means the audited outputs. Returns name -> array with the samples
        concatenated along the first axis.
        """
        wanted = list(outputs) if outputs is not None else list(self.outputs)
        extra = [o for o in wanted if o not in self.outputs]
        if len(x) == 0:
            raise DataError("no samples to run")
        self._decide_batching(x)
        sess, names = self._session(extra)
        tensors = [names[o] for o in wanted]
        bs = batch_size or self.batch_size
        if self._batch_mode == "fixed":
            bs = self._fixed_batch or 1
        parts: list[list[np.ndarray]] = [[] for _ in wanted]
        n = len(x)
        sink = progress_sink() if progress is None else None
        done = 0
        for start in range(0, n, bs):
            raise_if_cancelled()
            xb = self.prepare(np.asarray(x[start:start + bs]))
            if self._batch_mode == "fixed":
                outs = self._chunked(sess, tensors, xb, bs)
            else:
                try:
                    outs = self._raw(sess, tensors, self._feed(xb))
                except Exception as exc:
                    msg = " ".join(str(exc).split())
                    msg = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", msg)
                    raise DataError(f"{self.path}: the model fails on the data: {msg[:300]}") from None
            for i, o in enumerate(outs):
                parts[i].append(np.asarray(o))
            done += len(xb)
            if progress is not None:
                progress(len(xb))
            elif sink is not None:
                sink(done, n, "batches")
        # Outputs with a batch dimension are concatenated; per-batch scalars (rare) are stacked.
        return {name: np.concatenate(p) if all(a.ndim for a in p) else np.stack(p) for name, p in zip(wanted, parts)}

    def predict(self, x: np.ndarray, *, batch_size: int | None = None) -> np.ndarray:
        """The first audited output for ``x`` (see :meth:`run`)."""
        return self.run(x, [self.outputs[0]], batch_size=batch_size)[self.outputs[0]]

    # ------------------------------------------------------------------------------------------ weights
    def weights(self) -> Iterator[G.WeightRef]:
        """Every weight tensor (initializers and Constant values) with its consumers, not yet read."""
        return G.iter_weights(self.proto)

    def read_weight(self, ref: G.WeightRef) -> np.ndarray:
        """The values of one weight; external data is memory-mapped, so huge models stream."""
        return G.read_tensor(ref, self.path.parent)

    # ------------------------------------------------------------------------------------------ layers
    def layer_names(self, which: str | Sequence[str] = "every") -> list[str]:
        """Tensor names for a layer request: ``"every"`` (every activation-producing node), ``"penultimate"``,
        or explicit tensor names (checked to exist)."""
        if isinstance(which, str):
            if which in ("every", "all"):
                return G.layer_outputs(self.base.graph)
            if which == "penultimate":
                p = self.penultimate()
                if p is None:
                    raise ValueError("no linear layer found on the path to the output")
                return [p]
            which = [which]
        produced = G.produced_tensors(self.proto.graph)
        missing = [w for w in which if w not in produced]
        if missing:
            raise ValueError(f"tensor(s) {', '.join(missing)} not in the graph")
        return list(which)

    def logits_tensor(self) -> str | None:
        """The tensor entering a final Softmax/LogSoftmax that produces the audited output (the logits), or
        ``None`` when the output is not such a normalisation (then it may already be logits, or scores)."""
        out = self._alias.get(self.outputs[-1], self.outputs[-1])
        node = G.produced_tensors(self.proto.graph).get(out)
        if node is not None and node.op_type in ("Softmax", "LogSoftmax") and node.input:
            return node.input[0]
        return None

    def penultimate(self) -> str | None:
        """The features entering the last linear layer that feeds the audited output."""
        return G.penultimate(self.proto.graph, self._alias.get(self.outputs[-1], self.outputs[-1]))
