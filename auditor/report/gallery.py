"""HTML for a check's example gallery (:class:`auditor.gallery.Gallery`): one card per example with its images
side by side (original, perturbed, difference …) as inline ``data:`` PNGs (the page's policy allows those and
nothing else), the class the model predicts under each and its confidence.

Render hooks call :func:`gallery_html` for their own checks; the HTML reporter calls it for any check that has
a gallery and no renderer of its own. The cards wrap (flexbox) and the images scale down, so a gallery never
makes the page wider than the window.
"""

from __future__ import annotations

import base64
import html
from typing import TYPE_CHECKING

from auditor.gallery import Example, Gallery, png_size

if TYPE_CHECKING:
    from auditor.results import CheckReport

#: Width in CSS pixels each image is shown at (small inputs are enlarged with hard pixel edges).
SHOW_PX = 112

CSS = """
.gallery { display:flex; flex-wrap:wrap; gap:10px; margin:6px 0 10px; }
.example { border:1px solid var(--line, #d0d7de); border-radius:6px; padding:6px 8px; max-width:100%; }
.example .panels { display:flex; flex-wrap:wrap; gap:6px; }
.example figure { margin:0; width:""" + str(SHOW_PX) + """px; max-width:100%; }
.example img { display:block; width:100%; height:auto; image-rendering:pixelated; background:#f6f8fa; }
.example figcaption { font-size:11px; line-height:1.3; color:#424a53; overflow-wrap:anywhere; }
.example .head { font-size:12px; color:#59636e; margin-bottom:4px; overflow-wrap:anywhere; }
"""


def _esc(v: object) -> str:
    return html.escape(str(v), quote=True)


def _panel(e: Example, name: str, data: bytes) -> str:
    size = png_size(data) or (0, 0)
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    caption = [f"<strong>{_esc(name)}</strong>"]
    if name in e.predicted:
        conf = e.confidence.get(name)
        caption.append(f"predicted {_esc(e.predicted[name])}" + (f" ({conf:.3g})" if conf is not None else ""))
    elif name == "difference" and "difference_scale" in e.values:
        caption.append(f"±{e.values['difference_scale']:.3g} full scale")
    alt = f"{name}" + (f", predicted {e.predicted[name]}" if name in e.predicted else "")
    return (f'<figure class="panel" data-panel="{_esc(name)}"><img src="{uri}" alt="{_esc(alt)}" '
            f'width="{size[0]}" height="{size[1]}"><figcaption>{"<br>".join(caption)}</figcaption></figure>')


def example_html(e: Example) -> str:
    """One example's card."""
    head = []
    if e.row is not None:
        head.append(f"row {e.row}")
    if e.label is not None:
        head.append(f"class {_esc(e.label)}")
    head += [f"{_esc(k)} {v:.3g}" for k, v in e.values.items() if k != "difference_scale"]
    panels = "".join(_panel(e, name, data) for name, data in e.images.items())
    return (f'<div class="example"><div class="head">{" · ".join(head)}</div>'
            f'<div class="panels">{panels}</div></div>')


def gallery_html(g: Gallery | None) -> str:
    """The gallery as an HTML fragment (empty for ``None`` or a gallery without examples)."""
    if g is None or not g.examples:
        return ""
    shown = len(g.examples)
    title = f"{g.title}: {shown} of {g.total}" if g.total > shown else g.title
    notes = "".join(f"<li>{_esc(n)}</li>" for n in g.notes)
    cards = "".join(example_html(e) for e in g.examples)
    return (f'<div class="gallery-block" data-kind="{_esc(g.kind)}"><h3>{_esc(title)}</h3>'
            f'<div class="gallery">{cards}</div>'
            + (f'<ul class="meta gallery-notes">{notes}</ul>' if notes else "") + "</div>")


def gallery_section(check: CheckReport, can_plot: bool = True) -> str:
    """A check's gallery above the generic plots of its metrics: what a render hook returns for a check whose
    main figure is its examples (``robustness.square_attack``, ``torch.pgd``)."""
    from auditor.report.plots import generic_figures

    return gallery_html(check.gallery) + generic_figures(check.metrics, can_plot, baseline=check.baseline_metrics)
