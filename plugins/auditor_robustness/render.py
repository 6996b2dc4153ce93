"""The HTML sections of the robustness checks that show inputs: the Square Attack's adversarial examples
(original, perturbed, difference, with the predicted classes) and the fooling inputs, above the generic plots
of the other metrics."""

from __future__ import annotations

from auditor import CheckReport
from auditor.report.gallery import gallery_section

#: The checks of this plugin that store a gallery.
GALLERY_CHECKS = ("robustness.square_attack", "robustness.fooling")


def render(check: CheckReport, fmt: str) -> str | None:
    """The gallery and the generic plots for this plugin's gallery checks in HTML; ``None`` otherwise."""
    if fmt != "html" or check.use not in GALLERY_CHECKS or check.gallery is None:
        return None
    return gallery_section(check)
