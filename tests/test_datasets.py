"""Data as users hold it: lazy sources (.npy by row ranges, parquet row groups), image folders and manifests
with declared preprocessing, skipped files, spec errors with YAML paths, plugin data sources."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from image_helpers import write_cnn, write_images
from PIL import Image

import auditor.data as D
from auditor import DataSource, LoadRequest, hookimpl
from auditor.data import DataConfig, Dataset, fit_to_model, load_dataset
from auditor.datasets.preprocess import resolve
from auditor.datasets.sources import Mapped, NpyFile, ParquetRows
from auditor.testing import run_audit

# ------------------------------------------------------------------------------------------ lazy sources


def test_npy_file_reads_rows_like_numpy(tmp_path: Path) -> None:
    a = np.random.default_rng(0).normal(size=(500, 3, 4)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    src = NpyFile(tmp_path / "a.npy")
    assert src.shape == a.shape and src.dtype == a.dtype and len(src) == 500
    np.testing.assert_array_equal(src[10:37], a[10:37])
    np.testing.assert_array_equal(src[490:900], a[490:])
    np.testing.assert_array_equal(src[::7], a[::7])
    idx = np.array([3, 4, 5, 100, 499])
    np.testing.assert_array_equal(src[idx], a[idx])
    unsorted = np.array([400, 2, 77, 2])
    np.testing.assert_array_equal(src[unsorted], a[unsorted])
    np.testing.assert_array_equal(src[-1], a[-1])
    np.testing.assert_array_equal(np.asarray(src), a)
    assert [sl.start for sl, _ in src.batches(128)] == [0, 128, 256, 384]
    np.testing.assert_array_equal(np.concatenate([b for _, b in src.batches(128)]), a)
    np.save(tmp_path / "f.npy", np.asfortranarray(a[:, :, 0]))
    np.testing.assert_array_equal(NpyFile(tmp_path / "f.npy")[5:9], a[5:9, :, 0])
    import pickle

    np.testing.assert_array_equal(pickle.loads(pickle.dumps(src))[3:8], a[3:8])  # travels to Ray workers


def test_npy_dataset_is_lazy_sampled_rows_are_read_and_fitting_is_per_batch(tmp_path: Path) -> None:
    x = np.random.default_rng(1).normal(size=(300, 8, 8, 3)).astype(np.float32)  # NHWC on disk
    np.save(tmp_path / "x.npy", x)
    ds = load_dataset(DataConfig(path=tmp_path / "x.npy"))
    assert isinstance(ds.x, NpyFile)
    fitted = fit_to_model(ds, ("N", 3, 8, 8), "x", "m.onnx")
    assert isinstance(fitted.x, Mapped) and fitted.x.shape == (300, 3, 8, 8)
    np.testing.assert_array_equal(fitted.x[17:40], np.transpose(x[17:40], (0, 3, 1, 2)))
    sub = fitted.sample(50, np.random.default_rng(0), stratify=False)
    assert isinstance(sub.x, np.ndarray)  # small samples are read at once
    np.testing.assert_array_equal(sub.x, np.transpose(x[sub.indices], (0, 3, 1, 2)))


def test_parquet_is_read_by_row_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    r = np.random.default_rng(2)
    f = r.normal(size=(1000, 3)).astype(np.float32)
    y = r.integers(0, 2, 1000)
    pq.write_table(pa.table({"a": f[:, 0], "b": f[:, 1], "c": f[:, 2], "y": y, "site": np.arange(1000) % 3}),
                   tmp_path / "t.parquet", row_group_size=128)
    monkeypatch.setattr(D, "LAZY_PARQUET_BYTES", 0)
    ds = load_dataset(DataConfig(path=tmp_path / "t.parquet", y="y", groups=["site"]))
    assert isinstance(ds.x, ParquetRows) and ds.x.shape == (1000, 3)
    np.testing.assert_array_equal(ds.x[100:700], f[100:700])  # spans several row groups
    np.testing.assert_array_equal(ds.x[np.array([5, 127, 128, 999])], f[[5, 127, 128, 999]])
    np.testing.assert_array_equal(ds.y, y)
    np.testing.assert_array_equal(ds.column("b"), f[:, 1])  # a feature column, read on demand
    assert ds.feature_names == ["a", "b", "c"]
    import pickle

    again = pickle.loads(pickle.dumps(ds.x))  # sources travel to Ray workers
    np.testing.assert_array_equal(again[250:260], f[250:260])


# ------------------------------------------------------------------------------------------ preprocessing


def _reference(path: Path, short: int, crop: int, scale: float, mean: list[float], std: list[float],
               layout: str = "NCHW", bgr: bool = False) -> np.ndarray:
    """Independent pipeline: Pillow's own resize, then numpy crop / scale / normalise / layout."""
    im = Image.open(path).convert("RGB")
    w, h = im.size
    size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    a = np.asarray(im.resize(size, Image.Resampling.BILINEAR)).astype(np.float64)
    top, left = round((a.shape[0] - crop) / 2), round((a.shape[1] - crop) / 2)
    a = a[top:top + crop, left:left + crop]
    if bgr:
        a = a[..., ::-1]
    a = (a * scale - np.array(mean)) / np.array(std)
    return np.transpose(a, (2, 0, 1)) if layout == "NCHW" else a


