"""The Ray engine (#14): the same audit locally and on a local Ray cluster (127.0.0.1, started and stopped here)
gives the same report field by field; a worker killed mid-audit has its shard rerun elsewhere and the report
still matches (and says so); workers that keep dying end the run with exit 4 and a partial report."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray_fault_plugin
from builders import blobs, mlp_weights, write_mlp
from click.testing import CliRunner
from report_compare import assert_same

from auditor.testing import run_audit, write_spec


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """A local Ray instance on 127.0.0.1 with two CPUs, for this module only."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'onnx-auditor[ray]')")
    from auditor.distributed.engine import start_local

    start_local(num_cpus=2, _node_ip_address="127.0.0.1")  # as an audit starts it
    yield
    ray.shutdown()


def test_the_workers_run_at_the_priority_of_the_process_that_started_ray(cluster: None) -> None:
    """Ray's default niceness of 15 would put every other job on the machine before the audit's workers."""
    import os

    import ray

    @ray.remote(num_cpus=1)
    def niceness() -> int:
        return os.nice(0)

    assert ray.get(niceness.remote()) == os.nice(0)


def test_a_worker_builds_the_drivers_registry_without_reading_distribution_metadata(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata as md

    from auditor.distributed.worker import RegistryRecipe
    from auditor.plugins import build_registry

    monkeypatch.syspath_prepend(str(Path(ray_fault_plugin.__file__).parent))
    driver = build_registry(disable=["torch"], extra_modules=["ray_fault_plugin"])  # and a -p module
    recipe = RegistryRecipe.of(driver)

    def scan(**kw: object) -> object:
        raise AssertionError("the worker read the installed distributions' metadata")

    monkeypatch.setattr(md, "entry_points", scan)
    worker = recipe.build()
    assert worker.plugins == driver.plugins and "torch" not in {p.name for p in worker.plugins}
    assert {k: (c.cls, c.plugin, c.distribution, c.version) for k, c in worker.checks.items()} == \
        {k: (c.cls, c.plugin, c.distribution, c.version) for k, c in driver.checks.items()}
    assert "faulty.rows" in worker.checks and not any(k.startswith("torch.") for k in worker.checks)
    assert sorted(worker.reporters) == sorted(driver.reporters) and worker.backends == driver.backends


@pytest.fixture(scope="module")
def audit_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A classifier, a weaker baseline and 1,100 rows: three shards of noise and attack, one of metrics."""
    d = tmp_path_factory.mktemp("ray")
    w = mlp_weights()
    weak = {k: (v * 0.5).astype(np.float32) for k, v in w.items()}
    x, y = blobs(n=1100, w=w)
    np.savez(d / "data.npz", x=x, y=y)
    return {"dir": d, "model": write_mlp(d / "model.onnx", w), "baseline": write_mlp(d / "base.onnx", weak),
            "data": d / "data.npz"}


def _doc(f: dict[str, Path], checks: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"model": {"path": str(f["model"])}, "data": {"path": str(f["data"])}, "seed": 11,
            "checks": checks, "report": {"dir": str(f["dir"] / "reports")}, **extra}


CHECKS: list[dict[str, Any]] = [
    {"use": "performance.metrics", "gate": {"accuracy": {"max_drop": 0.5}}},
    {"use": "robustness.noise", "with": {"limit": None, "repeats": 2}},
    {"use": "robustness.square_attack", "with": {"max_queries": 30, "limit": 1100}},
    {"use": "robustness.blind_spots", "with": {"pairs": 300, "steps": 6, "refine": 2, "random_directions": 1}},
    {"use": "robustness.fooling", "with": {"n_noise": 600, "generations": 5, "population": 4}},
    {"use": "torch.pgd", "with": {"eps": 0.3, "steps": 2, "limit": 1100}},  # 3 shards; torch loaded once a worker
    {"use": "torch.input_gradients", "with": {"limit": 600, "fractions": [0.25]}},  # 2 shards
    {"use": "transfer.transferability", "with": {"limit": 1100}},  # 2 shards of features, model and reference
    {"use": "sparsity.profile"},  # does not shard: runs whole on one worker
]


def test_the_same_audit_on_ray_writes_the_same_report(cluster: None, audit_files: dict[str, Path]) -> None:
    f = audit_files
    doc = _doc(f, CHECKS, baseline={"path": str(f["baseline"])}, reference={"path": str(f["baseline"])})
    local = run_audit(doc, workdir=f["dir"])
    on_ray = run_audit({**doc, "execution": {"engine": "ray", "workers": 2}}, workdir=f["dir"])
    assert local.exit_code == on_ray.exit_code == 0, (local.error, on_ray.error)
    assert_same(local.doc, on_ray.doc)
    ex = on_ray.doc["environment"]["execution"]
    assert ex["engine"] == "ray" and ex["workers"] == 2 and ex["retries"] == []
    assert "execution" not in local.doc["environment"]
    noise = on_ray.metrics("robustness.noise")
    assert noise["n"] == 1100 and on_ray.metrics("robustness.square_attack")["n"] == 1100
    assert on_ray.check("robustness.noise").baseline_metrics is not None
    # the pair and work-item shards: 3 shards of 128 pairs, 2 noise chunks and a group of 4 classes
    assert on_ray.metrics("robustness.blind_spots")["n_pairs"] == 300
    assert on_ray.metrics("robustness.fooling")["queries"] == 1 + 2 * 600 + (5 + 1) * 4 * 4
    assert on_ray.metrics("transfer.transferability")["n"] == 1100
    assert set(on_ray.metrics("transfer.transferability")["by_model"]) == {"model", "reference"}


def test_a_worker_killed_mid_audit_has_its_shard_rerun_and_the_report_says_so(
        cluster: None, audit_files: dict[str, Path]) -> None:
    f = audit_files
    flag = f["dir"] / "kill-once"
    checks = [{"use": "faulty.rows", "with": {"flag": str(flag)}}, CHECKS[1], CHECKS[3], CHECKS[4]]
    local = run_audit(_doc(f, checks), workdir=f["dir"], plugins=[ray_fault_plugin])
    flag.write_text("die")
    # the driver's data through the object store this time
    on_ray = run_audit(_doc(f, checks, execution={"engine": "ray", "workers": 2, "data": "driver"}),
                       workdir=f["dir"], plugins=[ray_fault_plugin])
    assert not flag.exists(), on_ray.error
    assert local.exit_code == on_ray.exit_code == 0, (local.error, on_ray.error)
    assert_same(local.doc, on_ray.doc)
    retries = on_ray.doc["environment"]["execution"]["retries"]
    assert len(retries) == 1 and "shard 2/11 of faulty.rows" in retries[0]
    assert retries[0] in on_ray.check("faulty.rows").notes
    # the numbers are the model's own: every row's predicted class is counted once
    assert sum(on_ray.metrics("faulty.rows")["class_counts"]) == 1100


def test_workers_that_keep_dying_end_the_run_with_exit_4_and_a_partial_report(
        cluster: None, audit_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    f = audit_files
    flag = f["dir"] / "kill-always"
    flag.write_text("die")
    spec = write_spec(f["dir"] / "dying.yaml", _doc(f, [
        {"use": "sparsity.profile"},
        {"use": "faulty.rows", "with": {"flag": str(flag), "once": False}},
    ], execution={"engine": "ray", "max_retries": 1}))
    monkeypatch.syspath_prepend(str(Path(ray_fault_plugin.__file__).parent))
    res = CliRunner().invoke(__import__("auditor.cli", fromlist=["main"]).main,
                             ["run", str(spec), "-q", "-p", "ray_fault_plugin", "--format", "json"])
    assert res.exit_code == 4, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "workers keep dying" in errors[0] and "partial report written" in errors[0]
    report = json.loads((f["dir"] / "reports" / "report.json").read_text())
    assert report["interrupted"] is True and report["status"] == "error"
    by_id = {c["id"]: c for c in report["checks"]}
    assert by_id["faulty.rows"]["status"] == "error" and by_id["faulty.rows"]["error"].startswith("not run: ray:")
    assert report["environment"]["execution"]["error"]


def test_a_shard_over_shard_timeout_s_is_that_checks_error(cluster: None, audit_files: dict[str, Path]) -> None:
    f = audit_files
    res = run_audit(_doc(f, [{"use": "faulty.rows", "with": {"sleep_s": 4}}, {"use": "performance.metrics"}],
                         execution={"engine": "ray", "workers": 2, "shard_timeout_s": 0.5}),
                    workdir=f["dir"], plugins=[ray_fault_plugin])
    faulty = res.check("faulty.rows")
    assert faulty.status == "error" and faulty.error is not None
    assert "shard 1/11 timed out after 0.5 s (execution.shard_timeout_s)" in faulty.error
    res.assert_status("performance.metrics", "info")
    # where the time went: every task counted once, on the worker that ran it (11 shards of 100 rows, one
    # prediction shard), and the sums agree with each other
    timing = res.doc["environment"]["execution"]["timing"]
    by_check = timing["checks"]
    assert by_check["faulty.rows"]["tasks"] == 11 and by_check["performance.metrics"]["tasks"] == 1
    workers = timing["workers"]
    assert len(workers) == 2 and sum(w["tasks"] for w in workers) == 12
    assert sum(w["busy_s"] for w in workers) == pytest.approx(timing["busy_s"], abs=0.01)
    assert sum(c["worker_s"] for c in by_check.values()) == pytest.approx(timing["busy_s"], abs=0.01)
    assert timing["efficiency"] == pytest.approx(timing["busy_s"] / (2 * timing["wall_s"]), abs=0.01)
    assert all(w["startup_s"] is not None and w["startup_s"] > 0 for w in workers if w["tasks"])


def test_the_ray_option_joins_the_running_cluster(cluster: None, audit_files: dict[str, Path]) -> None:
    f = audit_files
    spec = write_spec(f["dir"] / "cli.yaml", _doc(f, [{"use": "performance.metrics"}]))
    res = CliRunner().invoke(__import__("auditor.cli", fromlist=["main"]).main,
                             ["run", str(spec), "--ray", "--format", "json", "--report-dir", str(f["dir"] / "cli")])
    assert res.exit_code == 0, res.output
    assert "ray: " in res.output and "workers" in res.output
    report = json.loads((f["dir"] / "cli" / "report.json").read_text())
    assert report["environment"]["execution"]["workers"] == 2


def test_without_ray_nothing_imports_it(tmp_path: Path) -> None:
    w = mlp_weights()
    model = write_mlp(tmp_path / "m.onnx", w)
    x, y = blobs(n=64, w=w)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from auditor.testing import run_audit\n"
        f"r = run_audit({{'checks': [{{'use': 'performance.metrics'}}, {{'use': 'robustness.noise'}}]}}, "
        f"model={str(model)!r}, data={str(tmp_path / 'd.npz')!r}, workdir=Path({str(tmp_path)!r}))\n"
        "assert r.exit_code == 0, r.error\n"
        "print('ray' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_a_bad_execution_section_is_a_spec_error(tmp_path: Path) -> None:
    w = mlp_weights()
    model = write_mlp(tmp_path / "m.onnx", w)
    res = run_audit({"checks": [{"use": "sparsity.profile"}], "execution": {"engine": "dask", "wrokers": 2}},
                    model=model, workdir=tmp_path)
    assert res.exit_code == 2
    assert "execution.engine" in (res.error or "") and "wrokers" in (res.error or "")


def test_a_two_input_model_gives_the_same_report_on_ray(cluster: None, tmp_path: Path) -> None:
    """A recurrent cell with a [layers, batch, hidden] state: each shard carries its rows' states."""
    from builders import FLOAT, save_model
    from onnx import helper

    r = np.random.default_rng(0)
    w = {"W": r.normal(size=(4, 3)).astype(np.float32), "U": r.normal(size=(3, 3)).astype(np.float32),
         "axes": np.array([0], np.int64)}
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Squeeze", ["h", "axes"], ["h0"]),
             helper.make_node("MatMul", ["h0", "U"], ["hu"]), helper.make_node("Add", ["xw", "hu"], ["logits"])]
    model = save_model(nodes, [helper.make_tensor_value_info("x", FLOAT, ["N", 4]),
                               helper.make_tensor_value_info("h", FLOAT, [1, "N", 3])],
                       [helper.make_tensor_value_info("logits", FLOAT, ["N", 3])], w, tmp_path / "rnn.onnx")
    x, h = r.normal(size=(300, 4)).astype(np.float32), r.normal(size=(300, 1, 3)).astype(np.float32)
    y = (x @ w["W"] + h[:, 0] @ w["U"]).argmax(1)
    np.savez(tmp_path / "rnn.npz", x=x, h=h, y=y)
    doc = {"model": {"path": str(model)}, "data": {"path": str(tmp_path / "rnn.npz")}, "seed": 4,
           "checks": [{"use": "performance.metrics"}, {"use": "robustness.noise", "with": {"sigma": [0.5, 1.0]}}],
           "report": {"dir": str(tmp_path / "reports")}}
    local = run_audit(doc, workdir=tmp_path)
    on_ray = run_audit({**doc, "execution": {"engine": "ray", "workers": 2}}, workdir=tmp_path)
    assert local.exit_code == on_ray.exit_code == 0, (local.error, on_ray.error)
    assert_same(local.doc, on_ray.doc)
    assert on_ray.metrics("performance.metrics")["accuracy"] == 1.0


