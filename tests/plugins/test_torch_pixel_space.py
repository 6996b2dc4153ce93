"""torch gradient methods in pixel space (issue #12). With declared preprocessing (``data.preprocess``),
torch.pgd / FGSM and torch.blind_spots work on un-normalised pixels in [0, 1], normalise after (the gradient
flows through the normalisation) and clip to [0, 1], so ``eps`` is in units of the pixel range as in the
papers. Checked on linear models over normalised pixels, where the optimal L∞ attack in pixel space and the
level set's projection are closed-form; the reports do not depend on the shard size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from builders import linear_image_model
from report_compare import assert_same

from auditor.testing import run_audit

pytest.importorskip("torch")

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
PRE = {"scale": 1 / 255, "mean": MEAN.tolist(), "std": STD.tolist()}
HW = 5  # 5x5 RGB images: 75 pixels
OTHERS = ["bias", "sparsity", "transfer", "robustness", "performance"]


def per_coordinate(v: np.ndarray) -> np.ndarray:
    """A per-channel vector broadcast over the flattened NCHW coordinates (channel-major)."""
    return np.repeat(v, HW * HW)


def stored_pixels(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Stored uint8 pixels (N, HW, HW, 3) and the flattened NCHW pixel values p = raw / 255."""
    raw = rng.integers(0, 256, (n, HW, HW, 3)).astype(np.uint8)
    return raw, raw.transpose(0, 3, 1, 2).reshape(n, -1).astype(np.float64) / 255


def audit(tmp: Path, checks: list[dict[str, Any]], raw: np.ndarray, y: np.ndarray | None,
          pre: dict[str, Any] | None = PRE, **extra: Any) -> Any:
    """One audit of ``m.onnx`` on the stored pixels (preprocessed per batch by ``pre``; None: none declared)."""
    np.savez(tmp / "d.npz", **({"x": raw} if y is None else {"x": raw, "y": y}))  # type: ignore[arg-type]
    data: dict[str, Any] = {"path": "d.npz"} if pre is None else {"path": "d.npz", "preprocess": pre}
    res = run_audit({"seed": 2, "checks": checks, "data": data, **extra}, model=tmp / "m.onnx", workdir=tmp,
                    disable=OTHERS)
    assert res.report is not None and res.exit_code == 0, res.error
    return res


