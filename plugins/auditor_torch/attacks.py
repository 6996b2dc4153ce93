"""White-box attacks and level-set traversal on the torch backend, batched (one forward/backward per step for
a whole batch of samples).

Both work in an *attack space*: the model's inputs, or, when the data declares its image preprocessing
(``data.preprocess``), un-normalised pixels in ``[0, 1]`` mapped to the model's inputs by ``to_model``
(:func:`pixel_normaliser`, differentiable, so gradients are taken with respect to the pixels). Budgets,
steps, clipping and distances are then in units of the pixel range: ``eps = 8/255`` is eight grey levels,
as in the papers, whatever the model's normalisation."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from auditor.shards import RowRandom
from auditor_torch.backend import TorchBackend

#: Maps attack-space tensors to the model's input (``None``: they are the model's inputs).
ToModel = Callable[[torch.Tensor], torch.Tensor] | None


def pixel_normaliser(pixels: Any, backend: TorchBackend) -> ToModel:
    """``p -> (255·scale·p − mean) / std`` per channel for a batch in the model's layout, on the backend's device
    and dtype: the torch twin of :meth:`auditor.datasets.preprocess.PixelSpace.from_pixels` for float inputs (no
    rounding), differentiable; ``None`` (no map) without declared preprocessing (``pixels`` None)."""
    if pixels is None:
        return None
    device, dtype = backend.device, backend.dtype
    c = int(pixels.n_channels)
    shape = (1, c, 1, 1) if pixels.layout == "NCHW" else (1, 1, 1, c)
    mean = torch.as_tensor(np.broadcast_to(np.asarray(pixels.mean, np.float64), (c,)).copy(), dtype=dtype,
                           device=device).reshape(shape)
    std = torch.as_tensor(np.broadcast_to(np.asarray(pixels.std, np.float64), (c,)).copy(), dtype=dtype,
                          device=device).reshape(shape)
    gain = 255.0 * float(pixels.scale)

    def normalise(p: torch.Tensor) -> torch.Tensor:
        return (p * gain - mean) / std

    return normalise


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    norms: torch.Tensor = t.reshape(len(t), -1).norm(dim=1)  # Tensor.norm is untyped in torch
    return norms.reshape(-1, *([1] * (t.dim() - 1)))


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    n = _per_sample_norm(delta)
    return delta * torch.clamp(eps / n.clamp_min(1e-12), max=1.0)


@dataclass
class AttackConfig:
    """PGD parameters (FGSM: one step of size ``eps`` without random start)."""

    eps: float
    norm: str = "linf"
    steps: int = 10
    step_size: float | None = None
    restarts: int = 1
    random_start: bool = True
    clip: tuple[float, float] | None = None


def _batches(backend: TorchBackend, x: np.ndarray, y: np.ndarray, inputs: dict[str, np.ndarray] | None
             ) -> Iterator[tuple[slice, torch.Tensor, dict[str, torch.Tensor], torch.Tensor]]:
    """Per batch of the backend's size: its rows, ``x`` there as a tensor, the rows' other per-sample inputs as
    the graph takes them (empty for one input), and the targets ``y`` there."""
    others = backend.companions_of(x, inputs)
    for s in range(0, len(x), backend.batch_size):
        rows = slice(s, s + backend.batch_size)
        extra = backend.companion_tensors(x[rows], {k: v[rows] for k, v in others.items()}) if others else {}
        yield rows, backend.tensor(x[rows]), extra, torch.from_numpy(np.asarray(y[rows], dtype=np.int64)).to(
            backend.device)


def _random_start(gen: RowRandom, x0: torch.Tensor, rows: slice, restart: int, cfg: AttackConfig) -> torch.Tensor:
    """A random point of the ball per sample, from each sample's own stream (the start of a sample does not
    depend on the batch or shard it is in)."""
    shape = (-1, *([1] * (x0.dim() - 1)))
    r = gen.at(restart).rows(rows)
    if cfg.norm == "linf":
        delta = torch.from_numpy((r.random(tuple(x0.shape)) * 2 - 1) * cfg.eps)
    else:
        d = r.standard_normal(tuple(x0.shape))
        radius = r.random(len(x0)) ** (1.0 / max(x0[0].numel(), 1)) * cfg.eps
        flat = np.linalg.norm(d.reshape(len(d), -1), axis=1)
        delta = torch.from_numpy(d / np.maximum(flat, 1e-12).reshape(shape) * radius.reshape(shape))
    return delta.to(dtype=x0.dtype, device=x0.device)


def pgd(backend: TorchBackend, x: np.ndarray, y: np.ndarray, cfg: AttackConfig, gen: RowRandom,
        check: Callable[[], None] = lambda: None, *, inputs: dict[str, np.ndarray] | None = None,
        to_model: ToModel = None) -> np.ndarray:
    """Untargeted PGD (Madry et al. 2018) maximising the cross-entropy of the true class within the
    ``eps`` ball (L∞: signed-gradient steps; L2: normalised-gradient steps), projected, clipped; with
    restarts each sample keeps the first restart that fools the torch model, else the highest-loss one.
    ``gen``: one random stream per row of ``x`` (random starts per sample).
    ``inputs``: the model's other per-sample inputs (batch-first), passed through unchanged. ``x`` and the
    returned examples are in the attack space (see the module docstring): with ``to_model``, every forward pass
    is ``model(to_model(x))`` and the gradient is taken with respect to ``x``."""
    alpha = cfg.step_size if cfg.step_size is not None else 2.5 * cfg.eps / max(cfg.steps, 1)
    out = np.empty_like(np.asarray(x, dtype=backend.handle.prepare(np.asarray(x[:1])).dtype))
    for rows, x0, extra, yt in _batches(backend, x, y, inputs):
        best = x0.clone()
        best_loss = torch.full((len(x0),), -float("inf"), device=x0.device)
        found = torch.zeros(len(x0), dtype=torch.bool, device=x0.device)
        for restart in range(cfg.restarts):
            check()
            if cfg.random_start:
                delta = _random_start(gen, x0, slice(rows.start, rows.start + len(x0)), restart, cfg)
            else:
                delta = torch.zeros_like(x0)
            xa = x0 + delta
            if cfg.clip is not None:
                xa = xa.clamp(*cfg.clip)
            for _ in range(cfg.steps):
                _, g = backend.loss_grad(xa, yt, "loss", inputs=extra, transform=to_model)
                if cfg.norm == "linf":
                    step = alpha * g.sign()
                else:
                    step = alpha * g / _per_sample_norm(g).clamp_min(1e-12)
                xa = x0 + _project(xa + step - x0, cfg.eps, cfg.norm)
                if cfg.clip is not None:
                    xa = xa.clamp(*cfg.clip)
            with torch.no_grad():
                o, lg = backend.outputs(xa if to_model is None else to_model(xa), inputs=extra)
                lp = backend.log_probs(o, lg)
                loss = -lp.gather(1, yt.reshape(-1, 1))[:, 0]
                fooled = lp.argmax(1) != yt
            take = (fooled & ~found) | (~found & ~fooled & (loss > best_loss))
            best[take] = xa[take]
            best_loss = torch.where(take, loss, best_loss)
            found |= fooled
        out[rows] = best.detach().cpu().numpy()
    return out


def level_set_traversal(backend: TorchBackend, src: np.ndarray, tgt: np.ndarray, cls: np.ndarray, *,
                        steps: int, step_size: float, tolerance: float, clip: tuple[float, float] | None,
                        check: Callable[[], None] = lambda: None,
                        inputs: dict[str, np.ndarray] | None = None, to_model: ToModel = None) -> np.ndarray:
    """Level Set Traversal (Bansal et al., "Exploring Geometry of Blind Spots in Vision Models", 2023).

    From ``x = src`` towards ``tgt``: ``Δ = tgt − x``, remove its component along the confidence gradient
    ``g = ∇ₓ p_c(x)``: ``Δ⊥ = Δ − (Δ·g/‖g‖²) g``, step ``x ← x + η Δ⊥``; when the confidence falls below
    ``p_c(src) − tolerance``, a first-order correction along ``g`` brings it back to that level
    (``x ← x + (p* − p_c(x)) g/‖g‖²``). Batched over all pairs; returns the final points.
    """
    xs = []
    for rows, x0, extra, ct in _batches(backend, src, cls, inputs):  # the sources' other inputs, held all along
        xt = backend.tensor(tgt[rows])
        p0, _ = backend.loss_grad(x0, ct, "prob", inputs=extra, transform=to_model)
        level = p0 - tolerance
        x = x0.clone()
        shape = (-1, *([1] * (x0.dim() - 1)))
        for _ in range(steps):
            check()
            p, g = backend.loss_grad(x, ct, "prob", inputs=extra, transform=to_model)
            gf = g.reshape(len(g), -1)
            gg = (gf * gf).sum(1).clamp_min(1e-30)
            # back onto the level set where confidence dropped (first-order Newton step along g)
            low = p < level
            corr = torch.where(low, (level - p) / gg, torch.zeros_like(p)).reshape(shape)
            d = (xt - x).reshape(len(x), -1)
            d_perp = d - ((d * gf).sum(1) / gg).reshape(-1, 1) * gf
            x = x + step_size * d_perp.reshape(x.shape) + corr * g
            if clip is not None:
                x = x.clamp(*clip)
        xs.append(x.detach().cpu().numpy())
    return np.concatenate(xs)
