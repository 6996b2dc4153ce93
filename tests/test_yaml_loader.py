"""The spec's YAML reader: duplicate keys, nesting, aliases and key types are spec errors with their line; every
entry's line is kept (``CheckSpec.line``, ``Spec.lines``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from auditor import yamlio
from auditor.cli import main
from auditor.errors import SpecError
from auditor.plugins import build_registry
from auditor.spec import Spec, parse_spec


@pytest.fixture(scope="module")
def registry():  # type: ignore[no-untyped-def]
    return build_registry()


def run_cli(tmp_path: Path, text: str) -> tuple[int, str]:
    p = tmp_path / "spec.yaml"
    p.write_text(text)
    r = CliRunner().invoke(main, ["run", str(p)])
    return r.exit_code, r.stderr


SPEC = """\
version: 1
model: {path: m.onnx}
data:
  path: d.npz
  y: y
checks:
  - name: acc
    use: performance.metrics
    gate:
      accuracy: {min: 0.9}
  - use: sparsity.profile
"""


def test_lines_of_every_entry_and_of_each_checks_use(tmp_path: Path, registry) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "spec.yaml"
    p.write_text(SPEC)
    spec: Spec = parse_spec(p, registry.checks, sorted(registry.reporters))
    assert [c.line for c in spec.checks] == [8, 11]
    assert spec.lines[("data", "y")] == 5 and spec.lines[("checks", 0, "gate", "accuracy", "min")] == 10
    assert spec.lines[("checks", 1)] == 11
    assert spec.line_of("checks", 0, "gate", "accuracy", "nope") == 10  # the nearest entry that has a line
    # The document is exactly what PyYAML's safe loader reads.
    assert spec.raw == yaml.safe_load(SPEC)


def test_a_spec_given_as_a_dict_has_no_lines(tmp_path: Path, registry) -> None:  # type: ignore[no-untyped-def]
    spec = parse_spec(tmp_path / "x.yaml", registry.checks, sorted(registry.reporters), doc=yaml.safe_load(SPEC))
    assert spec.lines == {} and spec.checks[0].line is None


def test_schema_errors_name_the_line(tmp_path: Path, registry) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "spec.yaml"
    p.write_text(SPEC.replace("  y: y", "  lmit: 5"))
    with pytest.raises(SpecError) as e:
        parse_spec(p, registry.checks, sorted(registry.reporters))
    assert "data.lmit: unknown key (did you mean 'limit'?) (line 5)" in str(e.value)


def test_duplicate_key_names_both_lines_and_exits_2(tmp_path: Path) -> None:
    # Today's trap: the second `gate:` silently replaced the first, and a gate vanished.
    text = SPEC.replace("      accuracy: {min: 0.9}\n", "      accuracy: {min: 0.9}\n    gate: {}\n")
    code, err = run_cli(tmp_path, text)
    assert code == 2
    assert "line 11: duplicate key 'gate' (first on line 9)" in err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("text,needle", [
    ("checks: " + "[" * 3000 + "]" * 3000, "nested deeper than 64 levels"),
    ("".join("  " * i + f"k{i}:\n" for i in range(100)) + "  " * 100 + "v: 1\n", "nested deeper than 64 levels"),
    ("a: &a [*a]\n", "an alias refers to a node that contains it"),
    ("gate:\n  1: {min: 0}\n", "line 2: key 1 is not a string (quote it: '1')"),
    ("a: !!set {x, y}\n", "the YAML tag tag:yaml.org,2002:set is not allowed"),
    ("a: !!python/object/apply:os.system ['touch pwned']\n", "could not determine a constructor"),
    ("a: [1,\n", "line 2: invalid YAML"),
    ("a: b\x00c\n", "unacceptable character #x0000"),  # found by benchmarks/fuzz_inputs.py (exit 3 before)
])
def test_hostile_yaml_is_one_line_exit_2(tmp_path: Path, text: str, needle: str) -> None:
    code, err = run_cli(tmp_path, text)
    assert code == 2, err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "pwned").exists()


def billion_laughs(levels: int) -> str:
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        refs = ", ".join([f"*l{i - 1}"] * 10)
        lines.append(f"l{i}: &l{i} [{refs}]")
    return "\n".join(lines) + "\n"


def test_alias_expansion_is_bounded(tmp_path: Path) -> None:
    # 10**9 strings from 9 nested aliases: refused while measuring the node graph, which is linear in the text.
    with pytest.raises(yamlio.YamlProblem, match="more than 100000 values once aliases are expanded"):
        yamlio.load(billion_laughs(9))
    code, err = run_cli(tmp_path, "version: 1\n" + billion_laughs(9))
    assert code == 2 and err.count("\n") == 1
    # A few shared aliases are fine and are expanded like PyYAML does.
    doc, _ = yamlio.load(billion_laughs(3))
    assert doc == yaml.safe_load(billion_laughs(3)) and len(doc["l2"]) == 10


def test_merge_keys_may_override_and_dates_stay_text() -> None:
    doc, lines = yamlio.load("base: &b {x: 1, y: 2}\nm:\n  <<: *b\n  x: 3\nwhen: 2024-01-31\n")
    assert doc == {"base": {"x": 1, "y": 2}, "m": {"x": 3, "y": 2}, "when": "2024-01-31"}
    assert lines[("m", "x")] == 4


def test_huge_values_are_cut_in_messages(tmp_path: Path) -> None:
    code, err = run_cli(tmp_path, SPEC.replace("performance.metrics", "x" * 100_000))
    assert code == 2 and len(err) < 2000 and "more characters" in err
