"""Retraining an interpreted ONNX graph under different training rules and optimizers.

Rules (Bartunov et al., "Assessing the Scalability of Biologically-Motivated Deep Learning Algorithms and
Architectures", NeurIPS 2018):

* ``backprop``: the exact gradient.
* ``feedback_alignment`` (Lillicrap et al. 2016): the error reaches a linear op's input through a *fixed
  random* matrix ``B`` of the weight's shape instead of the weight itself, ``δ_in = Bᵀ δ_out`` (for a
  convolution: the transposed convolution with ``B``); weight updates stay local, ``ΔW ∝ δ_out xᵀ``.
* ``direct_feedback_alignment`` (Nøkland 2016): every linear op's input receives the *output* error through
  its own fixed random matrix, ``δ_in = e B_l`` with ``e = ∂L/∂logits``; the local non-linearity derivative
  is then applied by the ops in between, so a hidden layer gets ``δ_l = (e B_l) ⊙ f'(a_l)``.
* ``difference_target_propagation`` (Lee et al. 2015, with the gradient-based penultimate target of
  Bartunov et al.): each fully-connected layer is trained towards a target
  ``ĥ_{l-1} = h_{l-1} + g_l(ĥ_l) − g_l(h_l)`` propagated down through learned approximate inverses
  ``g_l(h) = σ(V_l h + c_l)``, which are trained to reconstruct noise-corrupted inputs; the penultimate
  target is ``ĥ_{L-1} = h_{L-1} − η̂ ∂ℓ/∂h_{L-1}`` (per-sample loss ``ℓ``, ``η̂ = 1``), layer losses
  ``½‖h_l − ĥ_l‖²``. Implemented for
  graphs that are a chain of fully-connected layers; other graphs are reported as not applicable.

Optimizers: SGD (momentum), Adam, and SAM (Foret et al. 2021, "Sharpness-Aware Minimization"):
``w_adv = w + ρ g/‖g‖``, then the step uses the gradient at ``w_adv`` (Andriushchenko et al. 2023,
"Sharpness-Aware Minimization Leads to Low-Rank Features", motivate reporting feature rank).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from auditor import ArraySource
from auditor_torch.interpreter import LINEAR_OPS, LinearFn, NodeContext, OnnxModule, TrainingRule, _Step

DEFAULT_LR = {"sgd": 0.05, "sam": 0.05, "adam": 0.001}


class NotApplicable(Exception):
    """A training rule cannot be applied to this architecture (the message says why)."""


# ---------------------------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class Role:
    """What a trainable initializer is: ``weight`` (with its fan-in), ``bias``, ``norm_scale``,
    ``norm_bias`` or ``other``; ``op`` the consuming op type."""

    kind: str
    op: str
    fan_in: int = 1


def _uniform(shape: Any, fan_in: int, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """``U(±1/√fan_in)`` of ``shape`` in ``like``'s dtype, on its device: how torch initialises its layers."""
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    return ((torch.rand(shape, generator=gen, dtype=like.dtype) * 2 - 1) * bound).to(like.device)


