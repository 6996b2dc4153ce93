"""Audit every model of the corpus (``fetch_corpus.py``) with ``auditor run`` and write the table of
``docs/real-exports.md``.

Per model a spec is written with the weights checks (always) and synthetic data of the right shape and
dtype for every data input (uniform in [0, 1) for floats, small integers for integer inputs; digits with
labels for the scikit-learn exports) for ``torch.parity``, ``sparsity.activations`` and ``robustness.noise``
(parity only for inputs of more than 100k elements, to keep the run short). Each ``auditor run`` is a
subprocess with a time limit; its report.json is read back and the table lists, per model, the checks that
ran (with status), those skipped (with the reason) and those that errored (with the message), plus the
figures of every check that ran, the Lipschitz bound (or why it is null) next to an observed lower bound
computed here with plain ONNX Runtime, and torch/ONNX Runtime parity.

    python benchmarks/corpus/audit_corpus.py [--jobs 2] [--timeout 900] [--only SUBSTRING] [--table-only] [--no-docs]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml

HERE = Path(__file__).resolve().parent
MODELS = HERE / "models"
WORK = HERE / "work"
DOC = HERE.parents[1] / "docs" / "real-exports.md"
WEIGHTS = ["sparsity.profile", "sparsity.filters", "sparsity.conditioning"]
DATA = ["torch.parity", "sparsity.activations", "robustness.noise"]
TIMEOUT_S = 900  # per check by default; the whole ``auditor run`` of a model gets three times that
LIMITS = {"check_s": TIMEOUT_S}  # --timeout


def _dims(shape: list[Any], n: int) -> list[int]:
    """A concrete shape: the batch axis gets ``n`` rows (the loader chunks fixed-batch models itself), other
    unknown axes a size that image and sequence models accept (64, a multiple of 32)."""
    out = []
    for k, d in enumerate(shape):
        if k == 0:
            out.append(n)
        elif isinstance(d, int) and d > 0:
            out.append(d)
        else:
            out.append(64)
    return out


def make_data(model: onnx.ModelProto, row: dict[str, Any],
              folder: Path) -> tuple[Path | None, str | None, dict[str, Any], bool]:
    """Synthetic data for the model's data inputs: ``(npz, why not, feeds, large)``. The primary input (the
    first float one) is ``x``; other per-sample inputs get an array of their own name with the rows first
    (the loader places them on the axis that shares the primary input's batch symbol); scalar inputs get a
    fixed feed (``sr``, a sample rate, 16000)."""
    from auditor import graph as G

    if row["file"].startswith("exporters/sklearn"):
        return MODELS / "exporters" / "digits.npz", None, {}, False
    ins = [G.value_info_spec(i) for i in G.data_inputs(model.graph)]
    if any(i.shape is None or i.dtype is None for i in ins):
        return None, "an input without a tensor shape", {}, False
    feeds = {i.name: (16000 if i.name == "sr" else 1) for i in ins if not i.shape}
    batched = [i for i in ins if i.shape]
    primary = next((i for i in batched if i.dtype is not None and i.dtype.kind == "f"), batched[0])
    assert primary.shape is not None and primary.dtype is not None
    elements = int(np.prod(_dims(list(primary.shape), 1)))
    n = 4 if elements > 100_000 else 32
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {}
    sym = primary.shape[0]
    for spec in batched:
        assert spec.shape is not None and spec.dtype is not None
        shape = list(spec.shape)
        # the batch axis: the one named like the primary input's first axis, or its one unnamed axis
        axis = next((k for k, d in enumerate(shape) if d == sym and (isinstance(d, str) or (spec is not primary
                                                                       and [*shape].count(None) == 1))), 0)
        rest = [d for k, d in enumerate(shape) if k != axis]
        # unknown sizes: 64 for image axes, 512 samples for a [batch, time] signal (silero-vad's window)
        free = 512 if len(shape) == 2 else 64
        dims = [n] + [d if isinstance(d, int) and d > 0 else free for d in rest]
        if spec.dtype.kind == "f":
            arr = rng.random(dims, dtype=np.float32).astype(spec.dtype)
        elif spec.dtype.kind in "iu":
            arr = rng.integers(0, 4, size=dims).astype(spec.dtype)
        else:
            return None, f"input '{spec.name}' of type {spec.dtype}", {}, False
        arrays["x" if spec is primary else spec.name] = arr
    path = folder / "data.npz"
    np.savez(path, **arrays)
    return path, None, feeds, elements > 100_000


def spec_for(row: dict[str, Any], folder: Path) -> tuple[dict[str, Any], str | None]:
    """The spec of one model, and why data checks are left out (if they are)."""
    path = MODELS / row["file"]
    model = onnx.load(str(path), load_external_data=False)
    data, why, feeds, large = make_data(model, row, folder)
    checks: list[dict[str, Any]] = [{"use": c, "timeout_s": LIMITS["check_s"]} for c in WEIGHTS]
    doc: dict[str, Any] = {"version": 1, "model": {"path": str(path)}, "seed": 0,
                           "report": {"dir": str(folder / "report"), "formats": ["json"]}}
    if feeds:
        doc["model"]["feeds"] = feeds
    if data is not None:
        doc["data"] = {"path": str(data)}
        checks.append({"use": "torch.parity", "with": {"limit": 32}, "timeout_s": LIMITS["check_s"]})
        if not large:  # 224x224 models on a shared 2-core machine: parity only
            x = np.load(data)["x"]
            # integer ids get the perturbation that keeps them valid (substitution within the vocabulary)
            noise = ({"kind": "substitute", "severity": [0.1, 0.3]} if x.dtype.kind in "iu"
                     else {"sigma": [0.05, 0.2]})
            checks += [{"use": "sparsity.activations", "with": {"limit": 32}, "timeout_s": LIMITS["check_s"]},
                       {"use": "robustness.noise", "with": {"limit": 16, **noise}, "timeout_s": LIMITS["check_s"]}]
        if row["file"].startswith("exporters/sklearn"):
            checks.append({"use": "performance.metrics", "timeout_s": LIMITS["check_s"]})
    doc["checks"] = checks
    return doc, why


#: one BLAS / OpenMP thread per ``auditor run``: the audits run ``--jobs`` at a time, and on a shared machine
#: OpenBLAS's spinning threads slowed sparsity.conditioning on light_inception_v1 from 15 s to 195 s
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def audit(row: dict[str, Any]) -> dict[str, Any]:
    """Run ``auditor run`` on one model and summarise its report."""
    folder = WORK / row["file"].replace("/", "__").removesuffix(".onnx")
    folder.mkdir(parents=True, exist_ok=True)
    doc, why = spec_for(row, folder)
    spec = folder / "audit.yaml"
    spec.write_text(yaml.safe_dump(doc, sort_keys=False))
    report = folder / "report" / "report.json"
    report.unlink(missing_ok=True)  # never read a previous run's report
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "auditor.cli", "run", str(spec), "-q"], capture_output=True,
                              text=True, timeout=LIMITS["check_s"] * 3, env=ENV)
        code, err = proc.returncode, (proc.stderr or proc.stdout).strip().splitlines()
    except subprocess.TimeoutExpired:
        code, err = -1, ["timed out"]
    out: dict[str, Any] = {**row, "exit": code, "seconds": round(time.perf_counter() - t0, 1), "no_data": why,
                           "checks": {}}
    if code == 4 and "onnxruntime cannot load" in " ".join(err) and "data" in doc:
        # ONNX Runtime cannot run it (opsets it dropped): the weights checks need no session, so audit those
        doc.pop("data")
        doc["checks"] = [c for c in doc["checks"] if c["use"] in WEIGHTS]
        spec.write_text(yaml.safe_dump(doc, sort_keys=False))
        proc = subprocess.run([sys.executable, "-m", "auditor.cli", "run", str(spec), "-q"], capture_output=True,
                              text=True, timeout=LIMITS["check_s"] * 3, env=ENV)
        out["exit"] = proc.returncode
        out["no_data"] = "ONNX Runtime cannot load it: " + (err[-1].split("cannot load the model: ")[-1] if err else "")
        code = proc.returncode
    if code in (2, 3, 4, -1) or not report.exists():
        out["load_error"] = err[-1] if err else f"exit {code}"
        return out
    rep = json.loads(report.read_text())
    for c in rep["checks"]:
        out["checks"][c["id"]] = {
            "status": c["status"],
            "reason": c.get("skip_reason") or c.get("error") or "",
            "metrics": {k: v for k, v in (c.get("metrics") or {}).items() if not isinstance(v, (dict, list))},
            "notes": c.get("notes", []),
            "seconds": c.get("duration_s"),
        }
    cond = out["checks"].get("sparsity.conditioning", {})
    if cond.get("metrics", {}).get("lipschitz_upper_bound") is not None and "data" in doc:
        try:
            out["observed_lipschitz"] = observed_lipschitz(doc, cond["notes"])
        except Exception as exc:  # an independent cross-check: its failure is reported, not fatal
            out["observed_lipschitz_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    return out


def observed_lipschitz(doc: dict[str, Any], notes: list[str]) -> float | None:
    """An independent lower bound of the Lipschitz constant, to hold the reported upper bound against: the
    largest ``||f(a) - f(b)||_2 / ||a - b||_2`` per sample, computed with plain ONNX Runtime on the audit's data,
    over small random perturbations (1e-3 and 1e-2 of the input scale) and over pairs of different rows.
    ``None`` when the bound's output cannot be fetched or the model takes more than one data input."""
    import re

    import onnxruntime as ort
    from onnx import helper

    from auditor import graph as G

    note = next((n for n in notes if n.startswith("lipschitz_upper_bound: L2 bound")), "")
    found = re.search(r"from '([^']*)' to '([^']*)'", note)
    if found is None:
        return None
    x_name, y_name = found.groups()
    model = onnx.load(doc["model"]["path"])
    if len(G.data_inputs(model.graph)) != 1:
        return None
    if y_name not in {o.name for o in model.graph.output}:
        model.graph.output.append(helper.make_empty_tensor_value_info(y_name))
    model.ir_version = min(model.ir_version, 10)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.load(doc["data"]["path"])["x"]
    if x.dtype.kind != "f":
        return None
    x = x[:32].astype(np.float32)

    dim0 = next(i for i in G.data_inputs(model.graph) if i.name == x_name).type.tensor_type.shape.dim[0]
    step = dim0.dim_value if dim0.HasField("dim_value") and dim0.dim_value > 0 else len(x)
    x = x[:len(x) // step * step]  # a fixed-batch export gets whole batches of its size

    def f(a: np.ndarray) -> np.ndarray:
        outs = [np.asarray(sess.run([y_name], {x_name: a[i:i + step]})[0], np.float64) for i in range(0, len(a), step)]
        return np.concatenate(outs).reshape(len(a), -1)

    rng = np.random.default_rng(0)
    fx = f(x)
    best = 0.0
    scale = float(np.std(x)) or 1.0
    for s in (1e-3, 1e-2):
        a = x + rng.normal(0, s * scale, x.shape).astype(np.float32)
        fa = f(a)
        d_in = np.linalg.norm((a - x).reshape(len(x), -1).astype(np.float64), axis=1)
        best = max(best, float(np.max(np.linalg.norm(fa - fx, axis=1) / d_in)))
    b, fb = np.roll(x, 1, axis=0), np.roll(fx, 1, axis=0)
    d_in = np.linalg.norm((b - x).reshape(len(x), -1).astype(np.float64), axis=1)
    ok = d_in > 0
    if ok.any():
        best = max(best, float(np.max(np.linalg.norm(fb - fx, axis=1)[ok] / d_in[ok])))
    return best


def _short(cid: str, c: dict[str, Any]) -> str:
    """The check's status and the figures the table shows for it."""
    m = c.get("metrics", {})

    def g(k: str) -> Any:
        return m.get(k)

    figs = ""
    if cid == "sparsity.profile" and g("params") is not None:
        q = f", {g('quantization_zeros')} from quantization" if g("quantization_zeros") else ""
        figs = f"{g('zeros')} of {g('params')} weights zero{q}"
    elif cid == "sparsity.filters" and g("filters") is not None:
        figs = f"{g('degenerate_filters')} of {g('filters')} filters degenerate"
    elif cid == "sparsity.conditioning" and g("matrices") is not None:
        mc = g("max_condition_number")
        figs = f"{g('singular_matrices')} of {g('matrices')} matrices singular" + (
            f", max condition {mc:.3g}" if mc is not None else "")
    elif cid == "sparsity.activations" and g("units") is not None:
        figs = f"{g('dead_units')} of {g('units')} units dead"
    elif cid == "robustness.noise":
        if g("max_amplification") is not None:
            figs = f"noise amplification {g('max_amplification'):.3g}"
        elif g("flip_rate") is not None:
            at = f"σ {g('worst_sigma')}" if g("worst_sigma") is not None else f"severity {g('worst_severity')}"
            figs = f"flip rate {g('flip_rate'):.3g} at {at} (n {g('n')})"
    elif cid == "performance.metrics" and g("accuracy") is not None:
        figs = f"accuracy {g('accuracy'):.3g} (n {g('n')})"
    elif cid == "torch.parity" and g("max_abs_diff") is not None:
        figs = f"max diff {g('max_abs_diff'):.2g}"
    return f"{cid} ({c['status']}{': ' + figs if figs else ''})"


def _reason(c: dict[str, Any]) -> str:
    return " ".join(str(c["reason"]).split())[:140]


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown of docs/real-exports.md."""
    lines = ["| model | source / exporter | ran | skipped (reason) | errored | Lipschitz bound | parity |",
             "|---|---|---|---|---|---|---|"]
    totals = {"models": len(rows), "errored_checks": 0, "load_errors": 0, "ran": 0, "skipped": 0}
    for r in rows:
        src = f"{r['source']}; {r['exporter']}"
        if "load_error" in r:
            totals["load_errors"] += 1
            lines.append(f"| {r['name']} | {src} | — | — | load: {r['load_error'][:160]} | | |")
            continue
        cs = r["checks"]
        ran = [_short(k, v) for k, v in cs.items() if v["status"] not in ("skipped", "error")]
        skipped = [f"{k}: {_reason(v)}" for k, v in cs.items() if v["status"] == "skipped"]
        if r.get("no_data"):
            skipped.append(f"data checks: {r['no_data']}")
        errored = [f"{k}: {_reason(v)}" for k, v in cs.items() if v["status"] == "error"]
        totals["ran"] += len(ran)
        totals["skipped"] += len(skipped)
        totals["errored_checks"] += len(errored)
        cond = cs.get("sparsity.conditioning", {})
        lip = cond.get("metrics", {}).get("lipschitz_upper_bound") if cond else None
        lip_s = "—"
        if cond and cond.get("status") not in ("skipped", "error"):
            if lip is None:
                why = next((n for n in cond.get("notes", []) if n.startswith("lipschitz_upper_bound")), "")
                lip_s = "null: " + why.split("bounds: ")[-1][:90] if "bounds: " in why else "null"
            else:
                lip_s = f"{lip:.3g}"
                obs = r.get("observed_lipschitz")
                if r.get("observed_lipschitz_error"):
                    lip_s += f" (no observed value: {r['observed_lipschitz_error']})"
                if obs is not None:
                    lip_s += f" (observed {obs:.2g}{'' if obs <= lip else ': ABOVE THE BOUND'})"
        par = cs.get("torch.parity", {})
        par_s = "—"
        if par and par.get("status") not in ("skipped", "error"):
            pm = par["metrics"]
            par_s = f"max diff {pm['max_abs_diff']:.2g}, {pm['violations']} violations"
            if pm.get("reference_max_abs_diff") is not None:
                par_s += (f"; vs ONNX Runtime unoptimized {pm['reference_max_abs_diff']:.2g}, "
                          f"{pm.get('reference_violations')} violations")
        lines.append(f"| {r['name']} | {src} | {', '.join(ran) or '—'} | {'; '.join(skipped) or '—'} | "
                     f"{'; '.join(errored) or '—'} | {lip_s} | {par_s} |")
    head = (f"{totals['models']} models: {totals['ran']} checks ran, {totals['skipped']} skipped with a reason, "
            f"{totals['errored_checks']} errored; {totals['load_errors']} models could not be loaded.")
    return head + "\n\n" + "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="")
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument("--timeout", type=int, default=TIMEOUT_S, help="seconds per check (a model: three times that)")
    ap.add_argument("--jobs", type=int, default=3)
    ap.add_argument("--table-only", action="store_true", help="rewrite the table from the last run's results")
    args = ap.parse_args()
    manifest = json.loads((MODELS / "manifest.json").read_text())
    LIMITS["check_s"] = args.timeout
    todo = [r for r in manifest if not args.only or args.only in r["name"]]

    todo.sort(key=lambda r: (MODELS / r["file"]).stat().st_size)  # small first: a cut-short run covers most
    WORK.mkdir(parents=True, exist_ok=True)
    done = WORK / "results.jsonl"
    if args.table_only:
        rows = [json.loads(line) for line in done.read_text().splitlines()] if done.exists() else []
        latest = {r["name"]: r for r in rows}  # a model audited again (--only) counts once, as last seen
        return _write(list(latest.values()), manifest, args)
    if not args.only:
        done.write_text("")

    def one(row: dict[str, Any]) -> dict[str, Any]:
        res = audit(row)
        with done.open("a") as f:
            f.write(json.dumps(res, default=str) + "\n")
        print(f"{res['name']:<45} exit {res['exit']:>2} {res['seconds']:>6}s "
              + (res.get("load_error") or " ".join(f"{k.split('.')[1]}={v['status']}"
                                                  for k, v in res["checks"].items())), flush=True)
        return res

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # each audit is its own process
        rows = list(pool.map(one, todo))
    return _write(rows, manifest, args)


def _write(rows: list[dict[str, Any]], manifest: list[dict[str, Any]], args: argparse.Namespace) -> int:
    order = {r["name"]: k for k, r in enumerate(manifest)}
    rows = sorted(rows, key=lambda r: order.get(r["name"], 0))
    missing = [r["name"] for r in manifest if r["name"] not in {x["name"] for x in rows}]
    (WORK / "results.json").write_text(json.dumps(rows, indent=1, default=str))
    if not args.no_docs:
        text = DOC.read_text() if DOC.exists() else ""
        marker = "<!-- corpus-table -->"
        body = table(rows)
        if missing:
            body += (f"\nNot audited in this run ({len(missing)}: a run cut short): {', '.join(missing)}.\n")
        if marker in text:
            pre, _, rest = text.partition(marker)
            _, _, post = rest.partition(marker)
            DOC.write_text(pre + marker + "\n" + body + marker + post)
        else:
            DOC.write_text(text + f"\n{marker}\n{body}{marker}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
