"""A longer fuzz of the two entry points a hostile user controls: the spec (YAML text) and the model (ONNX
bytes). The generators are the test suite's (``tests/fuzzing.py``); here they run for many more inputs, each
audit through the real ``auditor run`` command in a worker process, so that a crash of the interpreter itself
(a segfault in a native library) or a hang is caught and counted instead of ending the fuzz.

Every outcome must be a documented exit code (0, 1, 2, 4) with no traceback and, for 2 and 4, one error line.
Anything else is a finding: exit 3 (internal error), another code, a traceback, a crash (killed by a signal),
or a hang (no answer within ``--timeout`` seconds).

Run: ``python benchmarks/fuzz_inputs.py [--specs 1000] [--models 300] [--timeout 60]``; it prints a table of
inputs tried and findings per kind, and the first few findings in full.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugins"), str(REPO / "tests")]

DOCUMENTED = {0, 1, 2, 4}


def classify(code: int, out: str, spec_ok_expected: bool = False) -> str | None:
    """``None`` for a documented outcome, else what went wrong."""
    if "Traceback" in out:
        return "traceback"
    if code not in DOCUMENTED:
        return f"exit {code}"
    if code in (2, 4) and sum(ln.startswith("error:") for ln in out.splitlines()) != 1:
        return "error not on one line"
    return None


def worker(kind: str, start: int, count: int, workdir: Path, results: Path) -> None:
    """Run inputs ``start .. start+count`` of ``kind`` in this process, one JSON line per input."""
    import fuzzing
    import numpy as np
    import onnx
    import yaml
    from builders import blobs, mlp_weights, write_mlp
    from click.testing import CliRunner
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed

    from auditor.cli import main

    if not (workdir / "mlp.onnx").exists():
        w = mlp_weights()
        write_mlp(workdir / "mlp.onnx", w)
        x, y = blobs(n=40, w=w)
        np.savez(workdir / "data.npz", x=x, y=y)
    model = onnx.load(str(workdir / "mlp.onnx"))

    def audit(spec: Path) -> tuple[int, str]:
        r = CliRunner().invoke(main, ["run", str(spec), "-q", "--disable", "torch"])
        return r.exit_code, r.stderr + r.stdout

    with open(results, "a", encoding="utf-8") as log:
        def record(i: int, code: int, out: str, what: str, t0: float) -> None:
            log.write(json.dumps({"i": i, "code": code, "problem": classify(code, out), "what": what[:400],
                                  "tail": out[-1500:], "s": round(time.perf_counter() - t0, 3)}) + "\n")
            log.flush()

        if kind == "models":
            for i in range(start, start + count):
                t0 = time.perf_counter()
                rng = random.Random(i)
                path = workdir / "mutant.onnx"
                path.write_bytes(fuzzing.mutate_model(model, rng))
                doc: dict[str, Any] = {"version": 1, "model": {"path": str(path)},
                                       "checks": [{"use": "sparsity.profile"}], "report": {"dir": str(workdir / "r")}}
                if rng.random() < 0.7:
                    doc["data"] = {"path": str(workdir / "data.npz")}
                    doc["checks"].append({"use": "performance.metrics"})
                spec = workdir / "mutant.yaml"
                spec.write_text(yaml.safe_dump(doc))
                code, out = audit(spec)
                record(i, code, out, f"model mutation {i}", t0)
            return

        counter = [start]

        @hseed(start)
        @settings(max_examples=count, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(text=fuzzing.spec_texts())
        def one(text: str) -> None:
            t0 = time.perf_counter()
            spec = workdir / "spec.yaml"
            spec.write_text(text, encoding="utf-8", errors="surrogatepass")
            code, out = audit(spec)
            record(counter[0], code, out, text, t0)
            counter[0] += 1

        one()


def run_kind(kind: str, total: int, timeout: float, workdir: Path) -> list[dict[str, Any]]:
    """Drive workers until ``total`` inputs were tried; a worker that dies or hangs is one finding."""
    results = workdir / f"{kind}.jsonl"
    results.unlink(missing_ok=True)
    rows: list[dict[str, Any]] = []
    start = 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins"), str(REPO / "tests")]),
           "CI": "true"}
    while start < total:
        batch = min(100, total - start)
        cmd = [sys.executable, __file__, "--worker", kind, str(start), str(batch), str(workdir), str(results)]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        seen = 0
        last = time.monotonic()
        while proc.poll() is None:
            time.sleep(0.5)
            done = sum(1 for _ in open(results, encoding="utf-8")) if results.exists() else 0
            if done != seen:
                seen, last = done, time.monotonic()
            elif time.monotonic() - last > timeout:
                proc.kill()
                proc.wait()
                rows.append({"i": start + len(rows), "code": None, "problem": "hang", "what": kind, "tail": ""})
                break
        lines = [json.loads(ln) for ln in open(results, encoding="utf-8")] if results.exists() else []
        new = lines[len([r for r in rows if r["code"] is not None]):]
        rows.extend(new)
        tried = len(new)
        if proc.returncode not in (0, None) and tried < batch:
            err = proc.stderr.read() if proc.stderr else ""
            rows.append({"i": start + tried, "code": proc.returncode, "problem": f"worker died ({proc.returncode})",
                         "what": kind, "tail": err[-1500:]})
            tried += 1
            # the row of the crashing input was never written: keep the file in step with rows
            with open(results, "a", encoding="utf-8") as f:
                f.write(json.dumps(rows[-1]) + "\n")
        start += max(tried, 1)
    return rows


def main() -> None:
    """Parse arguments, run both fuzzers, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--specs", type=int, default=1000, help="spec texts to try")
    ap.add_argument("--models", type=int, default=300, help="mutated models to try")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds without progress that count as a hang")
    ap.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        kind, start, count, workdir, results = args.worker
        worker(kind, int(start), int(count), Path(workdir), Path(results))
        return
    with tempfile.TemporaryDirectory() as tmp:
        table = []
        for kind, total in (("specs", args.specs), ("models", args.models)):
            t0 = time.perf_counter()
            rows = run_kind(kind, total, args.timeout, Path(tmp))
            codes = Counter(r["code"] for r in rows)
            problems = [r for r in rows if r["problem"]]
            table.append((kind, len(rows), dict(sorted(codes.items(), key=str)), len(problems),
                          time.perf_counter() - t0))
            for r in problems[:5]:
                print(f"--- {kind} #{r['i']}: {r['problem']}\n{r['what']}\n{r['tail']}\n")
        print("| input | tried | exit codes | findings | seconds |")
        print("|---|---|---|---|---|")
        for kind, n, codes, bad, secs in table:
            print(f"| {kind} | {n} | {', '.join(f'{k}: {v}' for k, v in codes.items())} | {bad} | {secs:.0f} |")


if __name__ == "__main__":
    main()