def parameter_roles(module: OnnxModule) -> dict[str, Role]:
    """The initializers retraining updates: weights and biases of Conv/ConvTranspose/Gemm/MatMul (a bias
    being an initializer added right after one of them), affine parameters of normalization layers and PRelu
    slopes. Scalars and other constants of the graph (e.g. the ``√2`` of a decomposed GELU) are not
    trained."""
    roles: dict[str, Role] = {}
    p = module.named_onnx_parameters()
    for node in module.graph.node:
        op, ins = node.op_type, list(node.input)

        def param(i: int, _ins: list[str] = ins) -> str | None:
            return _ins[i] if len(_ins) > i and _ins[i] in p else None

        if op in ("Conv", "ConvTranspose") and param(1):
            shape = p[ins[1]].shape
            roles[ins[1]] = Role("weight", op, int(shape[1] * np.prod(shape[2:])))
        elif op in ("Gemm", "MatMul"):
            trans = {a.name: a.i for a in node.attribute}
            w = 1 if param(1) else 0 if param(0) else None
            if w is not None:  # fan-in: the contracted axis, B's rows (-2) or A's columns (-1) unless transposed
                axis = (w - 2) if trans.get("transB" if w else "transA", 0) else (-1 - w)
                roles[ins[w]] = Role("weight", op, int(p[ins[w]].shape[axis]))
        elif op in ("BatchNormalization", "LayerNormalization", "InstanceNormalization"):
            if param(1):
                roles[ins[1]] = Role("norm_scale", op)
            if param(2):
                roles[ins[2]] = Role("norm_bias", op)
        elif op == "PRelu" and param(1):
            roles[ins[1]] = Role("other", op)
        elif op == "Add":
            for i, j in ((0, 1), (1, 0)):
                b = param(i)
                src = module.producers.get(ins[j]) if len(ins) > j else None
                if b and src is not None and src.op_type in LINEAR_OPS and p[b].numel() > 1:
                    roles[b] = Role("bias", src.op_type)
        if op in ("Conv", "ConvTranspose", "Gemm") and param(2):
            roles[ins[2]] = Role("bias", op)
    return {k: v for k, v in roles.items() if k in p}


def reinitialise(module: OnnxModule, roles: dict[str, Role], gen: torch.Generator) -> None:
    """Fresh weights as torch initialises its layers (``U(±1/√fan_in)``), zero biases, unit norm scales,
    reset batch-norm statistics."""
    p = module.named_onnx_parameters()
    with torch.no_grad():
        for name, role in roles.items():
            t = p[name]
            if role.kind == "weight":
                t.copy_(_uniform(t.shape, role.fan_in, gen, t))
            elif role.kind == "norm_scale":
                t.fill_(1.0)
            elif role.kind in ("bias", "norm_bias"):
                t.zero_()
        for node in module.graph.node:
            if node.op_type == "BatchNormalization" and len(node.input) >= 5:
                mean, var = module.tensor(node.input[3]), module.tensor(node.input[4])
                if mean is not None:
                    mean.zero_()
                if var is not None:
                    var.fill_(1.0)


# ---------------------------------------------------------------------------------------------- rules
class FeedbackAlignment:
    """Feedback alignment: fixed random feedback weights ``B`` (one per linear op weight, same shape,
    drawn once, never updated) carry the error to the op's input."""

    def __init__(self, module: OnnxModule, roles: dict[str, Role], gen: torch.Generator) -> None:
        p = module.named_onnx_parameters()
        self.feedback = {name: _uniform(p[name].shape, role.fan_in, gen, p[name]) for name, role in roles.items()
                         if role.kind == "weight"}

    def capture(self, logits: torch.Tensor) -> None:
        """Nothing to capture (the error flows layer by layer)."""

    def linear(self, ctx: NodeContext, fn: LinearFn, x: torch.Tensor, name: str,
               w: torch.Tensor) -> torch.Tensor:
        """``fn(x, W)`` in value; the gradient to ``x`` is that of ``fn(x, B)``, the one to ``W`` uses ``x``."""
        b = self.feedback.get(name)
        if b is None or not x.requires_grad:
            return fn(x, w)
        z = fn(x, b)
        # z - z.detach() is exactly zero, so the value is fn(x, W); its gradient w.r.t. x is B's
        return fn(x.detach(), w) + (z - z.detach())