def test_folder_preprocessing_matches_pillow_and_numpy(tmp_path: Path) -> None:
    files = write_images(tmp_path / "val", {"dog": 3, "cat": 2, "emu": 2}, size=(40, 30), vary=True)
    pre = {"resize": 20, "center_crop": 16, "scale": 1 / 255, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    ds = load_dataset(DataConfig(path=tmp_path / "val", preprocess=pre, workers=2),
                      request=LoadRequest(rng=np.random.default_rng(0), input_shape=("N", 3, 16, 16),
                                          input_dtype=np.dtype(np.float32), layout="NCHW"))
    assert ds.x.shape == (7, 3, 16, 16) and ds.x.dtype == np.float32
    # labels: sorted folder names -> indices
    assert ds.details["images"]["classes"] == ["cat", "dog", "emu"]
    np.testing.assert_array_equal(ds.y, [0, 0, 1, 1, 1, 2, 2])
    got = np.asarray(ds.x)
    order = sorted(files, key=lambda p: (p.parent.name, p.name))
    for i, f in enumerate(order):
        np.testing.assert_allclose(got[i], _reference(f, 20, 16, 1 / 255, pre["mean"], pre["std"]),
                                   rtol=0, atol=2e-6)
    # BGR, NHWC, a [h, w] resize: the same independent computation
    pre2 = {**pre, "channels": "BGR", "layout": "NHWC"}
    ds2 = load_dataset(DataConfig(path=tmp_path / "val", preprocess=pre2, workers=1))
    np.testing.assert_allclose(ds2.x[2], _reference(order[2], 20, 16, 1 / 255, pre["mean"], pre["std"],
                                                    layout="NHWC", bgr=True), atol=2e-6)
    ds3 = load_dataset(DataConfig(path=tmp_path / "val", preprocess={"resize": [12, 18], "dtype": "uint8"}))
    want = np.asarray(Image.open(order[4]).convert("RGB").resize((18, 12), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(ds3.x[4], np.transpose(want, (2, 0, 1)))
    assert ds3.x.dtype == np.uint8


def test_sizes_and_dtype_are_inferred_from_the_model_input() -> None:
    pp, notes = resolve({"preset": "imagenet"}, ("N", 224, 224, 3), np.dtype(np.float32), "NHWC")
    assert pp.center_crop == (224, 224) and pp.resize == 256 and pp.layout == "NHWC" and pp.channels == "RGB"
    pp, notes = resolve(None, ("N", 1, 28, 28), np.dtype(np.uint8), None)
    assert pp.center_crop == (28, 28) and pp.channels == "L" and pp.dtype == "uint8" and pp.scale == 1.0
    assert any("inferred" in n for n in notes)
    assert pp.resized_size(56, 84) == (28, 42)  # no resize given: cover the crop, keep the aspect ratio


def test_limit_samples_the_file_list_stratified_before_decoding(tmp_path: Path) -> None:
    write_images(tmp_path / "val", {"a": 30, "b": 10}, size=(8, 8))
    (tmp_path / "val" / "a" / "000.png").write_bytes(b"not a png")  # sampled or not, never decoded if not
    ds = load_dataset(DataConfig(path=tmp_path / "val", limit=8), request=LoadRequest(rng=np.random.default_rng(3)))
    sampled = ds.details["images"]["files"]
    assert sampled == 40 and ds.total_rows == 40
    assert np.bincount(ds.y).tolist() in ([6, 2], [5, 2])  # 3:1 of 8 (one fewer if the broken one was drawn)
    assert any("sampled 8 of 40 files before decoding" in n for n in ds.notes)


# ------------------------------------------------------------------------------------------ manifests, skips


def test_manifest_with_string_labels_groups_and_skipped_files(tmp_path: Path) -> None:
    files = write_images(tmp_path / "img", {"x": 6}, size=(16, 16), fmt="jpg")
    (tmp_path / "img" / "x" / "bad.png").write_bytes(b"\x89PNG garbage")
    good = files[0].read_bytes()
    (tmp_path / "img" / "x" / "cut.jpg").write_bytes(good[: len(good) // 2])  # truncated JPEG
    rows = [(f"img/x/{f.name}", ["cat", "dog"][i % 2], ["north", "south", "east"][i % 3]) for i, f in enumerate(files)]
    rows += [("img/x/bad.png", "cat", "north"), ("img/x/cut.jpg", "dog", "south"), ("img/x/gone.jpg", "cat", "east")]
    (tmp_path / "m.csv").write_text("file,label,site\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    ds = load_dataset(DataConfig(path=tmp_path / "m.csv", images="file", y="label", groups=["site"],
                                 classes=["dog", "cat"], preprocess={"scale": 1 / 255}))
    assert ds.n == 6 and ds.total_rows == 9
    np.testing.assert_array_equal(ds.y, [1, 0, 1, 0, 1, 0])  # by position in data.classes
    assert ds.groups["site"].tolist() == ["north", "south", "east"] * 2
    sk = ds.info()["skipped_files"]
    assert sk["count"] == 3 and sk["by_reason"] == {"cannot decode": 2, "missing": 1}
    assert [f["file"] for f in sk["first"]] == ["img/x/bad.png", "img/x/cut.jpg", "img/x/gone.jpg"]
    assert any(n.startswith("skipped 3 of 9 image files") for n in ds.notes)
    np.testing.assert_allclose(ds.x[0], np.transpose(np.asarray(Image.open(files[0]).convert("RGB")), (2, 0, 1))
                               / 255, atol=1e-6)


def _spec(tmp_path: Path, data: dict[str, Any], checks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"model": {"path": str(tmp_path / "cnn.onnx"), "device": "cpu"}, "data": data, "seed": 3,
            "checks": checks or [{"use": "performance.metrics"}]}


def test_bad_data_is_one_line_with_exit_4(tmp_path: Path) -> None:
    write_cnn(tmp_path / "cnn.onnx")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    (tmp_path / "empty" / "cls" / "notes.txt").write_text("x")
    r = run_audit(_spec(tmp_path, {"path": str(tmp_path / "empty")}), workdir=tmp_path)
    assert r.exit_code == 4 and "hold no image files" in str(r.error) and "\n" not in str(r.error)
    write_images(tmp_path / "img", {"a": 2}, size=(16, 16))
    (tmp_path / "m.csv").write_text("path,label\nimg/a/000.png,0\n")
    r = run_audit(_spec(tmp_path, {"path": str(tmp_path / "m.csv"), "images": "file", "y": "label"}),
                  workdir=tmp_path)
    assert r.exit_code == 4 and "data.images: column 'file' not in" in str(r.error) and "path, label" in str(r.error)
    for f in (tmp_path / "img" / "a").iterdir():
        f.write_bytes(b"broken")
    r = run_audit(_spec(tmp_path, {"path": str(tmp_path / "img")}), workdir=tmp_path)
    assert r.exit_code == 4 and "none of the 2 image files" in str(r.error)


@pytest.mark.parametrize(("pre", "expect"), [
    ({"std": [0.2, 0, 0.3]}, "data.preprocess.std: every value must be > 0"),
    ({"mean": [0.1, 0.2], "channels": "RGB"}, "data.preprocess.mean: 2 values but channels RGB has 3"),
    ({"resize": 100, "center_crop": 224}, "data.preprocess.center_crop: [224, 224] is larger than the resized"),
    ({"dtype": "uint8", "scale": 0.5}, "data.preprocess.dtype: uint8 inputs get raw pixels; scale"),
    ({"resise": 256}, "data.preprocess.resise: unknown key (did you mean 'resize'?)"),
    ({"resize": [224]}, "data.preprocess.resize"),
    ({"layout": "CHW"}, "data.preprocess.layout"),
    ({"preset": "imagenett"}, "data.preprocess.preset"),
])
def test_bad_preprocessing_is_a_spec_error_with_its_yaml_path(tmp_path: Path, pre: dict[str, Any],
                                                              expect: str) -> None:
    write_cnn(tmp_path / "cnn.onnx")
    write_images(tmp_path / "val", {"a": 1}, size=(16, 16))
    r = run_audit(_spec(tmp_path, {"path": "val", "preprocess": pre}), workdir=tmp_path)
    assert r.exit_code == 2 and expect in str(r.error), r.error


def test_resize_on_arrays_is_a_spec_error(tmp_path: Path) -> None:
    write_cnn(tmp_path / "cnn.onnx")
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 16, 16, 3), np.uint8), y=np.zeros(2, np.int64))
    r = run_audit(_spec(tmp_path, {"path": "d.npz", "preprocess": {"preset": "imagenet"}}), workdir=tmp_path)
    assert r.exit_code == 2 and "data.preprocess.resize: needs image files" in str(r.error)


# ------------------------------------------------------------------------------------------ same audit


def test_folder_and_equivalent_npz_give_identical_reports(tmp_path: Path) -> None:
    write_cnn(tmp_path / "cnn.onnx", hw=(16, 16))
    files = write_images(tmp_path / "val", {"a": 10, "b": 10, "c": 10}, size=(24, 20), vary=True, fmt="jpg")
    pre = {"resize": 18, "center_crop": 16, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    # the .npz holds the resized, cropped pixels (Pillow + numpy, independently) and gets the numeric steps
    order = sorted(files, key=lambda p: (p.parent.name, p.name))
    pix = []
    for f in order:
        im = Image.open(f).convert("RGB")
        w, h = im.size
        a = np.asarray(im.resize((18, int(18 * h / w)) if w <= h else (int(18 * w / h), 18),
                                 Image.Resampling.BILINEAR))
        top, left = round((a.shape[0] - 16) / 2), round((a.shape[1] - 16) / 2)
        pix.append(a[top:top + 16, left:left + 16])
    np.savez(tmp_path / "val.npz", x=np.stack(pix), y=np.repeat(np.arange(3), 10))
    checks = [{"use": "performance.metrics"},
              {"use": "robustness.noise", "with": {"sigma": [0.05, 0.2], "limit": 12}}]
    numeric = {k: v for k, v in pre.items() if k not in ("resize", "center_crop")}
    a = run_audit(_spec(tmp_path, {"path": "val", "preprocess": pre, "batch_size": 7}, checks), workdir=tmp_path)
    b = run_audit(_spec(tmp_path, {"path": "val.npz", "preprocess": numeric, "batch_size": 7}, checks),
                  workdir=tmp_path)
    assert a.exit_code == 0 and b.exit_code == 0, (a.error, b.error)

    def strip(doc: dict[str, Any]) -> list[dict[str, Any]]:
        return [{k: v for k, v in c.items() if k not in ("duration_s", "started", "finished")}
                for c in doc["checks"]]

    assert json.dumps(strip(a.doc), sort_keys=True) == json.dumps(strip(b.doc), sort_keys=True)
    assert a.metrics("performance.metrics")["n"] == 30
    assert a.doc["data"]["skipped_files"]["count"] == 0
    assert a.doc["data"]["images"]["preprocess"]["center_crop"] == [16, 16]


# ------------------------------------------------------------------------------------------ plugin sources


class _Shards(DataSource):
    """A fake plugin source: ``*.shard`` folders of .npy pieces, concatenated lazily."""

    name = "shards"
    description = "test shards"

    def claims(self, cfg: DataConfig) -> bool:
        return cfg.path.suffix == ".shard"

    def load(self, cfg: DataConfig, request: LoadRequest) -> Dataset:
        parts = sorted(cfg.path.glob("x*.npy"))
        x = np.concatenate([np.load(p) for p in parts])
        y = np.load(cfg.path / "y.npy")
        return Dataset(x=x, y=y, groups={}, columns={}, source=str(cfg.path), notes=[f"{len(parts)} shards"],
                       details={"shards": len(parts), "scale": cfg.options.get("scale")})


class _ShardPlugin:
    __name__ = "shard_plugin"

    @hookimpl
    def auditor_register_datasets(self) -> list[type[DataSource]]:
        return [_Shards]


def test_a_plugin_registers_a_data_source(tmp_path: Path) -> None:
    from builders import blobs, mlp_weights, write_mlp

    w = mlp_weights()
    write_mlp(tmp_path / "m.onnx", w)
    x, y = blobs(120, w=w)
    (tmp_path / "d.shard").mkdir()
    for i in range(3):
        np.save(tmp_path / "d.shard" / f"x{i}.npy", x[40 * i:40 * (i + 1)])
    np.save(tmp_path / "d.shard" / "y.npy", y)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    spec = {"model": {"path": str(tmp_path / "m.onnx"), "device": "cpu"}, "checks": [{"use": "performance.metrics"}]}
    r = run_audit({**spec, "data": {"path": "d.shard", "options": {"scale": 2}}}, plugins=[_ShardPlugin()],
                  workdir=tmp_path)
    ref = run_audit({**spec, "data": {"path": "d.npz"}}, workdir=tmp_path)
    assert r.exit_code == 0, r.error
    assert r.metrics("performance.metrics") == ref.metrics("performance.metrics")
    assert r.doc["data"]["shards"] == 3 and r.doc["data"]["scale"] == 2
    # by name, and an unknown name
    r2 = run_audit({**spec, "data": {"path": "d.shard", "format": "shards"}}, plugins=[_ShardPlugin()],
                   workdir=tmp_path)
    assert r2.exit_code == 0
    r3 = run_audit({**spec, "data": {"path": "d.shard", "format": "webdataset"}}, workdir=tmp_path)
    assert r3.exit_code == 4 and "data.format: no data source 'webdataset' (installed: images)" in str(r3.error)


def test_data_source_name_clash_names_both_plugins() -> None:
    from auditor.errors import PluginLoadError
    from auditor.plugins import build_registry

    class Images(_Shards):
        name = "images"

    class P:
        __name__ = "clasher"

        @hookimpl
        def auditor_register_datasets(self) -> list[type[DataSource]]:
            return [Images]

    with pytest.raises(PluginLoadError, match="'images' is registered by both 'auditor \\(built-in\\)' and 'clasher'"):
        build_registry(extra_plugins=[P()], use_entry_points=False)


def test_init_with_an_image_folder_writes_a_preprocessing_block_that_runs(tmp_path: Path) -> None:
    import yaml

    from auditor.init import starter_spec

    write_cnn(tmp_path / "cnn.onnx", hw=(16, 16))
    write_images(tmp_path / "val", {"a": 3, "b": 3, "c": 2}, size=(20, 24), fmt="jpg")
    text = starter_spec(tmp_path / "cnn.onnx", tmp_path / "val", tmp_path / "audit.yaml")
    doc = yaml.safe_load(text)
    pre = doc["data"]["preprocess"]
    assert doc["data"]["path"] == "val"
    assert pre["center_crop"] == 16 and pre["resize"] == 18
    assert pre["layout"] == "NCHW" and pre["dtype"] == "float32" and pre["channels"] == "RGB"
    assert "3 class sub-folders (a, b, c), 8 image files" in text
    (tmp_path / "audit.yaml").write_text(text)
    r = run_audit(tmp_path / "audit.yaml")  # the starter's accuracy gate may fail this random model: exit 0 or 1
    assert r.exit_code in (0, 1) and r.check("performance.metrics").status.value in ("pass", "fail"), r.error
    assert r.metrics("performance.metrics")["n"] == 8


class _Counting(NpyFile):
    """An .npy source that records the largest number of rows read at once."""

    largest = 0

    def _read(self, start: int, stop: int) -> np.ndarray:
        type(self).largest = max(type(self).largest, stop - start)
        return super()._read(start, stop)


def test_predictions_stream_a_lazy_source_batch_by_batch(tmp_path: Path) -> None:
    from builders import blobs, mlp_numpy, mlp_weights, write_mlp

    from auditor.context import AuditContext
    from auditor.model import ModelConfig, ModelHandle

    w = mlp_weights()
    write_mlp(tmp_path / "m.onnx", w)
    x, y = blobs(1000, w=w)
    np.save(tmp_path / "x.npy", x)
    src = _Counting(tmp_path / "x.npy")
    ds = Dataset(x=src, y=y, groups={}, columns={}, source="x.npy", batch_size=64)
    model = ModelHandle(ModelConfig(path=tmp_path / "m.onnx", device="cpu"), batch_size=64)
    ctx = AuditContext(check_id="t", params={}, model=model, data=ds, seed=0, rng=np.random.default_rng(0))
    pred = ctx.predictions()
    assert _Counting.largest <= 64  # never more than one batch of inputs in memory
    np.testing.assert_allclose(pred.probs, mlp_numpy(x, w), rtol=1e-4, atol=1e-6)


def test_pixel_space_inverts_the_declared_normalisation_in_either_layout() -> None:
    from auditor.datasets.preprocess import PixelSpace

    r = np.random.default_rng(0)
    raw = r.integers(0, 256, (4, 5, 6, 3)).astype(np.uint8)  # NHWC pixels
    pp, _ = resolve({"preset": "imagenet", "layout": "NHWC"}, None, None, None)
    x = pp.finish(raw)
    px = pp.pixels()
    np.testing.assert_allclose(px.to_pixels(x), raw / 255.0, atol=1e-6)
    np.testing.assert_allclose(px.from_pixels(raw / 255.0), x, atol=1e-5)
    nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    np.testing.assert_allclose(px.to_pixels(nchw, canonical=True), raw.transpose(0, 3, 1, 2) / 255.0, atol=1e-6)
    u8 = PixelSpace(scale=1.0, mean=(0.0,) * 3, std=(1.0,) * 3, layout="NCHW", dtype="uint8", n_channels=3)
    back = u8.from_pixels(np.array([[[[0.5]], [[1.2]], [[-0.1]]]]))
    assert back.dtype == np.uint8 and back.ravel().tolist() == [128, 255, 0]  # rounded and clipped


def test_noise_is_drawn_in_pixel_space_whatever_the_declared_normalisation(tmp_path: Path) -> None:
    """sigma is in units of the pixel range [0, 1]: a model fed normalised inputs (undoing the normalisation
    in its first node) and the same model fed plain pixels give the same curve, and the curve is the one a
    numpy re-computation in pixel space gives."""
    from auditor.rowrandom import RowRandom

    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    w = write_cnn(tmp_path / "plain.onnx", hw=(5, 5))
    write_cnn(tmp_path / "normed.onnx", hw=(5, 5), denorm=(mean, std))
    files = write_images(tmp_path / "val", {"a": 20, "b": 20, "c": 20}, size=(5, 5))
    sig = [0.1, 0.6]
    checks = [{"use": "robustness.noise", "with": {"sigma": sig}}]

    def run(model: str, pre: dict[str, Any]) -> Any:
        spec = {"model": {"path": str(tmp_path / model), "device": "cpu"}, "seed": 4, "checks": checks,
                "data": {"path": "val", "preprocess": pre}}
        r = run_audit(spec, workdir=tmp_path)
        assert r.exit_code == 0, r.error
        return r

    a = run("plain.onnx", {"scale": 1 / 255})
    b = run("normed.onnx", {"scale": 1 / 255, "mean": mean, "std": std})
    ca, cb = a.metrics("robustness.noise")["curve"], b.metrics("robustness.noise")["curve"]
    assert [p["flip_rate"] for p in ca] == [p["flip_rate"] for p in cb]
    assert [p["sigma"] for p in ca] == sig  # given in pixel units, reported as given
    assert any("un-normalised pixels in [0, 1]" in n for n in b.check("robustness.noise").notes)
    assert any("clipped to [0, 1]" in n for n in b.check("robustness.noise").notes)

    # numpy in pixel space, with the sweep's seeding
    order = sorted(files, key=lambda p: (p.parent.name, p.name))
    px = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in order]).astype(np.float32) / 255
    xc = np.ascontiguousarray(px.transpose(0, 3, 1, 2))

    def predict(x: np.ndarray) -> np.ndarray:
        return (x.astype(np.float64).mean(axis=(2, 3)) @ w["W"] + w["b"]).argmax(1)

    clean = predict(xc)
    for i, s in enumerate(sig):  # one stream per sample and severity (auditor.shards.Shard.random)
        g = RowRandom.for_positions(4, "robustness.noise", np.arange(len(xc))).at(i, 0)
        noisy = np.clip(xc + np.float32(s) * g.standard_normal(xc.shape, dtype=np.float32), 0, 1)
        assert ca[i]["flip_rate"] == pytest.approx(float(np.mean(predict(noisy) != clean)), abs=1e-12)
    assert ca[-1]["flip_rate"] > 0


