"""Every bad spec (and bad command line) is exit 2, one line naming the file and the YAML path, before any model
is loaded: the model and data paths do not exist and loading is instrumented to fail the test, so a spec error
that was found only after loading would show up as exit 4 or as that failure."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from auditor.cli import main

HEAD = "version: 1\nmodel: {path: missing.onnx}\ndata: {path: missing.npz}\n"
BASE = "baseline: {path: missing_base.onnx}\n"


def checks(body: str) -> str:
    return HEAD + "checks:\n" + body


# (case, spec text, extra command-line arguments, what the one line says after "error: ")
CASES: list[tuple[str, str, list[str], str]] = [
    ("gate metric typo", checks("  - use: performance.metrics\n    gate: {acuracy: {min: 0.9}}\n"), [],
     "{spec}: checks[0].gate.acuracy: the check never reports this metric (did you mean 'accuracy'?"),
    ("gate metric typo, second check", checks("  - use: sparsity.profile\n  - use: robustness.noise\n"
                                              "    gate: {acuracy_drop: {max: 0.1}}\n"), [],
     "{spec}: checks[1].gate.acuracy_drop: the check never reports this metric (did you mean 'accuracy_drop'?"),
    ("gate operator typo", checks("  - use: performance.metrics\n    gate: {accuracy: {minn: 0.9}}\n"), [],
     "{spec}: checks[0].gate.accuracy.minn: unknown key (did you mean 'min'?)"),
    ("gate severity", checks("  - use: performance.metrics\n    gate: {accuracy: {min: 0.9, severity: warning}}\n"),
     [], "{spec}: checks[0].gate.accuracy.severity: 'warning' is not one of ['fail', 'warn']"),
    ("gate threshold type", checks("  - use: performance.metrics\n    gate: {accuracy: {min: high}}\n"), [],
     "{spec}: checks[0].gate.accuracy.min: 'high' is not of type number"),
    ("delta gate without baseline", checks("  - use: performance.metrics\n    gate: {accuracy: {max_drop: 0.1}}\n"),
     [], "{spec}: checks[0].gate.accuracy: max_drop/max_increase need a baseline"),
    ("unknown check", checks("  - use: performance.metrix\n"), [],
     "{spec}: checks[0].use: unknown check 'performance.metrix' (did you mean 'performance.metrics'?)"),
    ("param below minimum", checks("  - use: robustness.square_attack\n    with: {eps: -1}\n"), [],
     "{spec}: checks[0].with.eps: -1 is less than the minimum of 0"),
    ("param key typo", checks("  - use: robustness.noise\n    with: {sigmaa: 0.1}\n"), [],
     "{spec}: checks[0].with.sigmaa: unknown key (did you mean 'sigma'?)"),
    ("param choice", checks("  - use: robustness.noise\n    with: {kind: gausian}\n"), [],
     "{spec}: checks[0].with.kind: 'gausian' is not one of"),
    ("param type", checks("  - use: sparsity.activations\n    with: {limit: many}\n"), [],
     "{spec}: checks[0].with.limit: 'many' is not of type"),
    ("noise sigma with a severity kind", checks("  - use: robustness.noise\n    with: {kind: blur, sigma: [0.1]}\n"),
     [], "{spec}: checks[0].with.sigma: applies to kind gaussian or feature; use severity for kind blur"),
    ("noise sigma and severity", checks("  - use: robustness.noise\n    with: {sigma: 0.1, severity: 1}\n"), [],
     "{spec}: checks[0].with.sigma: give sigma or severity, not both"),
    ("noise share above 1", checks("  - use: robustness.noise\n    with: {kind: contrast, severity: [2]}\n"), [],
     "{spec}: checks[0].with.severity: severities of kind contrast are shares, at most 1"),
    ("square attack eps 0", checks("  - use: robustness.square_attack\n    with: {eps: 0}\n"), [],
     "{spec}: checks[0].with.eps: must be positive"),
    ("attack norm", checks("  - use: torch.pgd\n    with: {eps: 0.1, norm: l3}\n"), [],
     "{spec}: checks[0].with.norm: 'l3' is not one of ['linf', 'l2']"),
    ("attack step against eps", checks("  - use: torch.pgd\n    with: {eps: 0.1, step_size: 0.5}\n"), [],
     "{spec}: checks[0].with.step_size: 0.5 is more than twice eps (0.1) for norm linf"),
    ("transform missing its argument", checks("  - use: bias.shortcut\n    with: {transform: paste_patch}\n"), [],
     "{spec}: checks[0].with.patch: paste_patch needs `patch`"),
    ("argument of another transform", checks("  - use: bias.shortcut\n    with: {transform: set_feature, feature: 0, "
                                             "value: 1, patch_size: [2, 2]}\n"), [],
     "{spec}: checks[0].with.patch_size: applies to transform paste_patch, not set_feature"),
    ("transform name", checks("  - use: bias.shortcut\n    with: {transform: paste}\n"), [],
     "{spec}: checks[0].with.transform: 'paste' is not one of"),
    ("needs groups", checks("  - use: bias.group_metrics\n"), [],
     "{spec}: checks[0] (bias.group_metrics): needs group columns: set data.groups"),
    ("needs a reference", checks("  - use: transfer.similarity\n"), [],
     "{spec}: checks[0] (transfer.similarity): needs a reference: (or references:) model"),
    ("needs data", "version: 1\nmodel: {path: missing.onnx}\nchecks: [{use: performance.metrics}]\n", [],
     "{spec}: checks[0] (performance.metrics): needs a data: section"),
    ("duplicate ids", checks("  - use: sparsity.profile\n  - use: sparsity.profile\n"), [],
     "{spec}: checks[1]: id 'sparsity.profile' is already used by checks[0]"),
    ("timeout", checks("  - use: sparsity.profile\n    timeout_s: -3\n"), [],
     "{spec}: checks[0].timeout_s: -3 is less than or equal to the minimum of 0"),
    ("top-level key typo", HEAD.replace("data:", "dat:") + "checks: [{use: sparsity.profile}]\n", [],
     "{spec}: dat: unknown key (did you mean 'data'?)"),
    ("data key typo", HEAD.replace("missing.npz}", "missing.npz, lmit: 5}") + "checks: [{use: sparsity.profile}]\n",
     [], "{spec}: data.lmit: unknown key (did you mean 'limit'?)"),
    ("task", HEAD.replace("missing.onnx}", "missing.onnx, task: clasification}")
     + "checks: [{use: sparsity.profile}]\n", [], "{spec}: model.task: 'clasification' is not one of"),
    ("version", HEAD.replace("version: 1", "version: 2") + "checks: [{use: sparsity.profile}]\n", [],
     "{spec}: version: 1 was expected"),
    ("report format", checks("  - use: sparsity.profile\n") + "report: {formats: [pdf]}\n", [],
     "{spec}: report.formats[0]: 'pdf' is not one of"),
    ("invalid YAML", checks("  - use: sparsity.profile\n    with: {limit: [1\n"), [], "{spec}: line "),
    ("several problems, one line", checks("  - use: robustness.noise\n    with: {sigmaa: 0.1}\n"
                                          "  - use: robustness.square_attack\n    with: {eps: -1}\n"), [],
     "{spec}: 2 problems: checks[0].with.sigmaa: unknown key (did you mean 'sigma'?) (line 6); "
     "checks[1].with.eps: -1 is less than the minimum of 0"),
    ("schema and gate problems, one pass", checks("  - use: robustness.noise\n    with: {sigmaa: 0.1}\n"
                                                  "    gate: {acuracy_drop: {max: 0.1}}\n"
                                                  "  - use: performance.metrics\n"
                                                  "    gate: {acuracy: {min: 0.9}}\n"), [],
     "{spec}: 3 problems: checks[0].with.sigmaa: unknown key (did you mean 'sigma'?) (line 6); "
     "checks[0].gate.acuracy_drop: the check never reports this metric (did you mean 'accuracy_drop'? "),
    ("every kind in one pass", checks("  - use: robustness.noise\n    with: {sigma: 0.1, severity: 1}\n"
                                      "  - use: performance.metrics\n    gate: {acuracy: {minn: 0.9}}\n"
                                      "  - use: bias.group_metrics\n    timeout_s: -3\n"), [],
     "{spec}: 5 problems: checks[0].with.sigma: give sigma or severity, not both; "
     "checks[1].gate.acuracy.minn: unknown key (did you mean 'min'?) (line 8); "
     "checks[1].gate.acuracy: the check never reports this metric (did you mean 'accuracy'? it reports: "
     "accuracy, top*_accuracy, log_loss, ece, calibration_bins, balanced_accuracy, per_class_recall, "
     "confusion_matrix, top_confusions, mae, rmse, r2, nonfinite_outputs, n, n_classes, classes); "
     "checks[2].timeout_s: -3 is less than or equal to the minimum of 0 (line 10); "
     "checks[2] (bias.group_metrics): needs group columns: set data.groups"),
    ("baseline delta ok, metric typo", HEAD + BASE + "checks:\n  - use: performance.metrics\n"
     "    gate: {accuraccy: {max_drop: 0.01}}\n", [], "{spec}: checks[0].gate.accuraccy: the check never reports"),
    ("-k matches nothing", checks("  - use: sparsity.profile\n"), ["-k", "noise"],
     "-k: 'noise' selects none of the checks of {spec} (their ids: sparsity.profile)"),
    ("-k does not parse", checks("  - use: sparsity.profile\n"), ["-k", "(noise"],
     "-k: '(noise': unexpected end of expression"),
    ("--format", checks("  - use: sparsity.profile\n"), ["--format", "json,pdf"], "--format: unknown format(s) pdf"),
]


@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fail loudly if the run gets as far as loading a model or data."""
    import auditor.model
    import auditor.runner

    attempts: list[str] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append("loaded")
        raise AssertionError("a model or data was loaded before the spec was validated")

    monkeypatch.setattr(auditor.runner, "load_inputs", refuse)
    monkeypatch.setattr(auditor.model.ModelHandle, "__init__", refuse)
    return attempts


@pytest.mark.parametrize("case,text,args,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_spec_is_exit_2_in_one_line_before_loading(tmp_path: Path, no_loading: list[str], case: str, text: str,
                                                       args: list[str], expected: str) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    r = CliRunner().invoke(main, ["run", str(spec), *args, "--report-dir", str(tmp_path / "r")])
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.exit_code == 2, (case, r.exit_code, r.stderr, r.exception)
    assert len(lines) == 1 and "Traceback" not in r.output, r.stderr
    assert lines[0].startswith("error: " + expected.format(spec=spec)), (lines[0], expected)
    assert no_loading == [] and not (tmp_path / "r").exists()  # nothing loaded, nothing half-written