def _binary_problem(tmp: Path, n: int, eps: float) -> dict[str, np.ndarray]:
    """A binary linear model on x = (p − mean) / std and the optimal L∞ attack of budget ``eps`` on each
    sample: its logit margin is m(p) = v·p + c with v = Δw / std per channel, so the worst point of
    [p − eps, p + eps] ∩ [0, 1] moves every pixel against sign(v) to the end of that interval."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((75, 2))
    b = np.array([0.0, -w[:, 1].sum() * 0.1])
    linear_image_model(tmp / "m.onnx", w, b)
    raw, p = stored_pixels(rng, n)
    sd, mu = per_coordinate(STD), per_coordinate(MEAN)
    z = ((p - mu) / sd) @ w + b
    y = z.argmax(1)
    y[:40] = 1 - y[:40]  # some are misclassified to begin with
    dw = np.where(y[:, None] == 1, w[:, 1] - w[:, 0], w[:, 0] - w[:, 1])  # margin gradient (model inputs)
    v = dw / sd  # ... and per pixel
    m = z[np.arange(n), y] - z[np.arange(n), 1 - y]
    best = np.where(v > 0, np.maximum(p - eps, 0), np.minimum(p + eps, 1))  # the optimal pixels
    m_adv = m - ((p - best) * v).sum(1)
    m_model = m - eps * np.abs(dw).sum(1)  # the same eps on the normalised inputs (unclipped)
    keep = (np.abs(m_adv) > 0.05) & (np.abs(m) > 0.05) & (np.abs(m_model) > 0.05)  # unambiguous outcomes
    return {"raw": raw[keep][:300], "x": ((p - mu) / sd)[keep][:300], "y": y[keep][:300], "m": m[keep][:300],
            "m_adv": m_adv[keep][:300], "best": best[keep][:300], "m_model": m_model[keep][:300]}


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_linf_attack_in_pixel_space_reaches_the_closed_form_optimum(tmp_path: Path, attack: str) -> None:
    """The attack flips exactly the samples whose optimal margin is negative, its adversarial pixels are the
    optimum (clipped to [0, 1]: pixels within eps of a bound end on it) and its L∞ is eps in pixel units —
    not the outcome of the same eps on the normalised inputs (eps / std ≈ 4.4 times fewer grey levels)."""
    eps = 8 / 255
    k = _binary_problem(tmp_path, 600, eps)
    res = audit(tmp_path, [{"use": "torch.pgd", "with": {"eps": eps, "attack": attack, "limit": 1000}}],
                k["raw"], k["y"])
    met = res.metrics("torch.pgd")
    clean, flip = k["m"] > 0, (k["m"] > 0) & (k["m_adv"] < 0)
    assert met["n"] == len(k["y"]) and 0 < flip.sum() < clean.sum()
    assert met["clean_accuracy"] == pytest.approx(clean.mean())
    assert met["success_rate"] == pytest.approx(flip.sum() / clean.sum())
    assert met["robust_accuracy"] == pytest.approx((clean & ~flip).mean())
    assert met["median_linf"] == pytest.approx(eps, rel=1e-4)  # pixel units
    assert met["torch_ort_disagreement"] == 0.0
    # the adversarial examples are model inputs; un-normalised they are the optimum, clipped to [0, 1]
    art = res.check("torch.pgd").artifacts
    x_adv = np.asarray(art["adversarial_examples"], np.float64).reshape(len(art["rows"]), -1)
    p_adv = x_adv * per_coordinate(STD) + per_coordinate(MEAN)
    np.testing.assert_allclose(p_adv, k["best"][art["rows"]], atol=2e-6)
    assert p_adv.min() > -2e-6 and p_adv.max() < 1 + 2e-6
    at_bound = (k["best"][art["rows"]] == 0) | (k["best"][art["rows"]] == 1)
    assert 0 < at_bound.mean() < 0.5  # clipping was active on some pixels
    notes = " ".join(res.check("torch.pgd").notes)
    assert "un-normalised pixel range [0, 1]" in notes and "through the normalisation" in notes
    if attack == "fgsm":  # the same eps on the normalised inputs (no data.preprocess): another, known answer
        model_in = k["x"].reshape(-1, 3, HW, HW).astype(np.float32)
        met = audit(tmp_path, [{"use": "torch.pgd", "with": {"eps": eps, "attack": "fgsm", "limit": 1000}}],
                    model_in, k["y"], None).metrics("torch.pgd")
        flip_model = clean & (k["m_model"] < 0)
        assert met["success_rate"] == pytest.approx(flip_model.sum() / clean.sum()) != flip.sum() / clean.sum()
        assert met["median_linf"] == pytest.approx(eps, rel=1e-4)


def test_pgd_clips_to_the_declared_pixel_range_and_says_so(tmp_path: Path) -> None:
    """``clip: [0.2, 0.8]`` in pixel units: every adversarial pixel lies inside, and a pixel the optimum would
    push past a bound ends on it."""
    eps = 8 / 255
    k = _binary_problem(tmp_path, 400, eps)
    res = audit(tmp_path, [{"use": "torch.pgd", "with": {"eps": eps, "attack": "fgsm", "clip": [0.2, 0.8]}}],
                k["raw"], k["y"])
    art = res.check("torch.pgd").artifacts
    rows = np.asarray(art["rows"])
    p_adv = np.asarray(art["adversarial_examples"], np.float64).reshape(len(rows), -1) * per_coordinate(STD) \
        + per_coordinate(MEAN)
    expected = np.clip(k["best"][rows], 0.2, 0.8)  # FGSM on a linear margin: the optimum, then the clip
    assert len(rows) > 0
    np.testing.assert_allclose(p_adv, expected, atol=2e-6)
    assert "pixels clipped to [0.2, 0.8]" in " ".join(res.check("torch.pgd").notes)


def test_fgsm_in_pixel_space_is_fgsm_done_by_hand(tmp_path: Path) -> None:
    """Four classes: FGSM is p' = clip(p + eps·sign(∇ₚ CE), 0, 1) with ∇ₚ CE = ((softmax(z) − onehot(y)) Wᵀ) / std
    by the chain rule through x = (p − mean) / std; numpy computes it and the predictions at p'."""
    rng = np.random.default_rng(1)
    eps = 4 / 255
    w = rng.standard_normal((75, 4)) * 0.5
    b = rng.standard_normal(4) * 0.1
    linear_image_model(tmp_path / "m.onnx", w, b)
    raw, p = stored_pixels(rng, 500)
    sd, mu = per_coordinate(STD), per_coordinate(MEAN)

    def logits(px: np.ndarray) -> np.ndarray:
        return ((px - mu) / sd) @ w + b

    z = logits(p)
    y = z.argmax(1)
    e = np.exp(z - z.max(1, keepdims=True))
    grad = ((e / e.sum(1, keepdims=True) - np.eye(4)[y]) @ w.T) / sd
    za = logits(np.clip(p + eps * np.sign(grad), 0, 1))
    top2 = np.sort(za, axis=1)
    keep = (top2[:, -1] - top2[:, -2] > 1e-3) & (np.abs(grad).min(1) > 1e-6)  # no ties in float32
    res = audit(tmp_path, [{"use": "torch.pgd", "with": {"eps": eps, "attack": "fgsm", "limit": 1000}}],
                raw[keep], y[keep])
    met = res.metrics("torch.pgd")
    fooled = za[keep].argmax(1) != y[keep]
    assert met["clean_accuracy"] == 1.0 and 0 < fooled.mean() < 1
    assert met["success_rate"] == pytest.approx(fooled.mean())
    assert met["robust_accuracy"] == pytest.approx(1 - fooled.mean())