class _Inject(torch.autograd.Function):
    """Forward: a zero (added to a linear op's output). Backward: ``e B`` to the op's input, with ``e`` the
    output error captured by :meth:`DirectFeedbackAlignment.capture`."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, rule: DirectFeedbackAlignment, name: str) -> torch.Tensor:
        ctx.shape, ctx.rule, ctx.name = x.shape, rule, name
        return x.new_zeros(())

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        e = ctx.rule.error
        if e is None:
            raise RuntimeError("direct feedback alignment: the output error was not captured")
        e = e.reshape(len(e), -1)
        b = ctx.rule.matrix(ctx.name, int(e.shape[1]), int(np.prod(ctx.shape[1:])), e)
        return (e @ b).reshape(ctx.shape), None, None


# ``Function.apply`` is untyped in torch: typed once here.
_inject: Callable[[torch.Tensor, DirectFeedbackAlignment, str], torch.Tensor] = _Inject.apply


class DirectFeedbackAlignment:
    """Direct feedback alignment: a fixed random ``B_l`` (outputs × input size of the op, drawn once on first
    use, never updated) per linear op sends the output error straight to the op's input."""

    MAX_ENTRIES = 1 << 26

    def __init__(self, module: OnnxModule, roles: dict[str, Role], gen: torch.Generator) -> None:
        self.names = {n for n, r in roles.items() if r.kind == "weight"}
        self.gen = gen
        self.feedback: dict[str, torch.Tensor] = {}
        self.error: torch.Tensor | None = None

    def capture(self, logits: torch.Tensor) -> None:
        """Remember ``e = ∂L/∂logits`` during the backward pass (it arrives before any hidden layer's)."""
        self.error = None

        def hook(g: torch.Tensor) -> None:
            self.error = g

        logits.register_hook(hook)

    def matrix(self, name: str, c: int, d: int, like: torch.Tensor) -> torch.Tensor:
        """The fixed feedback matrix (c × d) of the op whose weight is ``name``."""
        b = self.feedback.get(name)
        if b is None:
            if c * d > self.MAX_ENTRIES:
                raise NotApplicable(f"the feedback matrix for '{name}' would have {c * d} entries")
            b = self.feedback[name] = _uniform((c, d), d, self.gen, like)
        return b

    def linear(self, ctx: NodeContext, fn: LinearFn, x: torch.Tensor, name: str,
               w: torch.Tensor) -> torch.Tensor:
        """``fn(x, W)`` in value; ``x`` gets the projected output error instead of ``Wᵀ δ``."""
        if name not in self.names or not x.requires_grad:
            return fn(x, w)
        return fn(x.detach(), w) + _inject(x, self, name)


#: The rules that change how the error reaches a linear op's input (backprop: none; DTP trains layer by layer).
RULES: dict[str, Callable[[OnnxModule, dict[str, Role], torch.Generator], TrainingRule]] = {
    "feedback_alignment": FeedbackAlignment, "direct_feedback_alignment": DirectFeedbackAlignment}


# ---------------------------------------------------------------------------------------------- DTP
@dataclass
class Chain:
    """A graph as a chain of fully-connected layers: ``stem`` (no weights) then one segment per layer."""

    stem: list[_Step]
    segments: list[list[_Step]]
    inputs: list[str]  # the tensor entering each layer (h_0 .. h_{L-1})
    activations: list[str]  # op type producing h_l (for the inverse's non-linearity), per layer input
    carry: list[str] = field(default_factory=list)  # shape tensors computed in the stem, used by layers


