"""The ONNX recurrent ops ``LSTM``, ``GRU`` and ``RNN`` (silero-vad, CRNN text recognisers, speech models), as
the operator specification defines them: gates in ONNX's order (LSTM ``i o f c``, GRU ``z r h``), both
directions, ``layout`` 0 (``[seq, batch, ...]``) and 1 (batch first), initial states, peepholes, ``clip``,
``input_forget``, GRU's ``linear_before_reset``, custom activations, and ``sequence_lens`` (steps past a
sequence's length leave its state unchanged and output zeros; the reverse direction reads each sequence from
its own last step). Steps are a loop over time only, every step batched over all samples, so gradients flow
through torch's autograd like any other op.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from auditor_torch.registry import UnsupportedOpError, register_op

if TYPE_CHECKING:
    from auditor_torch.interpreter import NodeContext

Act = Callable[[Tensor], Tensor]


#: The activations the recurrent ops name: ``fn(t, alpha, beta)`` with the spec's default alpha and beta.
_ACTIVATIONS: dict[str, tuple[Callable[[Tensor, float, float], Tensor], float, float]] = {
    "sigmoid": (lambda t, a, b: torch.sigmoid(t), 0.0, 0.0),
    "tanh": (lambda t, a, b: torch.tanh(t), 0.0, 0.0),
    "relu": (lambda t, a, b: torch.relu(t), 0.0, 0.0),
    "hardsigmoid": (lambda t, a, b: (a * t + b).clamp(0.0, 1.0), 0.2, 0.5),
    "leakyrelu": (lambda t, a, b: torch.nn.functional.leaky_relu(t, a), 0.01, 0.0),
    "affine": (lambda t, a, b: a * t + b, 1.0, 0.0),
    "scaledtanh": (lambda t, a, b: a * torch.tanh(b * t), 1.0, 1.0),
    "softsign": (lambda t, a, b: t / (1 + t.abs()), 0.0, 0.0),
    "softplus": (lambda t, a, b: torch.nn.functional.softplus(t), 0.0, 0.0),
    "elu": (lambda t, a, b: torch.nn.functional.elu(t, a), 1.0, 0.0),
}


def _activation(name: str, alpha: float | None, beta: float | None) -> Act:
    """One of the activation functions the recurrent ops name (with their ``activation_alpha/beta``)."""
    if name.lower() not in _ACTIVATIONS:
        raise UnsupportedOpError(f"recurrent activation {name!r} is not implemented")
    fn, a0, b0 = _ACTIVATIONS[name.lower()]
    a, b = (a0 if alpha is None else alpha), (b0 if beta is None else beta)
    return lambda t: fn(t, a, b)


def _activations(ctx: NodeContext, defaults: Sequence[str], dirs: int) -> list[list[Act]]:
    """Per direction, the op's activation functions (``activations`` lists them direction after direction)."""
    names = list(ctx.attr("activations") or [])  # strings (the interpreter decodes attributes)
    alphas = list(ctx.attr("activation_alpha") or [])
    betas = list(ctx.attr("activation_beta") or [])
    k = len(defaults)
    if not names:
        names = list(defaults) * dirs
    if len(names) != k * dirs:
        raise UnsupportedOpError(f"{ctx.node.op_type} '{ctx.name}': {len(names)} activations for {dirs} "
                                 f"direction(s) of {k}")
    acts = [_activation(n, alphas[i] if i < len(alphas) else None, betas[i] if i < len(betas) else None)
            for i, n in enumerate(names)]
    return [acts[d * k:(d + 1) * k] for d in range(dirs)]


