"""A battery of malformed definitions: each must be rejected with *located* problems, and the CLI
must exit 2 without a traceback (DESIGN §2, "Validation happens up front and names the place").

``definitions/invalid/expected.json`` maps each file to ``[pointer, substring]`` pairs; every pair
must match one reported problem: the pointer exactly, the substring case-sensitively inside the
message. Where more than one answer is right (which edge of a cycle gets blamed, where the cycle
is said to start), the pointer and/or the substring may be a list of alternatives, any one of which
must match *in the same problem*.

Files numbered 80–92 pin defects found (and fixed) in the validator, 72–79, 84 and 93–98 the
bounds on what a document may demand (legato.limits: alias bombs, nesting, huge numbers, keys
that are not scalars, non-finite or out-of-range durations and backoffs); a defect found and
not yet fixed goes into XFAIL as a strict xfail with its reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from legato.cel import CelCompiler
from legato.cli import main as cli
from legato.definition import DefinitionError, Problem, load_definition
from legato.plugin_manager import get_plugins

ROOT = Path(__file__).resolve().parent.parent
INVALID = Path(__file__).resolve().parent / "definitions" / "invalid"
EXPECTED: dict[str, list] = json.loads((INVALID / "expected.json").read_text(encoding="utf-8"))
FILES = sorted(p.name for p in INVALID.iterdir() if p.is_file() and p.name != "expected.json")
EXAMPLES = sorted(p for p in (ROOT / "examples").iterdir() if p.suffix in (".json", ".yaml", ".yml"))
LEGATO = Path(sys.executable).parent / "legato"
# The CLI runs in-process (CliRunner) for every file; these also run as a real subprocess.
SUBPROCESS = ["01-json-syntax-error.json", "05-yaml-tab-indent.yaml", "32-condition-cel-syntax-error.json",
              "99-many-problems.json"]

XFAIL: dict[str, str] = {}  # file -> reason, for a kernel defect not fixed yet (strict xfail)


def _mark(name: str):
    marks = [pytest.mark.xfail(strict=True, reason=XFAIL[name])] if name in XFAIL else []
    return pytest.param(name, marks=marks, id=name)


CASES = [_mark(name) for name in FILES]


@pytest.fixture(scope="module")
def loader():
    plugins = get_plugins()
    compiler = CelCompiler(plugins.cel_functions.functions)
    return lambda path: load_definition(Path(path), plugins.step_types.types, compiler)


def _alternatives(value) -> list[str]:
    return value if isinstance(value, list) else [value]


def _missing(problems: list[tuple[str, str]], expected: list) -> list:
    """The expected pairs no single problem matches."""
    missing = []
    for pointer, substring in expected:
        pointers, substrings = _alternatives(pointer), _alternatives(substring)
        if not any(p in pointers and any(s in m for s in substrings) for p, m in problems):
            missing.append([pointer, substring])
    return missing


def _cli_problems(stderr: str) -> list[tuple[str, str]]:
    """``  /pointer: message`` lines of ``legato validate`` back to (pointer, message)."""
    out = []
    for line in stderr.splitlines():
        if line.startswith("  /"):
            pointer, _, message = line[2:].partition(": ")
            out.append(("" if pointer == "/" else pointer, message))
    return out


def _resolve(document, pointer: str) -> bool:
    node = document
    for token in pointer.split("/")[1:]:
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and any(str(key) == token for key in node):  # YAML keys may be ints
            node = next(value for key, value in node.items() if str(key) == token)
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return False
    return True


# -- the battery itself -------------------------------------------------------------------------


def test_battery_is_complete():
    assert len(FILES) >= 30
    assert set(FILES) == set(EXPECTED), "every file needs an entry in expected.json, and vice versa"
    for name, pairs in EXPECTED.items():
        assert pairs, f"{name}: no expectations"
        for pair in pairs:
            assert len(pair) == 2, f"{name}: {pair!r} is not [pointer, substring]"
            for pointer in _alternatives(pair[0]):
                assert pointer == "" or pointer.startswith("/"), f"{name}: {pointer!r} is not a JSON pointer"
    assert len(EXPECTED["99-many-problems.json"]) >= 5
    assert set(SUBPROCESS) <= set(FILES) and len(SUBPROCESS) >= 3
    assert set(XFAIL) <= set(FILES)


@pytest.mark.parametrize("name", CASES)
def test_load_definition_reports_located_problems(name, loader):
    with pytest.raises(DefinitionError) as info:
        loader(INVALID / name)
    problems = info.value.problems
    assert problems and all(isinstance(p, Problem) for p in problems)
    found = [(p.pointer, p.message) for p in problems]
    assert not _missing(found, EXPECTED[name]), "reported instead:\n" + "\n".join(map(str, problems))
    for p in problems:
        assert p.pointer == "" or p.pointer.startswith("/"), p
        assert p.message.strip(), p
    assert str(INVALID / name) in str(info.value)


def _parsed(name: str):
    path = INVALID / name
    try:
        text = path.read_text(encoding="utf-8")
        return yaml.safe_load(text) if path.suffix == ".yaml" else json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError, yaml.YAMLError):
        return None


def _points_into(document, pointer: str) -> bool:
    """``pointer`` names a place in ``document``, or a missing member of a place that exists. A
    successor is always there when a problem is about it, so it must resolve exactly."""
    if _resolve(document, pointer):
        return True
    return "/successors/" not in pointer and _resolve(document, pointer.rsplit("/", 1)[0])


def test_expected_pointers_point_into_the_documents():
    for name in FILES:
        document = _parsed(name)
        if document is None or not isinstance(document, dict):
            continue
        for pointer, _ in EXPECTED[name]:
            for alternative in _alternatives(pointer):
                assert _points_into(document, alternative), f"{name}: {alternative} points nowhere"


POINTER_XFAIL: set[str] = set()


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=[pytest.mark.xfail(strict=True, reason=XFAIL[n])] if n in POINTER_XFAIL else [], id=n)
    for n in FILES if _parsed(n) is not None])  # a file that does not parse is located by line:col instead
def test_reported_pointers_point_into_the_document(name, loader):
    document = _parsed(name)
    try:
        loader(INVALID / name)
    except DefinitionError as exc:
        problems = exc.problems
    except Exception:
        assert name in XFAIL, "crashes: see test_load_definition_reports_located_problems"
        pytest.skip("crashes (known defect, strict xfail in test_load_definition_reports_located_problems)")
    else:
        assert name in XFAIL, "accepted: see test_load_definition_reports_located_problems"
        pytest.skip("accepted (known defect, strict xfail in test_load_definition_reports_located_problems)")
    for p in problems:
        assert _points_into(document, p.pointer), f"{p} points nowhere"


@pytest.mark.parametrize("name", CASES)
def test_cli_validate_exits_2_without_traceback(name):
    result = CliRunner().invoke(cli, ["validate", str(INVALID / name)])
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert isinstance(result.exception, SystemExit), f"uncaught {result.exception!r}"
    assert result.exit_code == 2, output
    header = result.stderr.splitlines()[0]
    assert header.startswith(f"{INVALID / name}: ") and header.endswith(" problem(s) found"), header
    problems = _cli_problems(result.stderr)
    assert header == f"{INVALID / name}: {len(problems)} problem(s) found"
    assert not _missing(problems, EXPECTED[name]), result.stderr


@pytest.mark.parametrize("name", [_mark(n) for n in SUBPROCESS])
def test_cli_validate_subprocess(name):
    proc = subprocess.run([str(LEGATO), "validate", str(INVALID / name)], capture_output=True, text=True,
                          timeout=60)
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"{INVALID / name}: ")
    for pointer, _ in EXPECTED[name]:
        assert any(f"  {p or '/'}: " in proc.stderr for p in _alternatives(pointer)), (pointer, proc.stderr)
    assert not _missing(_cli_problems(proc.stderr), EXPECTED[name]), proc.stderr


def test_cli_validate_json_reports_every_problem(loader):
    name = "99-many-problems.json"
    result = CliRunner().invoke(cli, ["validate", "--json", str(INVALID / name)])
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert report["valid"] is False
    with pytest.raises(DefinitionError) as info:
        loader(INVALID / name)
    assert report["problems"] == [{"pointer": p.pointer, "message": p.message} for p in info.value.problems]
    assert not _missing([(p["pointer"], p["message"]) for p in report["problems"]], EXPECTED[name])


# -- and the examples are valid ---------------------------------------------------------------


def test_there_are_examples():
    assert {p.name for p in EXAMPLES} >= {"etl.json", "retries.json", "params.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(path, loader):
    definition = loader(path)
    assert definition.steps
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 0, result.stderr
    assert "valid" in result.stdout


def test_examples_validate_in_a_subprocess():
    for path in EXAMPLES:
        proc = subprocess.run([str(LEGATO), "validate", str(path)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert f"{path}: valid" in proc.stdout


def test_yaml_aliases_within_the_bound_still_load(loader, tmp_path):
    """Sharing a retry policy through an anchor is ordinary YAML: the alias bound leaves it alone."""
    path = tmp_path / "shared.yaml"
    path.write_text(
        "workflow:\n  id: shared\n  steps:\n"
        "    - step: {id: s0, type: noop, retry_policy: &retry {error_retry_limit: 3, backoff: {type: fixed, base: 2}}}\n"
        + "".join(f"    - step: {{id: s{i}, type: noop, retry_policy: *retry}}\n" for i in range(1, 500)))
    definition = loader(path)
    assert len(definition.steps) == 500
    assert {s.retry.error_retry_limit for s in definition.steps} == {3}


def test_lone_surrogates_are_refused_at_their_pointer(loader, tmp_path):
    """JSON may spell half a surrogate pair (``\\ud800``); no process, file or terminal takes it."""
    path = tmp_path / "surrogate.json"
    path.write_text('{"workflow": {"id": "s", "params": {"s": "ok \\u00e9", "t": "bad \\ud800"}, '
                    '"steps": [{"step": {"id": "a", "type": "noop"}}]}}')
    with pytest.raises(DefinitionError) as info:
        loader(path)
    assert [(p.pointer, "lone surrogate" in p.message) for p in info.value.problems] == [("/workflow/params/t", True)]
