"""The ``torch`` backend offered to every plugin: ``ctx.backend("torch")`` returns a :class:`TorchBackend`.

Agreed interface: ``.module`` (input tensor -> audited output tensor), ``.device``, ``.forward(x)``,
``.input_gradients(x, targets, of="logit" | "prob" | "loss")``, all batched.

A model with other per-sample inputs (``ModelHandle.sample_inputs``: an attention mask, a recurrent state) gets
them as ONNX Runtime does: every method takes ``inputs=``, the batch-first companions of the rows of ``x``
(``ctx.companions(data=...)``), batched with ``x`` and placed on their batch axes; gradients and attacks act on
the primary input only, the others pass through unchanged.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import onnx
import torch

from auditor import ModelHandle, SkipCheck
from auditor import graph as G
from auditor_torch.interpreter import FLOAT_TYPES, OnnxModule, build_module

_PASS_THROUGH = {"Identity", "Dropout"}
_CACHE: weakref.WeakKeyDictionary[ModelHandle, TorchBackend] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def pick_device(requested: str = "auto") -> torch.device:
    """``cuda`` (or ``cuda:N``) when requested or ``auto`` and torch sees a GPU, else the CPU."""
    req = (requested or "auto").lower()
    if req == "cpu" or os.environ.get("AUDITOR_DISABLE_CUDA") or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device(req if req.startswith("cuda") else "cuda")


def audited_tensor(handle: ModelHandle) -> str:
    """The float output the backend differentiates: the first audited output that is a float tensor
    (a ZipMap'd probability output counts as its probability matrix)."""
    alias = {z.output: z.tensor for z in handle.zipmaps.values()}
    types = {o.name: o.type.tensor_type.elem_type for o in handle.proto.graph.output}
    types.update({vi.name: vi.type.tensor_type.elem_type for vi in handle.proto.graph.value_info})
    for o in handle.outputs:
        if o in alias:
            return alias[o]
        if types.get(o, onnx.TensorProto.FLOAT) in FLOAT_TYPES:
            return o
    raise SkipCheck(f"the audited output(s) {', '.join(handle.outputs)} are not float tensors: nothing to "
                    f"differentiate")


def logit_tensor(graph: onnx.GraphProto, output: str) -> tuple[str, str]:
    """``(tensor, kind)``: the pre-softmax scores when the output is a Softmax/LogSoftmax/Sigmoid (through
    Identity/Dropout), with kind ``softmax`` / ``logsoftmax`` / ``sigmoid``; else ``(output, "raw")``."""
    producers = G.produced_tensors(graph)
    t = output
    while t in producers and producers[t].op_type in _PASS_THROUGH:
        t = producers[t].input[0]
    node = producers.get(t)
    if node is not None and node.op_type in ("Softmax", "LogSoftmax", "Sigmoid"):
        return node.input[0], node.op_type.lower()
    return output, "raw"


def _looks_like_probs(p: torch.Tensor, tol: float = 1e-3) -> bool:
    return bool((p >= -tol).all() and (p <= 1 + tol).all() and torch.allclose(
        p.sum(dim=1), torch.ones(len(p), dtype=p.dtype, device=p.device), atol=tol))


class TorchBackend:
    """A differentiable copy of the audited model (see the module docstring for the interface)."""

    def __init__(self, handle: ModelHandle, device: torch.device | None = None) -> None:
        self.handle = handle
        self.output_name = audited_tensor(handle)
        self.logit_name, self.kind = logit_tensor(handle.proto.graph, self.output_name)
        self.device = device or pick_device(handle.config.device)
        self.batch_size = int(handle.batch_size or 256)
        self.module: OnnxModule = self.build_module().to(self.device).eval()
        self._modules: dict[tuple[str, ...], OnnxModule] = {}
        self.notes: list[str] = []
        if self.device.type == "cpu" and (handle.config.device or "").startswith("cuda"):
            self.notes.append("torch sees no CUDA device: the torch backend runs on the CPU")

    # ------------------------------------------------------------------------------------------ building
    def build_module(self, names: Sequence[str] = ()) -> OnnxModule:
        """A fresh :class:`OnnxModule` of the audited model (on the CPU), e.g. to retrain, computing ``names``
        (default: the audited output and its logits)."""
        h = self.handle
        d0 = h.input.shape[0] if h.input.shape else None
        names = list(names) or [self.output_name, self.logit_name]
        return build_module(h.proto, output=names[0], input_name=h.input.name, base_dir=h.path.parent,
                            feeds=h.feeds, fixed_batch=d0 if isinstance(d0, int) else None, extra_outputs=names[1:])

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the data input."""
        dt = self.handle.input.dtype
        return torch.from_numpy(np.zeros(1, dtype=dt if dt is not None else np.float32)).dtype

    def tensor(self, x: np.ndarray) -> torch.Tensor:
        """Data as a tensor on the backend's device, in the model input's dtype."""
        return torch.from_numpy(np.ascontiguousarray(self.handle.prepare(np.asarray(x)))).to(self.device)

    def companion_tensors(self, xb: np.ndarray, others: dict[str, np.ndarray] | None) -> dict[str, torch.Tensor]:
        """The other per-sample inputs of the batch ``xb`` (batch-first numpy rows, ``None`` or empty for a
        single-input model) as the graph takes them: cast, on their batch axes, on the backend's device."""
        if not others and not self.handle.sample_inputs:
            return {}
        feed = self.handle.sample_feed(np.asarray(xb), others or {})
        feed.pop(self.handle.input.name, None)
        return {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in feed.items()}

    def companions_of(self, x: np.ndarray, inputs: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        """Every per-sample companion the model needs for the rows ``x`` (checked, batch-first), or the
        calling check skips saying which are missing."""
        return self.handle.companions_for(x, inputs) if self.handle.sample_inputs else {}

    def _moved(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """An output tensor with its batch axis first, as ONNX Runtime's are read (``ModelHandle.output_axes``)."""
        axis = self.handle.output_axis(name)
        return t.movedim(axis, 0) if axis else t

    # ------------------------------------------------------------------------------------------ scores
    def outputs(self, xt: torch.Tensor, module: OnnxModule | None = None,
                inputs: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(output, logits)`` tensors for a batch (``inputs``: its :meth:`companion_tensors`)."""
        m = module or self.module
        res = m.forward_many(xt, [self.output_name, self.logit_name], inputs)
        return self._moved(self.output_name, res[self.output_name]), self._moved(self.logit_name,
                                                                                 res[self.logit_name])

    def log_probs(self, out: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """(N, C) log class probabilities, read the way the core reads outputs (``auditor.outputs``)."""
        n = len(out)
        if self.kind == "softmax":
            return torch.log_softmax(logits.reshape(n, -1), dim=1)
        if self.kind == "logsoftmax":
            return out.reshape(n, -1)
        o = out.reshape(n, -1)
        if o.shape[1] >= 2:
            if _looks_like_probs(o.detach()):
                return torch.log(o.clamp_min(1e-12))
            return torch.log_softmax(o, dim=1)
        s = logits.reshape(n, -1)[:, 0] if self.kind == "sigmoid" else o[:, 0]
        if self.kind != "sigmoid" and bool(((s >= 0) & (s <= 1)).all()):
            p = s.clamp(1e-12, 1 - 1e-12)
            return torch.stack([torch.log1p(-p), torch.log(p)], dim=1)
        return torch.stack([torch.nn.functional.logsigmoid(-s), torch.nn.functional.logsigmoid(s)], dim=1)

    def score(self, xt: torch.Tensor, targets: torch.Tensor, of: str = "logit",
              module: OnnxModule | None = None, inputs: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Per-sample score of the target class: ``logit`` (pre-softmax score; for a single-column output
        ``+s`` for class 1 and ``-s`` for class 0), ``prob`` (probability) or ``loss`` (cross-entropy)."""
        out, logits = self.outputs(xt, module, inputs)
        n = len(out)
        t = targets.long().reshape(-1, 1)
        if of == "logit":
            z = logits.reshape(n, -1)
            if z.shape[1] >= 2:
                return z.gather(1, t)[:, 0]
            return torch.where(t[:, 0] == 1, z[:, 0], -z[:, 0])
        lp = self.log_probs(out, logits).gather(1, t)[:, 0]
        if of == "prob":
            return lp.exp()
        if of == "loss":
            return -lp
        raise ValueError(f"of must be 'logit', 'prob' or 'loss', not {of!r}")

    # ------------------------------------------------------------------------------------------ batching
    def chunks_with(self, x: np.ndarray, inputs: dict[str, np.ndarray] | None,
                    batch_size: int | None = None) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray], int]]:
        """``(batch, its companion rows, real rows)`` over ``x`` and the model's other per-sample inputs
        (batch-first, one row per row of ``x``), following ONNX Runtime's batching decision
        (:meth:`ModelHandle.batching`): a model that only runs its fixed export batch gets exactly that many
        rows, the last chunk padded with copies of its last row (the caller drops the padding's outputs)."""
        others = self.companions_of(x, inputs)
        mode, fixed = self.handle.batching(x, others)
        size = (fixed or 1) if mode == "fixed" else (batch_size or self.batch_size)
        for s in range(0, len(x), size):
            xb = np.asarray(x[s:s + size])
            ob = {k: np.asarray(v[s:s + size]) for k, v in others.items()}
            n = len(xb)
            if mode == "fixed" and n < size:
                xb = np.concatenate([xb, np.repeat(xb[-1:], size - n, axis=0)])
                ob = {k: np.concatenate([v, np.repeat(v[-1:], size - n, axis=0)]) for k, v in ob.items()}
            yield xb, ob, n

    # ------------------------------------------------------------------------------------------ interface
    def forward(self, x: np.ndarray, batch_size: int | None = None, *,
                inputs: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """The audited output for ``x`` (batched, no gradients; ``inputs``: the other per-sample inputs)."""
        return self.forward_outputs(x, [self.output_name], batch_size, inputs=inputs)[self.output_name]

    def forward_outputs(self, x: np.ndarray, names: Sequence[str], batch_size: int | None = None, *,
                        inputs: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Several tensors of the model for ``x`` (batched like :meth:`forward`, outputs batch-first as ONNX
        Runtime's are read); a module computing them is built once per set of names."""
        key = tuple(names)
        module = self.module if key == (self.output_name,) else self._modules.get(key)
        if module is None:
            module = self._modules[key] = self.build_module(key).to(self.device).eval()
        parts: dict[str, list[np.ndarray]] = {n: [] for n in key}
        with torch.no_grad():
            for xb, ob, n in self.chunks_with(x, inputs, batch_size):
                res = module.forward_many(self.tensor(xb), key, self.companion_tensors(xb, ob))
                for name in key:
                    t = self._moved(name, res[name]).detach().cpu().numpy()
                    parts[name].append(t[:n] if t.ndim else t)
        return {name: np.concatenate(p) if p and p[0].ndim else np.stack(p) for name, p in parts.items()}

    def input_gradients(self, x: np.ndarray, targets: np.ndarray, *, of: str = "logit",
                        batch_size: int | None = None, inputs: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """d score(target) / d x, same shape as ``x`` (see :meth:`score`); the other per-sample ``inputs`` are
        held fixed."""
        self.require_real_input()
        targets = np.asarray(targets)
        parts = []
        start = 0
        for xb, ob, n in self.chunks_with(x, inputs, batch_size):
            xt = self.tensor(xb).requires_grad_(True)
            extra = self.companion_tensors(xb, ob)
            tb = targets[start:start + n].astype(np.int64)
            tb = np.concatenate([tb, np.repeat(tb[-1:], len(xb) - n)]) if len(xb) > n else tb
            tt = torch.from_numpy(tb).to(self.device)
            # samples do not interact (eval mode), so the gradient of the sum over the real rows is each
            # sample's gradient (padding rows get none)
            g, = torch.autograd.grad(self.score(xt, tt, of, inputs=extra)[:n].sum(), xt)
            parts.append(g[:n].detach().cpu().numpy())
            start += n
        return np.concatenate(parts).reshape(np.shape(x))

    def loss_grad(self, xt: torch.Tensor, targets: torch.Tensor, of: str = "loss",
                  inputs: dict[str, torch.Tensor] | None = None,
                  transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor,
                                                                                           torch.Tensor]:
        """``(score, d score / d x)`` for a tensor batch already on the device (attacks stay in torch;
        ``inputs``: the batch's :meth:`companion_tensors`, held fixed).

        ``transform`` maps ``xt`` to the model's input first (e.g. un-normalised pixels to normalised inputs,
        :func:`auditor_torch.attacks.pixel_normaliser`); the gradient flows through it, so it is the gradient
        with respect to ``xt`` itself."""
        xt = xt.detach().requires_grad_(True)
        sc = self.score(xt if transform is None else transform(xt), targets, of, inputs=inputs)
        g, = torch.autograd.grad(sc.sum(), xt)
        return sc.detach(), g.detach()

    def require_real_input(self) -> None:
        """Skip a gradient method on an integer primary input (token ids, uint8 pixels): no gradient reaches
        it."""
        dt = self.handle.input.dtype
        if dt is not None and dt.kind in "iub":
            raise SkipCheck(f"model input '{self.handle.input.name}' is {dt}: gradients need a real-valued "
                            f"input (integer ids or pixels have none)")

    def __repr__(self) -> str:
        return f"TorchBackend({self.handle.path.name}, output={self.output_name!r}, device={self.device})"


def get_backend(handle: ModelHandle) -> TorchBackend:
    """The backend of a model, built once per model handle."""
    with _LOCK:
        b = _CACHE.get(handle)
        if b is None:
            b = TorchBackend(handle)
            _CACHE[handle] = b
        return b