def _by_length(x: Tensor, lengths: Tensor | None) -> Tensor:
    """``x [seq, batch, ...]`` with each sequence reversed within its own length (steps past it stay put)."""
    steps = x.shape[0]
    t = torch.arange(steps, device=x.device).reshape(-1, 1)
    if lengths is None:
        return x.flip(0)
    lens = lengths.to(torch.long).reshape(1, -1)
    idx = torch.where(t < lens, lens - 1 - t, t)  # [seq, batch]
    idx = idx.reshape(*idx.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(0, idx)


def _run(ctx: NodeContext, ins: list[Any], gates: int, defaults: Sequence[str],
         cell: Callable[..., tuple[Tensor, Tensor | None]], with_c: bool) -> list[Tensor]:
    """The shared frame of the three ops: layout, directions, initial states, sequence lengths, outputs."""
    x, w, r, b, lengths, h0, c0, peep = [*ins, *[None] * 8][:8]  # omitted optional inputs: None
    layout = int(ctx.attr("layout", 0))
    direction = str(ctx.attr("direction", "forward"))
    hidden = int(ctx.attr("hidden_size", 0) or r.shape[-1])
    clip = ctx.attr("clip")
    if layout == 1:
        x = x.transpose(0, 1)
        h0 = None if h0 is None else h0.transpose(0, 1)
        c0 = None if c0 is None else c0.transpose(0, 1)
    steps, batch = x.shape[0], x.shape[1]
    dirs = 2 if direction == "bidirectional" else 1
    acts = _activations(ctx, defaults, dirs)
    if lengths is not None and bool((lengths.to(torch.long) >= steps).all()):
        lengths = None  # every sequence is full length: no masking needed
    t_idx = torch.arange(steps, device=x.device).reshape(-1, 1)
    valid = None if lengths is None else (t_idx < lengths.to(torch.long).reshape(1, -1))  # [seq, batch]
    ys, hs, cs = [], [], []
    for d in range(dirs):
        reverse = direction == "reverse" or d == 1
        xd = _by_length(x, lengths) if reverse else x
        wd, rd = w[d], r[d]
        bd = b[d] if b is not None else torch.zeros(2 * gates * hidden, dtype=x.dtype, device=x.device)
        wb, rb = bd[:gates * hidden], bd[gates * hidden:]
        h = h0[d] if h0 is not None else torch.zeros(batch, hidden, dtype=x.dtype, device=x.device)
        c = (c0[d] if c0 is not None else torch.zeros(batch, hidden, dtype=x.dtype, device=x.device)) \
            if with_c else None
        pd = peep[d] if peep is not None else None
        xw = xd @ wd.T + wb  # every step's input projection at once: [seq, batch, gates*hidden]
        outs = []
        for t in range(steps):
            h_new, c_new = cell(xw[t], h, c, rd, rb, pd, acts[d], hidden, clip)
            if valid is not None:
                keep = valid[t].reshape(-1, 1)
                h_new = torch.where(keep, h_new, h)
                if c_new is not None and c is not None:
                    c_new = torch.where(keep, c_new, c)
                outs.append(torch.where(keep, h_new, torch.zeros_like(h_new)))
            else:
                outs.append(h_new)
            h, c = h_new, c_new
        y = torch.stack(outs)
        ys.append(_by_length(y, lengths) if reverse else y)
        hs.append(h)
        if c is not None:
            cs.append(c)
    y_all = torch.stack(ys, dim=1)  # [seq, dirs, batch, hidden]
    states = [torch.stack(hs), *([torch.stack(cs)] if with_c else [])]  # Y_h (and Y_c): [dirs, batch, hidden]
    if layout == 1:  # batch first
        return [y_all.permute(2, 0, 1, 3), *(t.transpose(0, 1) for t in states)]
    return [y_all, *states]


def _clip(t: Tensor, clip: Any) -> Tensor:
    return t if clip is None else t.clamp(-float(clip), float(clip))


@register_op("LSTM")
def _lstm(ctx: NodeContext, ins: list[Any]) -> list[Tensor]:
    forget_coupled = bool(int(ctx.attr("input_forget", 0)))

    def cell(xw: Tensor, h: Tensor, c: Tensor, r: Tensor, rb: Tensor, p: Tensor | None, acts: list[Act],
             hidden: int, clip: Any) -> tuple[Tensor, Tensor]:
        f, g, hact = acts
        z = xw + h @ r.T + rb
        zi, zo, zf, zc = z.split(hidden, dim=1)
        if p is not None:
            pi, po, pf = p.split(hidden)
            zi, zf = zi + pi * c, zf + pf * c
        i = f(_clip(zi, clip))
        fg = 1 - i if forget_coupled else f(_clip(zf, clip))
        c_new = fg * c + i * g(_clip(zc, clip))
        if p is not None:
            zo = zo + po * c_new
        o = f(_clip(zo, clip))
        return o * hact(c_new), c_new

    return _run(ctx, ins, 4, ("Sigmoid", "Tanh", "Tanh"), cell, with_c=True)


@register_op("GRU")
def _gru(ctx: NodeContext, ins: list[Any]) -> list[Tensor]:
    before_reset = bool(int(ctx.attr("linear_before_reset", 0)))

    def cell(xw: Tensor, h: Tensor, c: Tensor | None, r: Tensor, rb: Tensor, p: Tensor | None,
             acts: list[Act], hidden: int, clip: Any) -> tuple[Tensor, None]:
        f, g = acts
        xz, xr, xh = xw.split(hidden, dim=1)
        rz, rr, rh = r.split(hidden, dim=0)
        bz, br, bh = rb.split(hidden)
        z = f(_clip(xz + h @ rz.T + bz, clip))
        rt = f(_clip(xr + h @ rr.T + br, clip))
        if before_reset:
            cand = g(_clip(xh + rt * (h @ rh.T + bh), clip))
        else:
            cand = g(_clip(xh + (rt * h) @ rh.T + bh, clip))
        return (1 - z) * cand + z * h, None

    return _run(ctx, ins, 3, ("Sigmoid", "Tanh"), cell, with_c=False)


@register_op("RNN")
def _rnn(ctx: NodeContext, ins: list[Any]) -> list[Tensor]:
    def cell(xw: Tensor, h: Tensor, c: Tensor | None, r: Tensor, rb: Tensor, p: Tensor | None,
             acts: list[Act], hidden: int, clip: Any) -> tuple[Tensor, None]:
        return acts[0](_clip(xw + h @ r.T + rb, clip)), None

    return _run(ctx, ins, 1, ("Tanh",), cell, with_c=False)
