"""Built-in plugin ``robustness``: a model's robustness audited through ONNX Runtime alone (forward passes, so
any framework's export): noise and corruption sweeps, the Square Attack, fooling inputs and blind spots.

Every check samples a large data set (``limit``, stratified by label, said in the report) and sends its queries
to the model in batches across samples.
"""

from __future__ import annotations

from auditor import Check, hookimpl
from auditor_robustness.blind_spots import BlindSpots
from auditor_robustness.fooling import Fooling
from auditor_robustness.noise import NoiseSweep
from auditor_robustness.square import SquareAttack

__version__ = "0.1.0"


@hookimpl
def auditor_register_checks() -> list[type[Check]]:
    """``robustness.noise``, ``robustness.square_attack``, ``robustness.fooling``, ``robustness.blind_spots``."""
    return [NoiseSweep, SquareAttack, Fooling, BlindSpots]