def test_parquet_manifest_with_groups_sampled_by_label_gives_the_npz_report(tmp_path: Path) -> None:
    """A parquet manifest (integer labels, a group column, relative and absolute paths): sampled with ``limit``
    before decoding, labels stay stratified and every file keeps its own row's label and group; audited whole,
    metrics and per-group metrics equal those of an .npz holding the same pixels and columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_cnn(tmp_path / "cnn.onnx", hw=(8, 8))
    files = write_images(tmp_path / "img", {"a": 18, "b": 6}, size=(8, 8))
    labels = [0] * 18 + [1] * 6
    sites = [["north", "south", "east"][i % 3] for i in range(24)]
    paths = [str(f) if i % 2 else str(f.relative_to(tmp_path)) for i, f in enumerate(files)]
    pq.write_table(pa.table({"path": paths, "label": labels, "site": sites}), tmp_path / "m.parquet")
    cfg = DataConfig(path=tmp_path / "m.parquet", images="path", y="label", groups=["site"], limit=12)
    ds = load_dataset(cfg, request=LoadRequest(rng=np.random.default_rng(3)))
    assert ds.n == 12 and np.bincount(ds.y).tolist() == [9, 3]  # 3:1, as listed
    row_of = {str(f): i for i, f in enumerate(files)}
    picked = [row_of[f] for f in ds.columns["file"]]
    assert ds.groups["site"].tolist() == [sites[i] for i in picked]
    assert ds.y.tolist() == [labels[i] for i in picked]

    # the whole manifest against an .npz of the same pixels (Pillow, independently) and columns
    pix = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    np.savez(tmp_path / "d.npz", x=pix, y=np.asarray(labels), site=np.asarray(sites))
    checks = [{"use": "performance.metrics"}, {"use": "bias.group_metrics"}]
    spec = {"path": "m.parquet", "images": "path", "y": "label", "groups": ["site"],
            "preprocess": {"scale": 1 / 255}}
    a = run_audit(_spec(tmp_path, spec, checks), workdir=tmp_path)
    b = run_audit(_spec(tmp_path, {"path": "d.npz", "groups": ["site"], "preprocess": {"scale": 1 / 255}},
                        checks), workdir=tmp_path)
    assert a.exit_code == 0 and b.exit_code == 0, (a.error, b.error)
    for cid in ("performance.metrics", "bias.group_metrics"):
        ma, mb = (dict(r.metrics(cid)) for r in (a, b))
        ma.pop("duration_s", None)
        mb.pop("duration_s", None)
        assert json.dumps(ma, sort_keys=True) == json.dumps(mb, sort_keys=True), cid
    assert a.metrics("performance.metrics")["n"] == 24
