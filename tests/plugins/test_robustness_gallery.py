"""The example galleries: the Square Attack's adversarial examples and the fooling inputs of an image model are
stored small in report.json (outside the metrics) and shown in the HTML report. Every image is decoded and
compared with the arrays it claims to show; every predicted class with a plain ONNX Runtime session; the page is
laid out in headless Chromium."""

from __future__ import annotations

import base64
import hashlib
import html as htmllib
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from robustness_helpers import audit, cnn_numpy_probs, images, save, tiny_cnn

from auditor import CheckResult
from auditor.gallery import (
    MAX_EXAMPLES,
    MAX_SIDE,
    Example,
    Gallery,
    adversarial_gallery,
    encode_png,
)
from auditor.plugins import build_registry
from auditor.report.html import HtmlReporter
from auditor.results import AuditReport, MalformedResult, validate_result

PIL = pytest.importorskip("PIL.Image")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def decode(png: bytes) -> np.ndarray:
    """A PNG read back with Pillow, as (H, W, C) uint8."""
    img = np.asarray(PIL.open(io.BytesIO(png)))
    return img[:, :, None] if img.ndim == 2 else img


def u8(x_chw: np.ndarray, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """The expected 8-bit rendering of a (C, H, W) image with [lo, hi] -> 0..255 (numpy, float64)."""
    v = np.clip(np.round((x_chw.astype(np.float64) - lo) / (hi - lo) * 255), 0, 255)
    return v.astype(np.uint8).transpose(1, 2, 0)


@pytest.fixture(scope="module")
def gallery_audit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("gallery")
    x = images(40)
    model = tiny_cnn(tmp / "m.onnx", gain=6.0)
    y = cnn_numpy_probs(model, x).argmax(1)
    checks = [{"use": "robustness.square_attack", "with": {"eps": 0.05, "max_queries": 200, "examples": 3}},
              {"use": "robustness.fooling", "with": {"n_noise": 50, "generations": 5, "examples": 2}}]
    res = audit(tmp, checks, model, save(tmp, "d.npz", x=x, y=y))
    doc = json.loads(res.report.to_json())
    page = HtmlReporter().render(AuditReport.from_dict(doc), build_registry().pm)
    return {"tmp": tmp, "x": x, "y": y, "model": model, "res": res, "doc": doc, "page": page, "checks": checks}


def _json_check(doc: dict[str, Any], use: str) -> dict[str, Any]:
    return next(c for c in doc["checks"] if c["use"] == use)


def test_adversarial_images_are_the_original_the_perturbed_input_and_their_difference(gallery_audit: Any) -> None:
    g = gallery_audit
    x, y, model = g["x"], g["y"], g["model"]
    check = g["res"].check("robustness.square_attack")
    art = check.artifacts
    rows, adv = art["rows"], art["adversarial_examples"]
    gal = AuditReport.from_dict(g["doc"]).check("robustness.square_attack").gallery  # read back from report.json
    assert gal is not None and gal.kind == "adversarial" and gal.total == len(rows) == round(
        check.metrics["success_rate"] * check.metrics["n_attacked"])
    assert [e.row for e in gal.examples] == list(rows[:3])  # the first successes in sample order
    p_clean = cnn_numpy_probs(model, x[rows[:3]])
    p_adv = cnn_numpy_probs(model, adv[:3])
    for i, e in enumerate(gal.examples):
        assert list(e.images) == ["original", "perturbed", "difference"]
        assert np.array_equal(decode(e.images["original"]), u8(x[e.row]))
        assert np.array_equal(decode(e.images["perturbed"]), u8(adv[i]))
        d = adv[i].astype(np.float64) - x[e.row].astype(np.float64)
        s = np.abs(d).max()
        assert e.values["difference_scale"] == pytest.approx(s) and 0 < s <= 0.05 + 1e-7
        want = np.clip(np.round(128 + 127 * d / s), 0, 255).astype(np.uint8).transpose(1, 2, 0)
        assert np.array_equal(decode(e.images["difference"]), want)
        assert e.values["linf"] == pytest.approx(s)
        # the classes under the images are the model's, read by an independent session
        assert e.label == str(y[e.row]) == e.predicted["original"] == str(p_clean[i].argmax())
        assert e.predicted["perturbed"] == str(p_adv[i].argmax()) != e.label
        assert e.confidence["original"] == pytest.approx(p_clean[i].max(), abs=1e-5)
        assert e.confidence["perturbed"] == pytest.approx(p_adv[i].max(), abs=1e-5)


def test_fooling_gallery_shows_the_evolved_inputs_with_their_classes(gallery_audit: Any) -> None:
    g = gallery_audit
    c = AuditReport.from_dict(g["doc"]).check("robustness.fooling")
    gal = c.gallery
    assert gal is not None and gal.kind == "fooling" and len(gal.examples) == 2 and gal.total == 4
    for e in gal.examples:
        img = decode(e.images["evolved"])
        assert img.shape == (8, 8, 3)
        # the image is an input in [0, 1]: the model's answer on it is what the card says
        xin = (img.astype(np.float32) / 255).transpose(2, 0, 1)[None]
        p = cnn_numpy_probs(g["model"], xin)[0]
        assert e.predicted["evolved"] == str(p.argmax())
        assert e.confidence["evolved"] == pytest.approx(p.max(), abs=0.02)  # 8-bit rounding of the input
        # the metric is the confidence in the class evolved for: the top one when the model predicts it
        in_class = c.metrics["per_class"][e.label]["evolved"]
        top = e.confidence["evolved"]
        assert in_class == top if e.predicted["evolved"] == e.label else in_class < top
    assert [e.label for e in gal.examples] == ["0", "1"]


def test_gallery_stays_out_of_the_metrics_and_does_not_change_them(gallery_audit: Any) -> None:
    g = gallery_audit
    sq = _json_check(g["doc"], "robustness.square_attack")
    assert "gallery" in sq and not any("gallery" in k or "examples" in k for k in sq["metrics"])
    none = [dict(c, **{"with": {**c["with"], "examples": 0}}) for c in g["checks"]]
    other = audit(g["tmp"], none, g["model"], g["tmp"] / "d.npz")
    for use in ("robustness.square_attack", "robustness.fooling"):
        a, b = dict(g["res"].metrics(use)), dict(other.metrics(use))
        a.pop("duration_s", None), b.pop("duration_s", None)
        assert a == b  # same numbers with or without a gallery (the attack's randomness is untouched)
        assert other.check(use).gallery is None
        assert "gallery" not in _json_check(json.loads(other.report.to_json()), use)
    # small: 3 examples of 3 panels of 8x8 RGB
    assert len(json.dumps(sq["gallery"])) < 20_000


def test_the_page_shows_every_gallery_image(gallery_audit: Any) -> None:
    g = gallery_audit
    page = g["page"]
    for use in ("robustness.square_attack", "robustness.fooling"):
        gal = _json_check(g["doc"], use)["gallery"]
        for e in gal["examples"]:
            for name, b64 in e["images"].items():
                assert f'src="data:image/png;base64,{b64}"' in page, (use, name)
            for name, cls in e["predicted"].items():
                assert f"predicted {cls} ({e['confidence'][name]:.3g})" in page
    assert page.count('class="example"') == 5
    assert "the first 3 successful examples in sample order" in page


def test_examples_are_picked_in_sample_order_across_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the merge takes the first successes by shard (= sample) order, so a cluster with any number of workers
    # picks the same ones: shards of 5 rows, 3 examples from the first shards that have any
    from auditor_robustness.square import SquareAttack

    from auditor.shards import RowShards

    monkeypatch.setattr(SquareAttack, "shards", RowShards(rows=5))
    x = images(30, seed=3)
    model = tiny_cnn(tmp_path / "m.onnx", gain=6.0)
    y = cnn_numpy_probs(model, x).argmax(1)
    res = audit(tmp_path, [{"use": "robustness.square_attack", "with": {"eps": 0.03, "max_queries": 60,
                                                                        "examples": 5}}],
                model, save(tmp_path, "d.npz", x=x, y=y))
    c = res.check("robustness.square_attack")
    rows = list(c.artifacts["rows"])
    assert len(rows) >= 5 and rows[4] >= 5  # the five span more than one shard
    assert [e.row for e in c.gallery.examples] == rows[:5]


def test_torch_pgd_gallery_shows_its_adversarial_examples(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from auditor.testing import run_audit

    x = images(24, seed=1)
    model = tiny_cnn(tmp_path / "m.onnx", gain=6.0, layout="NHWC")
    xh = x.transpose(0, 2, 3, 1)
    y = cnn_numpy_probs(model, xh).argmax(1)
    res = run_audit({"model": {"path": str(model)}, "data": {"path": str(save(tmp_path, "d.npz", x=xh, y=y)), "y": "y"},
                     "checks": [{"use": "torch.pgd", "with": {"eps": 0.08, "clip": [0, 1], "examples": 2}}]},
                    workdir=tmp_path, disable=["bias", "sparsity", "transfer"])
    assert res.report is not None, res.error
    c = res.check("torch.pgd")
    adv, rows = c.artifacts["adversarial_examples"], c.artifacts["rows"]
    gal = AuditReport.from_dict(json.loads(res.report.to_json())).check("torch.pgd").gallery
    assert gal is not None and len(gal.examples) == 2 and gal.total == len(rows) > 2
    p_adv = cnn_numpy_probs(model, adv[:2])
    for i, e in enumerate(gal.examples):
        assert e.row == rows[i]
        assert np.array_equal(decode(e.images["original"]), u8(x[e.row]))  # NHWC model, shown as an image
        assert np.array_equal(decode(e.images["perturbed"]), u8(adv[i].transpose(2, 0, 1)))
        assert e.predicted["original"] == e.label == str(y[e.row])
        assert e.predicted["perturbed"] == str(p_adv[i].argmax()) != e.label
        assert e.values["linf"] == pytest.approx(np.abs(adv[i] - xh[e.row]).max()) and e.values["linf"] <= 0.08 + 1e-6
    page = HtmlReporter().render(res.report, build_registry().pm)
    assert page.count('class="example"') == 2


def test_large_images_are_downsampled_by_block_means() -> None:
    r = np.random.default_rng(0)
    x = r.random((2, 3, 150, 130)).astype(np.float32)
    adv = np.clip(x + r.choice([-0.03, 0.03], x.shape), 0, 1).astype(np.float32)
    g = adversarial_gallery(x, adv, layout="NCHW", labels=[1, 2], predicted=[1, 2], confidence=[0.9, 0.8],
                            predicted_adv=[0, 0], confidence_adv=[0.6, 0.7], value_range=(0.0, 1.0), k=2)
    assert g is not None
    f = 3  # ceil(150 / 64)
    blocks = x[:, :, :150 // f * f, :130 // f * f].astype(np.float64).reshape(2, 3, 50, f, 43, f).mean(axis=(3, 5))
    img = decode(g.examples[0].images["original"])
    assert img.shape == (50, 43, 3) and max(img.shape) <= MAX_SIDE
    assert np.array_equal(img, u8(blocks[0]))
    assert any("downsampled 3x" in n for n in g.notes)
    # NHWC inputs give the same images; feature rows give no gallery
    h = adversarial_gallery(x.transpose(0, 2, 3, 1), adv.transpose(0, 2, 3, 1), layout="NHWC", labels=[1, 2],
                            predicted=[1, 2], confidence=[0.9, 0.8], predicted_adv=[0, 0], confidence_adv=[0.6, 0.7],
                            value_range=(0.0, 1.0), k=2)
    assert h is not None and h.to_dict() == g.to_dict()
    assert adversarial_gallery(x[:, 0, 0], adv[:, 0, 0], layout=None, labels=[1, 2], predicted=[1, 2],
                               confidence=[1, 1], predicted_adv=[0, 0], confidence_adv=[1, 1]) is None


def test_a_plugins_gallery_over_the_caps_is_a_malformed_result() -> None:
    png = encode_png(np.zeros((4, 4), np.uint8))
    assert decode(png).shape == (4, 4, 1)
    ok = Gallery(kind="x", title="t", examples=[Example(images={"a": png})], total=1)
    assert validate_result(CheckResult(gallery=ok)).gallery == ok
    too_many = Gallery(kind="x", title="t", examples=[Example(images={"a": png})] * (MAX_EXAMPLES + 1), total=9)
    big = Gallery(kind="x", title="t", examples=[Example(images={"a": encode_png(np.zeros((80, 8), np.uint8))})],
                  total=1)
    not_png = Gallery(kind="x", title="t", examples=[Example(images={"a": b"GIF89a"})], total=1)
    for bad, msg in ((too_many, "at most 8"), (big, "at most 64 a side"), (not_png, "is not a PNG"),
                     ({"examples": []}, "not an auditor.gallery.Gallery")):
        with pytest.raises(MalformedResult, match=msg):
            validate_result(CheckResult(gallery=bad))  # type: ignore[arg-type]


PROBE = """window.__e = [];
window.addEventListener('error', function (e) { window.__e.push(String(e.message || e.type)); }, true);
window.addEventListener('load', function () {
  var w = document.documentElement.clientWidth, wide = [], imgs = [];
  function clipped(el) {  // inside a box that scrolls or clips its content (that box itself is checked)
    for (var p = el.parentElement; p && p !== document.body; p = p.parentElement) {
      if (getComputedStyle(p).overflowX !== 'visible') { return true; }
    }
    return false;
  }
  document.querySelectorAll('body *').forEach(function (el) {
    if (clipped(el)) { return; }
    var r = el.getBoundingClientRect();
    if (r.right > w + 1 || r.left < -1) { wide.push(el.tagName + '.' + el.className + ' ' + Math.round(r.width)); }
  });
  // text can stick out of its element (a long path in a note): measure the text runs themselves
  var walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walk.nextNode()) {
    var range = document.createRange(); range.selectNodeContents(walk.currentNode);
    var t = range.getBoundingClientRect();
    if (!clipped(walk.currentNode) && (t.right > w + 1 || t.left < -1)) {
      wide.push('text ' + walk.currentNode.textContent.slice(0, 60));
    }
  }
  document.querySelectorAll('.gallery img').forEach(function (im) {
    imgs.push([im.complete && im.naturalWidth > 0, im.naturalWidth, Math.round(im.getBoundingClientRect().width)]);
  });
  var g = document.querySelector('.gallery').getBoundingClientRect();
  var out = document.createElement('pre'); out.id = 'probe';
  out.textContent = JSON.stringify({wide: wide, errors: window.__e, width: w, imgs: imgs,
                                    gallery: [g.left, g.top, g.right, g.bottom],
                                    scroll: document.documentElement.scrollWidth});
  document.body.appendChild(out);
});"""


def _chromium(tmp: Path, page: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
           "--disable-background-networking", f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr",
           "--virtual-time-budget=3000", *extra, page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, env={**os.environ, "HOME": str(tmp)})


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_chromium_gallery_layout_fits_the_window_and_images_decode(gallery_audit: Any, tmp_path: Path) -> None:
    page = gallery_audit["page"]
    # the test copy only: the policy allows this one script (by its hash) and nothing else inline
    digest = base64.b64encode(hashlib.sha256(PROBE.encode()).digest()).decode()
    hooked = page.replace("script-src 'unsafe-inline'", f"script-src 'sha256-{digest}'", 1)
    hooked = hooked.replace("<head>", f"<head><script>{PROBE}</script>", 1)
    # the probe is not blind: one text run made to stick out is the only thing it may find
    canary = '<p style="white-space:nowrap">canary-' + "x" * 200 + "</p>"
    out = tmp_path / "page.html"
    out.write_text(hooked.replace("</main>", canary + "</main>", 1))
    # 500 px: the narrowest window headless Chromium draws
    r = _chromium(tmp_path, out, "--window-size=500,3000", "--dump-dom")
    m = re.search(r'<pre id="probe">([^<]*)</pre>', r.stdout)
    assert m, r.stderr[-2000:]
    probe = json.loads(htmllib.unescape(m.group(1)))
    assert probe["errors"] == [] and [w.split("-")[0] for w in probe["wide"]] == ["text canary"], probe["wide"]
    console = [ln for ln in r.stderr.splitlines() if "CONSOLE" in ln or "Refused" in ln]
    assert console == []
    assert len(probe["imgs"]) == 3 * 3 + 2 and all(ok and nat == 8 and shown > 8 for ok, nat, shown in probe["imgs"])
    # a screenshot of the same page: where the probe saw the gallery, the images' pixels are drawn
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, out, "--window-size=500,3000", f"--screenshot={shot}")
    img = np.asarray(PIL.open(shot).convert("RGB"))
    left, top, right, bottom = (round(v) for v in probe["gallery"])
    assert img.shape[:2] == (3000, 500) and 0 <= left < right <= 500 and 0 <= top < bottom <= 3000
    region = img[top:bottom, left:right].reshape(-1, 3)
    assert len(np.unique(region, axis=0)) > 100  # noisy 8-bit RGB images, not blank cards


def test_a_third_party_checks_gallery_is_shown_without_a_renderer(tmp_path: Path) -> None:
    import types

    from auditor import Check, hookimpl
    from auditor.testing import run_audit

    img = (np.arange(48, dtype=np.uint8).reshape(4, 4, 3) * 5)

    class Shows(Check):
        """Returns a one-image gallery."""

        name = "shows.one"
        needs = frozenset()

        def run(self, ctx: Any, params: Any = None) -> CheckResult:
            g = Gallery(kind="custom", title="one image", total=1,
                        examples=[Example(images={"input": encode_png(img)}, predicted={"input": "cat"},
                                          confidence={"input": 0.5})])
            return CheckResult(metrics={"n": 1}, gallery=g)

    plugin = types.ModuleType("shows_plugin")
    plugin.auditor_register_checks = hookimpl(lambda: [Shows])  # type: ignore[attr-defined]
    res = run_audit({"checks": [{"use": "shows.one"}]}, model=tiny_cnn(tmp_path / "m.onnx"), plugins=[plugin],
                    workdir=tmp_path, disable=["bias", "sparsity", "transfer", "torch"])
    assert res.report is not None, res.error
    page = HtmlReporter().render(AuditReport.from_dict(json.loads(res.report.to_json())), build_registry().pm)
    src = re.search(r'<img src="data:image/png;base64,([^"]+)"', page)
    assert src and np.array_equal(decode(base64.b64decode(src.group(1))), img)
    assert "predicted cat (0.5)" in page and "<h3>one image</h3>" in page


def test_blind_spot_gallery_shows_source_point_reached_and_target_in_pair_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from auditor_robustness.blind_spots import BlindSpots

    from auditor.shards import RowShards

    x = images(40, seed=2)
    model = tiny_cnn(tmp_path / "m.onnx")
    p = cnn_numpy_probs(model, x)
    y = p.argmax(1)
    checks = [{"use": "robustness.blind_spots", "with": {"pairs": 30, "random_directions": 0, "conf_tol": 0.1,
                                                         "alpha_threshold": 0.3, "examples": 3}}]
    data = save(tmp_path, "d.npz", x=x, y=y)
    res = audit(tmp_path, checks, model, data)
    c = res.check("robustness.blind_spots")
    gal = AuditReport.from_dict(json.loads(res.report.to_json())).check("robustness.blind_spots").gallery
    assert gal is not None and gal.kind == "blind_spots" and len(gal.examples) == 3
    assert gal.total == round(c.metrics["blind_spot_rate"] * c.metrics["n_pairs"])
    for e in gal.examples:
        src = decode(e.images["source"])
        assert e.row is not None and np.array_equal(src, u8(x[e.row]))
        # the target is a sample of another class, the point reached lies alpha of the way to it
        tgt = decode(e.images["target"])
        t = [i for i in range(len(x)) if np.array_equal(tgt, u8(x[i]))]
        assert len(t) == 1 and y[t[0]] != y[e.row]
        a = e.values["alpha"]
        assert a >= 0.3
        reached = x[e.row].astype(np.float64) + a * (x[t[0]].astype(np.float64) - x[e.row])
        assert np.abs(decode(e.images["reached"]).astype(int) - u8(reached).astype(int)).max() <= 1
        # the model's answers, read independently: the class held within conf_tol at the point reached
        pr = cnn_numpy_probs(model, reached[None])[0]
        assert e.label == str(y[e.row]) == e.predicted["source"] == e.predicted["reached"] == str(pr.argmax())
        assert abs(pr[y[e.row]] - p[e.row, y[e.row]]) <= 0.1 + 1e-6
        assert e.confidence["reached"] == pytest.approx(pr.max(), abs=1e-5)
        assert e.predicted["target"] == str(y[t[0]])
        assert e.confidence["source"] == pytest.approx(p[e.row].max(), abs=1e-5)
    # the same examples whatever the sharding; metrics unchanged without the gallery
    monkeypatch.setattr(BlindSpots, "shards", RowShards(rows=4))
    small = audit(tmp_path, checks, model, data)
    assert small.check("robustness.blind_spots").gallery.to_dict() == gal.to_dict()
    none = audit(tmp_path, [{**checks[0], "with": {**checks[0]["with"], "examples": 0}}], model, data)
    assert none.check("robustness.blind_spots").gallery is None
    a_, b_ = dict(c.metrics), dict(none.metrics("robustness.blind_spots"))
    a_.pop("duration_s", None), b_.pop("duration_s", None)
    assert a_ == b_
