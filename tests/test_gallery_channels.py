"""Galleries show images in true colours whatever the declared preprocessing: a BGR model's inputs are shown
with red and blue back in place, an NHWC model's as images, a grey (``L``) model's in grey. Every panel is
compared with an independent numpy rendering of the source image file (read back with Pillow, preprocessed and
normalised here with numpy, not with the tool's code)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from image_helpers import write_cnn, write_images

from auditor.gallery import blind_spot_gallery, canonical_images, input_gallery
from auditor.testing import run_audit

Image = pytest.importorskip("PIL.Image")

MEAN, STD = [0.40, 0.50, 0.60], [0.20, 0.25, 0.30]


def decode(png: bytes) -> np.ndarray:
    img = np.asarray(Image.open(io.BytesIO(png)))
    return img[:, :, None] if img.ndim == 2 else img


def source_rgb(path: Path, channels: str) -> np.ndarray:
    """(H, W, C) uint8 as a person sees the file: RGB, or grey by ITU-R 601 luma in Pillow's fixed point."""
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
    if channels != "L":
        return rgb.astype(np.uint8)
    luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
    return luma.astype(np.uint8)[:, :, None]


def model_input(rgb: np.ndarray, channels: str, layout: str, mean: list[float], std: list[float]) -> np.ndarray:
    """The model input of one (H, W, C) image under the recipe (numpy, independently of the tool)."""
    px = rgb[..., ::-1] if channels == "BGR" else rgb
    x = (px.astype(np.float64) / 255 - np.asarray(mean)) / np.asarray(std)
    return (x.transpose(2, 0, 1) if layout == "NCHW" else x).astype(np.float32)


@pytest.mark.parametrize(("layout", "channels"), [("NCHW", "BGR"), ("NHWC", "BGR"), ("NHWC", "L")])
def test_square_attack_gallery_shows_the_source_images_in_true_colours(tmp_path: Path, layout: str,
                                                                      channels: str) -> None:
    c = 1 if channels == "L" else 3
    mean, std = MEAN[:c], STD[:c]
    files = write_images(tmp_path / "img", {"a": 8, "b": 8, "c": 8}, size=(16, 16), seed=5)
    w = write_cnn(tmp_path / "m.onnx", c=c, layout=layout, denorm=(mean, std), seed=5 if c == 1 else 0)
    srcs = [source_rgb(f, channels) for f in files]
    # labels: the model's own answers (GAP -> Gemm of the un-normalised pixels in the model's channel order)
    feats = np.stack([(s[..., ::-1] if channels == "BGR" else s).reshape(-1, c).mean(0) / 255 for s in srcs])
    y = (feats @ w["W"].astype(np.float64) + w["b"]).argmax(1)
    (tmp_path / "m.csv").write_text("file,label\n" + "".join(f"{f},{v}\n" for f, v in zip(files, y)))
    res = run_audit({"model": {"path": str(tmp_path / "m.onnx"), "device": "cpu"}, "seed": 0,
                     "data": {"path": str(tmp_path / "m.csv"), "images": "file", "y": "label",
                              "preprocess": {"channels": channels, "layout": layout, "mean": mean, "std": std}},
                     "checks": [{"use": "robustness.square_attack",
                                 "with": {"eps": 0.3, "max_queries": 300, "examples": 3}},
                                {"use": "robustness.blind_spots",
                                 "with": {"pairs": 20, "random_directions": 0, "alpha_threshold": 0, "conf_tol": 1,
                                          "examples": 2}}]},
                    workdir=tmp_path, disable=["bias", "sparsity", "transfer", "torch"])
    assert res.report is not None, res.error
    check = res.check("robustness.square_attack")
    gal = check.gallery
    assert gal is not None and len(gal.examples) >= 2, (check.metrics, np.bincount(y))
    adv = check.artifacts["adversarial_examples"]  # model inputs (normalised, the model's channel order and layout)
    for i, e in enumerate(gal.examples):
        assert e.row is not None
        src = srcs[e.row]
        shown = decode(e.images["original"])
        assert np.array_equal(shown, src)  # the file's own colours, pixel for pixel
        # the perturbed panel: the adversarial model input un-normalised, back to RGB, with numpy
        a = adv[i].astype(np.float64)
        a = a.transpose(1, 2, 0) if layout == "NCHW" else a
        px = a * np.asarray(std) + np.asarray(mean)
        px = px[..., ::-1] if channels == "BGR" else px
        want = np.clip(np.rint(px * 255), 0, 255)
        got = decode(e.images["perturbed"]).astype(np.float64)
        assert got.shape == src.shape and np.abs(got - want).max() <= 1  # float32 inputs: at most one level off
        assert np.mean(got == want) > 0.95
        # and it is the source moved within the budget (eps 0.3 of the pixel range), channel by channel
        assert np.abs(px - src / 255).max() <= 0.3 + 1e-5
        x0 = model_input(src, channels, layout, mean, std).astype(np.float64)
        assert np.abs(adv[i] - x0).max() > 1e-3  # a perturbed input, not the clean one
    if channels == "BGR":
        assert any("reversed from the model's BGR order to RGB" in n for n in gal.notes)
        assert not np.array_equal(decode(gal.examples[0].images["original"]), srcs[gal.examples[0].row][..., ::-1])
    assert not any("channel order not declared" in n for n in gal.notes)
    # the blind spots (threshold 0: the first pairs) show source and target files in their own colours
    spots = res.check("robustness.blind_spots").gallery
    assert spots is not None and spots.examples
    for e in spots.examples:
        assert e.row is not None and np.array_equal(decode(e.images["source"]), srcs[e.row])
        assert any(np.array_equal(decode(e.images["target"]), s) for s in srcs)


