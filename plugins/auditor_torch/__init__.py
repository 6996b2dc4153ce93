"""Built-in plugin ``torch``: an ONNX-to-torch interpreter that gives checks gradients, white-box attacks,
and retraining under other training rules.

torch is optional (``pip install 'onnx-auditor[torch]'``): this module imports it only when a check runs or
the backend is built. Without torch the checks stay listed and are skipped with a reason, and no ``torch``
backend is offered (gradient checks of other plugins are skipped with a reason too).

Other plugins can teach the interpreter more ops with :func:`register_op` (no torch needed to import it)::

    from auditor_torch import register_op

    @register_op("MyOp", domain="my.domain")
    def my_op(ctx, inputs):
        return inputs[0] * ctx.attr("alpha", 1.0)
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from typing import Any

from auditor import Check, SkipCheck, hookimpl
from auditor.hookspecs import GRADIENTS, offers
from auditor_torch.registry import UnsupportedOpError, register_op, supported_ops

__version__ = "0.1.0"
__all__ = ["UnsupportedOpError", "register_op", "supported_ops", "torch_available"]


def torch_available() -> bool:
    """Whether torch is installed (without importing it)."""
    if "torch" in sys.modules:
        return sys.modules["torch"] is not None  # None: import blocked on purpose
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


@offers(GRADIENTS)
def _factory(handle: Any) -> Any:
    try:
        from auditor_torch.backend import get_backend
    except ImportError as exc:  # installed but broken: the check says why instead of erroring
        raise SkipCheck(f"the torch backend needs torch, which cannot be imported ({exc})") from None
    try:
        return get_backend(handle)
    except UnsupportedOpError as exc:
        # A graph the interpreter cannot differentiate (a tree ensemble, a custom op) is outside what the
        # gradient checks can audit, not a failure of the model: skipped, with the ops named.
        raise SkipCheck(str(exc)) from None


@hookimpl
def auditor_register_backends() -> dict[str, Callable[..., Any]]:
    """``{"torch": factory}`` when torch is installed, else nothing."""
    return {"torch": _factory} if torch_available() else {}


@hookimpl
def auditor_register_checks() -> list[type[Check]]:
    """``torch.parity``, ``torch.pgd``, ``torch.blind_spots``, ``torch.input_gradients``, ``torch.retrain``."""
    from auditor_torch.checks import BlindSpots, InputGradients, Parity, Pgd, Retrain

    return [Parity, Pgd, BlindSpots, InputGradients, Retrain]