def test_the_checks_that_ran_whole_shard_on_ray_with_the_same_report(
        cluster: None, exact_audit: tuple[Path, dict[str, Any], Any]) -> None:
    """transfer.attribution_distance, transfer.similarity, torch.parity, bias.leakage and bias.shortcut: the
    small shards of tests/shard_exact.py on two workers against the same shards run locally."""
    from shard_exact import SHARD_ROWS, audit

    d, files, local = exact_audit
    on_ray = audit(d, files, SHARD_ROWS, engine="ray", workers=2)
    assert local.exit_code == on_ray.exit_code
    assert_same(local.doc, on_ray.doc)
    assert on_ray.doc["environment"]["execution"]["engine"] == "ray"
    assert on_ray.metrics("bias.shortcut")["n"] == 280 and on_ray.metrics("attribution.mean")["n"] > 0


def test_torch_attacks_in_pixel_space_give_the_same_report_on_ray(cluster: None, tmp_path: Path) -> None:
    """torch.pgd (random starts from each sample's stream) and torch.blind_spots on stored pixels with
    ImageNet normalisation declared: they attack un-normalised pixels, in three shards each, locally and on Ray."""
    pytest.importorskip("torch", reason="the torch extra is not installed")
    from builders import linear_image_model

    r = np.random.default_rng(3)
    w = r.normal(size=(75, 3)) * 0.1
    model = linear_image_model(tmp_path / "img.onnx", w, np.zeros(3))
    raw = r.integers(0, 256, (150, 5, 5, 3)).astype(np.uint8)
    x = (raw.transpose(0, 3, 1, 2).reshape(150, -1) / 255 - np.repeat([0.485, 0.456, 0.406], 25)) \
        / np.repeat([0.229, 0.224, 0.225], 25)
    np.savez(tmp_path / "img.npz", x=raw, y=(x @ w).argmax(1))
    pre = {"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    doc = {"model": {"path": str(model)}, "data": {"path": str(tmp_path / "img.npz"), "preprocess": pre},
           "seed": 5, "execution": {"engine": "local", "shard_rows": 50}, "report": {"dir": str(tmp_path / "reports")},
           "checks": [{"use": "torch.pgd", "with": {"eps": 0.05, "steps": 1, "step_size": 0.025}},
                      {"use": "torch.blind_spots", "with": {"limit": 120, "steps": 3}}]}
    local = run_audit(doc, workdir=tmp_path)
    on_ray = run_audit({**doc, "execution": {"engine": "ray", "workers": 2, "shard_rows": 50}}, workdir=tmp_path)
    assert local.exit_code == on_ray.exit_code == 0, (local.error, on_ray.error)
    assert_same(local.doc, on_ray.doc)
    assert 0 < on_ray.metrics("torch.pgd")["success_rate"] < 1
    assert on_ray.metrics("torch.blind_spots")["n_pairs"] == 120
    assert "un-normalised pixel range" in " ".join(on_ray.check("torch.pgd").notes)