def test_canonical_images_reads_layout_and_channel_order() -> None:
    r = np.random.default_rng(0)
    rgb = r.random((2, 3, 4, 5))
    bgr_nhwc = rgb[:, ::-1].transpose(0, 2, 3, 1)
    out = canonical_images(bgr_nhwc, "NHWC", "BGR")
    assert out is not None and np.array_equal(out, rgb)
    assert np.array_equal(canonical_images(rgb, "NCHW"), rgb)  # undeclared: as stored
    assert canonical_images(rgb, "NCHW", "L") is None  # three channels are not grey
    assert canonical_images(rgb[:, :1], "NCHW", "BGR") is None
    assert canonical_images(rgb.reshape(2, -1), None) is None


def test_blind_spot_and_input_galleries_show_bgr_nhwc_batches_in_rgb() -> None:
    r = np.random.default_rng(1)
    src, tgt = r.random((3, 3, 6, 6)), r.random((3, 3, 6, 6))  # canonical RGB in [0, 1]
    alpha = np.array([0.5, 0.75, 0.9])
    reached = src + alpha[:, None, None, None] * (tgt - src)

    def model_order(a: np.ndarray) -> np.ndarray:  # RGB NCHW -> the model's BGR NHWC
        return a[:, ::-1].transpose(0, 2, 3, 1)

    def u8(a: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(a * 255), 0, 255).astype(np.uint8).transpose(1, 2, 0)

    g = blind_spot_gallery(model_order(src), model_order(reached), model_order(tgt), layout="NHWC", channels="BGR",
                           predicted={"source": [0, 1, 2], "reached": [0, 1, 2], "target": [1, 2, 0]},
                           confidence={"source": [0.9, 0.8, 0.7], "reached": [0.88, 0.79, 0.71]},
                           labels=[0, 1, 2], rows=[4, 7, 9], values={"alpha": alpha}, value_range=(0.0, 1.0),
                           classes=["cat", "dog", "owl"], total=5, k=2)
    assert g is not None and g.kind == "blind_spots" and g.total == 5 and len(g.examples) == 2
    for i, e in enumerate(g.examples):
        assert list(e.images) == ["source", "reached", "target"]
        for name, want in (("source", src), ("reached", reached), ("target", tgt)):
            assert np.array_equal(decode(e.images[name]), u8(want[i]))
        assert e.row == [4, 7][i] and e.label == ["cat", "dog"][i] and e.values == {"alpha": alpha[i]}
        assert e.predicted == {"source": ["cat", "dog"][i], "reached": ["cat", "dog"][i],
                               "target": ["dog", "owl"][i]}
        assert e.confidence["reached"] == [0.88, 0.79][i] and "target" not in e.confidence
    assert any("reversed from the model's BGR order" in n for n in g.notes)
    f = input_gallery(model_order(src), layout="NHWC", channels="BGR", predicted=[0, 1, 2],
                      confidence=[0.5, 0.5, 0.5], k=1, value_range=(0.0, 1.0))
    assert f is not None and np.array_equal(decode(f.examples[0].images["input"]), u8(src[0]))
    plain = input_gallery(src, layout="NCHW", predicted=[0, 1, 2], confidence=[0.5, 0.5, 0.5], k=1)
    assert plain is not None and any("channel order not declared" in n for n in plain.notes)


def test_torch_pgd_gallery_shows_a_bgr_model_s_images_in_true_colours(tmp_path: Path) -> None:
    """torch.pgd attacks in pixel space: its 'original' panels are the files' own RGB pixels, not the model's BGR."""
    pytest.importorskip("torch")
    mean, std = MEAN, STD
    files = write_images(tmp_path / "img", {"a": 6, "b": 6}, size=(16, 16), seed=3)
    write_cnn(tmp_path / "m.onnx", c=3, layout="NCHW", denorm=(mean, std), seed=0)
    srcs = [source_rgb(f, "BGR") for f in files]
    (tmp_path / "m.csv").write_text("file,label\n" + "".join(f"{f},0\n" for f in files))
    res = run_audit({"model": {"path": str(tmp_path / "m.onnx"), "device": "cpu"}, "seed": 0,
                     "data": {"path": str(tmp_path / "m.csv"), "images": "file", "y": "label",
                              "preprocess": {"channels": "BGR", "layout": "NCHW", "mean": mean, "std": std}},
                     "checks": [{"use": "torch.pgd", "with": {"eps": 0.5, "steps": 5, "examples": 3}}]},
                    workdir=tmp_path, disable=["bias", "sparsity", "transfer"])
    assert res.report is not None, res.error
    gal = res.check("torch.pgd").gallery
    assert gal is not None and gal.examples, res.check("torch.pgd").metrics
    assert any("reversed from the model's BGR order to RGB" in n for n in gal.notes)
    for e in gal.examples:
        assert e.row is not None and np.array_equal(decode(e.images["original"]), srcs[e.row])
