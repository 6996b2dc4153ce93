"""Benchmark: one forward-heavy audit (Square Attack + a Gaussian noise sweep on a few thousand images) on this
machine, and the same audit on a local 2-worker Ray cluster limited to the same CPU cores, in one run.

The single-machine run already uses every core through ONNX Runtime's intra-op threads; the Ray workers get one
core (one ONNX Runtime thread) each, so what the cluster gains here is the Python-side work of the attack and the
sweep (window sampling, candidate building, margins) running in two processes instead of one.

Measured, each ``--repeats`` times alternately (the fastest of each is compared, so a busy machine slows both
alike): the audit's ``Runner.run`` locally and on Ray (workers started inside the timed region; Ray's own start-up
timed separately); the ceiling, the same audit's shards split in two static halves run at once by two plain OS
processes (no Ray; one ONNX Runtime intra-op thread and one BLAS/OpenMP thread each, started before the clock:
the best any two-process scheme can do on this machine, see :func:`ceiling`); and a tiny audit
(``performance.metrics`` on 200 rows) locally and on Ray, whose difference is the Ray overhead per audit. The Ray
and the ceiling's reports are compared with the single machine's field by field (timings and
``environment.execution`` aside) and must be identical. Per-shard costs (single-machine wall time over the shards
of each check; a Ray worker's and a ceiling process's mean per task, one core each) feed the on-paper
extrapolation in docs/ray.md.

    python benchmarks/bench_ray.py                 # 3,072 images of 3x32x32, best of 3
    python benchmarks/bench_ray.py --quick         # a smoke test
    python benchmarks/bench_ray.py --shard-rows 256  # execution.shard_rows for both runs

Figures are printed, ending with one summary line (``bench_ray: ...``: the speed-up of the Ray run and of the
ceiling over the single machine, Ray's share of the ceiling, the Ray overhead on a tiny audit, whether the reports
are identical), and written to ``benchmarks/results/ray.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]


def write_cnn(path: Path, c: int, hw: int, classes: int, seed: int = 0) -> Path:
    """A small random CNN: Conv 3x3 (16) -> Relu -> Conv 3x3 stride 2 (32) -> Relu -> global average pool ->
    Gemm -> logits -> Softmax, dynamic batch, IR 9."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    r = np.random.default_rng(seed)
    inits = {
        "W1": (r.normal(size=(16, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32),
        "B1": r.normal(scale=0.1, size=16).astype(np.float32),
        "W2": (r.normal(size=(32, 16, 3, 3)) / np.sqrt(9 * 16)).astype(np.float32),
        "B2": r.normal(scale=0.1, size=32).astype(np.float32),
        "W3": r.normal(size=(32, classes)).astype(np.float32),
        "B3": np.zeros(classes, np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "W2", "B2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "W3", "B3"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    g = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, hw, hw])],
                          [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", classes])],
                          initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="bench_ray")
    m.ir_version = 9
    onnx.save(m, str(path))
    return path


def precompile() -> bool:
    """Write the package's and the plugins' bytecode (``__pycache__`` next to the sources, ignored by git), as
    Python does on a first import and an installed package ships it. Where ``PYTHONDONTWRITEBYTECODE`` is set
    (the development machine) no process writes it, so every Ray worker would compile the whole package again
    as it starts (about 0.5 s of CPU each here), a cost the single-machine run, whose imports happen before
    the clock starts, never shows. Returns whether every file compiled."""
    import compileall

    return all(compileall.compile_dir(str(ROOT / d), quiet=1) for d in ("auditor", "plugins"))


def comparable(doc: Any, path: str = "") -> Any:
    """The report without timings, ``environment.execution`` and the notes saying that a shard ran again."""
    if isinstance(doc, dict):
        return {k: comparable(v, f"{path}.{k}") for k, v in doc.items()
                if k not in ("duration_s", "started_at") and f"{path}.{k}" != ".environment.execution"}
    if isinstance(doc, list):
        return [comparable(v, path) for v in doc
                if not (path.endswith(".notes") and isinstance(v, str) and v.startswith("ray: "))]
    return doc


def run(doc: dict[str, Any], workdir: Path, registry: Any) -> tuple[float, dict[str, Any]]:
    """Wall time of ``Runner.run`` (models and data loaded before the clock starts) and the report."""
    from auditor.runner import load_inputs, make_runner
    from auditor.spec import parse_spec

    spec = parse_spec(workdir / "spec.yaml", registry.checks, sorted(registry.reporters), doc={"version": 1, **doc})
    loaded = load_inputs(spec, registry.datasets)
    t0 = time.perf_counter()
    report = make_runner(spec, registry).run(loaded)
    return time.perf_counter() - t0, report.to_dict()


def two_thread_workers() -> Any:
    """The Ray worker class with two ONNX Runtime intra-op threads a worker and spinning off
    (``session.intra_op.allow_spinning = 0``), for the thread-settings comparison: when one worker is in its
    Python-side work, the other's forward passes could use both cores, and threads that wait sleep instead of
    spinning on a core the other worker needs. A measurement only (the engine gives a worker one thread per core
    it reserves): the class patches the session options in the worker process it runs in."""
    from auditor.distributed.worker import AuditWorker

    class TwoThreadWorker(AuditWorker):
        def __init__(self, spec: Any, recipe: Any, sys_path: list[str], threads: int, from_driver: bool,
                     *data: Any) -> None:
            from auditor.model import ModelHandle

            plain = ModelHandle._session_options

            def no_spinning(handle: Any) -> Any:
                so = plain(handle)
                so.add_session_config_entry("session.intra_op.allow_spinning", "0")
                return so

            setattr(ModelHandle, "_session_options", no_spinning)  # noqa: B010 (patched on purpose)
            super().__init__(spec, recipe, sys_path, 2, from_driver, *data)

    return TwoThreadWorker


def run_with_workers(worker_cls: Any, doc: dict[str, Any], workdir: Path, registry: Any) -> tuple[float,
                                                                                                  dict[str, Any]]:
    """:func:`run` on Ray with the engine's worker class replaced by ``worker_cls``."""
    from auditor.distributed import engine

    plain = vars(engine)["AuditWorker"]
    vars(engine)["AuditWorker"] = worker_cls
    try:
        return run(doc, workdir, registry)
    finally:
        vars(engine)["AuditWorker"] = plain


#: The environment of the ceiling's processes: one thread for every pool a forward pass or numpy might use.
ONE_THREAD = {"AUDITOR_ORT_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def ceiling_worker(conn: Any, spec: Any, recipe: Any, path: list[str]) -> None:
    """One of the ceiling's two plain processes (no Ray): the Ray worker's own code (models and data loaded
    once, one ONNX Runtime thread), fed its half of the shards through a pipe."""
    from auditor.distributed.worker import AuditWorker

    worker = AuditWorker(spec, recipe, path, 1, False)
    conn.send("ready")
    while (tasks := conn.recv()) is not None:
        conn.send([worker.run_shard(*task) for task in tasks])


def ceiling(doc: dict[str, Any], workdir: Path, registry: Any) -> tuple[float, float, dict[str, float],
                                                                        dict[str, Any]]:
    """The empirical ceiling of any two-process scheme on this machine: the audit's shards, planned on this
    process as the local run plans them, split in two static halves (the first half of every check's shards,
    the second half) run at once by two plain OS processes (one ONNX Runtime intra-op thread and one
    BLAS/OpenMP thread each, started and loaded before the clock starts), merged here. No scheduler, no
    object store, no start-up in the timed region: what is left is the work itself on one core each.

    Returns the wall time (planning, both halves, merging), the processes' start-up time (outside the timed
    region), each check's mean wall time per shard in these processes, and the report, which must equal the
    single machine's."""
    import datetime as dt
    import multiprocessing as mp

    from auditor.distributed.worker import RegistryRecipe
    from auditor.results import validate_result
    from auditor.runner import Runner, _Outcome, load_inputs
    from auditor.shards import params_for, shards_of
    from auditor.spec import parse_spec

    spec = parse_spec(workdir / "spec.yaml", registry.checks, sorted(registry.reporters), doc={"version": 1, **doc})
    loaded = load_inputs(spec, registry.datasets)
    spawn = mp.get_context("spawn")  # a fresh interpreter, as a Ray worker is: no forked ONNX Runtime state
    saved = {k: os.environ.get(k) for k in ONE_THREAD}
    os.environ.update(ONE_THREAD)  # read by the children as they start (numpy's BLAS at import)
    t_start = time.perf_counter()
    try:
        pipes, procs = [], []
        for _ in range(2):
            here, there = spawn.Pipe()
            proc = spawn.Process(target=ceiling_worker, args=(there, spec, RegistryRecipe.of(registry), sys.path))
            proc.start()
            pipes.append(here)
            procs.append(proc)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:  # the processes end whatever happens here (else the interpreter waits for them at exit)
        for pipe in pipes:
            if pipe.recv() != "ready":
                raise RuntimeError("a ceiling process did not start")
        startup = time.perf_counter() - t_start
        runner = Runner(spec, registry)
        started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        t0 = time.perf_counter()
        jobs: list[tuple[Any, ...]] = []
        halves: tuple[list[Any], list[Any]] = ([], [])
        for ci, cs in enumerate(spec.checks):
            info = registry.checks[cs.use]
            check, ctx = info.cls(), runner._context(cs, loaded, "model")
            params = params_for(info.cls, ctx)
            plan = check.plan(ctx, params)
            shards = shards_of(check, ctx, plan)
            cut = -(-len(shards) // 2)
            first, second = sorted(halves, key=len)  # an odd count: the larger part to the half with fewer so far
            first.extend((ci, "model", plan, s) for s in shards[:cut])
            second.extend((ci, "model", plan, s) for s in shards[cut:])
            jobs.append((cs, info, check, ctx, params, plan))
        for pipe, half in zip(pipes, halves):
            pipe.send(half)
        partials: dict[int, dict[int, Any]] = {}
        per_shard: dict[str, list[float]] = {}
        for pipe, half in zip(pipes, halves):
            for (ci, _, _, shard), out in zip(half, pipe.recv()):
                if "partial" not in out:
                    raise RuntimeError(f"ceiling: a shard of {spec.checks[ci].id} did not run: {out}")
                partials.setdefault(ci, {})[shard.index] = out["partial"]
                per_shard.setdefault(spec.checks[ci].id, []).append(out["duration"])
        reports = []
        for ci, (cs, info, check, ctx, params, plan) in enumerate(jobs):
            result = validate_result(check.merge(ctx, params, plan, [partials[ci][i] for i in sorted(partials[ci])]))
            reports.append(runner.finish_check(cs, info, _Outcome(result=result, duration=time.perf_counter() - t0),
                                               None))
        report = runner.assemble(reports, loaded, False, started, time.perf_counter() - t0)
        wall = time.perf_counter() - t0
    finally:
        for pipe, proc in zip(pipes, procs):
            with contextlib.suppress(OSError):
                pipe.send(None)
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
    return wall, startup, {k: sum(v) / len(v) for k, v in per_shard.items()}, report.to_dict()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3072)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--queries", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each audit; the fastest counts")
    ap.add_argument("--shard-rows", type=int, default=None, help="execution.shard_rows (default: the checks' 512)")
    ap.add_argument("--quick", action="store_true", help="512 images, 20 queries, 1 repeat")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ray.json")
    ap.add_argument("--no-precompile", action="store_true",
                    help="do not write the package's bytecode first (under PYTHONDONTWRITEBYTECODE each Ray worker "
                         "then compiles the package's sources as it starts)")
    args = ap.parse_args()
    if args.quick:
        args.images, args.queries, args.repeats = 512, 20, 1

    import onnxruntime
    import ray

    from auditor.distributed.engine import start_local
    from auditor.plugins import build_registry

    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    bytecode = not args.no_precompile and precompile()
    model = write_cnn(work / "cnn.onnx", 3, args.size, 10)
    r = np.random.default_rng(0)
    x = r.random((args.images, 3, args.size, args.size), dtype=np.float32)
    sess = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": x})[0].argmax(axis=1)  # the model's own classes: every image is attacked
    np.savez(work / "data.npz", x=x, y=y)
    base = {"model": {"path": str(model)}, "data": {"path": str(work / "data.npz")}, "seed": 0,
            "report": {"dir": str(work / "reports")}}
    heavy = {**base, "checks": [
        {"use": "robustness.square_attack", "with": {"limit": None, "max_queries": args.queries, "eps": 0.01}},
        {"use": "robustness.noise", "with": {"limit": None, "sigma": [0.05, 0.1, 0.2], "repeats": 2}},
    ]}
    tiny = {**base, "data": {**base["data"], "limit": 200}, "checks": [{"use": "performance.metrics"}]}
    sizing = {} if args.shard_rows is None else {"shard_rows": args.shard_rows}
    if sizing:
        heavy["execution"] = {"engine": "local", **sizing}
    on_ray = {"execution": {"engine": "ray", "workers": 2, **sizing}}
    registry = build_registry()

    t0 = time.perf_counter()
    start_local(num_cpus=2, _node_ip_address="127.0.0.1")  # as an audit starts it (workers' priority included)
    ray_start = time.perf_counter() - t0
    times: dict[str, list[float]] = {"local": [], "ray": [], "ceiling": [], "ray_2threads": [], "tiny_local": [],
                                     "tiny_ray": []}
    two_threads = two_thread_workers()
    ceiling_startup: list[float] = []
    ceiling_costs: list[dict[str, float]] = []  # per-shard wall time in the ceiling's processes, each run
    loads: dict[str, list[float]] = {k: [] for k in times}
    timing: list[dict[str, Any]] = []  # the Ray report's environment.execution.timing of each heavy run
    reports: dict[str, dict[str, Any]] = {}
    same = True
    for _ in range(args.repeats):  # interleaved: a load that comes and goes slows both runs of a pair alike
        for key, doc in (("local", heavy), ("ray", {**heavy, **on_ray}), ("ceiling", heavy),
                         ("ray_2threads", {**heavy, **on_ray}), ("tiny_local", tiny), ("tiny_ray", {**tiny, **on_ray})):
            loads[key].append(os.getloadavg()[0])
            if key == "ceiling":
                wall, up, costs, rep = ceiling(doc, work, registry)
                ceiling_startup.append(up)
                ceiling_costs.append(costs)
            elif key == "ray_2threads":
                wall, rep = run_with_workers(two_threads, doc, work, registry)
            else:
                wall, rep = run(doc, work, registry)
            times[key].append(wall)
            reports[key] = rep
            if key == "ceiling":
                same = same and comparable(reports["local"]) == comparable(rep)
                print(f"{key:>12}: {wall:7.2f} s  (load {loads[key][-1]:.1f}; two plain processes, up in {up:.2f} s "
                      f"outside the clock)", flush=True)
            elif key in ("ray", "ray_2threads"):
                t = rep["environment"]["execution"]["timing"]
                if key == "ray":
                    timing.append(t)
                same = same and comparable(reports["local"]) == comparable(rep)
                busy = " / ".join(f"{w['busy_s']:.1f}" for w in t["workers"])
                cpu = " / ".join(f"{w['cpu_s']:.1f}" for w in t["workers"])
                print(f"{key:>12}: {wall:7.2f} s  (load {loads[key][-1]:.1f}; workers up in {t['startup_s']:.2f} s, "
                      f"efficiency {t['efficiency']:.2f}, busy {busy} s, cpu {cpu} s)", flush=True)
            else:
                print(f"{key:>12}: {wall:7.2f} s  (load {loads[key][-1]:.1f})", flush=True)
    ray.shutdown()
    best = {k: min(v) for k, v in times.items()}
    shards = -(-args.images // (args.shard_rows or 512))
    fastest = timing[times["ray"].index(best["ray"])]
    # per-shard costs: the single machine's (check wall time over its shards, both cores through ONNX Runtime's
    # threads) and the Ray workers' own (mean task time, one core each), from the fastest run of each
    local_shard = {c["id"]: c["duration_s"] / shards for c in reports["local"]["checks"]}
    ray_shard = {k: v["per_task_s"] for k, v in fastest["checks"].items()}
    ceiling_shard = ceiling_costs[times["ceiling"].index(best["ceiling"])]  # one plain process, one core
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "ray": ray.__version__, "onnxruntime": onnxruntime.__version__},
        "audit": {"images": args.images, "shape": [3, args.size, args.size], "square_attack_max_queries": args.queries,
                  "noise_sigmas": 3, "noise_repeats": 2, "shards_per_check": shards, "workers": 2,
                  "shard_rows": args.shard_rows or 512, "repeats": args.repeats},
        "load_average": os.getloadavg(),
        "load_average_at_each_run": loads,
        "times_s": times,
        "best_s": best,
        "speedup_ray_vs_local": best["local"] / best["ray"],
        "speedup_per_pair": [lo / ra for lo, ra in zip(times["local"], times["ray"])],
        # the ceiling: two plain processes, one core each, each running a static half of the shards
        "speedup_ceiling_vs_local": best["local"] / best["ceiling"],
        "ceiling_per_pair": [lo / ce for lo, ce in zip(times["local"], times["ceiling"])],
        "ray_share_of_ceiling": best["ceiling"] / best["ray"],
        "ray_share_of_ceiling_per_run": [ce / ra for ce, ra in zip(times["ceiling"], times["ray"])],
        "ceiling_startup_s": ceiling_startup,
        # Ray with two ONNX Runtime threads a worker and spinning off (see two_thread_workers)
        "speedup_ray_2threads_vs_local": best["local"] / best["ray_2threads"],
        "ray_2threads_per_pair": [lo / ra for lo, ra in zip(times["local"], times["ray_2threads"])],
        "ray_start_s": ray_start,
        "worker_bytecode": "precompiled" if bytecode else "compiled by each worker" if sys.dont_write_bytecode
        else "written and reused by Python",
        "ray_overhead_tiny_audit_s": best["tiny_ray"] - best["tiny_local"],
        "reports_identical": same,
        "per_shard_cost_s": local_shard,
        "per_shard_cost_ray_worker_s": ray_shard,
        "per_shard_cost_ceiling_process_s": ceiling_shard,
        "ray_timing_fastest_run": fastest,
        "square_attack_queries_total": reports["local"]["checks"][0]["metrics"]["queries_total"],
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    cost_text = ", ".join(f"{k.split('.')[-1]} {local_shard[k]:.2f} / {ray_shard.get(k, float('nan')):.2f} / "
                          f"{ceiling_shard.get(k, float('nan')):.2f} s" for k in local_shard)
    print(f"bench_ray: Ray (2 workers) {result['speedup_ray_vs_local']:.2f}x the single machine, best of "
          f"{args.repeats} (local {best['local']:.1f} s, ray {best['ray']:.1f} s; pairs "
          f"{', '.join(f'{r:.2f}x' for r in result['speedup_per_pair'])}; {args.images} images, {args.queries} "
          f"queries, {shards} shards a check); ceiling (two plain processes, one core each) "
          f"{result['speedup_ceiling_vs_local']:.2f}x the single machine (ceiling {best['ceiling']:.1f} s; pairs "
          f"{', '.join(f'{r:.2f}x' for r in result['ceiling_per_pair'])}), Ray / ceiling "
          f"{result['ray_share_of_ceiling']:.2f} (per run "
          f"{', '.join(f'{r:.2f}' for r in result['ray_share_of_ceiling_per_run'])}); Ray with 2 ORT threads a "
          f"worker, spinning off, {result['speedup_ray_2threads_vs_local']:.2f}x (pairs "
          f"{', '.join(f'{r:.2f}x' for r in result['ray_2threads_per_pair'])}); Ray overhead on a tiny audit "
          f"{result['ray_overhead_tiny_audit_s']:.1f} s, workers up in {fastest['startup_s']:.1f} s, efficiency "
          f"{fastest['efficiency']:.2f}; per shard (local / one Ray worker / one ceiling process): {cost_text}; "
          f"ray.init {ray_start:.1f} s; workers' bytecode {result['worker_bytecode']}; reports "
          f"{'identical' if same else 'DIFFERENT'}; load average "
          f"{min(min(v) for v in loads.values()):.1f}-{max(max(v) for v in loads.values()):.1f}; -> {args.out}")
    if not same:
        sys.exit("the Ray or the ceiling's report differs from the single-machine report")


if __name__ == "__main__":
    main()
