"""Loading a model and running it through ONNX Runtime: device, batching, extra outputs, messy exports."""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
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
from auditor.errors import DataError, ModelLoadError, SkipCheck, short
from auditor.outputs import Task

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
    task: Task = Task.AUTO
    layout: str | None = None
    #: model input -> data key (npz key, or csv/parquet column(s)) for inputs other than ``input`` that the
    #: data supplies per sample; inputs not named here are looked up by their own name.
    inputs: dict[str, Any] | None = None
    #: number of valid ids of an integer (token id) input, when the graph's embedding table does not say.
    vocab_size: int | None = None
    #: how to read an output without a batch axis (a detector's ``[300, 7]`` per image): ``"per_call"`` runs
    #: one sample per call and stacks each call's output as that sample's; ``None``: per-sample checks skip.
    unbatched_outputs: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", Task.of(self.task, "model.task"))


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


def _batch_axis_candidates(spec: G.TensorSpec, primary: G.TensorSpec) -> list[int]:
    """The axes of per-sample input ``spec`` that may carry the batch, best first: the axis sharing the primary
    input's symbolic batch dimension decides alone; otherwise every axis whose size is not fixed (unnamed or
    another symbol) or equals the primary's fixed batch size. ``[0]`` when nothing is known."""
    shape = spec.shape
    if not shape:
        return [0]
    d0 = primary.shape[0] if primary.shape else None
    if isinstance(d0, str):
        named = [axis for axis, d in enumerate(shape) if d == d0]
        if named:
            return named[:1]
    free = [axis for axis, d in enumerate(shape)
            if not isinstance(d, int) or d <= 0 or (isinstance(d0, int) and d == d0)]
    return free or [0]


def _fits(shape: Sequence[int | str | None], axis: int, per_sample: Sequence[int]) -> bool:
    """Whether rows of shape ``per_sample``, placed on ``axis``, meet every fixed size of ``shape``."""
    rest = [d for k, d in enumerate(shape) if k != axis]
    return len(rest) == len(per_sample) and all(
        not isinstance(d, int) or d <= 0 or d == s for d, s in zip(rest, per_sample))