def fc_chain(module: OnnxModule, roles: dict[str, Role]) -> Chain:
    """Split the graph into fully-connected layers, or raise :class:`NotApplicable` saying why."""
    weights = {n for n, r in roles.items() if r.kind == "weight"}
    convs = [s.ctx.name for s in module.steps if s.ctx.node.op_type in ("Conv", "ConvTranspose")
             and len(s.ctx.node.input) > 1 and s.ctx.node.input[1] in weights]
    if convs:
        raise NotApplicable(f"difference target propagation is implemented for fully-connected layers only; "
                            f"the graph has convolution(s) {', '.join(convs[:3])}")
    # Tensors that only carry shapes (Shape -> Gather -> Concat -> Reshape) are not part of the data flow.
    shape_like: set[str] = set()
    data: set[str] = {module.input_name}
    for s in module.steps:
        if s.ctx.node.op_type in ("Shape", "Size") or (s.reads and all(i in shape_like for i in s.reads)):
            shape_like.update(o for o in s.outputs if o)
            continue
        if any(i in data for i in s.reads):
            data.update(o for o in s.outputs if o)
    consumers = Counter(t for s in module.steps for t in s.reads if t in data)
    branching = [t for t, c in consumers.items() if c > 1]
    if branching:
        raise NotApplicable(f"difference target propagation needs a chain of layers; tensor '{branching[0]}' "
                            f"feeds several nodes (skip connection or branch)")
    stem: list[_Step] = []
    segments: list[list[_Step]] = []
    inputs: list[str] = []
    acts: list[str] = []
    last_act = "Identity"
    for s in module.steps:
        node = s.ctx.node
        is_layer = node.op_type in ("Gemm", "MatMul") and any(i in weights for i in node.input)
        if is_layer:
            inputs.append(s.reads[0])
            acts.append(last_act)
            segments.append([s])
            last_act = "Identity"
        elif segments:
            segments[-1].append(s)
        else:
            stem.append(s)
        if node.op_type in ("Relu", "Tanh", "Sigmoid", "LeakyRelu", "Elu"):
            last_act = node.op_type
    if len(segments) < 2:
        raise NotApplicable("difference target propagation needs at least two fully-connected layers")
    made_in_stem = {o for s in stem for o in s.outputs if o}
    later = {t for seg in segments for s in seg for t in s.reads}
    carry = sorted((made_in_stem & later & shape_like) | ({module.input_name} & later))
    return Chain(stem, segments, inputs, acts, carry)


_ACTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Relu": torch.relu, "Tanh": torch.tanh, "Sigmoid": torch.sigmoid,
    "LeakyRelu": torch.nn.functional.leaky_relu, "Elu": torch.nn.functional.elu,
}