def test_blind_spots_traverse_pixel_space(tmp_path: Path) -> None:
    """Binary linear model over normalised pixels: the level set of p_c is the hyperplane v·p = v·p_s in pixel
    space (v = Δw / std per channel), so traversal ends at the target's projection onto it:
    ‖p_T − p_t‖ = |v·(p_s − p_t)| / ‖v‖, distances in pixels. With unequal stds this is not the ratio the same
    traversal gives on the normalised inputs."""
    rng = np.random.default_rng(2)
    mean, std = np.array([0.5, 0.4, 0.3]), np.array([0.1, 0.5, 0.25])
    sd, mu = per_coordinate(std), per_coordinate(mean)
    w = rng.standard_normal((75, 2)) * 0.02  # moderate logits: float32 probabilities do not saturate
    dw = w[:, 1] - w[:, 0]
    b = np.array([0.0, -dw @ ((0.5 - mu) / sd)])  # the boundary through the middle of the pixel cube
    linear_image_model(tmp_path / "m.onnx", w, b)
    raw, p = stored_pixels(rng, 80)
    pre = {"scale": 1 / 255, "mean": mean.tolist(), "std": std.tolist()}
    checks = [{"use": "torch.blind_spots", "with": {"limit": 12, "steps": 30, "step_size": 0.4, "clip": [-10, 10]}}]
    res = audit(tmp_path, checks, raw, None, pre)
    art = res.check("torch.blind_spots").artifacts
    s, t = np.array(art["source_index"]), np.array(art["target_index"])
    v = dw / sd
    rel = np.abs((p[s] - p[t]) @ v) / np.linalg.norm(v) / np.linalg.norm(p[s] - p[t], axis=1)
    np.testing.assert_allclose(art["relative_distance"], rel, atol=1e-4)
    x_s, x_t = (p[s] - mu) / sd, (p[t] - mu) / sd
    rel_model = np.abs((x_s - x_t) @ dw) / np.linalg.norm(dw) / np.linalg.norm(x_s - x_t, axis=1)
    assert np.abs(rel_model - rel).max() > 1e-2  # the geometry of pixel space is not that of the model's inputs
    assert "distances in units of the un-normalised pixel range" in " ".join(res.check("torch.blind_spots").notes)


def test_pixel_space_pgd_does_not_depend_on_the_shards(tmp_path: Path) -> None:
    """PGD in pixel space draws each sample's random start from its own stream (one short step from it, so
    the start shows in the numbers): the report with shards of 37 rows is the report of one shard (local and
    Ray runs: tests/test_ray.py)."""
    k = _binary_problem(tmp_path, 600, 8 / 255)
    checks = [{"use": "torch.pgd", "with": {"eps": 8 / 255, "steps": 1, "step_size": 4 / 255, "restarts": 2}}]
    one = audit(tmp_path, checks, k["raw"], k["y"])
    many = audit(tmp_path, checks, k["raw"], k["y"], execution={"engine": "local", "shard_rows": 37})
    assert_same(one.doc, many.doc)
    met = one.metrics("torch.pgd")
    optimum = ((k["m"] > 0) & (k["m_adv"] < 0)).sum() / (k["m"] > 0).sum()
    assert 0 < met["success_rate"] < optimum  # the random start shows: short of the optimal attack


def test_blind_spots_read_only_the_pairs_rows_of_a_lazy_data_set(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """An ``.npy`` is read row range by row range: the pairing uses the audit's streamed predictions and the
    shards read their pairs' rows, never the whole file at once (an image folder would be decoded whole)."""
    from auditor.datasets.sources import NpyFile

    largest = [0]
    read = NpyFile._read

    def counting(self: NpyFile, start: int, stop: int) -> np.ndarray:
        largest[0] = max(largest[0], stop - start)
        return read(self, start, stop)

    monkeypatch.setattr(NpyFile, "_read", counting)
    rng = np.random.default_rng(4)
    linear_image_model(tmp_path / "m.onnx", rng.standard_normal((75, 2)) * 0.05, np.zeros(2))
    np.save(tmp_path / "x.npy", rng.uniform(-2, 2, (300, 3, HW, HW)).astype(np.float32))
    res = run_audit({"checks": [{"use": "torch.blind_spots", "with": {"limit": 6, "steps": 5}}],
                     "data": {"path": "x.npy", "batch_size": 32}}, model=tmp_path / "m.onnx", workdir=tmp_path,
                    disable=OTHERS)
    res.assert_status("torch.blind_spots", "info")
    assert res.metrics("torch.blind_spots")["n_pairs"] == 6
    assert 0 < largest[0] <= 32