def _dims(shape: Sequence[int | str | None]) -> str:
    """``[2, ?, 128]``: a declared shape as the report writes it (``?`` for an unnamed dimension)."""
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _cast(x: np.ndarray, spec: G.TensorSpec, name: str) -> np.ndarray:
    """Data cast to an input's dtype (no copy when it already fits); fractional values for an integer input
    are an error, never truncated."""
    dt = spec.dtype
    if dt is None or x.dtype == dt:
        return x
    if dt.kind in "iu" and x.dtype.kind == "f":
        if not np.all(np.isfinite(x)) or not np.all(np.mod(x, 1) == 0):
            raise DataError(f"model input '{name}' wants integers ({dt}) but the data has fractional values")
    return x.astype(dt, copy=False)


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
        #: per audited output: whether its first axis follows the batch (``None`` until the first run)
        self.output_batched: dict[str, bool] | None = None
        self.output_shapes: dict[str, list[int]] | None = None
        #: audited outputs whose batch lies on another axis than the first (a recurrent state
        #: ``[layers, batch, hidden]``): :meth:`run` returns them batch-first.
        self.output_axes: dict[str, int] = {}
        self._tensor_axes: dict[str, int] = {}
        self._axis_hints: dict[str, int] = {}
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
        except G.ExternalDataError as exc:
            raise ModelLoadError(f"{path}: {exc}") from None
        self.has_external_data = any(
            t.data_location == onnx.TensorProto.EXTERNAL for t in self.proto.graph.initializer
        )
        self.zipmaps = G.find_zipmaps(self.proto.graph)
        # Classifiers exported without a ZipMap (scikit-learn's zipmap=False) carry their class labels on the
        # node; the probability output's columns are those labels, in order.
        outs = {o.name for o in self.proto.graph.output}
        cons = G.consumers(self.proto.graph)
        for node in self.proto.graph.node:
            labels = [a for a in node.attribute if a.name in ("classlabels_strings", "classlabels_int64s")]
            if not labels or len(node.output) < 2:
                continue
            # the probability output, through the column-preserving ops exporters append (Normalizer, Cast)
            prob = node.output[1]
            while prob not in outs:
                nxt = [n for n, slot in cons.get(prob, []) if slot == 0
                       and n.op_type in ("Normalizer", "Cast", "Identity", "Softmax")]
                if len(nxt) != 1:
                    break
                prob = nxt[0].output[0]
            if prob in outs and prob not in self.zipmaps:
                a = labels[0]
                classes = tuple(v.decode() for v in a.strings) if a.name == "classlabels_strings" else \
                    tuple(int(v) for v in a.ints)
                if classes:
                    self.zipmaps[prob] = G.ZipMapInfo(prob, prob, classes)
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
        if not self.outputs:
            raise ModelLoadError(f"{self.path}: the graph declares no outputs (set {self.role}.output to the tensor "
                                 "to audit)")
        # A ZipMap output is read as the probability matrix it wraps (vectorised, no per-sample dicts).
        self._alias = {z.output: z.tensor for z in self.zipmaps.values()}
        tensors = [self._alias.get(o, o) for o in self.outputs]
        self.base = G.prune(self.proto, tensors) if tensors != [o.name for o in g.output] else self.proto
        data_ins = G.data_inputs(self.base.graph)
        feeds = dict(self.config.feeds or {})
        mapped = dict(self.config.inputs or {})
        all_names = [i.name for i in G.data_inputs(g)]
        for key, what in ((k, "inputs") for k in mapped):
            if key not in all_names:
                raise ModelLoadError(f"{self.role}.{what}: '{key}' is not a data input of {self.path} "
                                     f"(inputs: {', '.join(all_names)})")
            if key in feeds:
                raise ModelLoadError(f"{self.role}.inputs: '{key}' is also given in {self.role}.feeds; "
                                     f"a constant or per-sample data, not both")
        if self.config.input is not None:
            if self.config.input not in all_names:
                raise ModelLoadError(
                    f"{self.role}.input: '{self.config.input}' is not a data input of {self.path} "
                    f"(inputs: {', '.join(all_names)})"
                )
            if self.config.input not in {i.name for i in data_ins}:
                raise ModelLoadError(
                    f"{self.role}.input: '{self.config.input}' is not needed to compute "
                    f"{', '.join(self.outputs)}"
                )
            chosen = self.config.input
        else:
            candidates = [i for i in data_ins if i.name not in feeds and i.name not in mapped]
            candidates = candidates or [i for i in data_ins if i.name not in feeds]
            if not candidates:
                raise ModelLoadError(f"{self.path}: the model has no data input")
            chosen = candidates[0].name
            if len(candidates) > 1:
                # The primary input is the one perturbation checks perturb: the only batched float input
                # when there is one (scalars such as a keep_prob placeholder are not data), else the first.
                batched = [i for i in candidates if (s := G.value_info_spec(i)).shape and len(s.shape) >= 1
                           and s.dtype is not None and s.dtype.kind == "f"]
                chosen = batched[0].name if len(batched) == 1 else chosen
                self.notes.append(
                    f"primary input: {chosen} (data.x; the one perturbation checks perturb; set "
                    f"{self.role}.input to choose); other inputs come from the data by name or "
                    f"{self.role}.inputs"
                )
        self.input = G.value_info_spec(next(i for i in data_ins if i.name == chosen))
        specs = {i.name: G.value_info_spec(i) for i in data_ins}
        self.feeds: dict[str, np.ndarray] = {}
        known = {i.name for i in g.input}
        for name in feeds:
            if name not in known:
                raise ModelLoadError(f"{self.role}.feeds.{short(str(name), 60)}: {self.path} has no input of that "
                                     f"name (inputs: {short(', '.join(sorted(known)), 200)})")
        for name in [n for n in specs if n != chosen and n in feeds]:
            dt = specs[name].dtype or np.dtype(np.float32)
            try:
                self.feeds[name] = np.asarray(feeds[name], dtype=dt)
            except (TypeError, ValueError) as exc:
                raise ModelLoadError(f"{self.role}.feeds.{name}: {short(repr(feeds[name]), 80)} is not a valid "
                                     f"{dt} value for input '{name}' ({short(str(exc), 120)})") from None
            want = specs[name].shape
            if want is not None and self.feeds[name].ndim != len(want):
                raise ModelLoadError(f"{self.role}.feeds.{name}: a value of rank {self.feeds[name].ndim}, but input "
                                     f"'{name}' has rank {len(want)} (shape {list(want)})")
        # A scalar input (a keep_prob or learning-phase placeholder) cannot hold one value per sample.
        scalars = [n for n, sp in specs.items() if n != chosen and n not in feeds and n not in mapped
                   and sp.shape is not None and len(sp.shape) == 0]
        # Said when the model is first run (check_loads, run): a weights-only audit never feeds the model.
        self._unfed: str | None = None
        if scalars:
            self._unfed = (
                f"{self.path}: input(s) {', '.join(scalars)} are needed for {', '.join(self.outputs)} but are "
                f"scalars, not data; give them values with {self.role}.feeds, or pick an earlier "
                f"{self.role}.output"
            )
        #: Inputs other than :attr:`input` that the data supplies per sample, and the data key of each.
        self.sample_inputs: dict[str, G.TensorSpec] = {n: sp for n, sp in specs.items()
                                                       if n != chosen and n not in feeds and n not in scalars}
        # model.inputs: {name: KEY} or {name: {key: KEY, batch_axis: AXIS}} (a declared batch axis)
        declared: dict[str, int] = {}
        for name, value in mapped.items():
            if isinstance(value, Mapping):
                axis = value.get("batch_axis")
                rank = None if specs.get(name) is None or specs[name].shape is None else len(specs[name].shape or ())
                if axis is not None:
                    if not isinstance(axis, int) or axis < 0 or (rank is not None and axis >= rank):
                        raise ModelLoadError(f"{self.role}.inputs.{name}.batch_axis: {axis!r} is not an axis of input "
                                             f"'{name}' (rank {rank})")
                    declared[name] = axis
                mapped[name] = value.get("key", name)
        self.input_keys: dict[str, Any] = {n: mapped.get(n, n) for n in self.sample_inputs}
        #: The axis of each per-sample input that carries the batch: declared (``model.inputs.NAME.batch_axis``),
        #: the axis whose symbolic dimension is the primary input's batch dimension, the one axis whose size is
        #: not fixed (``state [2, ?, 128]``: 1), else settled on the first data run (:meth:`_settle_axes`).
        self.batch_axes: dict[str, int] = {}
        #: per-sample inputs whose batch axis the declared shape leaves open: the candidate axes
        self._open_axes: dict[str, list[int]] = {}
        for n, sp in self.sample_inputs.items():
            if n in declared:
                self.batch_axes[n] = declared[n]
                continue
            cands = _batch_axis_candidates(sp, self.input)
            self.batch_axes[n] = cands[0]
            if len(cands) > 1:
                self._open_axes[n] = cands
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
            "inputs": self.inputs_info(),
            "outputs": list(self.outputs),
            "graph_outputs": self.outputs_info(),
            "provider": self.provider,
            "device": self.device_note,
            "batching": self._batch_mode or "not yet run",
            "external_data": self.has_external_data,
            "notes": list(self.notes),
        }

    def inputs_info(self) -> list[dict[str, Any]]:
        """Every data input: name, dtype, shape and where its values come from (``data.x``, the data key of a
        per-sample input with its batch axis, or a constant feed)."""
        out = []
        for vi in G.data_inputs(self.proto.graph):
            sp = G.value_info_spec(vi)
            entry: dict[str, Any] = {"name": sp.name, "dtype": sp.dtype.name if sp.dtype is not None else None,
                                     "shape": None if sp.shape is None else list(sp.shape)}
            if sp.name == self.input.name:
                entry["source"] = "data.x (primary: perturbation checks perturb it)"
            elif sp.name in self.sample_inputs:
                entry["source"] = f"data key {self.input_keys[sp.name]!r} (per sample)"
                entry["batch_axis"] = self.batch_axes[sp.name]
            elif sp.name in self.feeds:
                entry["source"] = "model.feeds (constant)"
            else:
                entry["source"] = "not needed for the audited outputs"
            out.append(entry)
        return out

    def outputs_info(self) -> list[dict[str, Any]]:
        """Every graph output (name, dtype, declared shape), which ones are scored, and, once the model has run,
        the shape seen for one sample and whether its first axis follows the batch."""
        out = []
        for vi in self.proto.graph.output:
            sp = G.value_info_spec(vi)
            entry: dict[str, Any] = {"name": sp.name, "dtype": sp.dtype.name if sp.dtype is not None else None,
                                     "shape": None if sp.shape is None else list(sp.shape),
                                     "scored": sp.name in self.outputs}
            if self.output_batched is not None and sp.name in self.output_batched:
                entry["batch_axis"] = self.output_batched[sp.name]
                entry["shape_one_sample"] = (self.output_shapes or {}).get(sp.name)
            out.append(entry)
        if self.config.output and self.config.output not in {o["name"] for o in out}:
            out.append({"name": self.config.output, "dtype": None, "shape": None, "scored": True,
                        "note": "an intermediate tensor (model.output)"})
        return out

    # ------------------------------------------------------------------------------------------ sessions
    def _session_options(self) -> ort.SessionOptions:
        so = ort.SessionOptions()
        # Fatal only: every error ONNX Runtime logs also reaches us as an exception, which the tool explains in
        # one line; its own "[E:onnxruntime ...]" lines (from probes that are expected to fail, such as the
        # symbolic-batch attempt) must not reach the console.
        so.log_severity_level = 4
        # A Ray worker owns only its share of the machine's cores (see auditor.distributed.worker).
        threads = os.environ.get("AUDITOR_ORT_THREADS", "")
        if threads.isdigit() and int(threads) > 0:
            so.intra_op_num_threads = int(threads)
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
        """Open the base session now, so that a model ONNX Runtime refuses (or whose scalar inputs have no
        value in ``feeds``) fails before any check runs."""
        if self._unfed:
            raise ModelLoadError(self._unfed)
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
        """Cast data to the primary input's dtype (no copy when it already fits)."""
        return _cast(x, self.input, self.input.name)

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
        return list(sess.run(names, feed))

    def _feed(self, xb: np.ndarray, others: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """The feed for one batch: the primary input, the per-sample inputs (batch-first in the data, moved to
        their own batch axis) and the constant feeds."""
        feed = {self.input.name: xb}
        for name, arr in (others or {}).items():
            a = _cast(np.asarray(arr), self.sample_inputs[name], name)
            axis = self.batch_axes.get(name, 0)
            feed[name] = np.moveaxis(a, 0, axis) if axis else a
        feed.update(self.feeds)
        return feed

    def companions_for(self, x: XArray, inputs: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        """The model's other per-sample inputs for the rows ``x``, checked (one row per row of ``x``; skips the
        calling check when one is missing) and batch-first; the same as :meth:`run` uses, for other runtimes
        (the torch backend) to batch with ``x``."""
        return self._companions(x, inputs)

    def sample_feed(self, xb: np.ndarray, others: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """The model's per-sample inputs for one batch as the graph takes them: ``xb`` for the primary input, the
        batch-first ``others`` cast to their dtypes and moved to their batch axes (:attr:`batch_axes`); the
        constant :attr:`feeds` are not included."""
        feed = self._feed(xb, others)
        for k in self.feeds:
            feed.pop(k, None)
        return feed

    def output_axis(self, tensor: str) -> int:
        """The axis of output ``tensor`` that carries the batch (0 unless :attr:`output_axes` says otherwise)."""
        return self._tensor_axes.get(tensor, 0)

    def batch_first(self, tensor: str, value: np.ndarray) -> np.ndarray:
        """Output ``tensor`` of a batch with its batch axis first, as :meth:`run` returns it (see
        :attr:`output_axes`; other tensors unchanged)."""
        return self._batch_first(tensor, value)

    def _companions(self, x: XArray, inputs: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        """The per-sample inputs for ``x``: every one the model needs, each with one row per row of ``x``."""
        given = dict(inputs or {})
        missing = [n for n in self.sample_inputs if n not in given]
        if missing:
            raise SkipCheck(
                f"model input(s) {', '.join(missing)} take per-sample data besides '{self.input.name}', and this "
                f"check does not pass them (it feeds only the primary input)"
            )
        out: dict[str, np.ndarray] = {}
        for name in self.sample_inputs:
            arr = given[name]
            if len(arr) != len(x):
                raise ValueError(f"input '{name}' has {len(arr)} rows for {len(x)} rows of '{self.input.name}'")
            out[name] = np.asarray(arr)
        if self._open_axes:
            self._settle_axes(x, out)
        return {name: self._per_sample_shape(name, arr) for name, arr in out.items()}

    def _settle_axes(self, x: XArray, given: Mapping[str, np.ndarray]) -> None:
        """Decide the batch axis of per-sample inputs whose declared shape leaves it open (unnamed dims), on the
        first data: keep the axes where the data's rows meet the input's fixed sizes; if several remain, feed
        a few rows with each placement and keep the placements the model accepts. Still several: every check
        running the model skips, asking for ``model.inputs.NAME.batch_axis`` (a guess could score wrong)."""
        with self._lock:
            for name in list(self._open_axes):
                shape = self.sample_inputs[name].shape or ()
                per = np.shape(given[name])[1:]
                cands = [a for a in self._open_axes[name] if _fits(shape, a, per)] or self._open_axes[name]
                if len(cands) > 1:
                    cands = self._axes_the_model_takes(name, cands, x, given) or cands
                if len(cands) > 1:
                    raise SkipCheck(
                        f"model input '{name}' {_dims(shape)}: its batch axis cannot be told from the shape "
                        f"(unnamed dimensions) nor by running the model (it accepts the rows on axis "
                        f"{' or '.join(map(str, cands))}); declare it: {self.role}.inputs: {{{name}: "
                        f"{{key: {self.input_keys[name]}, batch_axis: AXIS}}}}")
                self.batch_axes[name] = cands[0]
                del self._open_axes[name]
                if cands[0] != 0:
                    self.notes.append(f"input '{name}' {_dims(shape)}: rows placed on axis {cands[0]} (the only "
                                      f"placement the shape and the model accept)")

    def _axes_the_model_takes(self, name: str, cands: list[int], x: XArray,
                              given: Mapping[str, np.ndarray]) -> list[int]:
        """The candidate batch axes of input ``name`` with which the model runs a few rows (a batch size that
        matches no other size of the rows, so that a wrong placement shows)."""
        if self._fixed_batch is not None:
            return cands  # a fixed batch leaves no second size to tell placements apart
        sizes = {int(d) for a in given.values() for d in np.shape(a)[1:]} | {int(d) for d in np.shape(x)[1:]}
        b = next(k for k in range(3, 64) if k not in sizes)
        first = self.prepare(np.asarray(x[:b]))
        xs = first[np.arange(b) % len(first)]
        rows = {k: _cast(np.asarray(v[:b]), self.sample_inputs[k], k) for k, v in given.items()}
        rows = {k: v[np.arange(b) % len(v)] for k, v in rows.items()}
        sess, names = self._session(())
        tensors = [names[o] for o in self.outputs]
        keep = []
        saved = dict(self.batch_axes)
        for axis in cands:
            self.batch_axes[name] = axis
            try:
                with quiet_stderr():
                    self._raw(sess, tensors, self._feed(xs, rows))
                keep.append(axis)
            except Exception:
                pass
        self.batch_axes = saved
        return keep

    def _per_sample_shape(self, name: str, arr: np.ndarray) -> np.ndarray:
        """Rows of a per-sample input reshaped to the input's per-sample shape when that is fixed and only the
        arrangement differs (csv columns ``s0, s1, s2`` for a ``[layers=1, batch, hidden=3]`` state)."""
        shape = self.sample_inputs[name].shape
        if not shape:
            return arr
        axis = self.batch_axes.get(name, 0)
        want = [d for i, d in enumerate(shape) if i != axis]
        if all(isinstance(d, int) for d in want) and list(arr.shape[1:]) != want \
                and int(np.prod(arr.shape[1:])) == int(np.prod([int(d) for d in want if isinstance(d, int)])):
            return arr.reshape((len(arr), *[int(d) for d in want]))  # type: ignore[arg-type]
        return arr

    def batching(self, x: XArray | None = None,
                 inputs: Mapping[str, np.ndarray] | None = None) -> tuple[str | None, int | None]:
        """How the model takes batches: ``(mode, fixed size)`` with mode ``dynamic``, ``symbolic`` (a fixed
        batch made symbolic after verification), ``fixed`` (run in chunks of exactly that size) or
        ``unbatched``; decided on ``x`` (and its per-sample companion ``inputs``) first when not decided yet.
        Other runtimes (the torch backend) follow the same decision."""
        if self._batch_mode is None and x is not None and len(x):
            self._decide_batching(x, self._companions(x, inputs))
        return self._batch_mode, self._fixed_batch

    def _decide_batching(self, x: XArray, others: Mapping[str, np.ndarray]) -> None:
        """For a model exported with a fixed batch size: try a symbolic batch dimension and keep it only if
        it gives the same answers as the fixed model on real samples; else fall back to fixed-size chunks."""
        if self._batch_mode is not None:
            return
        fixed = self._fixed_batch or 1
        k = min(len(x), max(2 * fixed, 8))
        if k < 2 or others:
            # per-sample companion inputs keep their own fixed batch dimension: chunks it is
            self._batch_mode = "fixed"
            if others and k >= 2:
                self.notes.append(f"model has a fixed batch size of {fixed}; evaluated in chunks of {fixed}")
            return
        sample = self.prepare(np.asarray(x[:k]))
        ref_sess, ref_names = self._session(())
        tensors = [ref_names[o] for o in self.outputs]
        try:
            expected = self._chunked(ref_sess, tensors, sample, {}, fixed)
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

    def _probe_outputs(self, x: XArray, others: Mapping[str, np.ndarray], sess: ort.InferenceSession,
                       names: dict[str, str]) -> None:
        """Which audited outputs carry the batch on their first axis: run two batch sizes and see whether the
        leading size follows (a detector returning ``[300, 7]`` for one image does not)."""
        if self.output_batched is not None:
            return
        tensors = [names[o] for o in self.outputs]
        size = (self._fixed_batch or 1) if self._batch_mode == "fixed" else 1
        # two batch sizes: 1 and 2 rows (or one fixed-size chunk, whose leading size must be the chunk's)
        reps = np.minimum(np.arange(2 * size), len(x) - 1)
        xs = self.prepare(np.asarray(x[:2 * size]))[reps]
        os_ = {k: np.asarray(v)[reps] for k, v in others.items()}
        try:
            if self._batch_mode == "fixed":
                runs = [(size, self._raw(sess, tensors, self._feed(xs[:size], {k: v[:size] for k, v in os_.items()})))]
            else:
                runs = [(b, self._raw(sess, tensors, self._feed(xs[:b], {k: v[:b] for k, v in os_.items()})))
                        for b in (1, 2)]
        except Exception:
            self.output_batched = {}  # unknown: the run itself will explain any failure; never probe again
            return
        self.output_batched = {
            o: all(np.ndim(outs[i]) >= 1 and np.shape(outs[i])[0] == b for b, outs in runs)
            for i, o in enumerate(self.outputs)
        }
        self.output_shapes = {o: list(np.shape(runs[0][1][i])) for i, o in enumerate(self.outputs)}
        if len(runs) == 2:
            self._find_output_axes(names, [outs for _, outs in runs], others)
        unbatched = [o for o, ok in self.output_batched.items() if not ok]
        if unbatched:
            how = "run one sample per call, each output stacked as that sample's (model.unbatched_outputs)" \
                if self.config.unbatched_outputs == "per_call" else "per-sample checks skip"
            self.notes.append(f"output(s) {', '.join(unbatched)} have no batch axis (leading size does not follow "
                              f"the number of samples): {how}")

    def _find_output_axes(self, names: dict[str, str], runs: list[list[Any]],
                          others: Mapping[str, np.ndarray]) -> None:
        """Outputs whose batch is on another axis than the first, from their shapes at batch sizes 1 and 2
        (exactly one axis goes from 1 to 2, every other keeps its size). Such an axis is read as the batch,
        and the output returned batch-first, only where the graph says it is one: it carries the primary
        input's batch symbol, or the output has the per-sample shape of an input whose rows lie on that axis
        (a recurrent ``stateN`` beside its ``state``). Otherwise (a time-major sequence ``[time, batch, C]``)
        the output keeps counting as one without a batch axis, and the skip says where the batch seems to be."""
        assert self.output_batched is not None
        declared = {o.name: G.value_info_spec(o).shape for o in self.proto.graph.output}
        d0 = self.input.shape[0] if self.input.shape else None
        states = {tuple(int(d) for d in np.shape(v)[1:]): self.batch_axes.get(k, 0) for k, v in others.items()}
        for i, o in enumerate(self.outputs):
            if self.output_batched.get(o, True):
                continue
            s1, s2 = np.shape(runs[0][i]), np.shape(runs[1][i])
            axes = [k for k in range(len(s1)) if len(s1) == len(s2) and s1[k] == 1 and s2[k] == 2
                    and all(s1[j] == s2[j] for j in range(len(s1)) if j != k)]
            if len(axes) != 1:
                continue
            k = axes[0]
            shape = declared.get(names[o])
            named = isinstance(d0, str) and shape is not None and len(shape) > k and shape[k] == d0
            per = tuple(int(d) for j, d in enumerate(s1) if j != k)
            if named or states.get(per) == k:
                self.output_batched[o] = True
                self.output_axes[o] = k
                self._tensor_axes[names[o]] = k
                self.notes.append(f"output '{o}' carries the batch on axis {k} (shape {list(s1)} for one sample): "
                                  f"read batch-first")
            else:
                self._axis_hints[o] = k

    def _batch_first(self, tensor: str, value: Any) -> np.ndarray:
        """An output as the checks read it: its batch axis first (a recurrent state ``[layers, batch, hidden]``
        comes back ``[batch, layers, hidden]``, see :attr:`output_axes`)."""
        axis = self._tensor_axes.get(tensor, 0)
        return np.moveaxis(np.asarray(value), axis, 0) if axis else np.asarray(value)

    def _failure(self, exc: BaseException, xb: np.ndarray, others: Mapping[str, np.ndarray]) -> str:
        """One line for a model that fails on the data: ONNX Runtime's reason, then what it was fed against
        what the graph declares, and for a per-sample input placed on a guessed axis, how to declare it."""
        msg = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", " ".join(str(exc).split()))[:300]
        try:
            feed = self._feed(xb, others)
        except Exception:
            return f"{self.path}: the model fails on the data: {msg}"
        specs = {self.input.name: self.input, **self.sample_inputs}
        fed = "; ".join(f"{k} {list(np.shape(v))}" + (f" (declared {_dims(specs[k].shape or ())})"
                                                      if k in specs and specs[k].shape is not None else "")
                        for k, v in feed.items())
        hint = "".join(f"; '{k}' rows are placed on axis {a}: if that is wrong, declare {self.role}.inputs: "
                       f"{{{k}: {{key: {self.input_keys[k]}, batch_axis: AXIS}}}}"
                       for k, a in self.batch_axes.items() if k in others)
        return f"{self.path}: the model fails on the data: {msg} (fed {fed}{hint})"

    def _chunked(self, sess: ort.InferenceSession, names: list[str], x: np.ndarray,
                 others: Mapping[str, np.ndarray], size: int) -> list[Any]:
        parts: list[list[Any]] = [[] for _ in names]
        n = len(x)
        for start in range(0, n, size):
            xb = x[start:start + size]
            ob = {k: np.asarray(v[start:start + size]) for k, v in others.items()}
            pad = size - len(xb)
            if pad:  # the fixed shape must be met exactly: pad with the last row, drop its outputs after
                xb = np.concatenate([xb, np.repeat(xb[-1:], pad, axis=0)])
                ob = {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) for k, v in ob.items()}
            outs = [self._batch_first(t, o) for t, o in zip(names, self._raw(sess, names, self._feed(xb, ob)))]
            for i, o in enumerate(outs):
                parts[i].append(np.asarray(o)[: size - pad] if pad else np.asarray(o))
        return [np.concatenate(p) if p and np.asarray(p[0]).ndim else np.asarray(p) for p in parts]

    def run(
        self,
        x: XArray,
        outputs: Sequence[str] | None = None,
        *,
        inputs: Mapping[str, np.ndarray] | None = None,
        batch_size: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run ``x`` (a batch-first array, or a lazy source read batch by batch, for the primary input) through
        the model in batches.

        ``inputs`` holds the model's other per-sample inputs (:attr:`sample_inputs`), batch-first with one row
        per row of ``x`` (``Dataset.inputs``, or :meth:`auditor.Dataset.companions` of the rows ``x`` came
        from); they are batched together with ``x``. ``outputs`` are tensor names to return (any tensor in the
        graph: intermediate ones are added as outputs once and cached); ``None`` means the audited outputs.
        Returns name -> array with the samples concatenated along the first axis. An audited output without a
        batch axis skips the calling check (its rows are not samples).
        """
        if self._unfed:
            raise ModelLoadError(self._unfed)
        wanted = list(outputs) if outputs is not None else list(self.outputs)
        extra = [o for o in wanted if o not in self.outputs]
        if len(x) == 0:
            raise DataError("no samples to run")
        others = self._companions(x, inputs)
        self._decide_batching(x, others)
        sess, names = self._session(extra)
        self._probe_outputs(x, others, sess, names)
        flat = [o for o in wanted if self.output_batched is not None and not self.output_batched.get(o, True)]
        stack = bool(flat) and self.config.unbatched_outputs == "per_call" and (self._fixed_batch or 1) == 1
        if flat and not stack:
            shapes = self.output_shapes or {}
            hint = self._axis_hints.get(flat[0])
            if hint is not None:
                raise SkipCheck(
                    f"output '{flat[0]}' follows the number of samples on axis {hint}, not on its first axis "
                    f"(shape {shapes.get(flat[0])} for one sample, e.g. a time-major sequence), and the graph "
                    f"does not name that axis the batch: its rows are not samples; set {self.role}.output to a "
                    f"batch-first output (graph outputs: {', '.join(o.name for o in self.proto.graph.output)})"
                )
            raise SkipCheck(
                f"output '{flat[0]}' has no batch axis (shape {shapes.get(flat[0])} for one sample; its leading "
                f"size does not follow the number of samples): its rows are not samples"
            )
        tensors = [names[o] for o in wanted]
        bs = batch_size or self.batch_size
        if self._batch_mode == "fixed" or stack:
            bs = self._fixed_batch or 1  # one sample per call when its outputs are stacked (model.unbatched_outputs)
        parts: list[list[np.ndarray]] = [[] for _ in wanted]
        n = len(x)
        sink = progress_sink() if progress is None else None
        done = 0
        for start in range(0, n, bs):
            raise_if_cancelled()
            xb = self.prepare(np.asarray(x[start:start + bs]))
            ob = {k: np.asarray(v[start:start + bs]) for k, v in others.items()}
            try:
                if self._batch_mode == "fixed" and not stack:
                    outs = self._chunked(sess, tensors, xb, ob, bs)
                else:
                    outs = [self._batch_first(t, o) for t, o in zip(tensors, self._raw(sess, tensors,
                                                                                     self._feed(xb, ob)))]
            except Exception as exc:
                raise DataError(self._failure(exc, xb, ob)) from None
            for i, o in enumerate(outs):
                parts[i].append(np.asarray(o))
            done += len(xb)
            if progress is not None:
                progress(len(xb))
            elif sink is not None:
                sink(done, n, "batches")
        # Outputs with a batch dimension are concatenated; per-batch scalars (rare) and the per-call outputs of
        # model.unbatched_outputs: per_call are stacked, one entry per sample.
        return {name: np.stack(p) if name in flat or not all(a.ndim for a in p) else np.concatenate(p)
                for name, p in zip(wanted, parts)}

    def predict(self, x: np.ndarray, *, inputs: Mapping[str, np.ndarray] | None = None,
                batch_size: int | None = None) -> np.ndarray:
        """The first audited output for ``x`` (see :meth:`run`)."""
        return self.run(x, [self.outputs[0]], inputs=inputs, batch_size=batch_size)[self.outputs[0]]

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
            return str(node.input[0])
        return None

    def penultimate(self) -> str | None:
        """The features entering the last linear layer that feeds the audited output."""
        return G.penultimate(self.proto.graph, self._alias.get(self.outputs[-1], self.outputs[-1]))