class DtpTrainer(torch.nn.Module):
    """Difference target propagation over a :class:`Chain` (inverses ``g_l`` for layers 2..L-1)."""

    def __init__(self, module: OnnxModule, chain: Chain, sizes: list[int], gen: torch.Generator,
                 target_lr: float = 1.0, noise: float = 0.1) -> None:
        super().__init__()
        self.module, self.chain = module, chain
        self.target_lr, self.noise = target_lr, noise
        self.gen = gen
        self.carried: dict[str, torch.Tensor] = {}
        # g_lyr inverts segment lyr: h_{lyr+1} -> h_lyr
        self.inverses = torch.nn.ModuleList(torch.nn.Linear(sizes[lyr + 1], sizes[lyr])
                                            for lyr in range(1, len(chain.segments) - 1))

    def layer(self, lyr: int, h: torch.Tensor) -> torch.Tensor:
        """f_l: run segment ``lyr`` (0-based) from its input tensor to the next layer's input."""
        seg = self.chain.segments[lyr]
        out = self.chain.inputs[lyr + 1]
        return self.module.run({**self.carried, self.chain.inputs[lyr]: h}, [out], seg)[out]

    def inverse(self, lyr: int, h: torch.Tensor) -> torch.Tensor:
        """g_lyr, the learned inverse of segment ``lyr``: h_{lyr+1} -> h_lyr."""
        act = _ACTS.get(self.chain.activations[lyr])
        g = self.inverses[lyr - 1]
        assert isinstance(g, torch.nn.Linear)
        y = torch.nn.functional.linear(h, g.weight, g.bias)  # the module's forward, typed
        return act(y) if act is not None else y

    def loss(self, x: torch.Tensor, head: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The summed DTP objective of a batch (output loss, layer losses, inverse losses), the log
        probabilities and the output (cross-entropy) loss alone.

        ``head(h_{L-1})`` runs the last segment and returns ``(per-sample loss, logits)``.
        """
        c = self.chain
        nl = len(c.segments)
        with torch.no_grad():
            env = self.module.run({self.module.input_name: x}, [c.inputs[0], *c.carry], c.stem)
        self.carried = {k: env[k] for k in c.carry}
        hs = [env[c.inputs[0]]]
        for lyr in range(nl - 1):
            hs.append(self.layer(lyr, hs[-1].detach()))
        top = hs[-1].detach().requires_grad_(True)
        per_sample, logits = head(top)
        out_loss = per_sample.mean()
        g, = torch.autograd.grad(per_sample.sum(), top, retain_graph=True)
        targets: list[torch.Tensor | None] = [None] * nl
        targets[nl - 1] = (top - self.target_lr * g).detach()
        for lyr in range(nl - 1, 1, -1):  # targets of h_{lyr-1} from h_lyr through g_lyr (difference form)
            t = targets[lyr]
            assert t is not None
            with torch.no_grad():
                hprev = hs[lyr - 1]
                targets[lyr - 1] = hprev + self.inverse(lyr - 1, t) - self.inverse(lyr - 1, hs[lyr])
        total = out_loss
        for lyr in range(1, nl):
            t = targets[lyr]
            assert t is not None
            total = total + 0.5 * ((hs[lyr] - t) ** 2).sum(dim=1).mean()
        for lyr in range(1, nl - 1):  # inverse g_lyr reconstructs a noisy h_{lyr-1} from f(h_{lyr-1})
            hn = hs[lyr].detach() + self.noise * torch.randn(hs[lyr].shape, generator=self.gen).to(x.device)
            with torch.no_grad():
                fwd = self.layer(lyr, hn)
            total = total + 0.5 * ((self.inverse(lyr, fwd) - hn) ** 2).sum(dim=1).mean()
        return total, logits, out_loss.detach()


# ---------------------------------------------------------------------------------------------- training
@dataclass
class TrainConfig:
    """One retraining run."""

    rule: str = "backprop"
    optimizer: str = "sgd"
    epochs: int = 5
    batch_size: int = 64
    lr: float | None = None
    momentum: float = 0.9
    rho: float = 0.05
    reinit: bool = False
    seed: int = 0


@dataclass
class TrainResult:
    """The training curve (per epoch) and notes."""

    loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def sam_perturb(params: list[torch.nn.Parameter], rho: float) -> list[torch.Tensor]:
    """Move the weights to ``w + ρ g/‖g‖`` (SAM's ascent step) and return the offsets to undo it."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    norm = torch.sqrt(torch.stack([(g.detach() ** 2).sum() for g in grads]).sum()) + 1e-12
    offsets = []
    with torch.no_grad():
        for p, g in zip(params, grads):
            e = rho * g / norm
            p.add_(e)
            offsets.append(e)
    return offsets


def train(module: OnnxModule, backend: Any, x: np.ndarray | ArraySource, y: np.ndarray, cfg: TrainConfig,
          device: torch.device, check: Callable[[], None] = lambda: None,
          inputs: dict[str, np.ndarray] | None = None) -> TrainResult:
    """Retrain ``module`` in place on ``(x, y)`` (y: column indices of the model's classes); ``inputs``: the
    model's other per-sample inputs for the rows of ``x`` (batch-first), fed with each mini-batch.

    ``x`` may be a lazy source (``Dataset.x``: an ``.npy`` read with ``pread``, an image folder decoded on
    demand): every epoch draws a seeded permutation of the row indices and reads each mini-batch's rows from
    ``x`` when it is trained on, so memory holds one mini-batch whatever the size of the data, and the rows, their
    order and the numbers are those of the same data held in memory."""
    others = backend.companions_of(x, inputs)
    if others and cfg.rule == "difference_target_propagation":
        raise NotApplicable(f"difference target propagation feeds one input; the model also takes "
                            f"{', '.join(others)} per sample")
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # dropout masks
    roles = parameter_roles(module)
    if not roles:
        raise NotApplicable("the graph has no trainable weights")
    if cfg.reinit:
        reinitialise(module, roles, gen)
    p = module.named_onnx_parameters()
    params = [p[n] for n in roles]
    for t in params:
        t.requires_grad_(True)
    module.to(device).train()
    res = TrainResult()
    dtp: DtpTrainer | None = None
    if cfg.rule == "difference_target_propagation":
        chain = fc_chain(module, roles)
        with torch.no_grad():
            probe = backend.tensor(x[:2]).to(device)
            env = module.run({module.input_name: probe}, chain.inputs)
        sizes = [int(env[n][0].numel()) for n in chain.inputs]
        if any(env[n].dim() != 2 for n in chain.inputs):
            raise NotApplicable("difference target propagation needs 2-D (batch, features) layer inputs")
        dtp = DtpTrainer(module, chain, sizes, gen).to(device)
        params = params + list(dtp.inverses.parameters())
        res.notes.append("DTP: penultimate target by a gradient step (Bartunov et al. 2018), learned inverses")
    else:
        module.rule = None if cfg.rule == "backprop" else RULES[cfg.rule](module, roles, gen)
    lr = cfg.lr if cfg.lr is not None else DEFAULT_LR[cfg.optimizer]  # SAM steps with SGD after its ascent
    opt = torch.optim.Adam(params, lr=lr) if cfg.optimizer == "adam" else torch.optim.SGD(params, lr=lr,
                                                                                          momentum=cfg.momentum)
    yt_all = torch.from_numpy(np.asarray(y, dtype=np.int64))
    n = len(x)
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))

    def head(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert dtp is not None
        last = dtp.chain.segments[-1]
        names = [backend.output_name, backend.logit_name]
        out = module.run({**dtp.carried, dtp.chain.inputs[-1]: h}, names, last)
        lp = backend.log_probs(out[backend.output_name], out[backend.logit_name])
        return -lp.gather(1, yb.reshape(-1, 1))[:, 0], lp

    def objective() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(what is minimised, log probabilities, cross-entropy for the curve)"""
        if dtp is not None:
            return dtp.loss(xb, head)
        out, logits = backend.outputs(xb, module, inputs=extra)
        if module.rule is not None:
            module.rule.capture(logits)
        lp = backend.log_probs(out, logits)
        ce = -lp.gather(1, yb.reshape(-1, 1))[:, 0].mean()
        return ce, lp, ce.detach()

    try:
        for _ in range(cfg.epochs):
            perm = torch.randperm(n, generator=gen).numpy()
            tot_loss, correct = 0.0, 0
            for k in range(steps_per_epoch):
                check()
                idx = perm[k * cfg.batch_size:(k + 1) * cfg.batch_size]
                if len(idx) == 0:
                    continue
                xb = backend.tensor(x[idx]).to(device)
                extra = {k: t.to(device) for k, t in backend.companion_tensors(
                    x[idx], {k: v[idx] for k, v in others.items()}).items()} if others else {}
                yb = yt_all[idx].to(device)
                opt.zero_grad()
                loss, lp, ce = objective()
                loss.backward()
                if cfg.optimizer == "sam":
                    offsets = sam_perturb(params, cfg.rho)
                    opt.zero_grad()
                    loss2, _, _ = objective()
                    loss2.backward()
                    with torch.no_grad():
                        for t, e in zip(params, offsets):
                            t.sub_(e)
                opt.step()
                tot_loss += float(ce) * len(idx)
                correct += int((lp.detach().argmax(1) == yb).sum())
            res.loss.append(tot_loss / n)
            res.train_accuracy.append(correct / n)
    finally:
        module.rule = None
        module.eval()
        for t in module.parameters():
            t.requires_grad_(False)
    return res
